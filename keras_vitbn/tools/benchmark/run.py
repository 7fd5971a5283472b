"""Runs the benchmark: one subprocess per (model, backend), the yardstick, the table."""

import datetime
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from keras_vitbn.data import locations
from keras_vitbn.data.idx import read_idx
from keras_vitbn.runtime import BACKENDS, allocator, auto_distribute, performance
from keras_vitbn.tools.benchmark.worker import compute_dtype
from keras_vitbn.utils.machine import cpu_id

MODELS = {"vit_bnffn": "ViTBNFFN", "vit": "ViT"}
# |first-step loss difference| allowed between any backend and the yardstick.
FIRST_STEP_ATOL = 1e-4
# Relative difference allowed in the mean loss of the first (warm-up) epoch, which
# follows the same data and updates on every backend.
WARMUP_LOSS_RTOL = 1e-3
# The same two checks under mixed_bfloat16, where every backend rounds its products
# to bfloat16's 8 bits in its own order: at depth 6 the backends were up to 4.5e-4 and
# 5.4e-4 (relative) from the yardstick; ViT and ViTBNFFN's first-step losses differ by 2e-2.
MIXED_FIRST_STEP_ATOL = 1e-2
MIXED_WARMUP_LOSS_RTOL = 5e-3


def guard_tolerances(dtype_policy):
    """(first-step loss atol, warm-up loss rtol) of the correctness guard under `dtype_policy`."""
    if dtype_policy == "mixed_bfloat16":
        return MIXED_FIRST_STEP_ATOL, MIXED_WARMUP_LOSS_RTOL
    return FIRST_STEP_ATOL, WARMUP_LOSS_RTOL


def _inputs(data_root, images, infer_images, seed=0):
    """Real MNIST test digits (NHWC float32 in [0, 1]) if available, else random pixels."""
    path = os.path.join(data_root or "", "mnist-test", "t10k-images-idx3-ubyte.gz")
    rng = np.random.default_rng(seed)
    if os.path.isfile(path):
        pool = read_idx(path)[..., None].astype("float32") / 255.0
        labels = read_idx(path.replace("t10k-images-idx3", "t10k-labels-idx1")).astype("int64")
        source = "MNIST test images"
    else:
        pool = rng.random((10_000, 28, 28, 1), dtype=np.float32)
        labels = rng.integers(0, 10, 10_000)
        source = "random pixels (no MNIST test files found)"
    take = lambda n: np.resize(np.arange(len(pool)), n)  # noqa: E731  (repeat the pool if needed)
    x, y = pool[take(images)], labels[take(images)]
    return x, y, pool[take(infer_images)], source


def initial_weights(variant, depth, seed=0):
    """The reference PyTorch model's initialisation (torch.manual_seed), as {key: numpy}."""
    import torch

    # deferred: the reference imports PyTorch, optional: a run needs it, the tables and CSV rows of results do not
    from keras_vitbn.tools.reference.torch_vit import ReferenceViT

    torch.manual_seed(seed)
    model = ReferenceViT(variant, depth=depth)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class Worker:
    """A benchmark worker subprocess, driven one JSON command and answer at a time."""

    def __init__(self, spec, workdir, threads, timeout, env=None):
        self.backend, self.timeout, self.error = spec["backend"], timeout, None
        name = f"{spec['model']}-{spec.get('label', spec['backend'])}"
        spec_path = os.path.join(workdir, f"{name}.spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        backend = spec["backend"] if spec["backend"] != "yardstick" else "torch"
        # The trainers' malloc settings (JAX only), from the start: see keras_vitbn.runtime.allocator.
        env = {
            **os.environ,
            **performance.thread_environment(threads),
            **allocator.training_environment(backend),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            **(env or {}),
        }
        env["KERAS_BACKEND"] = backend
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in close()); a file, not a pipe: a full pipe would block the worker
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keras_vitbn.tools.benchmark.worker", spec_path],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._answer()  # {"ready": ...} once set up, or None with self.error set

    def _answer(self):
        if self.error:
            return None
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if not ready:
            self.process.kill()
            self.error = f"no answer within {self.timeout} s"
        else:
            self.process.wait()
            self._stderr.flush()
            with open(self.stderr_path) as f:
                tail = [line for line in f.read().strip().splitlines() if line.strip()]
            self.error = tail[-1] if tail else f"exited with status {self.process.returncode}"
        return None

    def ask(self, command):
        """Runs one measurement (`train`, `epoch`, `infer` or `finish`); None once the worker failed."""
        if self.error:
            return None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stderr.close()

    def failure(self):
        with open(self.stderr_path) as f:
            return {"backend": self.backend, "error": self.error, "stderr": f.read()[-4000:]}


