"""IDX reading: real shared files, written gz/raw files, and corrupt ones."""

import gzip
import os

import numpy as np
import pytest

from keras_vitbn.data import load_idx_split, read_idx
from keras_vitbn.data.idx import find_split_files


def write_idx(path, array, compress):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def make_idx_dir(directory, n_train=60, n_test=20, compress=True, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if compress else ""
    data = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % num_classes
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images, compress)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, compress)
        data[split] = (images, labels)
    return data


def test_read_real_mnist_test(shared_data):
    images = read_idx(os.path.join(shared_data, "mnist-test", "t10k-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(shared_data, "mnist-test", "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first MNIST test labels


def test_load_real_fashion_mnist(shared_data):
    x, y = load_idx_split(os.path.join(shared_data, "fashion-mnist"), "test")
    assert x.shape == (10000, 28, 28, 1) and y.shape == (10000,)
    assert np.bincount(y).tolist() == [1000] * 10


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_gz_and_raw(tmp_path, compress):
    data = make_idx_dir(str(tmp_path), compress=compress)
    x, y = load_idx_split(str(tmp_path), "train")
    np.testing.assert_array_equal(x[..., 0], data["train"][0])
    np.testing.assert_array_equal(y, data["train"][1])
    assert find_split_files(str(tmp_path), "test") is not None


def test_truncated_file(tmp_path):
    path = str(tmp_path / "bad-idx3-ubyte")
    write_idx(path, np.zeros((4, 28, 28)), compress=False)
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)


def test_not_idx(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(b"hello")
    with pytest.raises(ValueError, match="cannot read IDX file|not an IDX file"):
        read_idx(str(path))


def test_missing_split(tmp_path, shared_data):
    with pytest.raises(ValueError, match="has no train split"):
        load_idx_split(os.path.join(shared_data, "mnist-test"), "train")
    with pytest.raises(ValueError, match="does not exist"):
        load_idx_split(str(tmp_path / "nope"), "train")
