"""keras_vitbn without TensorFlow: JAX or torch alone build, fit on numpy, save and load; tf.data says what it needs."""

import os
import subprocess
import sys

import keras
import pytest

from tests.testing import ROOT

HIDE_TENSORFLOW = os.path.join(ROOT, "tests", "no_tensorflow")  # its sitecustomize hides tensorflow*

CODE = r"""
import importlib.util, os, sys
import numpy as np
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is still importable"
import keras, keras_vitbn

model = keras_vitbn.create_model("vit_bnffn", depth=1, dim=16, heads=2, dim_head=8, mlp_dim=16)
model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
x = np.random.default_rng(0).random((20, 28, 28, 1), dtype=np.float32)
y = np.arange(20) % 10
history = model.fit(x, y, batch_size=10, epochs=1, verbose=0)
assert np.isfinite(history.history["loss"][0])
path = os.path.join(sys.argv[1], "model.keras")
model.save(path)
np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)

# Neither do the IDX reader, the data locations and the benchmark's runner.
from keras_vitbn.data import read_idx
from keras_vitbn.data.locations import data_root
from keras_vitbn.tools.benchmark.run import run_benchmark
try:
    from keras_vitbn.training import train
except ImportError as error:
    message = str(error)
else:
    raise AssertionError("the tf.data trainers imported without TensorFlow")
assert "need TensorFlow" in message and "\n" not in message, message
print("tensorflow modules:", sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
"""


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="the TensorFlow backend needs TensorFlow")
def test_models_fit_and_save_without_tensorflow(tmp_path):
    env = {
        **os.environ,
        "KERAS_BACKEND": keras.backend.backend(),
        "PYTHONPATH": os.pathsep.join([HIDE_TENSORFLOW, ROOT]),
    }
    result = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tensorflow modules: []" in result.stdout
