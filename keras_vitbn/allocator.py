"""glibc malloc settings that keep XLA from faulting in fresh memory on every training step.

XLA on the CPU allocates each jitted step's scratch buffer (148 MB for ViTBNFFN,
depth 6, batch 100) with `posix_memalign` from a worker thread and frees it when
the step ends. glibc serves a block that large from a fresh `mmap` and returns it
with `munmap`, so every step faults in 36,000 zeroed pages again: 5.4 million page
faults in 170 JAX steps, a fifth of the run spent in the kernel. With one arena and
no `mmap`, a freed block stays in the heap for the next step: JAX trained 13%
faster (539 -> 610 images/s, interleaved A/B, 2-core CPU; the same run's plain-PyTorch
yardstick: 687). torch did not change (687 vs 679; 651 vs 640 in a later A/B), and
TensorFlow was not faster (757 vs 661, then 861 vs 835, within this machine's noise),
so only the JAX backend gets it.

The settings must be made before the framework starts its thread pools: a thread
keeps the arena it first allocated from, and glibc hands threads started later the
arenas that already exist. `import keras` on JAX already starts threads (3 besides
the main one), so settings made after it left the step's scratch buffer in a thread arena, still
mmapped every step (19,000 page faults per ViT step instead of 100-2,000; ViT
training 503 vs 584 images/s, interleaved A/B). `import keras_vitbn` therefore
applies them before importing Keras, when `configured_backend()` says JAX, and
warns when it comes too late: glibc then already has more than one arena (after
`import keras`: 2; after a first JAX computation: 16; in a pytest-xdist worker,
whose I/O thread starts first: 2). `GLIBC_TUNABLES` set to
`TUNABLES` before Python starts gives one arena whatever the import order. Set
`KERAS_VITBN_MALLOC=default` to leave malloc alone.
"""

import ctypes
import json
import os
import re
import sys
import warnings

ENV = "KERAS_VITBN_MALLOC"
# The same three settings as glibc tunables, read when a process starts.
TUNABLES = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647"

# mallopt parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1  # the largest int mallopt takes: freed memory stays with the process


def configured_backend():
    """The backend Keras uses or will use, found without importing Keras.

    Keras' own rule: `KERAS_BACKEND`, else the `backend` of `keras.json` in
    `KERAS_HOME` (default `~/.keras`, or `/tmp/.keras` where home is read-only),
    else `tensorflow`.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.path.expanduser("~")
    keras_dir = os.environ.get("KERAS_HOME") or os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(keras_dir), "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):  # no file, bad JSON, JSON that is not an object
        return "tensorflow"


def _glibc():
    """The C library if it is glibc (musl's mallopt ignores these settings), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        return libc
    except (AttributeError, OSError):
        return None


def arena_count():
    """How many malloc arenas glibc has made in this process; None off glibc.

    Reads `malloc_info`, which writes one `<heap>` element per arena.
    """
    libc = _glibc()
    if libc is None:
        return None
    buffer, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.free.argtypes = [ctypes.c_void_p]
    stream = libc.open_memstream(ctypes.byref(buffer), ctypes.byref(size))
    if not stream:
        return None
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    xml = ctypes.string_at(buffer, size.value).decode()
    libc.free(buffer)
    return len(re.findall(r"<heap nr=", xml))


def tune_at_import():
    """What `import keras_vitbn` does: on JAX, tune malloc, and warn if that came too late.

    Returns:
        bool, whether the settings were made.
    """
    if configured_backend() != "jax" or not tune_malloc():
        return False
    arenas = arena_count()
    if arenas and arenas > 1:  # threads started before us keep their own arenas
        warnings.warn(
            f"keras_vitbn was imported after other threads started ({arenas} malloc arenas), so XLA "
            "still maps its scratch memory afresh every step and JAX trains slower on the CPU (ViT: "
            "503 vs 584 images/s): import keras_vitbn before keras, jax and tensorflow, or start "
            f"Python with GLIBC_TUNABLES={TUNABLES} (KERAS_VITBN_MALLOC=default silences this)",
            RuntimeWarning,
            stacklevel=3,
        )
    return True


def tune_malloc():
    """Makes glibc keep freed memory for reuse (one arena, no mmap, no trimming).

    A process-wide setting, best made before any framework is imported; later it
    helps only the threads started afterwards. Does nothing on other C libraries
    and operating systems, or when `KERAS_VITBN_MALLOC=default`.

    Returns:
        bool, whether the settings were made.
    """
    libc = _glibc()
    if os.environ.get(ENV, "").lower() == "default" or libc is None:
        return False
    return all(
        libc.mallopt(parameter, value) == 1
        for parameter, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    )
