"""`keras_vitbn.runtime.auto_distribute`: data parallel by default for ViTs on JAX on a CPU-only host.

The in-process parts here; the trainer end to end (two XLA CPU devices, the
same losses as one) in tests/test_trainers_distribute.py.
"""

import os

import keras
import pytest

from keras_vitbn.runtime import auto_distribute
from keras_vitbn.training import TrainConfig

FLAG = auto_distribute.DEVICE_COUNT_FLAG
MANY_CORES = len(os.sched_getaffinity(0)) >= 2


@pytest.mark.parametrize(
    "model, depth, expected",
    [
        ("vit", 6, True),
        ("vit_bnffn", 3, True),
        ("vit_bn", 8, True),
        ("vit", 2, False),
        ("vit_bnffn", 1, False),
        ("dnn", 3, False),
        ("dnn_bn", 6, False),
        ("vit", None, False),
        ("resnet", 6, False),
    ],
)
def test_worth_it_follows_the_measurements(model, depth, expected):
    assert auto_distribute.worth_it(model, depth) is expected


def test_request_cpu_devices_puts_the_flag_first_and_keeps_the_users():
    env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}
    assert auto_distribute.request_cpu_devices("vit", 6, environ=env, backend="jax") is MANY_CORES
    if MANY_CORES:  # first: XLA drops every flag after one it cannot parse
        assert env["XLA_FLAGS"] == f"{FLAG}=2 --xla_cpu_multi_thread_eigen=true"
    else:
        assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"
    empty = {}
    assert auto_distribute.request_cpu_devices("vit_bnffn", 3, environ=empty, backend="jax") is MANY_CORES
    assert empty.get("XLA_FLAGS", f"{FLAG}=2") == f"{FLAG}=2"


@pytest.mark.parametrize(
    "model, depth, backend, flags",
    [
        ("vit", 6, "jax", f"{FLAG}=4"),
        ("dnn", 3, "jax", ""),
        ("vit", 1, "jax", ""),
        ("vit", 6, "tensorflow", ""),
        ("vit", 6, "torch", ""),
    ],
)
def test_request_cpu_devices_leaves_other_cases_alone(model, depth, backend, flags):
    env = {"XLA_FLAGS": flags}
    assert auto_distribute.request_cpu_devices(model, depth, environ=env, backend=backend) is False
    assert env == {"XLA_FLAGS": flags}


def test_choose_on_this_process():
    """This process' JAX has one device unless XLA_FLAGS says otherwise; the other backends never choose it."""
    explicit = TrainConfig(model="vit", depth=6, distribute="none")
    assert auto_distribute.choose(explicit, 1000, [100]) == (None, "--distribute none given")
    mode, why = auto_distribute.choose(TrainConfig(model="dnn", depth=3), 1000, [100])
    assert mode is None
    mode, why = auto_distribute.choose(TrainConfig(model="vit", depth=6), 1000, [100])
    if keras.backend.backend() != "jax":
        assert (mode, why) == (None, "not JAX")
        return
    import jax

    if jax.local_device_count() == 1:
        assert mode is None and "one CPU device" in why
    else:
        assert mode == "data_parallel" and why.startswith("automatic")
        uneven = auto_distribute.choose(TrainConfig(model="vit", depth=6), 1050, [100])
        assert uneven[0] is None and "split evenly" in uneven[1]


def test_none_and_the_default_are_the_same_run():
    """`--distribute none` gives the default's results, so it shares the default's run directory."""
    assert TrainConfig(distribute="none").fingerprint() == TrainConfig().fingerprint()
    assert TrainConfig(distribute="data_parallel").fingerprint() != TrainConfig().fingerprint()


def test_request_cpu_devices_after_jax_started_leaves_this_process_alone(monkeypatch):
    """Once JAX has made its devices the flag changes nothing here; set, it would leak into every subprocess."""
    import jax

    jax.numpy.zeros(1).block_until_ready()  # starts JAX (on any Keras backend)
    assert auto_distribute.jax_started()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    assert auto_distribute.request_cpu_devices("vit", 6, backend="jax") is False
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"
    env = {}  # another process' environment is still prepared
    assert auto_distribute.request_cpu_devices("vit", 6, environ=env, backend="jax") is MANY_CORES
