"""Data parallelism: `keras_vitbn.runtime.distribute` on every backend.

Every test runs in each backend's suite and checks what that backend should
do: on JAX two forced host devices and a two-process run on 127.0.0.1; on
TensorFlow MirroredStrategy over two logical CPUs; on torch the clear error.
Device counts are fixed at framework start-up, so multi-device and
multi-process cases run in subprocesses (tests/_dist_run.py) with timeouts,
and every process started is killed in `finally`.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import keras_vitbn
from keras_vitbn.runtime import distribute
from tests.testing import ROOT

BACKEND = keras.backend.backend()
DRIVER = os.path.join(ROOT, "tests", "_dist_run.py")
TIMEOUT_S = 300  # per subprocess group; a run takes 20-60 s on 2 busy cores
LOSS_ATOL = 1e-5  # float32 reduction order differs between 1 and 2 devices


def _tiny_vit():
    return keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16)


def _env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("KERAS_DISTRIBUTION_") and k not in ("XLA_FLAGS", "TF_CONFIG")
    }
    env.update(
        KERAS_BACKEND=BACKEND,
        PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update(extra)
    return env


def _run_all(commands, log_dir, timeout=TIMEOUT_S):
    """Start every (args, env) at once; return each one's RESULT dict.

    Output goes to files (no pipe can fill up and stall a process); whatever
    is still running at the deadline, or when anything fails, is killed.
    """
    procs, logs = [], []
    try:
        for i, (args, env) in enumerate(commands):
            log = open(os.path.join(log_dir, f"proc{i}.log"), "w+")  # noqa: SIM115 (closed in finally)
            logs.append(log)
            procs.append(
                subprocess.Popen(
                    [sys.executable, DRIVER, *args],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed below
                )
            )
        deadline = time.monotonic() + timeout
        results = []
        for proc, log in zip(procs, logs):
            try:
                code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            log.seek(0)
            output = log.read()
            assert code == 0, (
                f"{' '.join(proc.args[2:])} "
                + (f"exited with {code}" if code is not None else f"timed out after {timeout} s")
                + ":\n"
                + output[-4000:]
            )
            lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
            assert lines, f"no RESULT line in:\n{output[-4000:]}"
            results.append(json.loads(lines[-1][len("RESULT ") :]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_devices(shared_data, tmp_path_factory):
    """One subprocess with 2 devices: 1-device baseline, 2-device data
    parallel (and, on TensorFlow, without synchronised BatchNorm), plus the
    BatchNorm statistics probe."""
    if BACKEND not in ("jax", "tensorflow"):
        pytest.fail(f"no multi-device run on {BACKEND}; tests must not ask for one")
    extra = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"} if BACKEND == "jax" else {}
    args = ["equivalence", "--devices", "2", "--data", os.path.join(shared_data, "mnist-test")]
    (result,) = _run_all([(args, _env(**extra))], tmp_path_factory.mktemp("two_devices"))
    return result


# --- every backend, in process --------------------------------------------


@pytest.mark.parametrize("mode", [None, "none"])
def test_none_mode_changes_nothing(mode):
    with distribute.distribution_scope(mode) as dist:
        model = _tiny_vit()
        assert dist.prepare_model(model) == 0
        if BACKEND == "jax":
            assert keras.distribution.distribution() is None
    assert (dist.mode, dist.num_replicas, dist.num_processes, dist.is_chief) == ("none", 1, 1, True)
    assert dist.per_replica_batch_size(100) == 100
    assert "batch size is global" in dist.describe()
    assert dist.as_dict()["learning_rate"] == "not rescaled"
    batchnorms = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.synchronized for layer in batchnorms)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown distribute mode 'model_parallel'"):
        with distribute.distribution_scope("model_parallel"):
            pass
    with pytest.raises(ValueError, match="are for distribute='multi_worker', not 'data_parallel'"):
        with distribute.distribution_scope("data_parallel", process_id=0):
            pass


def test_global_batch_is_split_evenly():
    dist = distribute.DistributeContext(mode="data_parallel", num_replicas=4)
    assert dist.per_replica_batch_size(100) == 25
    with pytest.raises(ValueError, match="global batch size 102 is not divisible by 4 replicas"):
        dist.per_replica_batch_size(102)


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    distribute.add_distribute_args(parser)
    args = parser.parse_args([])
    assert args.distribute == "auto"
    assert parser.parse_args(["--distribute", "none"]).distribute == "none"
    assert distribute.distribute_options(args) == {"sync_batchnorm": True}
    args = parser.parse_args(
        ["--distribute", "multi_worker", "--no-sync-batchnorm", "--coordinator-address", "10.0.0.1:1234"]
        + ["--num-processes", "2", "--process-id", "1"]
    )
    assert args.distribute == "multi_worker"
    assert distribute.distribute_options(args) == {
        "sync_batchnorm": False,
        "coordinator_address": "10.0.0.1:1234",
        "num_processes": 2,
        "process_id": 1,
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["--distribute", "pipeline"])


# --- backend-specific behaviour: each test runs in every backend's suite ---


def test_two_devices_give_the_one_device_loss_curve(request):
    """Same seed, same global batch 50: 2 devices (25 each) == 1 device."""
    if BACKEND == "torch":
        with pytest.raises(NotImplementedError, match=r"torch backend.*KERAS_BACKEND=jax") as info:
            with distribute.distribution_scope("data_parallel"):
                pass
        assert "single device" in str(info.value)
        assert "DistributedDataParallel" in str(info.value)
        return
    run = request.getfixturevalue("two_devices")
    baseline, parallel = run["baseline"], run["data_parallel"]
    assert (baseline["num_replicas"], parallel["num_replicas"]) == (1, 2)
    assert parallel["per_replica_batch"] == 25
    assert len(parallel["losses"]) == 8  # 200 images / 50 global, 2 epochs
    np.testing.assert_allclose(parallel["losses"], baseline["losses"], rtol=0, atol=LOSS_ATOL)
    assert np.isfinite(parallel["losses"]).all()
    if BACKEND == "jax":
        assert run["devices"] == 2
        assert parallel["variable_devices"] == ["cpu:0", "cpu:1"]


def test_batchnorm_statistics_are_synchronised(request):
    """A batch whose halves are 0 and 10 (variance 25, per-half variance 0),
    one step, momentum 0: the moving statistics are those the layer used."""
    if BACKEND == "torch":
        with pytest.raises(NotImplementedError):
            with distribute.distribution_scope("data_parallel", sync_batchnorm=True):
                pass
        return
    run = request.getfixturevalue("two_devices")
    probe = run["probe_sync"]
    np.testing.assert_allclose(probe["moving_mean"], [5.0] * 3, atol=1e-5)
    np.testing.assert_allclose(probe["moving_variance"], [25.0] * 3, atol=1e-4)
    if BACKEND == "jax":
        # Each device really holds half the batch inside the jitted step,
        # and the variance is still the global one: XLA reduces across devices.
        (shards,) = probe["input_shards"]
        assert [(device, index.split("),")[0]) for device, index in shards] == [
            ("cpu:0", "(slice(0, 4, None"),
            ("cpu:1", "(slice(4, 8, None"),
        ]
        with pytest.raises(ValueError, match="not available on JAX"):
            with distribute.distribution_scope("data_parallel", sync_batchnorm=False):
                pass
    else:
        dp = run["data_parallel"]
        assert dp["switched"] == 1 and dp["synchronized_in_scope"] == [True]
        assert dp["synchronized_after_scope"] == [False]
        # A .keras written during training does not carry the run's setting,
        # so it reloads on jax and torch (which refuse synchronized=True).
        assert probe["synchronized_in_scope"] is True
        assert probe["synchronized_saved_in_scope"] == ["false"]
        np.testing.assert_allclose(probe["replica_moving_mean"], [[5.0] * 3] * 2, atol=1e-5)


def test_per_replica_batchnorm_is_what_tensorflow_does_unsynchronised(request):
    """Without sync, TF normalises each replica by its own half: the loss
    curve departs from one device and the replicas' moving means diverge."""
    if BACKEND != "tensorflow":
        # JAX has no per-replica statistics (asserted above); torch has no DP.
        with pytest.raises((ValueError, NotImplementedError)):
            with distribute.distribution_scope("data_parallel", sync_batchnorm=False):
                pass
        return
    run = request.getfixturevalue("two_devices")
    unsynced = run["data_parallel_no_sync"]
    assert "per replica" in unsynced["batchnorm_statistics"]
    gap = np.abs(np.subtract(unsynced["losses"], run["baseline"]["losses"])).max()
    assert gap > 50 * LOSS_ATOL, f"per-replica BatchNorm should change the losses; gap {gap}"
    probe = run["probe_no_sync"]
    np.testing.assert_allclose(probe["moving_variance"], [0.0] * 3, atol=1e-5)
    np.testing.assert_allclose(probe["replica_moving_mean"], [[0.0] * 3, [10.0] * 3], atol=1e-5)