def measure_interleaved(specs, workdir, threads, timeout, windows, epoch_repeats, infer_repeats, log=print):
    """Starts one worker per spec, one after another, then runs their measurements round-robin.

    Setup (compilation, warm-up) runs alone. Every timed window, real epoch and
    inference pass then runs while the other workers wait, and round by round, so
    the backends share the machine's good and bad minutes. Returns {label: result}.
    """
    workers = {}
    try:
        for label, (spec, env) in specs.items():
            log(f"[benchmark]   setting up {label} ...")
            workers[label] = Worker(spec, workdir, threads, timeout, env)
        first = next(iter(specs.values()), ({}, None))[0]
        rounds = [("train", windows)]
        if first.get("epoch_images"):
            rounds.append(("epoch", 1 + epoch_repeats))  # the first epoch is a warm-up
        if first.get("infer_batch"):
            rounds.append(("infer", 1 + infer_repeats))
        for command, repeats in rounds:
            for _ in range(repeats):
                for worker in workers.values():
                    worker.ask(command)
            log(f"[benchmark]   {command}: {repeats} round(s) done")
        results = {}
        for label, worker in workers.items():
            answer = worker.ask("finish")
            results[label] = answer if answer is not None else worker.failure()
        return results
    finally:
        for worker in workers.values():
            worker.close()


def _worker_env(backend, model, depth, settings, threads):
    """The trainers' default device setup (`keras_vitbn.runtime.auto_distribute`) for a Keras worker."""
    if backend != "jax" or settings == "keras-default":
        return None
    env = {"XLA_FLAGS": performance.thread_environment(threads)["XLA_FLAGS"]}
    return env if auto_distribute.request_cpu_devices(model, depth, environ=env, backend="jax") else None


# The settings recorded in the results' "config", in this order; the worker spec carries them all.
CONFIG_KEYS = (
    "depth",
    "batch_size",
    "steps",
    "windows",
    "jit",
    "settings",
    "steps_per_execution",
    "epoch_images",
    "infer_batch",
    "learning_rate",
    "dtype_policy",
)


def run_benchmark(
    models=("vit_bnffn", "vit"),
    depth=6,
    batch_size=100,
    backends=BACKENDS,
    steps=20,
    windows=10,
    jit="default",
    settings="tuned",
    steps_per_execution=None,
    threads=None,
    epoch_images=5_000,
    epoch_repeats=3,
    epoch_dataset="fashion_mnist",
    epoch_source="idx",
    epoch_data_dir=None,
    infer_batch=5000,
    infer_repeats=3,
    learning_rate=1e-3,
    dtype_policy=None,
    yardstick=True,
    yardstick_options=None,
    data_root=None,
    timeout=1800,
    log=print,
    partial_path=None,
):
    """Measures every (model, backend) and the yardstick; returns the results dict.

    See `python -m keras_vitbn.tools.benchmark --help` for the arguments. `data_root` None:
    `keras_vitbn.data.locations.data_root()` ($KERAS_VITBN_DATA); without a data folder the
    timed batches are random pixels and the real epoch needs `epoch_data_dir` (or
    `epoch_images=0`). `partial_path`, if given, is rewritten with the raw results after
    every model.
    """
    threads = int(threads or os.cpu_count() or 1)
    _check_arguments(models, batch_size, backends, epoch_images)
    data_root = data_root or locations.data_root()
    if epoch_images and epoch_data_dir is None and epoch_source == "idx":
        epoch_data_dir = _fashion_mnist_dir(data_root)
    spec = dict(
        depth=depth,
        batch_size=batch_size,
        steps=steps,
        windows=windows,
        jit=jit,
        settings=settings,
        steps_per_execution=steps_per_execution,
        threads=threads,
        epoch_images=epoch_images,
        epoch_repeats=epoch_repeats,
        epoch_dataset=epoch_dataset,
        epoch_source=epoch_source,
        epoch_data_dir=epoch_data_dir,
        infer_batch=infer_batch,
        infer_repeats=infer_repeats,
        learning_rate=learning_rate,
        dtype_policy=dtype_policy,
        yardstick_options=yardstick_options or {},
    )
    labels = (("yardstick",) if yardstick else ()) + tuple(backends)
    results = _new_results(spec)
    with tempfile.TemporaryDirectory(prefix="keras_vitbn_bench_") as workdir:
        x, y, x_infer, results["config"]["data"] = _inputs(data_root, steps * batch_size, infer_batch or 1)
        spec["data"] = os.path.join(workdir, "data.npz")
        np.savez(spec["data"], x=x, y=y, x_infer=x_infer)
        for model in models:
            results["runs"][model] = _measure_model(model, spec, labels, workdir, timeout, log)
            if partial_path:  # what is measured so far survives an interrupted run
                with open(partial_path, "w") as f:
                    json.dump(results, f, indent=1)
    results["machine"]["load_average_end"] = os.getloadavg()
    add_derived_figures(results)
    return results


