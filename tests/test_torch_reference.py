"""The plain-PyTorch reference model against the published checkpoints and the Keras converter.

The strongest check that the Keras architecture is exact: the reference `.pth`,
loaded into `keras_vitbn.tools.reference.torch_vit` with strict=True and converted into
Keras with `keras_vitbn.tools.convert`, gives the same logits on real MNIST digits, in
inference and in training mode (BatchNorm with batch statistics), on every backend.
"""

import os

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from keras_vitbn.data.idx import read_idx  # noqa: E402
from keras_vitbn.tools.convert import convert_checkpoint  # noqa: E402
from keras_vitbn.tools.reference.torch_vit import ReferenceViT, architecture_of, load_reference  # noqa: E402

CHECKPOINTS = ("VITBNFFN_d5_15.pth", "FinOptAug1_ViT_30.pth")


@pytest.fixture(scope="module")
def mnist_images(shared_data):
    images = read_idx(os.path.join(shared_data, "mnist-test", "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(shared_data, "mnist-test", "t10k-labels-idx1-ubyte.gz"))
    return (images[:64, :, :, None].astype("float32") / 255.0), labels[:64].astype("int64")


def _checkpoint(shared_data, name):
    return os.path.join(shared_data, "reference-checkpoints", name)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_reference_loads_published_checkpoint_strictly(shared_data, name):
    path = _checkpoint(shared_data, name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = load_reference(path)
    assert set(model.state_dict()) == set(state)  # strict: every key, no more
    variant, arguments = architecture_of(state)
    assert variant == ("vit_bnffn" if "BNFFN" in name else "vit")
    assert arguments["depth"] == (5 if "d5" in name else 6)


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_reference_checkpoint_classifies_mnist(shared_data, mnist_images, name):
    images, labels = mnist_images
    model = load_reference(_checkpoint(shared_data, name))
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert (logits.argmax(-1).numpy() == labels).mean() > 0.9


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_converted_keras_model_matches_torch_reference(shared_data, mnist_images, name, tmp_path):
    images, _ = mnist_images
    path = _checkpoint(shared_data, name)
    keras_model = convert_checkpoint(path, str(tmp_path / "converted.keras"))
    reference = load_reference(path)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        expected = reference(nchw).numpy()
    got = keras.ops.convert_to_numpy(keras_model(images, training=False))
    assert np.max(np.abs(got - expected)) < 1e-4
    # Training mode: BatchNorm uses the batch statistics (over batch and tokens).
    reference.train()
    with torch.no_grad():
        expected_train = reference(nchw).numpy()
    got_train = keras.ops.convert_to_numpy(keras_model(images, training=True))
    assert np.max(np.abs(got_train - expected_train)) < 1e-4
    # The saved .keras file gives the same logits.
    reloaded = keras.saving.load_model(str(tmp_path / "converted.keras"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(images, training=False)), expected, atol=1e-4)


@pytest.mark.parametrize("options", [{"attention": "sdpa"}, {"bn_transpose": False}])
def test_tuned_reference_options_keep_numerics(options):
    torch.manual_seed(0)
    base = ReferenceViT("vit_bnffn", depth=2).train()
    tuned = ReferenceViT("vit_bnffn", depth=2, **options).train()
    tuned.load_state_dict(base.state_dict())
    x = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(tuned(x), base(x), atol=1e-5, rtol=1e-5)


def test_reference_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown reference variant"):
        ReferenceViT("vit_bn", depth=2)
    with pytest.raises(ValueError, match="not divisible"):
        ReferenceViT("vit", depth=2, image_size=30)