def test_multi_worker(request, shared_data, tmp_path):
    """JAX: two processes on 127.0.0.1, one CPU device each, complete and
    reproduce the one-device loss curve. TensorFlow, torch: clear errors."""
    if BACKEND == "torch":
        with pytest.raises(NotImplementedError, match="torch"), distribute.distribution_scope("multi_worker"):
            pass
        return
    if BACKEND == "tensorflow":
        with pytest.raises(NotImplementedError, match=r"keras-team/keras#20585.*KERAS_BACKEND=jax"):
            with distribute.distribution_scope("multi_worker"):
                pass
        return
    address = f"127.0.0.1:{_free_port()}"
    args = ["worker", "--data", os.path.join(shared_data, "mnist-test")]
    commands = [
        (
            args,
            _env(
                KERAS_DISTRIBUTION_JOB_ADDRESSES=address,
                KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                KERAS_DISTRIBUTION_PROCESS_ID=str(i),
            ),
        )
        for i in range(2)
    ]
    results = [r["multi_worker"] for r in _run_all(commands, str(tmp_path))]
    assert [r["process_id"] for r in results] == [0, 1]
    for r in results:
        assert (r["num_processes"], r["num_replicas"], r["per_replica_batch"]) == (2, 2, 25)
    np.testing.assert_allclose(results[0]["losses"], results[1]["losses"], rtol=0, atol=0)
    baseline = request.getfixturevalue("two_devices")["baseline"]["losses"]
    np.testing.assert_allclose(results[0]["losses"], baseline, rtol=0, atol=LOSS_ATOL)
