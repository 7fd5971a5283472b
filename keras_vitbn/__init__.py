"""keras_vitbn: what does BatchNorm do inside a Vision Transformer? (Keras 3, any backend)."""

import keras

from keras_vitbn.allocator import tune_malloc

if keras.backend.backend() == "jax":
    tune_malloc()  # before JAX starts its threads (on first use); see keras_vitbn/allocator.py

from keras_vitbn import layers, models  # noqa: E402
from keras_vitbn.models import create_model, list_models  # noqa: E402

__version__ = "0.1.0"

__all__ = ["create_model", "layers", "list_models", "models", "__version__"]
