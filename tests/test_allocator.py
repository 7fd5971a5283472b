"""On JAX, `import keras_vitbn` makes glibc reuse XLA's freed scratch memory.

Each check runs in a fresh interpreter: the malloc settings are process-wide and
must be made before any thread starts. The JAX probe runs a jitted function whose
intermediate (128 MiB) XLA keeps in a scratch buffer that it allocates and frees on
every call, as it does with a training step's. Without the settings the calls fault
in fresh pages every time; with them the buffer stays in the heap. It also counts
glibc's arenas: settings made after `import keras` (which starts threads) left
a second arena, whose large blocks glibc always maps afresh, and a ViT training step
faulted in 19,000 pages instead of 100-2,000. Such a late import warns and names the
fix, `GLIBC_TUNABLES`, which the last checks apply.
"""

import json
import os
import subprocess
import sys

import pytest

from keras_vitbn.allocator import TUNABLES

JAX_PROBE = r"""
import json, resource
{first}
import keras_vitbn  # applies (or not) the malloc settings
import jax, jax.numpy as jnp
from keras_vitbn.allocator import arena_count

a, b = jnp.ones((8192, 8)), jnp.ones((8, 4096))
step = jax.jit(lambda a, b: jnp.sum(jnp.tanh(a @ b).T @ a))  # tanh(a @ b) is a 128 MiB scratch buffer
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults, "pages": 8192 * 4096 * 4 // resource.getpagesize(), "arenas": arena_count()}))
"""

THREAD_PROBE = r"""
import ctypes, json, resource, threading
import keras_vitbn

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 128 << 20
faults = []

def rounds():  # what XLA does with its scratch buffer: a worker thread mallocs, writes, frees
    for _ in range(4):
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

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's (Linux)")


def _run(probe, backend, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("KERAS_VITBN_MALLOC", "GLIBC_TUNABLES")}
    environment.update(env, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-W", "always::RuntimeWarning", "-c", probe],
        env=environment, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _probe(probe, backend, **env):
    return _run(probe, backend, **env)[0]


def _jax_probe(first=""):
    """JAX_PROBE, with `first` run before `import keras_vitbn`."""
    return JAX_PROBE.replace("{first}", first)


@linux_only
def test_xla_scratch_memory_is_reused_on_jax():
    pytest.importorskip("jax")
    tuned, warnings = _run(_jax_probe(), "jax")
    assert "keras_vitbn was imported after" not in warnings
    pages = tuned["pages"]
    assert tuned["arenas"] == 1, tuned  # every XLA thread allocates from the one tuned arena
    assert tuned["faults"][0] > 0.9 * pages, tuned  # the first call faults the buffer in
    # Later calls can reuse it. How many do varies (3-7 of 7 measured: other allocations may
    # take the freed space), so the arena count above is the deterministic check.
    assert any(f < 0.05 * pages for f in tuned["faults"][1:]), tuned
    opted_out = _probe(_jax_probe(), "jax", KERAS_VITBN_MALLOC="default")
    assert opted_out["arenas"] > 1, opted_out
    assert min(opted_out["faults"][1:]) > 0.9 * pages, opted_out  # glibc's defaults: fresh pages every call


@linux_only
def test_late_import_warns_and_glibc_tunables_fix_it():
    pytest.importorskip("jax")
    late, warnings = _run(_jax_probe("import keras"), "jax")
    assert late["arenas"] > 1, late  # Keras' threads got their own arena before the settings
    assert "RuntimeWarning: keras_vitbn was imported after other threads" in warnings, warnings[-2000:]
    assert "import keras_vitbn before keras" in warnings and f"GLIBC_TUNABLES={TUNABLES}" in warnings
    fixed, warnings = _run(_jax_probe("import keras"), "jax", GLIBC_TUNABLES=TUNABLES)
    assert fixed["arenas"] == 1, fixed  # the warning's advice works whatever the import order
    assert "keras_vitbn was imported after" not in warnings
    assert any(f < 0.05 * fixed["pages"] for f in fixed["faults"][1:]), fixed


@linux_only
def test_other_backends_keep_glibc_defaults():
    untouched = _probe(THREAD_PROBE, "torch")
    assert min(untouched["faults"][1:]) > 0.9 * untouched["pages"], untouched


def test_opt_out_leaves_malloc_alone(monkeypatch):
    from keras_vitbn.allocator import tune_malloc

    monkeypatch.setenv("KERAS_VITBN_MALLOC", "default")
    assert tune_malloc() is False


def test_configured_backend_follows_keras_rules(monkeypatch, tmp_path):
    import keras

    from keras_vitbn.allocator import configured_backend

    assert configured_backend() == keras.backend.backend()  # Keras imported: its answer
    monkeypatch.delitem(sys.modules, "keras")  # as before `import keras`
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert configured_backend() == "tensorflow"  # no keras.json: Keras' default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax", "floatx": "float32"}))
    assert configured_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the environment wins over the file
    assert configured_backend() == "torch"
    (tmp_path / "keras.json").write_text("[not a keras config")
    monkeypatch.delenv("KERAS_BACKEND")
    assert configured_backend() == "tensorflow"


def test_make_test_uses_the_same_tunables():
    makefile = os.path.join(os.path.dirname(__file__), "..", "Makefile")
    with open(makefile) as f:
        assert f"JAX_MALLOC = {TUNABLES}\n" in f.read()
