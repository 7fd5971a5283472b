"""On JAX, `import keras_vitbn` makes glibc reuse freed memory, as XLA's per-step scratch buffer needs.

Each check runs in a fresh interpreter: the malloc settings are process-wide and
must be made before any thread starts. The probe does what XLA does each step:
a worker thread allocates a block too large for glibc's defaults to keep (128 MiB),
writes all of it and frees it. Without the settings every round faults in fresh
pages; with them only the first round does.
"""

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, json, resource, sys, threading
import keras_vitbn  # applies (or not) the malloc settings, before any framework thread starts
from keras_vitbn.allocator import tune_malloc

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE, ROUNDS = 128 << 20, 4
faults = []

def rounds():
    for _ in range(ROUNDS):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(SIZE)
        ctypes.memset(block, 1, SIZE)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=rounds)
thread.start()
thread.join()
print(json.dumps({"faults": faults, "pages": SIZE // resource.getpagesize()}))
"""


def _probe(backend, **env):
    environment = {k: v for k, v in os.environ.items() if k != "KERAS_VITBN_MALLOC"}
    environment.update(env, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's (Linux)")
def test_freed_scratch_memory_is_reused_on_jax():
    pytest.importorskip("jax")
    tuned = _probe("jax")
    pages = tuned["pages"]
    # The first round faults the block in, the later rounds reuse it.
    assert tuned["faults"][0] > 0.9 * pages, tuned
    assert max(tuned["faults"][1:]) < 0.05 * pages, tuned
    # Opted out, or on another backend: glibc's defaults map fresh pages every round.
    for untouched in (_probe("jax", KERAS_VITBN_MALLOC="default"), _probe("torch")):
        assert min(untouched["faults"][1:]) > 0.9 * pages, untouched


def test_opt_out_leaves_malloc_alone(monkeypatch):
    from keras_vitbn.allocator import tune_malloc

    monkeypatch.setenv("KERAS_VITBN_MALLOC", "default")
    assert tune_malloc() is False
