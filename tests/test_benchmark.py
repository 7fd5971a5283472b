"""The benchmark's structure and its correctness guard (never timings), and the performance settings.

The smoke run measures the backend under test (`KERAS_BACKEND`) and the
plain-PyTorch yardstick in subprocesses, at depth 1 for a few steps, and checks
that both start from the same weights: same first-step loss, same mean loss
over the warm-up epoch.
"""

import os
import pathlib
import subprocess
import sys

import keras
import pytest

from keras_vitbn.runtime import performance
from keras_vitbn.tools.benchmark import format_markdown, run_benchmark, write_results
from keras_vitbn.tools.benchmark.__main__ import build_parser
from keras_vitbn.tools.benchmark.run import FIRST_STEP_ATOL, WARMUP_LOSS_RTOL, add_derived_figures, guard_tolerances
from keras_vitbn.utils import machine
from keras_vitbn.utils.files import read_json

pytest.importorskip("torch")


def test_fit_settings_per_backend():
    # What each backend's trainer can run: XLA where there is one, and on torch the only
    # steps_per_execution its trainer supports (test_fit_settings_compile_and_train trains with them).
    assert performance.fit_settings("torch")["steps_per_execution"] == 1
    for backend in ("jax", "tensorflow"):
        assert performance.fit_settings(backend)["jit_compile"] is True
    assert performance.fit_settings() == performance.fit_settings(keras.backend.backend())
    settings = performance.fit_settings("jax")
    settings["steps_per_execution"] = 99  # a copy: the caller cannot change the table
    assert performance.fit_settings("jax")["steps_per_execution"] != 99
    with pytest.raises(ValueError, match="no fit settings for backend 'numpy'"):
        performance.fit_settings("numpy")


def test_fit_settings_compile_and_train(tmp_path):
    import numpy as np

    import keras_vitbn

    model = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=32)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **performance.fit_settings(),
    )
    x = np.random.default_rng(0).random((40, 28, 28, 1), dtype="float32")
    history = model.fit(x, np.arange(40) % 10, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("depth", [1, 3])
def test_flop_count_matches_the_models_products(depth):
    # Counted from the built model instead: every Dense kernel times the rows it multiplies
    # (16 patches into the patch projection, 17 tokens in the blocks, one token into the
    # head), plus each block's q.k^T and attention.v.
    import keras_vitbn

    model = keras_vitbn.create_model("vit", depth=depth)
    model(keras.ops.zeros((1, 28, 28, 1)))
    patches, tokens, heads, dim_head = 16, 17, 8, 64
    flops = 0
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dense):
            fan_in, fan_out = layer.kernel.shape
            rows = patches if fan_in == 7 * 7 else 1 if fan_out == 10 else tokens
            flops += 2 * rows * fan_in * fan_out
    blocks = model._flatten_layers()
    attention_blocks = [layer for layer in blocks if isinstance(layer, keras_vitbn.layers.AttentionBlock)]
    assert len(attention_blocks) == depth
    flops += depth * 2 * (2 * heads * tokens * tokens * dim_head)
    assert performance.vit_forward_flops(depth) == flops
    assert performance.vit_training_flops(depth) == 3 * flops


