"""One benchmark measurement in its own process: `python -m keras_vitbn.benchmark.worker SPEC.json OUT.json`.

The parent (`keras_vitbn.benchmark.run`) sets the thread environment and
`KERAS_BACKEND` before this process imports any framework. `SPEC["backend"]` is a
Keras backend, or "yardstick" for the plain-PyTorch reference training loop.
"""

import json
import os
import resource
import statistics
import sys
import time


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _median_rate(times, images):
    return images / statistics.median(times)


def _load_inputs(spec):
    import numpy as np

    data = np.load(spec["data"])
    return data["x"], data["y"], data["x_infer"]


def _matmul_peak(matmul, size=2048, repeats=8):
    """FLOP/s of the best of `repeats` float32 (size x size) @ (size x size) products."""
    matmul()  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


# ------------------------------------------------------------------ Keras backends


class _EpochTimer:
    """Wall time of every epoch of `fit` (outputs are synchronised at epoch end)."""

    def __init__(self):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self.start)

        self.callback = Timer()


def _keras_matmul_peak(backend):
    import numpy as np

    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        x = jnp.asarray(a)
        f = jax.jit(lambda m: m @ m)
        return _matmul_peak(lambda: f(x).block_until_ready())
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.constant(a)
        f = tf.function(lambda m: tf.matmul(m, m), jit_compile=True)
        return _matmul_peak(lambda: f(x).numpy())
    import torch

    x = torch.from_numpy(a)
    return _matmul_peak(lambda: torch.mm(x, x))


def _compile_kwargs(spec, backend):
    from keras_vitbn import performance

    if spec["settings"] == "keras-default":
        settings = dict(performance.KERAS_DEFAULT_SETTINGS)
    else:
        settings = performance.fit_settings(backend)
    if spec.get("jit") not in (None, "default"):
        settings["jit_compile"] = {"on": True, "off": False, "auto": "auto"}[spec["jit"]]
    if spec.get("steps_per_execution"):
        settings["steps_per_execution"] = int(spec["steps_per_execution"])
    if backend == "torch":
        settings["steps_per_execution"] = 1  # the only value the torch backend supports
    return settings


def _build_keras_model(spec):
    import keras
    import numpy as np

    from keras_vitbn.convert import convert_state_dict

    if spec.get("dtype_policy"):
        keras.config.set_dtype_policy(spec["dtype_policy"])
    state = dict(np.load(spec["weights"]))
    return convert_state_dict(state)


def run_keras(spec):
    import keras

    from keras_vitbn import performance

    backend = keras.backend.backend()
    performance.set_threads(spec["threads"], backend)
    result = {"backend": backend, "keras": keras.__version__}
    x, y, x_infer = _load_inputs(spec)
    batch = spec["batch_size"]
    result["matmul_peak_flops"] = _keras_matmul_peak(backend)

    model = _build_keras_model(spec)
    initial = [keras.ops.convert_to_numpy(w) for w in model.weights]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # The loss the first training step computes: initial weights, first batch, batch statistics.
    first = loss_fn(y[:batch], model(x[:batch], training=True))
    result["first_step_loss"] = float(keras.ops.convert_to_numpy(first))
    for weight, value in zip(model.weights, initial):  # undo the BatchNorm moving-average update
        weight.assign(value)

    settings = _compile_kwargs(spec, backend)
    result["settings"] = {k: v for k, v in settings.items()}
    model.compile(
        optimizer=keras.optimizers.Adam(spec["learning_rate"], epsilon=1e-8), loss=loss_fn, **settings
    )
    timer = _EpochTimer().callback
    steps, windows = spec["steps"], spec["windows"]
    history = model.fit(
        x, y, batch_size=batch, epochs=1 + windows, shuffle=False, verbose=0, callbacks=[timer]
    )
    timed = timer.times[1:]
    result["warmup_epoch_loss"] = float(history.history["loss"][0])
    result["train_window_seconds"] = timed
    result["train_images_per_s"] = _median_rate(timed, steps * batch)
    result["compile_seconds"] = max(0.0, timer.times[0] - statistics.median(timed))
    result["peak_rss_train_mib"] = _peak_rss_mib()

    if spec.get("epoch_images"):
        result.update(_keras_real_epoch(spec, model))

    if spec.get("infer_batch"):
        xi = x_infer[: spec["infer_batch"]]
        start = time.perf_counter()
        model.predict_on_batch(xi)
        result["infer_warmup_seconds"] = time.perf_counter() - start
        times = []
        for _ in range(spec["infer_repeats"]):
            start = time.perf_counter()
            keras.ops.convert_to_numpy(model.predict_on_batch(xi))
            times.append(time.perf_counter() - start)
        result["infer_images_per_s"] = _median_rate(times, len(xi))
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


