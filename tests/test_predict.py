"""keras_vitbn.predict: images of any mode and size, JSON output, one-line errors for bad inputs."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vitbn
from keras_vitbn.predict import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    model = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16)
    path = str(out / "model_best.keras")
    model.save(path)
    (out / "config.json").write_text(json.dumps({"config": {"dataset": "fashion_mnist"}}))
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    grey = out / "grey.png"
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(grey)
    rgb = out / "photo.jpg"
    Image.fromarray((255 - rng.integers(0, 60, (90, 120, 3))).astype(np.uint8)).save(rgb)
    bad = out / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    return {"grey": str(grey), "rgb": str(rgb), "bad": str(bad)}


def test_text_output(model_path, images, capsys):
    assert main([model_path, images["grey"], images["rgb"], "--top", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(images["rgb"]) and "converted RGB to grey" in lines[1]
    assert "resized 120x90 to 28x28" in lines[1] and "inverted" in lines[1]
    assert any(name in lines[0] for name in ("T-shirt/top", "Trouser", "Bag", "Ankle boot", "Coat", "Dress"))


def test_json_output(model_path, images, capsys):
    assert main([model_path, images["grey"], "--json", "--top", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result[0]["image"] == images["grey"] and len(result[0]["top"]) == 3
    probabilities = [t["probability"] for t in result[0]["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6


def test_bad_inputs_one_line_each(model_path, images, tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    assert main([model_path, images["grey"], images["bad"], missing]) == 1
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and all(e.startswith("error: ") for e in errors)
    assert "cannot decode image" in errors[0] and "does not exist" in errors[1]
    assert captured.out.startswith(images["grey"])  # the good image is still classified

    not_model = tmp_path / "model.keras"
    not_model.write_bytes(b"not a zip")
    assert main([str(not_model), images["grey"]]) == 1
    assert "not a .keras file" in capsys.readouterr().err
    assert main([str(tmp_path / "nope.keras"), images["grey"]]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_subprocess(model_path, images):
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "PYTHONPATH": ROOT}
    ok = subprocess.run([sys.executable, "-m", "keras_vitbn.predict", model_path, images["rgb"], "--json"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)[0]["top"]
    bad = subprocess.run([sys.executable, "-m", "keras_vitbn.predict", images["bad"], images["grey"]],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    # (On the tensorflow backend, TensorFlow's own C++ start-up lines may precede it.)
    assert [line for line in bad.stderr.splitlines() if line.startswith("error:")] == [
        f"error: cannot load model {images['bad']}: not a .keras file (a .keras file is a zip archive)"
    ]
