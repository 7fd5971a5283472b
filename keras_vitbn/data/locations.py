"""Where the real data folder is: the environment variable `KERAS_VITBN_DATA`, or a command's flag.

The folder holds `mnist-test/` (the 10,000-image MNIST test split as IDX),
`fashion-mnist/` (all four IDX files) and `reference-checkpoints/`. It is not
part of the repository nor of the installed package, and the package never
guesses where it is: everything that needs it asks `data_root()` and says what
to do when it is missing (set KERAS_VITBN_DATA, or pass the command's
--data-dir). A checkout's own tools (Makefile, .ci/run, experiments/evidence.sh,
tests/conftest.py) set the variable to `../shared/data` beside the checkout
when it is unset.

This module imports nothing heavy (no TensorFlow), so the benchmark and the
experiment configs can use it on a machine without TensorFlow.

Example:

>>> from keras_vitbn.data.locations import data_path
>>> data_path("mnist-test")  # doctest: +SKIP
'/work/shared/data/mnist-test'
"""

import os

DATA_ENV = "KERAS_VITBN_DATA"
# Where data_path() points while the variable is unset: a path that names it, so the loader's
# "does not exist" says what to set.
UNSET_ROOT = f"${DATA_ENV}"


def data_root():
    """The data folder: `$KERAS_VITBN_DATA` (made absolute) if set, else None."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    return None


def data_path(*parts):
    """`parts` joined under `data_root()`, or under the literal `$KERAS_VITBN_DATA` when it is unset.

    Never raises: a config can name the path before anyone needs the files, and
    the loader that opens it then reports the path it looked at.
    """
    return os.path.join(data_root() or UNSET_ROOT, *parts)


def require_data(*parts):
    """Like `data_path`, but raises FileNotFoundError with what to do when the path is absent."""
    path = data_path(*parts)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: set {DATA_ENV} to the folder that holds mnist-test/, fashion-mnist/ "
            "and reference-checkpoints/"
        )
    return path
