"""Shared pytest setup: seeds, readable tracebacks, the `large` and `one_backend` markers, and the real data.

The suite runs once per backend: `KERAS_BACKEND=jax|tensorflow|torch pytest`.

Real data: tests that need only some real digits use `mnist_sample` (600 MNIST test
digits in tests/fixtures, part of the repository). Tests that need the full MNIST test
split, Fashion-MNIST or the reference checkpoints take the `shared_data` fixture: the
folder `$KERAS_VITBN_DATA`; unset, this file sets it to ../shared/data beside the checkout
(the package never guesses a data folder), as `make test` and .ci/run do. Where it is
absent they skip with one line of reason, and the summary counts them;
KERAS_VITBN_REQUIRE_DATA=1 (CI) makes them fail instead.
"""

import gzip
import os

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_vitbn  # noqa: F401 (registers the serializable layers; changes nothing process-wide)
from keras_vitbn.data.locations import DATA_ENV, data_root

# `pytest` run by hand finds the checkout's data like `make test`; subprocesses inherit it.
CHECKOUT_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
if not os.environ.get(DATA_ENV):
    os.environ[DATA_ENV] = CHECKOUT_DATA


def pytest_addoption(parser):
    parser.addoption("--run-large", action="store_true", default=False, help="also run tests marked large (slow)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-large")
    backend = keras.backend.backend()
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)
        # Slow tests of machinery around training (resuming, process control) run on one pass
        # of the default suite, and on every pass with --run-large.
        one = item.get_closest_marker("one_backend")
        if one is not None and one.args[0] != backend:
            item.add_marker(pytest.mark.skip(reason=f"slow, tested on the {one.args[0]} pass (all with --run-large)"))


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _seed_and_tracebacks():
    keras.config.disable_traceback_filtering()
    keras.utils.set_random_seed(1337)
    yield


DATA_SKIP = "shared data not found"
REQUIRE_DATA_ENV = "KERAS_VITBN_REQUIRE_DATA"
SAMPLE = os.path.join(os.path.dirname(__file__), "fixtures", "mnist_sample.npz")


def _shared_data_path():
    return data_root() or CHECKOUT_DATA


@pytest.fixture(scope="session")
def shared_data():
    """The real data folder (full MNIST test split, Fashion-MNIST, reference checkpoints), or a skip."""
    path = _shared_data_path()
    if not os.path.isdir(path):
        message = f"{DATA_SKIP} at {path} (set KERAS_VITBN_DATA)"
        if os.environ.get(REQUIRE_DATA_ENV) == "1":
            pytest.fail(f"{message}; {REQUIRE_DATA_ENV}=1 forbids skipping")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def mnist_sample():
    """(images uint8 (600, 28, 28), labels (600,)): real MNIST test digits kept in the repository."""
    with np.load(SAMPLE) as data:
        return data["x"], data["y"].astype(np.int64)


def _write_idx(path, array):
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture(scope="session")
def mnist_sample_dir(mnist_sample, tmp_path_factory):
    """An IDX folder of the sample: 500 training and 100 test digits (both balanced), like an MNIST download."""
    x, y = mnist_sample
    folder = tmp_path_factory.mktemp("mnist-sample")
    for prefix, part in (("train", slice(0, 500)), ("t10k", slice(500, 600))):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x[part])
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y[part])
    return str(folder)


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if DATA_SKIP in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} tests skipped: {DATA_SKIP} at {_shared_data_path()} (set KERAS_VITBN_DATA)", yellow=True
        )