def test_thread_environment_pins_every_pool(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # the exact strings below assume no flags of the user's
    env = performance.thread_environment(2)
    assert env["OMP_NUM_THREADS"] == "2" and env["TF_NUM_INTRAOP_THREADS"] == "2"
    assert sorted(env) == sorted(machine.THREAD_VARIABLES)  # what every run's machine record lists
    assert env["XLA_FLAGS"].split() == ["--xla_cpu_multi_thread_eigen=true"]
    assert performance.thread_environment(1)["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"
    # Every flag reaches XLA, before and after these: a bare `intra_op_parallelism_threads=2`
    # (not an XLA flag) made XLA drop the flags after it.
    after = performance.thread_environment(2)["XLA_FLAGS"] + " --xla_force_host_platform_device_count=2"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=3")
    before = performance.thread_environment(2)["XLA_FLAGS"]
    for flags, devices in ((after, "2"), (before, "3")):
        count = subprocess.run(
            [sys.executable, "-c", "import jax; print(jax.local_device_count('cpu'))"],
            env=dict(os.environ, XLA_FLAGS=flags),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert count.stdout.strip().splitlines()[-1] == devices, (flags, count.stderr[-1000:])


def test_parser_defaults_are_the_article_configuration():
    from keras_vitbn.tools.benchmark.run import BACKENDS, MODELS
    from keras_vitbn.training.presets import PRESETS

    args = build_parser().parse_args([])
    article = PRESETS["mnist"]
    assert (args.depth, args.batch_size) == (article["depth"], article["batch_size"])
    assert sorted(args.models) == sorted(MODELS) and sorted(args.backends) == sorted(BACKENDS)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown backend 'mxnet'"):
        run_benchmark(backends=["mxnet"])
    with pytest.raises(ValueError, match="multiple of the batch size"):
        run_benchmark(epoch_images=150, batch_size=100)


def test_the_data_folder_is_found_when_the_benchmark_runs(monkeypatch):
    from keras_vitbn.data import locations

    assert build_parser().parse_args([]).data_root is None  # not a path fixed when the package was imported
    monkeypatch.setattr(locations, "data_root", lambda: None)  # no $KERAS_VITBN_DATA
    with pytest.raises(ValueError, match="none was found: set KERAS_VITBN_DATA, pass --epoch-data-dir"):
        run_benchmark(models=["vit"], backends=["jax"])


def test_smoke_run_same_work_as_yardstick(tmp_path, shared_data):
    backend = keras.backend.backend()
    results = run_benchmark(
        models=["vit_bnffn"],
        depth=1,
        backends=[backend],
        steps=2,
        windows=1,
        epoch_images=200,
        infer_batch=20,
        infer_repeats=1,
        data_root=shared_data,
        timeout=900,
        log=lambda *_: None,
    )
    runs = results["runs"]["vit_bnffn"]
    assert set(runs) == {"yardstick", backend}
    for run in runs.values():
        assert "error" not in run, run.get("stderr")
        for key in (
            "train_images_per_s",
            "first_step_loss",
            "warmup_epoch_loss",
            "compile_seconds",
            "peak_rss_mib",
            "epoch_images_per_s",
            "infer_images_per_s",
            "matmul_peak_flops",
            "fraction_of_matmul_peak",
        ):
            assert run[key] is not None and run[key] >= 0, key
    measured = runs[backend]
    assert measured["settings"] == performance.fit_settings(backend) | (
        {"steps_per_execution": 1} if backend == "torch" else {}
    )
    assert measured["devices"] == 1  # depth 1: the trainers' default keeps one device
    # The correctness guard: the same weights and the same work as the yardstick.
    assert measured["first_step_loss_diff"] < 1e-4
    assert measured["warmup_loss_rel_diff"] < 1e-3
    assert results["same_work"] is True
    json_path, md_path = write_results(results, str(tmp_path / "bench"))
    assert read_json(json_path)["config"]["depth"] == 1
    table = pathlib.Path(md_path).read_text()
    assert "| ViTBNFFN | yardstick |" in table and f"| ViTBNFFN | {backend} |" in table
    # The spread of the timed windows next to their median.
    rates = [2 * 100 / t for t in measured["train_window_seconds"]]  # 2 steps of batch 100 per window
    assert f" | {measured['train_images_per_s']:.0f} | {min(rates):.0f}-{max(rates):.0f} | " in table
    assert table == format_markdown(results) + "\n"


def test_mixed_bfloat16_smoke_run(tmp_path, shared_data):
    """--dtype-policy mixed_bfloat16: the backend and the yardstick (autocast) both compute in bfloat16."""
    backend = keras.backend.backend()
    results = run_benchmark(
        models=["vit_bnffn"],
        depth=1,
        backends=[backend],
        steps=2,
        windows=1,
        epoch_images=0,
        infer_batch=0,
        dtype_policy="mixed_bfloat16",
        data_root=shared_data,
        timeout=900,
        log=lambda *_: None,
    )
    runs = results["runs"]["vit_bnffn"]
    for run in runs.values():
        assert "error" not in run, run.get("stderr")
    assert runs[backend]["dtype_policy"] == "mixed_bfloat16"
    assert runs["yardstick"]["settings"]["autocast"] == "bfloat16"
    assert runs["yardstick"]["settings"]["device"] == "cpu"
    # bfloat16 rounds differently on each side, within the mixed guard; float32's guard would be too tight.
    first_atol, warm_rtol = guard_tolerances("mixed_bfloat16")
    assert runs[backend]["first_step_loss_diff"] < first_atol and runs[backend]["warmup_loss_rel_diff"] < warm_rtol
    assert results["same_work"] is True
    table = format_markdown(results)
    assert "measured bfloat16 matmul peak" in table and "dtype policy mixed_bfloat16" in table
    assert f"first-step loss within {first_atol:g}" in table


def test_guard_tolerances_follow_the_dtype_policy():
    """A loss 1e-3 away from the yardstick's is the same work in mixed_bfloat16, not in float32."""

    def results(policy):
        run = {
            "train_images_per_s": 100.0,
            "first_step_loss": 2.301,
            "warmup_epoch_loss": 2.0,
            "matmul_peak_flops": 1e9,
        }
        reference = {**run, "first_step_loss": 2.300}
        return {
            "config": {"training_flops_per_image": 1e6, "dtype_policy": policy},
            "machine": {},
            "runs": {"vit": {"yardstick": reference, "jax": run}},
        }

    float32, mixed = results("float32"), results("mixed_bfloat16")
    add_derived_figures(float32)
    add_derived_figures(mixed)
    assert float32["same_work"] is False and mixed["same_work"] is True
    assert guard_tolerances(None) == guard_tolerances("float32") == (FIRST_STEP_ATOL, WARMUP_LOSS_RTOL)


def test_benchmark_uses_the_trainers_device_default(shared_data, monkeypatch):
    """Depth 3: JAX's worker trains on 2 XLA CPU devices, as the trainers do, and still does the yardstick's work.

    Without the real epoch and the inference pass (0 images each), only the training batches must split.
    """
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    backend = keras.backend.backend()
    results = run_benchmark(
        models=["vit"],
        depth=3,
        backends=[backend],
        steps=2,
        windows=1,
        epoch_images=0,
        infer_batch=0,
        data_root=shared_data,
        timeout=900,
        log=lambda *_: None,
    )
    measured = results["runs"]["vit"][backend]
    assert "error" not in measured, measured.get("stderr")
    two = backend == "jax" and len(os.sched_getaffinity(0)) >= 2
    assert measured["devices"] == (2 if two else 1), measured.get("distribution")
    assert results["same_work"] is True
    assert ("devices=2" in format_markdown(results)) is two


def test_results_csv_rows_and_appending(tmp_path):
    """Each full run appends its summary rows to one CSV per machine and setting, header once."""
    import csv

    from keras_vitbn.tools.benchmark import results_csv
    from keras_vitbn.tools.benchmark.run import window_range

    def run(rate, first_loss):
        return {
            "train_images_per_s": rate,
            "train_window_seconds": [0.25, 0.2, 0.3],
            "first_step_loss": first_loss,
            "warmup_epoch_loss": 2.0,
            "matmul_peak_flops": 4e11,
            "devices": 1,
            "compile_seconds": 12.34,
            "peak_rss_mib": 2048.4,
        }

    def results(policy):
        found = {
            "command": "/src/keras_vitbn/benchmark/__main__.py --epoch-repeats 5",
            "date": "2026-12-02T13:05:00+00:00",
            "machine": {"processor": "AMD EPYC", "cpu_id": "AMD EPYC (family 25, model 17)", "cpu_count": 2},
            "config": {"depth": 6, "batch_size": 100, "dtype_policy": policy, "training_flops_per_image": 1e8},
            "runs": {
                "vit": {"yardstick": run(800.0, 2.3), "jax": run(1000.0, 2.30001), "torch": {"error": "exit status 1"}}
            },
        }
        add_derived_figures(found)
        return found

    measured = results("float32")
    path = results_csv.default_path(measured, str(tmp_path))
    assert os.path.basename(path) == "benchmark-amd-epyc-family-25-model-17-2cpu.csv"
    assert results_csv.default_path(results("mixed_bfloat16"), str(tmp_path)).endswith("-2cpu-mixed_bfloat16.csv")
    assert results_csv.append(measured, path, output="runs/benchmark/a") == 3
    with open(path, "a") as f:
        f.write("2026-12-02,13:0")  # a run killed mid-write
    assert results_csv.append(measured, path, output="runs/benchmark/b") == 3
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    assert [row["output"] for row in table] == ["runs/benchmark/a"] * 3 + [None] + ["runs/benchmark/b"] * 3
    jax = table[-2]
    assert (jax["date"], jax["time_utc"], jax["cpu"], jax["model"], jax["backend"]) == (
        "2026-12-02",
        "13:05",
        "AMD EPYC (family 25, model 17)",
        "ViT",
        "jax",
    )
    assert jax["command"] == "python -m keras_vitbn.tools.benchmark --epoch-repeats 5"
    assert (jax["train_images_per_s"], jax["x_yardstick"], jax["same_work"]) == ("1000", "1.25", "yes")
    assert (jax["matmul_peak_gflops"], jax["pct_matmul_peak"]) == ("400", "25")  # 1000 images/s x 1e8 FLOPs
    assert f"{jax['window_slowest']}-{jax['window_fastest']}" == window_range(measured["runs"]["vit"]["jax"])
    assert table[-1]["note"] == "failed: exit status 1" and table[-1]["train_images_per_s"] == ""
    assert build_parser().parse_args([]).results_csv == "auto"
