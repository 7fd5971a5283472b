"""Where the real data folder is: `KERAS_VITBN_DATA`, else `../shared/data` beside a checkout.

The folder holds `mnist-test/` (the 10,000-image MNIST test split as IDX),
`fashion-mnist/` (all four IDX files) and `reference-checkpoints/`. It is not
part of the repository: a plain clone has none, and everything that needs it
asks `data_root()` and says what to do when it is missing.

This module imports nothing heavy (no TensorFlow), so the benchmark and the
experiment configs can use it on a machine without TensorFlow.

Example:

>>> from keras_vitbn.data.locations import data_path
>>> data_path("mnist-test")  # doctest: +SKIP
'/work/shared/data/mnist-test'
"""

import os

DATA_ENV = "KERAS_VITBN_DATA"
# Beside the checkout that holds this package: <checkout>/../shared/data.
CHECKOUT_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))


def data_root():
    """The data folder: `$KERAS_VITBN_DATA` if set, else the checkout's `../shared/data` if it exists, else None."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    return CHECKOUT_DATA if os.path.isdir(CHECKOUT_DATA) else None


def data_path(*parts):
    """`parts` joined under `data_root()`, or under the default location when there is none.

    Never raises: a config can name the path before anyone needs the files, and
    the loader that opens it then reports the full path it looked at.
    """
    return os.path.join(data_root() or CHECKOUT_DATA, *parts)


def require_data(*parts):
    """Like `data_path`, but raises FileNotFoundError with what to do when the path is absent."""
    path = data_path(*parts)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: set {DATA_ENV} to the folder that holds mnist-test/, fashion-mnist/ "
            "and reference-checkpoints/ (default: ../shared/data beside the checkout)"
        )
    return path
