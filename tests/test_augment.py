"""The article's augmentation: shape, range, black fill, zoom-out rate and shrinking, tf.data on every backend."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vitbn.data import RandomZoomOut, augmentation
from keras_vitbn.data.augment import POLICIES


def square_images(n=64, size=28):
    x = np.zeros((n, size, size, 1), "float32")
    x[:, 8:20, 8:20, :] = 1.0
    return x


def run_in_tf_data(layer, x, batch=32):
    ds = tf.data.Dataset.from_tensor_slices(x).batch(batch).map(lambda a: layer(a, training=True))
    return np.concatenate([b.numpy() for b in ds])


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_policies_in_tf_data_keep_shape_and_range(policy):
    size, channels = (32, 3) if policy == "cifar" else (28, 1)
    x = np.random.default_rng(0).random((40, size, size, channels)).astype("float32")
    y = run_in_tf_data(augmentation(policy, seed=0), x, batch=8)
    assert y.shape == x.shape
    assert y.min() >= -1e-5 and y.max() <= 1.0 + 1e-5
    assert np.abs(y - x).max() > 0.1


def test_none_is_none():
    assert augmentation("none") is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        augmentation("bogus")


def test_article_fill_is_black():
    x = np.ones((64, 28, 28, 1), "float32")
    y = run_in_tf_data(augmentation("article", seed=3), x)
    # Rotation/translation/zoom-out bring in black corners, never reflected content.
    assert (y.reshape(64, -1).min(axis=1) < 0.01).mean() > 0.9


def test_zoom_out_rate_and_shrink():
    x = square_images(2000)
    y = run_in_tf_data(RandomZoomOut((2.0, 3.0), rate=0.2, seed=0), x, batch=250)
    changed = np.abs(y - x).reshape(len(x), -1).max(axis=1) > 1e-4
    assert 0.16 < changed.mean() < 0.24  # about the requested rate
    mass_ratio = y[changed].sum(axis=(1, 2, 3)) / x[changed].sum(axis=(1, 2, 3))
    # Content shrinks by a factor r in (2, 3) per side: its mass by r^2 in (4, 9).
    assert np.all(mass_ratio > 1 / 9.5) and np.all(mass_ratio < 1 / 3.8)
    bbox = (y[changed, :, :, 0] > 0.05).any(axis=1).sum(axis=1)
    assert np.all(bbox <= 12 / 2 + 3)  # a 12-pixel square becomes at most ~6 pixels (+ blur)


def test_zoom_out_eager_on_backend_and_serializes():
    layer = RandomZoomOut((2.0, 3.0), rate=1.0, seed=0)
    y = keras.ops.convert_to_numpy(layer(square_images(8)))
    assert y.shape == (8, 28, 28, 1)
    assert y.sum() < square_images(8).sum() / 3.8
    single = keras.ops.convert_to_numpy(layer(square_images(1)[0]))
    assert single.shape == (28, 28, 1)
    clone = RandomZoomOut.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    y_eval = keras.ops.convert_to_numpy(layer(square_images(8), training=False))
    np.testing.assert_array_equal(y_eval, square_images(8))


def test_zoom_out_resamples_only_the_chosen_images():
    # Only the chosen images are filtered and resampled (a gather and a scatter): each
    # must come out as when every image is zoomed with the same draws, the rest untouched.
    x = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)  # all different
    half = keras.ops.convert_to_numpy(RandomZoomOut((2.0, 3.0), rate=0.5, seed=5)(x))
    every = keras.ops.convert_to_numpy(RandomZoomOut((2.0, 3.0), rate=1.0, seed=5)(x))
    chosen = np.abs(half - x).reshape(len(x), -1).max(axis=1) > 0
    assert 0 < chosen.sum() < len(x)
    np.testing.assert_allclose(half[chosen], every[chosen], atol=1e-6)
    np.testing.assert_array_equal(half[~chosen], x[~chosen])
    none_chosen = RandomZoomOut((2.0, 3.0), rate=1e-9, seed=5)(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(none_chosen), x)


def test_same_seed_same_images():
    x = square_images(64)
    a = run_in_tf_data(augmentation("article", seed=7), x)
    b = run_in_tf_data(augmentation("article", seed=7), x)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs", [{"factor": (0.5, 2.0)}, {"factor": (3.0, 2.0)}, {"rate": 1.5}, {"interpolation": "cubic"}]
)
def test_zoom_out_validation(kwargs):
    with pytest.raises(ValueError):
        RandomZoomOut(**kwargs)
