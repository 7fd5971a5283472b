"""IDX reading: real shared files, written gz/raw files, corrupt ones, and decompression bombs."""

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_vitbn.data import load_idx_split, read_idx
from keras_vitbn.data.idx import find_split_files
from tests.testing import ROOT

IDX_PY = os.path.join(ROOT, "keras_vitbn", "data", "idx.py")
TYPE_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">f4"): 0x0D}


def idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)


def write_idx(path, array, compress, dtype=np.uint8):
    array = np.asarray(array).astype(np.dtype(dtype).newbyteorder(">") if np.dtype(dtype).itemsize > 1 else dtype)
    header = idx_header(array.shape, TYPE_CODES[array.dtype])
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def make_idx_dir(directory, n_train=60, n_test=20, compress=True, num_classes=10, seed=0, image_shape=(28, 28)):
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if compress else ""
    data = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
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


def test_out_of_range_label_names_file_index_and_value(tmp_path):
    make_idx_dir(str(tmp_path), n_train=30, n_test=10)
    labels = np.arange(30) % 10
    labels[7] = 10
    path = str(tmp_path / "train-labels-idx1-ubyte.gz")
    write_idx(path, labels, compress=True)
    _, y = load_idx_split(str(tmp_path), "train")  # no class count given: nothing to check against
    assert y[7] == 10
    with pytest.raises(
        ValueError, match=r"train-labels-idx1-ubyte.gz: label 10 at index 7 is outside the 10 classes \(0 to 9\); try"
    ):
        load_idx_split(str(tmp_path), "train", num_classes=10, hint="; try")
    write_idx(path, labels - 3, compress=True, dtype=np.int8)  # signed labels: negatives are refused too
    with pytest.raises(ValueError, match=r"label -3 at index 0 .* \(9 labels in all are outside\)"):
        load_idx_split(str(tmp_path), "train", num_classes=10)


@pytest.mark.parametrize("dtype,message", [(">i2", "holds int16 pixels"), (">f4", "holds float32 pixels")])
def test_images_that_are_not_bytes_are_refused(tmp_path, dtype, message):
    # A cast to uint8 would wrap 300 to 44 without a word.
    make_idx_dir(str(tmp_path), n_train=4, n_test=4)
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), np.full((4, 28, 28), 300), compress=True, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        load_idx_split(str(tmp_path), "train")


def test_fractional_labels_are_refused(tmp_path):
    make_idx_dir(str(tmp_path), n_train=4, n_test=4)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), [0.0, 1.5, 2.0, 3.0], compress=True, dtype=">f4")
    with pytest.raises(ValueError, match="non-integer labels"):
        load_idx_split(str(tmp_path), "train")


def test_header_sizes_checked_before_reading(tmp_path, monkeypatch):
    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(idx_header((10**6, 10**4, 10**4)) + bytes(100))
    with pytest.raises(ValueError, match=r"\(100,000,000,000,000 bytes\), above the limit .*KERAS_VITBN_MAX_IDX_BYTES"):
        read_idx(str(huge))
    claims = tmp_path / "claims-idx3-ubyte.gz"  # 1 GB announced, a few bytes held: more than gzip can expand to
    claims.write_bytes(gzip.compress(idx_header((1000, 1000, 1000)) + bytes(10)))
    with pytest.raises(ValueError, match="more than a .*-byte file can hold"):
        read_idx(str(claims))
    small = tmp_path / "small-idx3-ubyte.gz"
    write_idx(str(small), np.zeros((10, 28, 28)), compress=True)
    assert read_idx(str(small)).shape == (10, 28, 28)
    with pytest.raises(ValueError, match="above the limit of 1,000 bytes"):
        read_idx(str(small), max_bytes=1000)
    monkeypatch.setenv("KERAS_VITBN_MAX_IDX_BYTES", "1000")
    with pytest.raises(ValueError, match="above the limit of 1,000 bytes"):
        read_idx(str(small))


def test_gzip_bomb_fails_fast_in_bounded_memory(tmp_path):
    """A 1 MB gzip file whose header announces 3 images but whose body expands to 1 GB."""
    path = str(tmp_path / "bomb-idx3-ubyte.gz")
    zeros = gzip.compress(bytes(16 * 2**20), compresslevel=9)
    with open(path, "wb") as f:
        f.write(gzip.compress(idx_header((3, 28, 28)) + bytes(3 * 784)))
        f.writelines([zeros] * 64)  # gzip members concatenate: 64 x 16 MiB of zeros
    assert os.path.getsize(path) < 1_200_000
    # A fresh interpreter loading only idx.py: its peak memory is this read's, not the test session's.
    code = f"""
import importlib.util, resource, time
spec = importlib.util.spec_from_file_location("idx", {IDX_PY!r})
idx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(idx)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    idx.read_idx({path!r})
    print("READ")
except ValueError as error:
    print(error)
print(time.perf_counter() - start, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    message, numbers = out.strip().splitlines()
    seconds, extra_mb = map(float, numbers.split())
    assert "truncated or corrupt" in message and "file holds more than 2,352" in message
    assert seconds < 2.0 and extra_mb < 50, (seconds, extra_mb)
