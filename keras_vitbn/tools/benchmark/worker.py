"""One benchmarked process: `python -m keras_vitbn.tools.benchmark.worker SPEC.json`.

The parent (`keras_vitbn.tools.benchmark.run`) sets the thread environment and
`KERAS_BACKEND` before this process imports any framework. `SPEC["backend"]` is a
Keras backend, or "yardstick" for the plain-PyTorch reference training loop.

The worker sets up (model, first-step loss, compilation, one warm-up epoch),
answers `{"ready": ...}` on stdout, then runs one measurement per command read
from stdin (`train`, `epoch`, `infer`, `finish`) and answers each with one JSON
line. The parent sends the commands round-robin to every worker of a model, so
only one process computes at a time and each backend's windows are interleaved
with the others': a slow minute of a shared machine slows every backend alike
instead of the one that happened to run then.
"""

import contextlib
import importlib.util
import json
import os
import resource
import statistics
import sys
import time

import keras
import numpy as np

from keras_vitbn.runtime import auto_distribute, performance
from keras_vitbn.tools.convert import convert_state_dict


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _load_inputs(spec):
    data = np.load(spec["data"])
    return data["x"], data["y"], data["x_infer"]


def compute_dtype(spec):
    """The dtype the matrix products run in: bfloat16 under `mixed_bfloat16`, else float32."""
    return "bfloat16" if spec.get("dtype_policy") == "mixed_bfloat16" else "float32"


