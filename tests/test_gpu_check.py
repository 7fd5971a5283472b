"""scripts/gpu_check.py on the CPU (its fallback), without TensorFlow, as on the GPU machine: every step and file."""

import csv
import json
import os
import subprocess
import sys

import keras
import pytest

from tests.testing import ROOT


@pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="runs its own JAX and torch processes: once, on the torch pass"
)
def test_gpu_check_cpu_fallback(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "no_tensorflow"), ROOT])}
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "gpu_check.py"), "--out", str(out), "--time-limit", "1500"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1700,
        cwd=ROOT,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0 and summary["passed"], proc.stdout[-3000:] + json.dumps(summary, indent=1)[-3000:]
    assert summary["accelerator"] is False and summary["sizes"] == "tiny"  # no GPU here: the small CPU fallback
    assert set(summary["steps"]) == {"devices", "fit", "save_load", "benchmark", "tests"}

    devices = json.loads((out / "devices.json").read_text())
    assert {b: d["tensorflow_installed"] for b, d in devices.items()} == {"jax": False, "torch": False}
    assert all(d["device"]["platform"] == "cpu" for d in devices.values())
    with open(out / "fit.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["backend"], int(r["batch_size"])) for r in rows] == [
        ("jax", 100),
        ("jax", 200),
        ("torch", 100),
        ("torch", 200),
    ]
    assert all(float(r["images_per_s"]) > 0 and int(r["images"]) == 400 for r in rows)
    save_load = json.loads((out / "save_load.json").read_text())
    assert all(save_load[b]["passed"] and save_load[b]["max_abs_diff"] <= 1e-4 for b in ("jax", "torch"))
    bench = json.loads((out / "benchmark.json").read_text())
    runs = bench["runs"]["vit_bnffn"]
    assert set(runs) == {"yardstick", "jax", "torch"} and bench["same_work"]
    assert all(runs[b]["train_images_per_s"] > 0 and runs[b]["ratio_to_yardstick"] > 0 for b in ("jax", "torch"))
    assert "yardstick" in (out / "benchmark.md").read_text()
    tests = json.loads((out / "tests.json").read_text())
    assert all(tests[b]["status"] == "passed" and tests[b]["counts"].get("passed", 0) >= 1 for b in ("jax", "torch"))
