"""Shared pytest setup: seeds, readable tracebacks, and the `large` marker.

The suite runs once per backend: `KERAS_BACKEND=jax|tensorflow|torch pytest`.
"""

import os

import keras_vitbn  # noqa: F401 (first: on JAX it tunes malloc before Keras starts threads)

import keras  # noqa: E402
import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--run-large", action="store_true", default=False, help="also run tests marked large (slow)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-large"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-large")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _seed_and_tracebacks():
    keras.config.disable_traceback_filtering()
    keras.utils.set_random_seed(1337)
    yield


SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data (real MNIST test split, Fashion-MNIST, reference checkpoints)."""
    if not os.path.isdir(SHARED_DATA):
        pytest.fail(f"{SHARED_DATA} is missing: clone the project next to its shared/ folder")
    return SHARED_DATA
