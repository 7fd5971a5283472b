"""The trainers' malloc settings: an explicit opt-in that makes glibc reuse XLA's freed scratch memory.

Each check runs in a fresh interpreter: the settings are process-wide and must be
in place before any thread starts. The JAX probe runs a jitted function whose
intermediate (128 MiB) XLA keeps in a scratch buffer that it allocates and frees
on every call, as it does with a training step's. Without the settings the calls
fault in fresh pages every time; with them the buffer stays in the heap. It also
counts glibc's arenas: one means every thread shares the tuned arena.
`import keras_vitbn` alone must change nothing.
"""

import json
import os
import subprocess
import sys

import pytest

from keras_vitbn.runtime import allocator
from keras_vitbn.runtime.allocator import TUNABLES

JAX_PROBE = r"""
import json, os, resource
import keras_vitbn.runtime.allocator
{setup}
import jax, jax.numpy as jnp
from keras_vitbn.runtime.allocator import arena_count

a, b = jnp.ones((8192, 8)), jnp.ones((8, 4096))
step = jax.jit(lambda a, b: jnp.sum(jnp.tanh(a @ b).T @ a))  # tanh(a @ b) is a 128 MiB scratch buffer
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"faults": faults, "pages": 8192 * 4096 * 4 // resource.getpagesize(), "arenas": arena_count(),
                  "tunables": os.environ.get("GLIBC_TUNABLES")}))
"""

QUIET_IMPORT_PROBE = r"""
import json, os, sys, warnings
KEYS = ("GLIBC_TUNABLES", "XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
        "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "TF_CPP_MIN_LOG_LEVEL", "KERAS_VITBN_MALLOC")
import keras  # the quick start's order
before = {k: os.environ.get(k) for k in KEYS}
filters = list(warnings.filters)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import keras_vitbn
    keras_vitbn.create_model("vit", depth=1)(keras.ops.zeros((2, 28, 28, 1)))  # starts the backend's threads
from keras_vitbn.runtime.allocator import arena_count
print(json.dumps({
    "warnings": [f"{w.filename}: {w.message}" for w in caught if "keras_vitbn" in w.filename],
    "env_changed": {k: os.environ.get(k) for k in KEYS if os.environ.get(k) != before[k]},
    "filters_changed": list(warnings.filters) != filters,
    "arenas": arena_count(),
}))
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the settings are glibc's (Linux)")


def _run(probe, backend, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("KERAS_VITBN_MALLOC", "GLIBC_TUNABLES")}
    environment.update(env, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", probe],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _probe(probe, backend, **env):
    return _run(probe, backend, **env)[0]


def _jax_probe(setup=""):
    """JAX_PROBE, with `setup` run after `import keras_vitbn` (which imports keras)."""
    return JAX_PROBE.replace("{setup}", setup)


def test_import_changes_nothing_process_wide_and_never_warns():
    import keras

    quiet = _probe(QUIET_IMPORT_PROBE, keras.backend.backend())
    assert quiet["warnings"] == [], quiet
    assert quiet["env_changed"] == {}, quiet
    assert not quiet["filters_changed"], quiet
    if sys.platform.startswith("linux"):
        assert quiet["arenas"] > 1, quiet  # glibc's defaults: the backend's threads made arenas of their own


@linux_only
def test_tune_for_training_reuses_xla_scratch_memory():
    pytest.importorskip("jax")
    # keras is imported already, so its threads have arenas: the call restarts the process with GLIBC_TUNABLES.
    tuned = _probe(_jax_probe("keras_vitbn.runtime.allocator.tune_for_training()"), "jax")
    assert tuned["tunables"] == TUNABLES, tuned
    pages = tuned["pages"]
    assert tuned["arenas"] == 1, tuned  # every XLA thread allocates from the one tuned arena
    assert tuned["faults"][0] > 0.9 * pages, tuned  # the first call faults the buffer in
    # Later calls can reuse it. How many do varies (3-7 of 7 measured: other allocations may
    # take the freed space), so the arena count above is the deterministic check.
    assert any(f < 0.05 * pages for f in tuned["faults"][1:]), tuned
    plain = _probe(_jax_probe(), "jax")  # no opt-in: glibc's defaults
    assert plain["arenas"] > 1 and plain["tunables"] is None, plain
    assert min(plain["faults"][1:]) > 0.9 * pages, plain  # fresh pages every call
    opted_out = _probe(
        _jax_probe("keras_vitbn.runtime.allocator.tune_for_training()"), "jax", KERAS_VITBN_MALLOC="default"
    )
    assert opted_out["arenas"] > 1 and opted_out["tunables"] is None, opted_out


@linux_only
def test_glibc_tunables_at_startup_need_no_restart():
    pytest.importorskip("jax")
    probe = _jax_probe("assert keras_vitbn.runtime.allocator.tune_for_training() is True")
    started = _probe(probe, "jax", GLIBC_TUNABLES=TUNABLES)
    assert started["arenas"] == 1 and started["tunables"] == TUNABLES, started


def test_other_backends_are_left_alone(monkeypatch):
    # No settings and no restart (a restart would replace this test process): torch and
    # TensorFlow did not train faster with them.
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    for backend in ("tensorflow", "torch"):
        assert allocator.training_environment(backend) == {}
        assert allocator.tune_for_training(backend) is False
    assert "GLIBC_TUNABLES" not in os.environ


@linux_only
def test_training_environment_adds_to_existing_tunables(monkeypatch):
    monkeypatch.delenv("KERAS_VITBN_MALLOC", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert allocator.training_environment("jax") == {"GLIBC_TUNABLES": TUNABLES}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
    assert allocator.training_environment("jax") == {"GLIBC_TUNABLES": f"glibc.pthread.rseq=0:{TUNABLES}"}
    monkeypatch.setenv("GLIBC_TUNABLES", TUNABLES)
    assert allocator.training_environment("jax") == {"GLIBC_TUNABLES": TUNABLES}
    monkeypatch.setenv("KERAS_VITBN_MALLOC", "default")
    assert allocator.training_environment("jax") == {}


def test_opt_out_leaves_malloc_alone(monkeypatch):
    from keras_vitbn.runtime.allocator import tune_malloc

    monkeypatch.setenv("KERAS_VITBN_MALLOC", "default")
    assert tune_malloc() is False
    assert allocator.tune_for_training("jax") is False


def test_configured_backend_follows_keras_rules(monkeypatch, tmp_path):
    import keras

    from keras_vitbn.runtime.allocator import configured_backend

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
