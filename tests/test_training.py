"""train(config): run directory, resume after interruption, divergence, determinism, MLflow."""

import json
import os

import keras
import numpy as np
import pytest

from keras_vitbn.training import TrainConfig, build_model, load_data, train
from keras_vitbn.training.callbacks import COLUMNS

# The numbers of a history row that depend only on the run (not on timing).
CURVES = ("loss", "accuracy", "test_loss", "test_accuracy", "test_aug_loss", "test_aug_accuracy")
TINY = {"depth": 1, "model_overrides": {"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16}}


def tiny_config(mnist_sample_dir, output_dir, **kwargs):
    values = {
        "dataset": "mnist",
        "data_dir": mnist_sample_dir,  # 500 + 100 real digits kept in the repository
        "train_subset": 200,
        "test_subset": 100,
        "batch_size": 50,
        "epochs": 1,
        "output_dir": str(output_dir),
        **TINY,
    }
    values.update(kwargs)
    return TrainConfig(**values)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_run_directory(mnist_sample_dir, tmp_path):
    result = train(tiny_config(mnist_sample_dir, tmp_path / "run", epochs=2), verbose=0)
    out = tmp_path / "run"
    assert result["status"] == "completed" and result["reason"] is None and result["epochs_completed"] == 2
    for name in (
        "config.json",
        "status.json",
        "history.csv",
        "history.jsonl",
        "model_best.keras",
        "model_last.keras",
        "curves.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(files for _, _, files in os.walk(out / "tensorboard"))
    rows = read_jsonl(out / "history.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and rows == result["history"]
    assert set(rows[0]) == set(COLUMNS) - {"val_loss", "val_accuracy"}
    assert all(0 <= rows[-1][k] <= 1 for k in ("accuracy", "test_accuracy", "test_aug_accuracy"))
    assert rows[-1]["images_per_sec"] > 0 and rows[-1]["lr"] == pytest.approx(TrainConfig().learning_rate)
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and "test_aug_accuracy" in header
    saved = json.loads((out / "config.json").read_text())
    assert TrainConfig.from_dict(saved["config"]) == tiny_config(mnist_sample_dir, out, epochs=2)
    assert saved["data"]["source"] == "idx" and saved["data"]["train_images"] == 200
    assert saved["environment"]["backend"] == keras.backend.backend()
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "completed" and status["epochs_completed"] == 2
    model = keras.saving.load_model(str(out / "model_best.keras"))
    assert model.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape == (2, 10)
    # Same command again: nothing to do, same result.
    again = train(tiny_config(mnist_sample_dir, out, epochs=2), verbose=0)
    assert again["history"] == rows


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_after_interruption(mnist_sample_dir, tmp_path):
    config = tiny_config(mnist_sample_dir, tmp_path / "run", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[Interrupt()], verbose=0)
    first = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert [r["epoch"] for r in first] == [1]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "running"
    result = train(config, verbose=0)  # the same command again
    assert result["status"] == "completed" and result["epochs_completed"] == 3
    assert [r["epoch"] for r in result["history"]] == [1, 2, 3]
    assert result["history"][0] == first[0]  # the interrupted run's epoch is kept, not redone
    # The resumed epochs see the shuffles and augmentations an uninterrupted run sees: same numbers, bit for bit.
    whole = train(tiny_config(mnist_sample_dir, tmp_path / "whole", epochs=3), verbose=0)["history"]
    assert [{k: r[k] for k in CURVES} for r in result["history"]] == [{k: r[k] for k in CURVES} for r in whole]


def test_divergence_is_a_result(mnist_sample_dir, tmp_path):
    config = tiny_config(mnist_sample_dir, tmp_path / "run", epochs=3, learning_rate=1e9)
    result = train(config, verbose=0)
    assert result["status"] == "diverged" and "nan" in result["reason"].lower() or "inf" in result["reason"].lower()
    assert result["history"] and result["history"][-1]["loss"] is None
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "diverged" and status["reason"] == result["reason"]
    assert not (tmp_path / "run" / "backup").exists()
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 1 + len(result["history"])
    again = train(config, verbose=0)  # recorded, not retried
    assert again["status"] == "diverged" and again["history"] == result["history"]


def test_same_seed_same_curves(mnist_sample_dir, tmp_path):
    runs = [train(tiny_config(mnist_sample_dir, tmp_path / name, seed=5), verbose=0)["history"] for name in "ab"]
    assert [{k: r[k] for k in CURVES} for r in runs[0]] == [{k: r[k] for k in CURVES} for r in runs[1]]


def test_validation_split_and_other_run_in_same_dir(mnist_sample_dir, tmp_path):
    config = tiny_config(
        mnist_sample_dir, tmp_path / "run", validation_split=0.25, schedule="cosine", optimizer="adamw", clipnorm=1.0
    )
    result = train(config, verbose=0)
    row = result["history"][0]
    assert row["val_accuracy"] is not None and result["best_metric"] == "val_accuracy"
    assert result["provenance"]["train_images"] == 150 and result["provenance"]["val_images"] == 50
    with pytest.raises(ValueError, match="holds a different run"):
        train(tiny_config(mnist_sample_dir, tmp_path / "run", learning_rate=0.5), verbose=0)


def test_load_data_and_build_model_for_tuning(mnist_sample_dir, tmp_path):
    config = tiny_config(mnist_sample_dir, tmp_path, validation_split=0.2)
    train_ds, val_ds, test_ds, test_aug_ds, provenance = load_data(config)
    x, y = next(iter(train_ds))
    assert tuple(x.shape) == (50, 28, 28, 1) and val_ds is not None and test_aug_ds is not None
    model = build_model(config, tuple(provenance["image_shape"]), provenance["num_classes"])
    assert model.output_shape == (None, 10)
    dnn = build_model(TrainConfig(model="dnn_bn", depth=2))
    assert len([layer for layer in dnn.layers if isinstance(layer, keras.layers.Dense)]) == 3


def test_config_validation():
    with pytest.raises(ValueError, match="unknown optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="unknown augment"):
        TrainConfig(augment="heavy")
    assert TrainConfig(augment="none").test_augment == "article"
    assert TrainConfig(optimizer="adamw").weight_decay == 0.01
    config = TrainConfig(augment_options={"zoom_out": (2.0, 2.5)})
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_mlflow_logging(mnist_sample_dir, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store: ./mlruns
    result = train(tiny_config(mnist_sample_dir, tmp_path / "run", mlflow=True), verbose=0)
    uri = "sqlite:///" + str(tmp_path / "mlruns" / "mlflow.db")
    run_id = (tmp_path / "run" / "mlflow_run_id").read_text().strip()
    client = mlflow.tracking.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.data.params["config.dataset"] == "mnist"
    assert run.data.metrics["test_accuracy"] == pytest.approx(result["final"]["test_accuracy"])
    assert run.data.tags["keras_vitbn.status"] == "completed"
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "model")
    }
    assert "curves.png" in artifacts and "model/model_best.keras" in artifacts
