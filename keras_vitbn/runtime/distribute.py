"""Data-parallel training across devices and hosts with Keras' own APIs.

One switch, `distribute`, with three values:

- `"none"` (or `None`): one device, nothing changes.
- `"data_parallel"`: every local accelerator of this host. On JAX
  `keras.distribution.DataParallel` over `keras.distribution.list_devices()`;
  on TensorFlow `tf.distribute.MirroredStrategy` over the local GPUs (the
  logical CPU devices when there is no GPU).
- `"multi_worker"`: several hosts (or processes), JAX only:
  `keras.distribution.initialize(...)` then `DataParallel` over the devices of
  all processes. On TensorFlow it raises `NotImplementedError`: Keras 3's
  TensorFlow trainer cannot `fit` under `MultiWorkerMirroredStrategy`
  (keras-team/keras#20585, reproduced here with two workers on 127.0.0.1).

On the torch backend Keras' `fit` runs on one device only, so both
distributed modes raise `NotImplementedError` saying what to use instead.

Semantics kept by every mode:

- Batch size is global. `batch_size=100` (the article's) means 100 images per
  optimizer step in total, split evenly across the replicas (50 + 50 on two
  devices). It must be divisible by the number of replicas.
- On JAX every batch must split evenly, the last one included: a final
  partial batch of 37 on 2 devices fails with jax's `IndivisibleError`.
  Batch the training set with `drop_remainder=True` (or choose sizes that
  divide) and evaluation sets with a batch that divides their size.
  TensorFlow splits uneven batches itself.
- The learning rate is never rescaled: the loss is the mean over the global
  batch, so gradients match the single-device run with the same batch.
- BatchNorm statistics are synchronised by default (`sync_batchnorm=True`):
  the batch mean and variance are taken over the global batch, exactly as on
  one device, because the article's results depend on batch statistics. On
  JAX, `DataParallel` shards the batch inside one jitted program and XLA
  reduces the batch axis across devices, so statistics are global whatever
  you ask (per-replica statistics are not available there). On TensorFlow,
  statistics are per replica unless `synchronized=True` is set on the
  `BatchNormalization` layers, which `DistributeContext.prepare_model` does
  for the duration of the scope. Per replica also means per-replica moving
  averages: Keras creates them with aggregation "none", so each replica
  keeps its own copy and evaluation and saving see replica 0's only.

Example:

```python
import argparse
from keras_vitbn.runtime import distribute

parser = argparse.ArgumentParser()
distribute.add_distribute_args(parser)
args = parser.parse_args(["--distribute", "data_parallel"])
with distribute.distribution_scope(
    args.distribute, **distribute.distribute_options(args)
) as dist:
    print(dist.describe())
    # model = build(...); dist.prepare_model(model); model.compile(...)
    # model.fit(dataset_batched_with_the_global_batch_size, ...)
```
"""

import contextlib
import dataclasses
import os

import keras

MODES = ("none", "data_parallel", "multi_worker")

# Standard environment variables read when the matching option is not given.
# These are the ones `keras.distribution.initialize` itself reads; JAX also
# honours JAX_COORDINATOR_ADDRESS and detects SLURM / Open MPI / Kubernetes
# clusters when nothing is given.
ENV_COORDINATOR_ADDRESS = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"

TORCH_MESSAGE = (
    "--distribute {mode} is not available on the torch backend: Keras' fit() "
    "on torch runs on a single device and has no multi-device or multi-host "
    "support. Run the same command with KERAS_BACKEND=jax (keras.distribution."
    "DataParallel, one or several hosts) or KERAS_BACKEND=tensorflow "
    "(tf.distribute.MirroredStrategy, one host); models and .keras files "
    "are the same on every backend. For pure PyTorch, write your own training "
    "loop around torch.nn.parallel.DistributedDataParallel (with "
    "torch.nn.SyncBatchNorm) and launch it with torchrun."
)

TF_MULTI_WORKER_MESSAGE = (
    "--distribute multi_worker is not available on the tensorflow backend: "
    "Keras 3's TensorFlow trainer cannot fit() under tf.distribute."
    "MultiWorkerMirroredStrategy (keras-team/keras#20585; measured with "
    "keras {keras} and tensorflow {tf}: fit() fails while reducing the first "
    "input batch across workers, and again while reducing the scalar metric "
    "logs). For several hosts run the same command with KERAS_BACKEND=jax "
    "--distribute multi_worker; on one host with several GPUs, "
    "--distribute data_parallel (MirroredStrategy) works on tensorflow."
)