def _torch_device():
    """Where PyTorch computes: the GPU when it sees one (as Keras' torch backend does), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _torch_sync(torch):
    if torch.cuda.is_available():  # CUDA runs asynchronously: a timing must wait for the work
        torch.cuda.synchronize()


def _torch_matmul_peak(dtype):
    import torch

    a = torch.from_numpy(np.random.default_rng(0).random((2048, 2048), dtype=np.float32))
    x = a.to(_torch_device(), getattr(torch, dtype))
    return _matmul_peak(lambda: (torch.mm(x, x), _torch_sync(torch)))


def _matmul_peak(matmul, size=2048, repeats=8):
    """FLOP/s of the best of `repeats` (size x size) @ (size x size) products."""
    matmul()  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _real_epoch_data(spec):
    """The trainers' real input pipeline (article augmentation): (dataset, images, description)."""
    # deferred: the trainers' tf.data pipeline loads TensorFlow, which the other measurements do without
    from keras_vitbn.training import TrainConfig, load_data

    config = TrainConfig(
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
    train_ds, _, _, _, provenance = load_data(config)
    return train_ds, provenance["train_images"], provenance["train_description"]


def _in_memory_pipeline(x, y, batch):
    """The trainers' input pipeline over in-memory images, without augmentation.

    Where TensorFlow is not installed (a machine with only JAX or PyTorch), the arrays
    themselves, which `KerasSession._fit` hands to Keras to batch in order.
    """
    if importlib.util.find_spec("tensorflow") is None:
        return (x, y, batch)
    from keras_vitbn.data import Split, make_pipeline  # deferred: tf.data, only where TensorFlow is installed

    return make_pipeline(Split.from_arrays(x, y, int(y.max()) + 1, "benchmark images"), batch)


class _Session:
    """What every worker measures; subclasses set up a model and time its work."""

    def __init__(self, spec):
        self.spec = spec
        self.batch = spec["batch_size"]
        self.result = {"backend": spec["backend"]}
        self.train_times, self.epoch_times, self.infer_times = [], [], []
        self.x, self.y, self.x_infer = _load_inputs(spec)
        self.x_infer = self.x_infer[: spec.get("infer_batch") or 1]
        self.epoch_data = None  # (dataset, images, description), loaded by the first `epoch`

    def ready(self):
        return {"ready": True, "first_step_loss": self.result["first_step_loss"]}

    def train(self):
        """One timed window of `steps` training steps on in-memory batches."""
        self.train_times.append(self._train_window())
        return {"seconds": self.train_times[-1]}

    def epoch(self):
        """One real epoch through the input pipeline; the first call is a warm-up."""
        if self.epoch_data is None:
            self.epoch_data = _real_epoch_data(self.spec)
            seconds = self._real_epoch(self.epoch_data[0])
            self.result["epoch_warmup_seconds"] = seconds
            return {"seconds": seconds, "warmup": True}
        self.epoch_times.append(self._real_epoch(self.epoch_data[0]))
        return {"seconds": self.epoch_times[-1]}

    def infer(self):
        """One forward pass over the inference batch; the first call is a warm-up."""
        seconds = self._infer()
        if "infer_warmup_seconds" not in self.result:
            self.result["infer_warmup_seconds"] = seconds
            return {"seconds": seconds, "warmup": True}
        self.infer_times.append(seconds)
        return {"seconds": seconds}

    def finish(self):
        r, spec = self.result, self.spec
        r["train_window_seconds"] = self.train_times
        median = statistics.median(self.train_times)
        r["train_images_per_s"] = spec["steps"] * self.batch / median
        r["compile_seconds"] = max(0.0, r.pop("warmup_seconds") - median)
        if self.epoch_times:
            _, images, description = self.epoch_data
            r.update(
                epoch_images=images,
                epoch_seconds=self.epoch_times,
                epoch_data=description,
                epoch_images_per_s=images / statistics.median(self.epoch_times),
            )
        if self.infer_times:
            r["infer_seconds"] = self.infer_times
            r["infer_images_per_s"] = len(self.x_infer) / statistics.median(self.infer_times)
        r["peak_rss_mib"] = _peak_rss_mib()
        return r


# ------------------------------------------------------------------ Keras backends


def _keras_matmul_peak(backend, dtype="float32"):
    """The backend's best (2048 x 2048) matrix product in `dtype`, on the device it trains on."""
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    if backend == "jax":
        import jax

        x = jax.numpy.asarray(a, dtype=dtype)
        f = jax.jit(lambda m: m @ m)
        return _matmul_peak(lambda: f(x).block_until_ready())
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.cast(tf.constant(a), dtype)
        f = tf.function(lambda m: tf.matmul(m, m), jit_compile=True)
        return _matmul_peak(lambda: f(x).numpy())
    return _torch_matmul_peak(dtype)


def _compile_kwargs(spec, backend):
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


class KerasSession(_Session):
    def __init__(self, spec):
        super().__init__(spec)
        backend = keras.backend.backend()
        performance.set_threads(spec["threads"], backend)
        self.result.update(backend=backend, keras=keras.__version__)
        self.result["matmul_peak_flops"] = _keras_matmul_peak(backend, compute_dtype(spec))
        if spec.get("dtype_policy") not in (None, "float32"):
            keras.config.set_dtype_policy(spec["dtype_policy"])  # this process builds only this model
        self.result["dtype_policy"] = keras.config.dtype_policy().name
        devices = self._trainer_distribution(spec)
        model = convert_state_dict(dict(np.load(spec["weights"])))
        initial = [keras.ops.convert_to_numpy(w) for w in model.weights]
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        # The loss the first training step computes: initial weights, first batch, batch statistics.
        first = loss_fn(self.y[: self.batch], model(self.x[: self.batch], training=True))
        self.result["first_step_loss"] = float(keras.ops.convert_to_numpy(first))
        for weight, value in zip(model.weights, initial):  # undo the BatchNorm moving-average update
            weight.assign(value)
        settings = _compile_kwargs(spec, backend)
        self.result["settings"] = dict(settings)
        self.result["devices"] = devices
        model.compile(optimizer=keras.optimizers.Adam(spec["learning_rate"], epsilon=1e-8), loss=loss_fn, **settings)
        self.model = model
        self.batches = _in_memory_pipeline(self.x, self.y, self.batch)
        start = time.perf_counter()
        history = self._fit(self.batches)
        self.result["warmup_seconds"] = time.perf_counter() - start
        self.result["warmup_epoch_loss"] = float(history.history["loss"][0])
        self.result["peak_rss_train_mib"] = _peak_rss_mib()

    def _trainer_distribution(self, spec):
        """The trainers' default: data parallel where `auto_distribute` chooses it; returns the device count."""
        if spec["settings"] == "keras-default":
            return 1
        eval_sizes = ([len(self.x_infer)] if spec.get("infer_batch") else []) + (
            [spec["epoch_images"]] if spec.get("epoch_images") else []
        )
        devices, self.result["distribution"] = auto_distribute.apply_default(
            spec["variant"], spec["depth"], self.batch, len(self.x), eval_sizes
        )
        return devices

    def _fit(self, dataset):
        # `fit` returns after the epoch's outputs are synchronised (the loss is read back).
        if isinstance(dataset, tuple):  # numpy arrays, no TensorFlow: see `_in_memory_pipeline`
            x, y, batch = dataset
            return self.model.fit(x, y, batch_size=batch, shuffle=False, epochs=1, verbose=0)
        return self.model.fit(dataset, epochs=1, verbose=0)

    def _train_window(self):
        return _timed(lambda: self._fit(self.batches))

    def _real_epoch(self, dataset):
        return _timed(lambda: self._fit(dataset))

    def _infer(self):
        return _timed(lambda: keras.ops.convert_to_numpy(self.model.predict_on_batch(self.x_infer)))


# ------------------------------------------------------------------ the plain-PyTorch yardstick


class YardstickSession(_Session):
    def __init__(self, spec):
        super().__init__(spec)
        import torch
        import torch.nn.functional as F

        # deferred: the reference imports PyTorch, optional and needed only by this process, the yardstick
        from keras_vitbn.tools.reference.torch_vit import ReferenceViT

        torch.set_num_threads(spec["threads"])
        self.torch, self.F = torch, F
        self.device = _torch_device()
        options = spec.get("yardstick_options") or {}
        # Mixed precision as Keras' mixed_bfloat16 does it: float32 weights, bfloat16 products, BatchNorm
        # statistics in float32 (autocast runs batch_norm in float32).
        self.autocast_dtype = torch.bfloat16 if compute_dtype(spec) == "bfloat16" else None
        settings = {"eager": True, **options, "device": self.device.type}
        if self.autocast_dtype is not None:
            settings["autocast"] = "bfloat16"
        self.result.update(torch=torch.__version__, settings=settings)
        self.result["matmul_peak_flops"] = _torch_matmul_peak(compute_dtype(spec))
        state = {k: torch.from_numpy(v) for k, v in np.load(spec["weights"]).items()}
        self.model = ReferenceViT(spec["variant"], depth=spec["depth"], **options).to(self.device)
        self.model.load_state_dict(state, strict=True)
        self.model.train()
        xs = torch.from_numpy(self.x).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW once, untimed
        ys = torch.from_numpy(self.y.astype("int64"))
        with torch.no_grad(), self._autocast():
            first = F.cross_entropy(self.model(xs[: self.batch].to(self.device)), ys[: self.batch].to(self.device))
            self.result["first_step_loss"] = float(first)
        self.model.load_state_dict(state, strict=True)  # undo the running-statistics update
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=spec["learning_rate"], eps=1e-8)
        self.batches = [(xs[i : i + self.batch], ys[i : i + self.batch]) for i in range(0, len(xs), self.batch)]
        start = time.perf_counter()
        self.result["warmup_epoch_loss"] = self._train_epoch(self.batches)
        self.result["warmup_seconds"] = time.perf_counter() - start
        self.result["peak_rss_train_mib"] = _peak_rss_mib()

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _step(self, xb, yb):
        # Batches come from host memory, as Keras' do from tf.data (a no-op on the CPU).
        xb, yb = xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.F.cross_entropy(self.model(xb), yb)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _train_epoch(self, batches):
        total = sum(self._step(xb, yb) for xb, yb in batches)
        return float(total) / max(1, len(batches))

    def _train_window(self):
        return _timed(lambda: self._train_epoch(self.batches))

    def _real_epoch(self, dataset):
        torch = self.torch

        def run():
            for xb, yb in dataset.as_numpy_iterator():
                self._step(torch.from_numpy(xb).permute(0, 3, 1, 2), torch.from_numpy(yb.astype("int64")))

        return _timed(run)

    def _infer(self):
        torch = self.torch
        self.model.eval()
        xi = torch.from_numpy(self.x_infer).permute(0, 3, 1, 2).contiguous()
        with torch.inference_mode(), self._autocast():
            seconds = _timed(lambda: self.model(xi.to(self.device)).cpu())  # .cpu(): the answer, as Keras returns it
        self.model.train()
        return seconds


COMMANDS = ("train", "epoch", "infer", "finish")


def main(argv=None):
    (spec_path,) = sys.argv[1:] if argv is None else argv
    with open(spec_path) as f:
        spec = json.load(f)
    # Answers go to the original stdout; anything a library prints goes to stderr instead.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def answer(payload):
        answers.write(json.dumps(payload) + "\n")
        answers.flush()

    session = (YardstickSession if spec["backend"] == "yardstick" else KerasSession)(spec)
    answer(session.ready())
    for line in sys.stdin:
        command = line.strip()
        if command not in COMMANDS:
            answer({"error": f"unknown command {command!r}"})
            continue
        answer(getattr(session, command)())
        if command == "finish":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
