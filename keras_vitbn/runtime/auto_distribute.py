"""Data parallel by default where it was measured faster: ViTs on JAX on a CPU-only host.

XLA:CPU runs a training step's operations one after another, each spread over
the cores; with two XLA CPU devices, each running half of the batch, the two
halves run side by side and keep the cores busier: a depth-6 ViT trained about
1.3x faster on two devices (docs/performance.md); depth 1 gained nothing
measurable, and the MLP baselines ran slower. It is the same computation: the
batch stays global and XLA reduces the BatchNorm statistics over all of it; only
the order of float32 sums differs. The cost is memory: each device keeps its own
step buffers (nearly twice the peak memory at depth 6).

Two steps, because XLA fixes its device count when JAX starts:
- `request_cpu_devices(model, depth)` adds `--xla_force_host_platform_device_count`
  to `XLA_FLAGS`; the trainer command lines call it before anything starts JAX.
- `choose(config, train_images, eval_sizes)` decides per run, in `train()`,
  when `config.distribute` is None (`--distribute` not given): data parallel
  only if JAX runs on the CPU with several devices, the model is a ViT of
  depth >= `MIN_DEPTH`, and every batch splits evenly (no training image
  dropped, so the run sees exactly the data of a one-device run).
`--distribute none` (or `TrainConfig(distribute="none")`) turns it off.
Outside `train()` (the benchmark, the profiler), `apply_default` makes the same
choice and sets Keras' distribution.
"""

import os
import sys
import types

import keras

from keras_vitbn.models.registry import is_vit

CPU_DEVICES = 2  # the measured setting; more devices than cores only adds overhead
MIN_DEPTH = 3  # depth 1 gained nothing measurable, depth 3 about 1.2x
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def worth_it(model, depth):
    """Whether data parallelism over CPU devices was measured faster for this model."""
    return is_vit(model) and depth is not None and int(depth) >= MIN_DEPTH


def cores():
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def jax_started():
    """Whether this process' JAX has already made its devices (XLA_FLAGS is read once, then)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # no public API says it; without it, assume not started
    except ImportError:
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def request_cpu_devices(model, depth, environ=None, backend=None):
    """Asks XLA for `CPU_DEVICES` CPU devices if this model would use them; returns whether it did.

    Call before JAX starts (importing keras does not start it; the first
    computation does). Leaves `XLA_FLAGS` alone on other backends, on a
    one-core machine, when it already sets a device count, and when this
    process' JAX has started (then the flag would change nothing here and only
    leak into the subprocesses it starts). The flag goes first: XLA ignores
    every flag after one it cannot parse.

    Args:
        model: str. Registry name of the model.
        depth: int or None.
        environ: dict or None. The environment to change; None: this process'.
        backend: str or None. The backend of that environment; None: Keras' current one.
    """
    own = environ is None
    environ = os.environ if own else environ
    flags = environ.get("XLA_FLAGS", "")
    backend = backend or keras.backend.backend()
    if backend != "jax" or not worth_it(model, depth) or cores() < 2 or (own and jax_started()):
        return False
    if DEVICE_COUNT_FLAG in flags:
        return False
    environ["XLA_FLAGS"] = f"{DEVICE_COUNT_FLAG}={CPU_DEVICES} {flags}".strip()
    return True


def choose(config, train_images, eval_sizes):
    """("data_parallel", why) when this run should be data parallel by default, else (None, why).

    Args:
        config: TrainConfig. Only a `distribute` of None is decided here.
        train_images: int. Size of the training split.
        eval_sizes: list of int. Sizes of the validation and test splits.
    """
    if config.distribute is not None:
        return None, f"--distribute {config.distribute} given"
    if keras.backend.backend() != "jax":
        return None, "not JAX"
    if not worth_it(config.model, config.depth):
        return None, f"{config.model} at depth {config.depth} is not faster on several CPU devices"
    import jax

    if jax.default_backend() != "cpu" or jax.process_count() != 1:
        return None, f"JAX runs on {jax.default_backend()} in {jax.process_count()} process(es)"
    devices = jax.local_device_count()
    if devices < 2:
        return None, f"one CPU device (start with XLA_FLAGS={DEVICE_COUNT_FLAG}={CPU_DEVICES})"
    uneven = [n for n in (config.batch_size, *eval_sizes) if n % devices]
    if uneven or train_images % config.batch_size:
        return None, (
            f"batches would not split evenly over {devices} devices (batch {config.batch_size}, "
            f"{train_images} training images, evaluation sets {list(eval_sizes)})"
        )
    return "data_parallel", (
        f"automatic: JAX on a CPU-only host, {config.model} at depth {config.depth}, {devices} XLA CPU devices "
        "train faster than one, the same computation; --distribute none turns it off"
    )


def apply_default(model, depth, batch_size, train_images, eval_sizes=()):
    """The trainers' default outside `train()`: sets data parallel over every device where `choose` picks it.

    Returns (device count, why).
    """
    # The fields `choose` reads, not a TrainConfig: its checks import the tf.data module, and the
    # benchmark's workers also run where only JAX or PyTorch is installed.
    config = types.SimpleNamespace(model=model, depth=depth, batch_size=batch_size, distribute=None)
    mode, why = choose(config, train_images, list(eval_sizes))
    if mode is None:
        return 1, why
    devices = keras.distribution.list_devices()
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices), why
