"""Training: `TrainConfig`, the shared `train(config)` function, and the trainer command line.

`TrainConfig` needs no TensorFlow; the rest (the `tf.data` pipelines) loads on first use,
so the benchmark and `auto_distribute` can read a config where only JAX or PyTorch is installed.
"""

import importlib

from keras_vitbn.training.config import TrainConfig

_TRAIN_NAMES = ("build_model", "build_optimizer", "compile_model", "load_data", "train")


def __getattr__(name):
    if name in _TRAIN_NAMES:
        return getattr(importlib.import_module("keras_vitbn.training.train"), name)
    raise AttributeError(f"module 'keras_vitbn.training' has no attribute {name!r}")


__all__ = ["TrainConfig", "build_model", "build_optimizer", "compile_model", "load_data", "train"]