def _real_epoch_config(spec):
    from keras_vitbn.training import TrainConfig

    return TrainConfig(
        dataset=spec["epoch_dataset"],
        source=spec["epoch_source"],
        data_dir=spec["epoch_data_dir"],
        model=spec["model"],
        depth=spec["depth"],
        batch_size=spec["batch_size"],
        train_subset=spec["epoch_images"],
        test_subset=spec["batch_size"],
        augment="article",
        seed=0,
    )


def _keras_real_epoch(spec, model):
    """Images/s of `fit` epochs through the trainers' real input pipeline (article augmentation)."""
    from keras_vitbn.training import load_data

    train_ds, _, _, _, provenance = load_data(_real_epoch_config(spec))
    timer = _EpochTimer().callback
    model.fit(train_ds, epochs=1 + spec["epoch_repeats"], verbose=0, callbacks=[timer])
    images = provenance["train_images"]
    return {
        "epoch_images": images,
        "epoch_seconds": timer.times[1:],
        "epoch_images_per_s": _median_rate(timer.times[1:], images),
        "epoch_data": provenance["train_description"],
    }


# ------------------------------------------------------------------ the plain-PyTorch yardstick


def run_yardstick(spec):
    import numpy as np
    import torch
    import torch.nn.functional as F

    from keras_vitbn.reference.torch_vit import ReferenceViT

    torch.set_num_threads(spec["threads"])
    result = {"backend": "yardstick", "torch": torch.__version__}
    options = spec.get("yardstick_options") or {}
    result["settings"] = {"eager": True, **options}
    x, y, x_infer = _load_inputs(spec)
    batch, steps, windows = spec["batch_size"], spec["steps"], spec["windows"]
    a = torch.from_numpy(np.random.default_rng(0).random((2048, 2048), dtype=np.float32))
    result["matmul_peak_flops"] = _matmul_peak(lambda: torch.mm(a, a))

    state = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
    model = ReferenceViT(spec["variant"], depth=spec["depth"], **options)
    model.load_state_dict(state, strict=True)
    model.train()
    xs = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW once, outside the timing
    ys = torch.from_numpy(y.astype("int64"))
    with torch.no_grad():
        result["first_step_loss"] = float(F.cross_entropy(model(xs[:batch]), ys[:batch]))
    model.load_state_dict(state, strict=True)  # undo the running-statistics update
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["learning_rate"], eps=1e-8)

    def train_epoch(batches):
        total = 0.0
        for xb, yb in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        return float(total) / max(1, len(batches))

    memory_batches = [(xs[i : i + batch], ys[i : i + batch]) for i in range(0, steps * batch, batch)]
    times = []
    for epoch in range(1 + windows):
        start = time.perf_counter()
        mean_loss = train_epoch(memory_batches)
        times.append(time.perf_counter() - start)
        if epoch == 0:
            result["warmup_epoch_loss"] = mean_loss
    result["train_window_seconds"] = times[1:]
    result["train_images_per_s"] = _median_rate(times[1:], steps * batch)
    result["compile_seconds"] = max(0.0, times[0] - statistics.median(times[1:]))
    result["peak_rss_train_mib"] = _peak_rss_mib()

    if spec.get("epoch_images"):
        from keras_vitbn.training import load_data

        train_ds, _, _, _, provenance = load_data(_real_epoch_config(spec))
        epoch_times = []
        for _ in range(1 + spec["epoch_repeats"]):
            start = time.perf_counter()
            for xb, yb in train_ds.as_numpy_iterator():
                xb = torch.from_numpy(xb).permute(0, 3, 1, 2)
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), torch.from_numpy(yb.astype("int64"))).backward()
                optimizer.step()
            epoch_times.append(time.perf_counter() - start)
        result["epoch_images"] = provenance["train_images"]
        result["epoch_seconds"] = epoch_times[1:]
        result["epoch_images_per_s"] = _median_rate(epoch_times[1:], provenance["train_images"])
        result["epoch_data"] = provenance["train_description"]

    if spec.get("infer_batch"):
        model.eval()
        xi = torch.from_numpy(x_infer[: spec["infer_batch"]]).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode():
            start = time.perf_counter()
            model(xi)
            result["infer_warmup_seconds"] = time.perf_counter() - start
            infer_times = []
            for _ in range(spec["infer_repeats"]):
                start = time.perf_counter()
                model(xi)
                infer_times.append(time.perf_counter() - start)
        result["infer_images_per_s"] = _median_rate(infer_times, len(xi))
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    result = {"load_average_start": os.getloadavg()[0]}
    result.update(run_yardstick(spec) if spec["backend"] == "yardstick" else run_keras(spec))
    result["load_average_end"] = os.getloadavg()[0]
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