# The JAX multi-host runtime may be initialised once per process, and
# TensorFlow strategies are made once per device set: with a second
# MirroredStrategy over the same devices in one process (measured: tensorflow
# 2.21), a synchronised BatchNorm aborts with "Shape mismatch in the
# collective instance", its collectives colliding with the first one's.
_JAX_INITIALIZED = False
_TF_STRATEGIES = {}


@dataclasses.dataclass
class DistributeContext:
    """What a `distribution_scope` set up; yielded by the context manager.

    Args:
        mode: str. One of `MODES`.
        backend: str. The Keras backend.
        num_replicas: int. Model replicas over all processes; the global
            batch is split into this many equal parts.
        num_processes: int. Processes (hosts) taking part.
        process_id: int. This process' index; 0 is the chief.
        sync_batchnorm: bool. Whether BatchNorm statistics are taken over
            the global batch.
        batchnorm_statistics: str. Plain-words statement of which batch
            statistics BatchNorm uses in this run.
        strategy: object. The `keras.distribution.Distribution` (JAX), the
            `tf.distribute.Strategy` (TensorFlow) or `None`.
    """

    mode: str = "none"
    backend: str = dataclasses.field(default_factory=keras.backend.backend)
    num_replicas: int = 1
    num_processes: int = 1
    process_id: int = 0
    sync_batchnorm: bool = True
    batchnorm_statistics: str = "global batch (single device)"
    strategy: object = dataclasses.field(default=None, repr=False)
    _synchronized_layers: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def is_chief(self):
        """True on the process that should write logs, configs and models."""
        return self.process_id == 0

    def per_replica_batch_size(self, global_batch_size):
        """Return the batch each replica sees; raise if it does not divide."""
        global_batch_size = int(global_batch_size)
        if global_batch_size % self.num_replicas:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by "
                f"{self.num_replicas} replicas; choose a multiple of "
                f"{self.num_replicas} (batch size is global: it is split "
                "across devices, not multiplied by them)"
            )
        return global_batch_size // self.num_replicas

    def prepare_model(self, model):
        """Apply the BatchNorm setting of this run to a freshly built model.

        On TensorFlow with `sync_batchnorm=True` and more than one replica,
        sets `synchronized=True` on every `keras.layers.BatchNormalization`
        of `model` until the scope exits. Synchronisation belongs to the run,
        not to the model: the layers' `get_config()` keeps reporting
        `synchronized=False`, so a `.keras` file saved during or after
        training reloads on every backend (Keras refuses `synchronized=True`
        outside TensorFlow). Elsewhere it changes nothing: JAX statistics are
        already global, one replica has nothing to synchronise.

        Returns:
            int: the number of BatchNormalization layers switched.
        """
        if not (self.backend == "tensorflow" and self.sync_batchnorm and self.num_replicas > 1):
            return 0
        count = 0
        # `_flatten_layers` is how Keras itself walks nested layers.
        for layer in model._flatten_layers(include_self=True, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                if not layer.synchronized:
                    layer.synchronized = True
                    layer.get_config = _unsynchronized_config(layer)
                    self._synchronized_layers.append(layer)
                count += 1
        return count

    def _restore(self):
        for layer in self._synchronized_layers:
            layer.synchronized = False
            del layer.get_config  # back to the class' method
        self._synchronized_layers.clear()

    def as_dict(self):
        """JSON-ready summary, for the resolved config written with results."""
        return {
            "mode": self.mode,
            "backend": self.backend,
            "num_replicas": self.num_replicas,
            "num_processes": self.num_processes,
            "process_id": self.process_id,
            "sync_batchnorm": self.sync_batchnorm,
            "batchnorm_statistics": self.batchnorm_statistics,
            "batch_size": "global (split across replicas)",
            "learning_rate": "not rescaled",
        }

    def describe(self):
        """One line for logs: mode, replicas, batch and BatchNorm semantics."""
        where = f"{self.num_replicas} replica(s) in {self.num_processes} process(es), this is process {self.process_id}"
        return (
            f"distribute={self.mode} on {self.backend}: {where}; batch size "
            "is global (split across replicas), learning rate not rescaled; "
            f"BatchNorm statistics: {self.batchnorm_statistics}"
        )


def _unsynchronized_config(layer):
    """`layer.get_config` as if `synchronized` were still False."""
    get_config = type(layer).get_config

    def get_config_for_saving():
        return {**get_config(layer), "synchronized": False}

    return get_config_for_saving


def _env_int(name):
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _check_mode(mode):
    mode = "none" if mode is None else str(mode).lower().replace("-", "_")
    if mode not in MODES:
        raise ValueError(f"unknown distribute mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


@contextlib.contextmanager
def distribution_scope(
    mode=None,
    *,
    sync_batchnorm=True,
    coordinator_address=None,
    num_processes=None,
    process_id=None,
):
    """Context manager in which to build, compile and fit a data-parallel model.

    Build the model, compile it, fit and evaluate it all inside the scope
    (the JAX trainer reads the distribution at `fit` time). Feed data as a
    `tf.data.Dataset` batched with the *global* batch size, or as arrays on
    a single host. For `"multi_worker"`, enter the scope before any JAX or
    TensorFlow computation in the process.

    Args:
        mode: str or None. `None`/`"none"`, `"data_parallel"` or
            `"multi_worker"`. Defaults to `None`.
        sync_batchnorm: bool. Take BatchNorm statistics over the global
            batch (as on one device). `False` asks for per-replica
            statistics, which only TensorFlow offers. Defaults to `True`.
        coordinator_address: str. `host:port` of process 0 (JAX
            `"multi_worker"`; a comma-separated list of every process is
            also accepted). Defaults to `$KERAS_DISTRIBUTION_JOB_ADDRESSES`,
            then JAX's own cluster detection.
        num_processes: int. Number of processes. Defaults to
            `$KERAS_DISTRIBUTION_NUM_PROCESSES`.
        process_id: int. This process' index, 0 being the coordinator.
            Defaults to `$KERAS_DISTRIBUTION_PROCESS_ID`.

    Yields:
        DistributeContext: replicas, processes and BatchNorm semantics; call
        its `prepare_model(model)` right after building the model.

    Example:

    ```python
    with distribution_scope("data_parallel") as dist:
        model = keras_vitbn.create_model("vit_bnffn", depth=5)
        dist.prepare_model(model)
        model.compile(optimizer="adam", loss=loss)
        model.fit(train_ds.batch(100), epochs=1)  # 100 in total
    ```
    """
    mode = _check_mode(mode)
    backend = keras.backend.backend()
    sync_batchnorm = bool(sync_batchnorm)
    if mode != "multi_worker" and any(v is not None for v in (coordinator_address, num_processes, process_id)):
        raise ValueError(
            f"coordinator_address, num_processes and process_id are for distribute='multi_worker', not {mode!r}"
        )
    if mode == "none":
        yield DistributeContext(mode=mode, sync_batchnorm=sync_batchnorm)
        return
    if backend == "torch":
        raise NotImplementedError(TORCH_MESSAGE.format(mode=mode))
    if mode == "multi_worker":
        coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR_ADDRESS)
        if num_processes is None:
            num_processes = _env_int(ENV_NUM_PROCESSES)
        if process_id is None:
            process_id = _env_int(ENV_PROCESS_ID)
    if backend == "jax":
        ctx = _jax_context(mode, sync_batchnorm, coordinator_address, num_processes, process_id)
        with ctx.strategy.scope():
            yield ctx
    elif backend == "tensorflow":
        ctx = _tf_context(mode, sync_batchnorm)
        try:
            with ctx.strategy.scope():
                yield ctx
        finally:
            ctx._restore()
    else:
        raise NotImplementedError(f"--distribute {mode} is not implemented for backend {backend!r}")


def _jax_context(mode, sync_batchnorm, coordinator_address, num_processes, process_id):
    global _JAX_INITIALIZED
    import jax

    if not sync_batchnorm:
        raise ValueError(
            "sync_batchnorm=False (per-replica BatchNorm statistics) is not "
            "available on JAX: keras.distribution.DataParallel shards the "
            "batch inside one XLA program, which always reduces BatchNorm "
            "statistics over the global batch. Use the TensorFlow backend "
            "for per-replica statistics."
        )
    if mode == "multi_worker" and not _JAX_INITIALIZED:
        if jax.distributed.is_initialized():
            _JAX_INITIALIZED = True
        else:
            try:
                keras.distribution.initialize(
                    job_addresses=coordinator_address,
                    num_processes=num_processes,
                    process_id=process_id,
                )
            except (ValueError, RuntimeError) as error:
                raise type(error)(
                    f"distribute='multi_worker' on JAX could not start: "
                    f"{error}. Give --coordinator-address host:port (of "
                    "process 0), --num-processes and --process-id, or set "
                    f"{ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES} and "
                    f"{ENV_PROCESS_ID}; and enter the scope before any JAX "
                    "computation in the process."
                ) from error
            _JAX_INITIALIZED = True
    devices = keras.distribution.list_devices()
    distribution = keras.distribution.DataParallel(devices=devices)
    return DistributeContext(
        mode=mode,
        backend="jax",
        num_replicas=len(devices),
        num_processes=jax.process_count(),
        process_id=jax.process_index(),
        sync_batchnorm=True,
        batchnorm_statistics=(
            f"synchronised: mean and variance over the global batch, reduced by XLA across {len(devices)} device(s)"
        ),
        strategy=distribution,
    )


def _tf_context(mode, sync_batchnorm):
    import tensorflow as tf

    if mode == "data_parallel":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        key = ("mirrored", tuple(devices))
        if key not in _TF_STRATEGIES:
            _TF_STRATEGIES[key] = tf.distribute.MirroredStrategy(devices=devices)
        strategy = _TF_STRATEGIES[key]
    else:
        raise NotImplementedError(TF_MULTI_WORKER_MESSAGE.format(keras=keras.__version__, tf=tf.__version__))
    replicas = strategy.num_replicas_in_sync
    if sync_batchnorm or replicas == 1:
        statistics = f"synchronised: mean and variance over the global batch, all-reduced across {replicas} replica(s)"
    else:
        statistics = (
            f"per replica: each of {replicas} replicas normalises with the "
            "statistics of its own share of the batch, and keeps its own "
            "moving averages (not averaged across replicas; evaluation and "
            "saving use replica 0's)"
        )
    return DistributeContext(
        mode=mode,
        backend="tensorflow",
        num_replicas=replicas,
        sync_batchnorm=sync_batchnorm,
        batchnorm_statistics=statistics,
        strategy=strategy,
    )


def add_distribute_args(parser):
    """Add `--distribute` and its options to an `argparse` parser.

    Args:
        parser: argparse.ArgumentParser. The parser (or argument group) to
            extend.

    Returns:
        The argument group that was added.
    """
    import argparse

    group = parser.add_argument_group(
        "distribution",
        "data-parallel training; the batch size stays global (split across "
        "devices) and the learning rate is not rescaled",
    )
    group.add_argument(
        "--distribute",
        choices=("auto", *MODES),
        default="auto",
        help="auto (default): data parallel where it was measured faster "
        "(ViTs of depth >= 3 on JAX on a CPU-only host, over 2 XLA CPU "
        "devices; keras_vitbn.runtime.auto_distribute), else one device; "
        "none: one device; data_parallel: all local devices "
        "(JAX DataParallel / TF MirroredStrategy); multi_worker: several "
        "hosts or processes (JAX only: keras.distribution.initialize). "
        "Not on torch.",
    )
    group.add_argument(
        "--sync-batchnorm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="BatchNorm statistics over the global batch (default) or, with "
        "--no-sync-batchnorm, per replica (TensorFlow only)",
    )
    group.add_argument(
        "--coordinator-address",
        default=None,
        help=f"multi_worker on JAX: host:port of process 0 (default ${ENV_COORDINATOR_ADDRESS})",
    )
    group.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help=f"multi_worker on JAX: number of processes (default ${ENV_NUM_PROCESSES})",
    )
    group.add_argument(
        "--process-id",
        type=int,
        default=None,
        help=f"multi_worker on JAX: index of this process, 0 = coordinator (default ${ENV_PROCESS_ID})",
    )
    return group


def distribute_options(args):
    """Keyword arguments for `distribution_scope` from parsed CLI `args`."""
    options = {"sync_batchnorm": getattr(args, "sync_batchnorm", True)}
    for name in ("coordinator_address", "num_processes", "process_id"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    return options
