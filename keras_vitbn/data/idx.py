"""Reading the IDX files that MNIST-style datasets ship as (gzip-compressed or raw).

The format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number whose third
byte names the element type and fourth the number of dimensions, then one
big-endian uint32 per dimension, then the data in C order.

A file is read as a stream: the header first, then its size is checked
against a limit and against what the file can hold, then exactly that many
bytes are read. A small gzip file that expands to gigabytes is refused
after the header and a few kilobytes, in bounded memory.
"""

import gzip
import os
import zlib

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

# Largest data one IDX file may hold (EMNIST ByClass, the largest MNIST-style
# set, is 0.55 GB); the environment variable raises it.
MAX_BYTES_ENV = "KERAS_VITBN_MAX_IDX_BYTES"
MAX_BYTES = 4 * 2**30
# Deflate cannot compress better than about 1032:1, so a gzip file can hold at
# most this many times its own size: a larger header is a lie, refused unread.
_GZIP_MAX_RATIO = 1100
_CHUNK = 16 * 2**20


def _max_bytes():
    value = os.environ.get(MAX_BYTES_ENV)
    if not value:
        return MAX_BYTES
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"${MAX_BYTES_ENV}={value!r} is not a number of bytes") from None


def _read_exactly(f, count):
    """Reads `count` bytes into a preallocated buffer, chunk by chunk (no second copy)."""
    buffer = np.empty(count, np.uint8)
    view = memoryview(buffer)
    done = 0
    while done < count:
        chunk = f.read(min(_CHUNK, count - done))
        if not chunk:
            break
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    return buffer, done


def read_idx(path, max_bytes=None):
    """Reads one IDX file (`.gz` or raw) into a numpy array.

    Args:
        path: str. The file.
        max_bytes: int or None. Refuse files whose header announces more data
            than this. Defaults to `$KERAS_VITBN_MAX_IDX_BYTES`, else 4 GiB.

    Returns:
        numpy array with the file's shape and element type (native byte order).

    Example:
    >>> images = read_idx("../shared/data/mnist-test/t10k-images-idx3-ubyte.gz")
    >>> images.shape
    (10000, 28, 28)
    """
    max_bytes = _max_bytes() if max_bytes is None else int(max_bytes)
    compressed = path.endswith(".gz")
    try:
        file_size = os.path.getsize(path)
        with (gzip.open if compressed else open)(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
                raise ValueError(f"{path} is not an IDX file (bad magic number {magic.hex() or 'empty'})")
            ndim = magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path} is truncated: its header announces {ndim} dimensions but ends early")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_DTYPES[magic[2]])
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if expected > max_bytes:
                raise ValueError(
                    f"{path}: header says shape {shape} ({expected:,} bytes), above the limit of {max_bytes:,} "
                    f"bytes; if the file is genuine, set ${MAX_BYTES_ENV} higher"
                )
            capacity = file_size * _GZIP_MAX_RATIO if compressed else file_size - 4 - 4 * ndim
            if expected > capacity:
                raise ValueError(
                    f"{path} is truncated or corrupt: header says shape {shape} ({expected:,} bytes), "
                    f"more than a {file_size:,}-byte file can hold"
                )
            buffer, got = _read_exactly(f, expected)
            extra = len(f.read(1)) if got == expected else 0  # one byte more: an oversized body, unread
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"cannot read IDX file {path}: {error}") from None
    if got != expected or extra:
        held = f"{got:,}" if got != expected else f"more than {expected:,}"
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected:,} bytes), file holds {held}"
        )
    array = buffer.view(dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


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


def check_labels(labels, num_classes, path, hint=""):
    """Raises ValueError naming the file, index and value of the first label outside [0, num_classes)."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        more = f" ({bad.size:,} labels in all are outside)" if bad.size > 1 else ""
        raise ValueError(
            f"{path}: label {labels[i]} at index {i} is outside the {num_classes} classes "
            f"(0 to {num_classes - 1}){more}{hint}"
        )


def load_idx_split(directory, split, num_classes=None, hint=""):
    """Loads one split of an IDX directory as (images NHWC uint8, labels int64).

    Args:
        directory: str. Folder holding the standard IDX files.
        split: str. "train" or "test".
        num_classes: int or None. When given, every label must be in
            [0, num_classes); the error names the file, index and value.
        hint: str. Appended to that error: what the user can do.

    Example:
    >>> x, y = load_idx_split("../shared/data/fashion-mnist", "test", num_classes=10)
    >>> x.shape, y.shape
    ((10000, 28, 28, 1), (10000,))
    """
    if not os.path.isdir(directory):
        raise ValueError(f"IDX data directory {directory} does not exist")
    paths = find_split_files(directory, split)
    if paths is None:
        names = " and ".join(f"{stem}[.gz]" for stem in SPLIT_FILES[split])
        raise ValueError(f"IDX data directory {directory} has no {split} split: it needs {names}")
    images_path, labels_path = paths
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8:
        # Casting would wrap or truncate pixel values without a word.
        raise ValueError(
            f"{images_path} holds {images.dtype} pixels; only unsigned bytes (IDX type 0x08) are supported"
        )
    if labels.dtype.kind == "f" and not (np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
        raise ValueError(f"{labels_path} holds non-integer labels ({labels.dtype}); labels must be class indices")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"IDX files in {directory} do not match: images {images.shape}, labels {labels.shape}")
    labels = labels.astype(np.int64)
    if num_classes is not None:
        check_labels(labels, num_classes, labels_path, hint)
    return images, labels