def _check_arguments(models, batch_size, backends, epoch_images):
    if epoch_images and epoch_images % batch_size:
        raise ValueError(f"epoch images {epoch_images} must be a multiple of the batch size {batch_size}")
    for backend in backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    for model in models:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}: the benchmark knows {', '.join(MODELS)}")


def _fashion_mnist_dir(data_root):
    """The real epoch's IDX folder in the data folder, or a ValueError that says what to do without one."""
    if data_root is None:
        raise ValueError(
            "the real epoch reads Fashion-MNIST from the data folder, and none was found: set "
            "KERAS_VITBN_DATA, pass --epoch-data-dir, or skip the epoch with --epoch-images 0"
        )
    return os.path.join(data_root, "fashion-mnist")


def _new_results(spec):
    """The results dict before any measurement: the command, the machine and the configuration."""
    return {
        "command": " ".join(sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_id(),
            "cpu_count": os.cpu_count(),
            "threads": spec["threads"],
            "load_average_start": os.getloadavg(),
        },
        "config": {
            **{key: spec[key] for key in CONFIG_KEYS},
            "optimizer": "Adam(lr, epsilon=1e-8)",
            "image_shape": [28, 28, 1],
            "training_flops_per_image": performance.vit_training_flops(spec["depth"]),
        },
        "runs": {},
    }


def _measure_model(model, spec, labels, workdir, timeout, log):
    """One model on every backend in `labels`, from the reference's initial weights: {label: result}."""
    weights_path = os.path.join(workdir, f"{model}-weights.npz")
    np.savez(weights_path, **initial_weights(model, spec["depth"]))
    base = {"model": model, "variant": model, **spec, "weights": weights_path}
    log(f"[benchmark] {MODELS[model]}: {', '.join(labels)}, interleaved")
    specs = {
        label: ({**base, "backend": label}, _worker_env(label, model, spec["depth"], spec["settings"], spec["threads"]))
        for label in labels
    }
    runs = measure_interleaved(
        specs, workdir, spec["threads"], timeout, spec["windows"], spec["epoch_repeats"], spec["infer_repeats"], log
    )
    for label, run in runs.items():
        if "error" in run:
            log(f"[benchmark]   {label} failed: {run['error']}")
        else:
            log(f"[benchmark]   {label}: {run['train_images_per_s']:.0f} training images/s")
    return runs


