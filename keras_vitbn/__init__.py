"""keras_vitbn: what does BatchNorm do inside a Vision Transformer? (Keras 3, any backend)."""

import os as _os
import sys as _sys


def _entry_point():
    """Whether this import starts one of the project's commands (see keras_vitbn/utils/cli_errors.py)."""
    if _sys.argv[:1] == ["-m"]:  # runpy is locating a -m module: is it one of ours?
        argv = getattr(_sys, "orig_argv", [])
        return any(a == "-m" and b.startswith("keras_vitbn") for a, b in zip(argv, argv[1:]))
    if _sys.argv and _os.path.basename(_sys.argv[0]).startswith("keras-vitbn"):  # console scripts
        return True
    return bool(getattr(_sys.modules.get("__main__"), "KERAS_VITBN_ENTRY_POINT", False))  # trainers/*.py


if _entry_point():  # before Keras loads TensorFlow: a command's stderr is for its own messages
    from keras_vitbn.utils.cli_errors import quiet_startup

    quiet_startup()
    del quiet_startup

from keras_vitbn import layers, models
from keras_vitbn.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["create_model", "layers", "list_models", "models", "__version__"]
