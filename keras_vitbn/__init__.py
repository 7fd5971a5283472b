"""keras_vitbn: what does BatchNorm do inside a Vision Transformer? (Keras 3, any backend)."""

from keras_vitbn.allocator import tune_at_import

tune_at_import()  # on JAX, before `import keras` starts threads; see keras_vitbn/allocator.py

from keras_vitbn import layers, models  # noqa: E402
from keras_vitbn.models import create_model, list_models  # noqa: E402

__version__ = "0.1.0"

__all__ = ["create_model", "layers", "list_models", "models", "__version__"]
