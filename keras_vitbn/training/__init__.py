"""Training: `TrainConfig`, the shared `train(config)` function, and the trainer command line."""

from keras_vitbn.training.config import TrainConfig
from keras_vitbn.training.train import build_model, build_optimizer, compile_model, load_data, train

__all__ = ["TrainConfig", "build_model", "build_optimizer", "compile_model", "load_data", "train"]