def add_derived_figures(results):
    """Ratios to the yardstick, FLOP/s as a fraction of the matmul peak, and the correctness guard."""
    flops = results["config"]["training_flops_per_image"]
    peaks = [
        r["matmul_peak_flops"] for runs in results["runs"].values() for r in runs.values() if "matmul_peak_flops" in r
    ]
    peak = max(peaks) if peaks else None
    results["machine"]["matmul_peak_flops"] = peak
    first_atol, warm_rtol = guard_tolerances(results["config"].get("dtype_policy"))
    guard_ok = True
    for runs in results["runs"].values():
        reference = runs.get("yardstick", {})
        for run in runs.values():
            if "error" in run:
                guard_ok = False
                continue
            run["train_flops_per_s"] = run["train_images_per_s"] * flops
            run["fraction_of_matmul_peak"] = run["train_flops_per_s"] / peak if peak else None
            if "epoch_images_per_s" in run:
                run["epoch_vs_model_only"] = run["epoch_images_per_s"] / run["train_images_per_s"]
            if "train_images_per_s" in reference:
                run["ratio_to_yardstick"] = run["train_images_per_s"] / reference["train_images_per_s"]
                first = abs(run["first_step_loss"] - reference["first_step_loss"])
                warm = abs(run["warmup_epoch_loss"] - reference["warmup_epoch_loss"]) / abs(
                    reference["warmup_epoch_loss"]
                )
                run["first_step_loss_diff"] = first
                run["warmup_loss_rel_diff"] = warm
                run["same_work"] = bool(first <= first_atol and warm <= warm_rtol)
                guard_ok = guard_ok and run["same_work"]
    results["same_work"] = guard_ok


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def window_range(run):
    """The slowest and the fastest timed window in images/s, e.g. `1504-1794`: a median hides a slow stretch."""
    seconds = run["train_window_seconds"]
    images = run["train_images_per_s"] * statistics.median(seconds)  # per window
    return f"{images / max(seconds):.0f}-{images / min(seconds):.0f}"


def format_markdown(results):
    """The results as a Markdown table (one row per model and backend)."""
    m, c = results["machine"], results["config"]
    peak = m.get("matmul_peak_flops")
    lines = [
        f"Benchmark {results['date']}: {m['processor']}, {m['cpu_count']} CPUs, {m['threads']} threads; "
        f"load average {m['load_average_start'][0]:.2f} at start, {m['load_average_end'][0]:.2f} at end.",
        f"Depth {c['depth']}, batch {c['batch_size']}, 28x28x1, Adam; {c['windows']} windows of {c['steps']} steps "
        f"(median); settings `{c['settings']}`, jit `{c['jit']}`; {c['data']}. "
        f"Training FLOPs/image {c['training_flops_per_image'] / 1e6:.1f} M; measured {compute_dtype(c)} matmul peak "
        f"{_fmt(peak and peak / 1e9, '.0f')} GFLOP/s"
        + (f"; dtype policy {c['dtype_policy']}." if c.get("dtype_policy") not in (None, "float32") else "."),
        "",
        "| model | backend | settings | train img/s | windows (slowest-fastest) | x yardstick | % matmul peak | "
        "real epoch img/s | epoch/model-only | infer img/s (batch) | compile+warm-up s | peak RSS MiB | "
        "first-step loss | warm-up loss | same work |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, runs in results["runs"].items():
        for backend, r in runs.items():
            if "error" in r:
                lines.append(f"| {MODELS[model]} | {backend} | failed: {r['error']} |" + " |" * 12)
                continue
            settings = ", ".join(
                f"{k}={v}" for k, v in {**r.get("settings", {}), "devices": r.get("devices")}.items() if v is not None
            )
            peak = r["fraction_of_matmul_peak"]
            lines.append(
                f"| {MODELS[model]} | {backend} | {settings} | {r['train_images_per_s']:.0f} | {window_range(r)} | "
                f"{_fmt(r.get('ratio_to_yardstick'), '.2f')} | {_fmt(peak and 100 * peak, '.0f')} | "
                f"{_fmt(r.get('epoch_images_per_s'), '.0f')} | {_fmt(r.get('epoch_vs_model_only'), '.2f')} | "
                f"{_fmt(r.get('infer_images_per_s'), '.0f')} ({c['infer_batch']}) | {r['compile_seconds']:.1f} | "
                f"{r['peak_rss_mib']:.0f} | {r['first_step_loss']:.6f} | {r['warmup_epoch_loss']:.5f} | "
                f"{'yes' if r.get('same_work', True) else 'NO'} |"
            )
    first_atol, warm_rtol = guard_tolerances(c.get("dtype_policy"))
    lines.append("")
    lines.append(
        f"Correctness guard (every backend vs the yardstick: first-step loss within {first_atol:g}, "
        f"warm-up-epoch mean loss within {warm_rtol:g} relative): "
        f"{'passed' if results['same_work'] else 'FAILED'}."
    )
    return "\n".join(lines)


def write_results(results, output):
    """Writes OUTPUT.json and OUTPUT.md; returns the two paths."""
    directory = os.path.dirname(os.path.abspath(output))
    os.makedirs(directory, exist_ok=True)
    with open(output + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(output + ".md", "w") as f:
        f.write(format_markdown(results) + "\n")
    return output + ".json", output + ".md"
