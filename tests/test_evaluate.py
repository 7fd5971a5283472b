"""keras_vitbn.tools.evaluate: clean and augmented accuracy and loss, confusion matrix, PNG, errors."""

import json
import os

import numpy as np
import pytest

import keras_vitbn
from keras_vitbn.tools.evaluate import main


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16)
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model.save(path)
    return path


def test_evaluate_idx_test_dir(model_path, mnist_sample_dir, tmp_path, capsys):
    plot = str(tmp_path / "confusion.png")
    code = main([model_path, "--data-dir", mnist_sample_dir, "--test-subset", "100", "--plot", plot])
    assert code == 0
    out = capsys.readouterr().out
    assert "clean: accuracy" in out and "augmented: accuracy" in out and "confusion matrix, clean" in out
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_json(model_path, shared_data, capsys):
    code = main(
        [
            model_path,
            "--dataset",
            "fashion_mnist",
            "--source",
            "idx",
            "--data-dir",
            os.path.join(shared_data, "fashion-mnist"),
            "--test-subset",
            "200",
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    for protocol in ("clean", "augmented"):
        result = report["results"][protocol]
        matrix = np.asarray(result["confusion_matrix"])
        assert matrix.shape == (10, 10) and matrix.sum() == 200 == result["images"]
        assert result["accuracy"] == pytest.approx(np.trace(matrix) / 200)
        assert np.isfinite(result["loss"])
    assert report["results"]["augmented"]["protocol"]["seed"] == 1234


def test_evaluate_errors(model_path, mnist_sample_dir, tmp_path, capsys):
    assert main([str(tmp_path / "missing.keras"), "--data-dir", mnist_sample_dir]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main([model_path, "--data-dir", str(tmp_path)]) == 1
    assert "has no test split" in capsys.readouterr().err
    assert main([model_path, "--dataset", "no_such_dataset"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown dataset" in err[0]
    with pytest.raises(SystemExit):
        main([model_path])  # neither --dataset nor --data-dir
