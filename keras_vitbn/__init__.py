"""keras_vitbn: what does BatchNorm do inside a Vision Transformer? (Keras 3, any backend)."""

from keras_vitbn import layers, models
from keras_vitbn.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["create_model", "layers", "list_models", "models", "__version__"]
