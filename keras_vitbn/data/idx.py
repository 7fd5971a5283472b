"""Reading the IDX files that MNIST-style datasets ship as (gzip-compressed or raw).

The format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number whose third
byte names the element type and fourth the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order.
"""

import gzip
import os

import numpy as np

# Element type codes of the IDX format.
_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# The standard file names, without the optional ".gz".
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path):
    """Reads one IDX file (`.gz` or raw) into a numpy array.

    Args:
        path: str. The file.

    Returns:
        numpy array with the file's shape and element type (native byte order).

    Example:
    >>> images = read_idx("../shared/data/mnist-test/t10k-images-idx3-ubyte.gz")
    >>> images.shape
    (10000, 28, 28)
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} "
            f"({expected} bytes), file holds {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def find_split_files(directory, split):
    """Paths of a split's (images, labels) IDX files in `directory`, or None.

    Accepts the standard names with or without `.gz`.
    """
    paths = []
    for stem in SPLIT_FILES[split]:
        for name in (stem + ".gz", stem):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                paths.append(path)
                break
        else:
            return None
    return tuple(paths)


def load_idx_split(directory, split):
    """Loads one split of an IDX directory as (images NHWC uint8, labels int64).

    Args:
        directory: str. Folder holding the standard IDX files.
        split: str. "train" or "test".

    Example:
    >>> x, y = load_idx_split("../shared/data/fashion-mnist", "test")
    >>> x.shape, y.shape
    ((10000, 28, 28, 1), (10000,))
    """
    if not os.path.isdir(directory):
        raise ValueError(f"IDX data directory {directory} does not exist")
    paths = find_split_files(directory, split)
    if paths is None:
        names = " and ".join(f"{stem}[.gz]" for stem in SPLIT_FILES[split])
        raise ValueError(f"IDX data directory {directory} has no {split} split: it needs {names}")
    images, labels = (read_idx(path) for path in paths)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"IDX files in {directory} do not match: images {images.shape}, labels {labels.shape}"
        )
    return images.astype(np.uint8), labels.astype(np.int64)
