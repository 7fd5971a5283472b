"""The image-folder source (Imagenette's layout) and the Imagenette trainer, on generated JPEGs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_vitbn.data import image_folder
from keras_vitbn.training.config import TrainConfig
from keras_vitbn.training.train import load_data, run_splits
from tests.testing import ROOT

CLASSES = ("n01440764", "n02102040", "n02979186")  # Imagenette's first three folder names
COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))


def make_folder(root, per_class=(4, 2), size=(40, 60)):
    """train/ and val/ of JPEGs: a wide image of each class' colour, with a white band left and
    right that a central square crop cuts away; one greyscale image among them."""
    for split, count in zip(("train", "val"), per_class):
        for label, (name, colour) in enumerate(zip(CLASSES, COLOURS)):
            os.makedirs(root / split / name)
            for i in range(count):
                height, width = size
                pixels = np.full((height, width, 3), 255, np.uint8)
                pixels[:, (width - height) // 2 : (width + height) // 2] = colour
                image = Image.fromarray(pixels)
                if split == "train" and label == 0 and i == 0:
                    image = image.convert("L")
                image.save(root / split / name / f"{name}_{i}.JPEG", quality=95)
    return root


def test_folder_splits_resize_crop_and_label(tmp_path):
    root = make_folder(tmp_path / "imagenette")
    train, test, provenance = image_folder.load_splits("imagenette", "folder", str(root), image_size=16)
    assert (train.size, test.size, train.num_classes) == (12, 6, 3)
    assert provenance["image_shape"] == [16, 16, 3] and provenance["source"] == "folder"
    assert CLASSES[0] in provenance["split"]
    images, labels = zip(*((x.numpy(), y.numpy()) for x, y in train.ds))
    images, labels = np.stack(images), np.array(labels)
    assert images.dtype == np.uint8 and images.shape == (12, 16, 16, 3)
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    for image, label in zip(images[1:], labels[1:]):  # the first is the greyscale one
        # The white bands are cropped away: only the class colour is left (JPEG is lossy, hence the margin).
        expected = np.array(COLOURS[label])
        assert np.abs(image.reshape(-1, 3).mean(axis=0) - expected).max() < 12, (label, image.mean(axis=(0, 1)))
    grey = images[0]
    assert np.allclose(grey[..., 0], grey[..., 1], atol=2)  # decoded as RGB from one channel


def test_auto_source_and_trainer_config_pick_the_folder(tmp_path):
    root = make_folder(tmp_path / "imagenette")
    assert image_folder.selected("imagenette", "auto", str(root))
    assert not image_folder.selected("mnist", "auto", None) and not image_folder.selected("x", "auto", str(tmp_path))
    config = TrainConfig(
        dataset="imagenette",
        model="resnet18",
        depth=None,
        data_dir=str(root),
        augment="imagenette",
        model_overrides={"image_size": 32},
        batch_size=5,
    )
    train, val, test, provenance = run_splits(config)
    assert provenance["source"] == "folder" and train.image_shape == (32, 32, 3)
    train_ds, _, test_ds, test_aug_ds, provenance = load_data(config)
    x, y = next(iter(train_ds))
    assert x.shape == (5, 32, 32, 3) and float(x.numpy().max()) <= 1.0
    assert provenance["train_augment"] == {"policy": "imagenette", "flip": True, "crop": 0.125}


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda root: None, "no image folder"),
        (lambda root: os.makedirs(root / "train" / "a"), "no val/"),
    ],
)
def test_folder_errors_say_what_to_do(tmp_path, setup, message):
    root = tmp_path / "data"
    os.makedirs(root)
    setup(root)
    with pytest.raises(ValueError, match=message):
        image_folder.load_splits("imagenette", "folder", str(root))


def _run_trainer(tmp_path, *model_args):
    import keras

    root = make_folder(tmp_path / "imagenette", size=(36, 48))
    out = tmp_path / "run"
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": ROOT}
    args = [
        "--data-dir",
        str(root),
        *model_args,
        "--set",
        "norm=layernorm",
        "--set",
        "width=0.125",
        "--set",
        "image_size=32",
        "--batch-size",
        "6",
        "--epochs",
        "1",
        "--output-dir",
        str(out),
        "--verbose",
        "2",
    ]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "trainers", "imagenette.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and summary["epochs_completed"] == 1
    return out, json.loads((out / "config.json").read_text())


@pytest.mark.large
def test_imagenette_trainer_swaps_resnet34_norm(tmp_path):
    out, saved = _run_trainer(tmp_path, "--model", "resnet34")
    assert saved["config"]["model"] == "resnet34" and saved["config"]["model_overrides"]["norm"] == "layernorm"


@pytest.mark.one_backend("torch")
def test_imagenette_trainer_swaps_resnet_norm(tmp_path):
    import keras

    out, saved = _run_trainer(tmp_path, "--model", "resnet", "--depth", "18")
    config = saved["config"]
    assert (config["model"], config["depth"]) == ("resnet", 18) and config["model_overrides"]["norm"] == "layernorm"
    assert (config["optimizer"], config["learning_rate"], config["weight_decay"]) == ("adamw", 1e-4, 1e-2)
    assert config["augment"] == "imagenette" and saved["data"]["train_images"] == 12
    model = keras.saving.load_model(out / "model_last.keras")
    assert model.get_config()["norm"] == "layernorm" and model.get_config()["depth"] == 18
    assert model.input_shape == (None, 32, 32, 3)


def test_imagenette_preset_is_the_walk_through():
    from keras_vitbn.training.presets import PRESETS

    preset = PRESETS["imagenette"]
    assert (preset["optimizer"], preset["learning_rate"], preset["weight_decay"]) == ("adamw", 1e-4, 1e-2)
    assert (preset["batch_size"], preset["epochs"], preset["augment"]) == (256, 200, "imagenette")
