"""torch eager ViTBNFFN (depth 6, batch 100) training steps: CPU seconds per step, one thread.

    KERAS_BACKEND=torch OMP_NUM_THREADS=1 python scripts/probe_torch_step.py LABEL

CPU seconds move less than wall-clock time on a shared machine; alternate runs of two checkouts.
"""

import json
import resource
import sys
import time

import keras
import numpy as np

import keras_vitbn  # noqa: F401 - registers the layers
from keras_vitbn import create_model
from keras_vitbn.runtime import performance

m = create_model("vit_bnffn", depth=6)
m.compile(
    optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **performance.fit_settings()
)
x = np.random.default_rng(0).random((1000, 28, 28, 1), dtype=np.float32)
y = np.arange(1000) % 10
m.fit(x[:300], y[:300], batch_size=100, epochs=1, verbose=0)
ru = lambda: resource.getrusage(resource.RUSAGE_SELF)
r0, t0 = ru(), time.perf_counter()
m.fit(x, y, batch_size=100, epochs=1, verbose=0)
r1, t1 = ru(), time.perf_counter()
print(
    json.dumps(
        dict(
            mode=sys.argv[1],
            cpu_s_per_step=round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / 10, 4),
            wall_s_per_step=round((t1 - t0) / 10, 3),
        )
    ),
    flush=True,
)
