"""`--distribute` on the trainer scripts, end to end, on each backend.

JAX: two forced host devices (XLA_FLAGS) split the global batch; TensorFlow:
MirroredStrategy over the machine's CPU (one replica, the same code path as on
GPUs); torch: the clear one-line refusal. Subprocesses, with timeouts.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np

from tests.testing import ROOT, tiny_trainer_args

TINY = tiny_trainer_args(verbose=0)


def test_trainer_distribute(shared_data, tmp_path):
    backend = keras.backend.backend()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
    env.update(KERAS_BACKEND=backend, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    if backend == "jax":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "trainers", "fashion_mnist.py"),
            "--data-dir",
            os.path.join(shared_data, "fashion-mnist"),
            "--output-dir",
            str(out),
            "--distribute",
            "data_parallel",
            *TINY,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=420,
    )
    if backend == "torch":
        assert proc.returncode == 2
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "torch" in errors[0] and "jax" in errors[0].lower(), proc.stderr[-1500:]
        assert not (out / "model_last.keras").exists()
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    distribution = saved["data"]["distribution"]
    assert distribution["mode"] == "data_parallel"
    assert distribution["num_replicas"] == (2 if backend == "jax" else 1)
    assert "global" in distribution["batch_size"] and distribution["learning_rate"] == "not rescaled"
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert (out / "model_last.keras").is_file()
    assert "replica" in proc.stdout


def _train(shared_data, out, *flags):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_") and k != "XLA_FLAGS"}
    env.update(KERAS_BACKEND=keras.backend.backend(), PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    tiny = [*TINY, "--depth", "3"]  # argparse keeps the last --depth: 3 is where the default switches on
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "trainers", "fashion_mnist.py"),
            "--data-dir",
            os.path.join(shared_data, "fashion-mnist"),
            "--output-dir",
            str(out),
            *tiny,
            *flags,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return saved["data"].get("distribution"), history


def test_default_is_data_parallel_where_faster(shared_data, tmp_path):
    """No --distribute: a depth-3 ViT on JAX trains on 2 XLA CPU devices, with the losses of --distribute none."""
    backend = keras.backend.backend()
    auto, auto_history = _train(shared_data, tmp_path / "auto")
    if backend != "jax":  # nothing to compare: the default is the one device
        assert auto == {"mode": "none", "num_replicas": 1, "automatic": "not JAX"}
        return
    _, one_history = _train(shared_data, tmp_path / "one", "--distribute", "none")
    keys = ("loss", "accuracy", "test_loss", "test_accuracy")
    for a, b in zip(auto_history, one_history, strict=True):
        np.testing.assert_allclose([a[k] for k in keys], [b[k] for k in keys], rtol=0, atol=1e-5)
    if len(os.sched_getaffinity(0)) < 2:  # a one-core machine keeps one device, and says why
        assert auto["num_replicas"] == 1 and "one CPU device" in auto["automatic"]
        return
    assert auto["mode"] == "data_parallel" and auto["num_replicas"] == 2
    assert auto["automatic"].startswith("automatic: JAX on a CPU-only host")
    # 190 training images do not split into batches of 50: one device, so that no image is dropped.
    uneven, history = _train(shared_data, tmp_path / "uneven", "--train-subset", "190")
    assert uneven["num_replicas"] == 1 and "split evenly" in uneven["automatic"]
    assert len(history) == 1
