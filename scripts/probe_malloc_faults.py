"""JAX ViTBNFFN training steps: minor page faults and CPU seconds per step, malloc arenas.

    KERAS_BACKEND=jax python scripts/probe_malloc_faults.py after|none
    KERAS_BACKEND=jax PYTHONPATH=<checkout of an older commit> python scripts/probe_malloc_faults.py before

before: `import keras_vitbn` from a commit that tuned malloc at import;
after: the trainers' explicit `allocator.tune_for_training()` (restarts with GLIBC_TUNABLES);
none: no opt-in (glibc's defaults)."""

import json
import os
import resource
import sys
import time

mode = sys.argv[1]
if mode == "after":
    from keras_vitbn.runtime import allocator

    allocator.tune_for_training()
else:
    import keras_vitbn  # noqa
import keras
import numpy as np

from keras_vitbn import create_model
from keras_vitbn.runtime import performance
from keras_vitbn.runtime.allocator import arena_count

m = create_model("vit_bnffn", depth=6)
m.compile(
    optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **performance.fit_settings()
)
x = np.random.default_rng(0).random((800, 28, 28, 1), dtype=np.float32)
y = np.arange(800) % 10
m.fit(x, y, batch_size=100, epochs=1, verbose=0)
ru = lambda: resource.getrusage(resource.RUSAGE_SELF)
r0, t0 = ru(), time.perf_counter()
m.fit(x, y, batch_size=100, epochs=3, verbose=0)
r1, t1 = ru(), time.perf_counter()
steps = 24
print(
    json.dumps(
        dict(
            mode=mode,
            arenas=arena_count(),
            faults_per_step=round((r1.ru_minflt - r0.ru_minflt) / steps),
            cpu_s_per_step=round((r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / steps, 3),
            wall_s_per_step=round((t1 - t0) / steps, 3),
            tunables=os.environ.get("GLIBC_TUNABLES"),
        )
    ),
    flush=True,
)
