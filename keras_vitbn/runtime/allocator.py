"""glibc malloc settings that keep XLA from faulting in fresh memory on every training step: an opt-in.

XLA on the CPU allocates each jitted step's scratch buffer (about 150 MB for
ViTBNFFN, depth 6, batch 100) from a worker thread and frees it when the step
ends. glibc serves a block that large from a fresh `mmap` and returns it with
`munmap`, so every step faults in tens of thousands of zeroed pages again. With
one arena, no `mmap` and no trimming, a freed block stays in the heap for the
next step: JAX trains about 13% faster on the CPU. torch and TensorFlow did not
gain measurably, so only JAX gets it. The cost: the process keeps its peak memory.

Importing `keras_vitbn` changes nothing. The settings are process-wide, so the
entry points that train on JAX (the trainers, the learning-rate search, the
experiment runner) ask for them with `tune_for_training()`, and the benchmark
gives its JAX workers `training_environment("jax")`. Library users opt in the
same way, or start Python with `GLIBC_TUNABLES` set to `TUNABLES`.

They must be in place before the framework starts its threads: a thread keeps
the arena it first allocated from, and `import keras` on JAX already starts
threads. `tune_for_training()` therefore sets them with `mallopt` while the
process has a single arena, and otherwise restarts the process once with
`GLIBC_TUNABLES`, which glibc reads at startup. `KERAS_VITBN_MALLOC=default`
leaves malloc alone.
"""

import ctypes
import json
import os
import re
import sys

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


def training_environment(backend):
    """Environment variables that give a child process training on `backend` the malloc settings.

    `{"GLIBC_TUNABLES": ...}` for JAX on glibc (added to any tunables already set),
    else `{}`; empty too when `KERAS_VITBN_MALLOC=default`.

    Example:
    >>> env = {**os.environ, **training_environment("jax")}
    """
    if backend != "jax" or _glibc() is None or os.environ.get(ENV, "").lower() == "default":
        return {}
    current = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLES in current:
        return {"GLIBC_TUNABLES": current}
    return {"GLIBC_TUNABLES": ":".join(t for t in (current, TUNABLES) if t)}


def tune_for_training(backend=None):
    """Gives this process the malloc settings if it trains on JAX; an entry point's explicit opt-in.

    With one malloc arena so far, sets them with `mallopt`. Otherwise threads have
    started and keep their own arenas, so it restarts the process (same
    interpreter, same command line, `sys.orig_argv`) with `GLIBC_TUNABLES`: call it
    first in a command line's entry function, before any output or work. Does
    nothing on other backends, off glibc, when the settings came with
    `GLIBC_TUNABLES` already, or when `KERAS_VITBN_MALLOC=default`.

    Args:
        backend: str or None. The backend that will train; None: `configured_backend()`.

    Returns:
        bool, whether the settings are in place (it does not return when it restarts).
    """
    environment = training_environment(backend or configured_backend())
    if not environment:
        return False
    if environment["GLIBC_TUNABLES"] == os.environ.get("GLIBC_TUNABLES"):
        return True  # read by glibc when this process started
    if (arena_count() or 0) <= 1 or not can_restart():
        return tune_malloc()
    restart(environment)


def can_restart():
    """Whether `restart` can start this process again: not a program read from stdin or typed in."""
    return sys.argv[0] not in ("", "-") and bool(getattr(sys, "orig_argv", None))


def restart(environment):
    """Starts this command again (same interpreter, same command line) with `environment` added; never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **environment})


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
