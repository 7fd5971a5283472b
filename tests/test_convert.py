"""Import of the reference PyTorch checkpoints (reads ../shared/data; torch needed to convert)."""

import os

import keras
import numpy as np
import pytest

from keras_vitbn import create_model
from keras_vitbn.data.idx import load_idx_split
from keras_vitbn.tools import convert
from tests.testing import BACKENDS, run_in_backend

CHECKPOINTS = {
    # file: (variant, depth)
    "VITBNFFN_d5_15.pth": ("vit_bnffn", 5),
    "FinOptAug1_ViT_30.pth": ("vit", 6),
}


def checkpoint(shared_data, name):
    return os.path.join(shared_data, "reference-checkpoints", name)


@pytest.fixture(scope="module")
def mnist_test(shared_data):
    images, labels = load_idx_split(os.path.join(shared_data, "mnist-test"), "test")
    return images[:1000].astype("float32") / 255.0, labels[:1000]


def trainable_count(state):
    """Trainable parameters of a reference state dict: all but BatchNorm buffers."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(v.size for k, v in state.items() if not k.endswith(buffers))


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_trainable_parameter_counts_match_reference(shared_data, name):
    variant, depth = CHECKPOINTS[name]
    state = convert.load_state_dict(checkpoint(shared_data, name))
    model = create_model(variant, depth=depth)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == trainable_count(state)


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_infer_architecture(shared_data, name):
    variant, arguments = convert.infer_architecture(convert.load_state_dict(checkpoint(shared_data, name)))
    assert (variant, arguments["depth"]) == CHECKPOINTS[name]
    assert arguments == {
        "depth": CHECKPOINTS[name][1],
        "image_size": 28,
        "patch_size": 7,
        "channels": 1,
        "num_classes": 10,
        "dim": 64,
        "heads": 8,
        "dim_head": 64,
        "mlp_dim": 128,
    }


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_convert_end_to_end(shared_data, mnist_test, tmp_path, name, capsys):
    out = str(tmp_path / "model.keras")
    assert convert.main([checkpoint(shared_data, name), out]) == 0
    assert "wrote" in capsys.readouterr().out
    state = convert.load_state_dict(checkpoint(shared_data, name))

    model = keras.saving.load_model(out)
    assert model.name == CHECKPOINTS[name][0] and model.depth == CHECKPOINTS[name][1]
    # Every weight copied, BatchNorm running statistics included.
    by_path = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    for path, (key, transpose) in convert.weight_map(state, *CHECKPOINTS[name]).items():
        np.testing.assert_array_equal(by_path[path], state[key].T if transpose else state[key])
    assert any("moving_variance" in p for p in by_path) == (CHECKPOINTS[name][0] == "vit_bnffn")

    images, labels = mnist_test
    logits = keras.ops.convert_to_numpy(model.predict(images, batch_size=500, verbose=0))
    accuracy = float((logits.argmax(-1) == labels).mean())
    assert accuracy > 0.95, f"converted {name} reaches only {accuracy:.3f} on real MNIST test digits"


def test_converted_logits_agree_across_backends(shared_data, mnist_test, tmp_path):
    images = mnist_test[0][:200]
    np.save(tmp_path / "x.npy", images)
    for name in CHECKPOINTS:
        model = convert.convert_checkpoint(checkpoint(shared_data, name), str(tmp_path / f"{name}.keras"))
        np.save(tmp_path / f"{name}.npy", keras.ops.convert_to_numpy(model.predict(images, verbose=0)))
    code = f"""
import sys, numpy as np, keras, keras_vitbn
x = np.load({str(tmp_path / "x.npy")!r})
for name in {sorted(CHECKPOINTS)!r}:
    model = keras.saving.load_model({str(tmp_path)!r} + "/" + name + ".keras")
    reference = np.load({str(tmp_path)!r} + "/" + name + ".npy")
    print(name, np.abs(keras.ops.convert_to_numpy(model.predict(x, verbose=0)) - reference).max())
print("torch imported:", "torch" in sys.modules and keras.backend.backend() != "torch")
"""
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        lines = run_in_backend(backend, code).strip().splitlines()
        diffs = {line.split()[0]: float(line.split()[1]) for line in lines[:-1]}
        assert sorted(diffs) == sorted(CHECKPOINTS)
        assert max(diffs.values()) < 1e-4, f"{backend}: {diffs}"
        assert lines[-1] == "torch imported: False", "using a converted .keras file must not need torch"


def test_cli_errors_are_one_line(tmp_path, shared_data, capsys):
    cases = [
        ([str(tmp_path / "missing.pth"), str(tmp_path / "a.keras")], "does not exist"),
        ([checkpoint(shared_data, "VITBNFFN_d5_15.pth"), str(tmp_path / "a.h5")], "must end in .keras"),
        (
            [checkpoint(shared_data, "VITBNFFN_d5_15.pth"), str(tmp_path / "a.keras"), "--heads", "7"],
            "not divisible by heads=7",
        ),
    ]
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    cases.append(([str(junk), str(tmp_path / "b.keras")], "is not a readable PyTorch checkpoint"))
    existing = tmp_path / "exists.keras"
    existing.write_text("finished work")
    cases.append(([checkpoint(shared_data, "VITBNFFN_d5_15.pth"), str(existing)], "pass --force"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            convert.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert existing.read_text() == "finished work", "an existing file must not be overwritten"


def test_unknown_state_dict_layout():
    with pytest.raises(convert.CheckpointError, match="not a reference ViT checkpoint"):
        convert.infer_architecture({"weight": np.zeros(3)})
