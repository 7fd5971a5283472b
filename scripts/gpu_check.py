"""The prepared GPU check: models' tests, fit epochs, GPU-to-CPU reload and the benchmark, as files.

Made for a machine that has JAX and PyTorch with CUDA but no TensorFlow (the
models and `model.fit` on numpy arrays need none), inside a 10-minute limit:

    scripts/gpu_check.sh OUT              # on the GPU machine: installs carried wheels offline, runs this
    python scripts/gpu_check.py --out OUT # anywhere; without a GPU it runs on the CPU, small (--tiny)

Each step runs in its own subprocess (one Keras backend per process) under a
share of the time limit, and a step that fails or runs out of time is recorded
and the next one runs. Writes under OUT (seven files, flat):

    devices.json     per backend: versions, the device Keras computes on, whether TensorFlow is there
    fit.csv          one `fit` epoch of ViTBNFFN (depth 6) per backend at batch 100 and at a large batch
    save_load.json   a .keras saved where the model trained (the GPU), loaded on the CPU: logit differences
    benchmark.json   `keras_vitbn.tools.benchmark`'s model-only training images/s per backend and the
    benchmark.md     plain-PyTorch yardstick's, on the same device
    tests.json       the models' and layers' tests (pytest) per backend: counts and the output's tail
    summary.json     every step's status and seconds; the exit code is 0 only if every step passed
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("jax", "torch")
SAMPLE = os.path.join(ROOT, "tests", "fixtures", "mnist_sample.npz")
# Logits of a model saved on the GPU and reloaded on the CPU. The GPU side computes at
# full float32 precision (JAX would otherwise use TF32 products on Ampere and later).
LOGIT_ATOL = 1e-4
FULL = dict(
    depth=6,
    epoch_images=60_000,
    batch_sizes=(100, 1000),
    bench_steps=20,
    bench_windows=5,
    tests=("tests/test_models.py", "tests/test_layers.py"),
)
TINY = dict(
    depth=1,
    epoch_images=400,
    batch_sizes=(100, 200),
    bench_steps=2,
    bench_windows=1,
    tests=("tests/test_models.py::test_article_defaults",),
)
# Shares of the time limit, in the order the steps run (most important first).
SHARES = {"devices": 0.1, "fit": 0.25, "save_load": 0.15, "benchmark": 0.25, "tests": 0.25}


def _child_env(backend, cpu=False):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    # Several JAX processes share the GPU one after another; JAX would otherwise take 75% of it at start.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return env


def _run_child(step, backend, args, timeout, cpu=False, extra_env=None):
    """Runs this script's `--child step` on `backend`; returns (status, parsed JSON result or None, output tail)."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        step,
        "--backend",
        backend,
        "--child-args",
        json.dumps(args),
    ]
    env = {**_child_env(backend, cpu), **(extra_env or {})}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(1.0, timeout), env=env, cwd=ROOT)
    except subprocess.TimeoutExpired as error:
        tail = (error.stdout or b"")[-2000:]
        return "timeout", None, tail.decode(errors="replace") if isinstance(tail, bytes) else tail
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1][len("RESULT ") :]) if lines else None
    status = "passed" if proc.returncode == 0 and result is not None else "failed"
    return status, result, (proc.stdout + proc.stderr)[-3000:]


# ---------------------------------------------------------------- child steps (one backend each)


def _sample_images(count, seed=0):
    """`count` real MNIST digits (the repository's 600, repeated), NHWC float32 in [0, 1]."""
    import numpy as np

    with np.load(SAMPLE) as data:
        x, y = data["x"], data["y"].astype("int64")
    order = np.resize(np.random.default_rng(seed).permutation(len(x)), count)
    return x[order][..., None].astype("float32") / 255.0, y[order]


def _device():
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return {
            "platform": device.platform,
            "name": getattr(device, "device_kind", str(device)),
            "count": len(jax.devices()),
            "jax": jax.__version__,
        }
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return {
                "platform": "gpu",
                "name": torch.cuda.get_device_name(0),
                "count": torch.cuda.device_count(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
            }
        return {"platform": "cpu", "name": "cpu", "count": 1, "torch": torch.__version__}
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {"platform": "gpu" if gpus else "cpu", "name": gpus[0].name if gpus else "cpu", "count": len(gpus) or 1}


def child_devices(args):
    import importlib.util

    import keras

    import keras_vitbn

    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "keras_vitbn": keras_vitbn.__version__,
        "python": sys.version.split()[0],
        "tensorflow_installed": importlib.util.find_spec("tensorflow") is not None,
        "device": _device(),
    }


def _compiled_model(depth, seed=0):
    import keras

    import keras_vitbn
    from keras_vitbn.runtime import performance

    keras.utils.set_random_seed(seed)
    model = keras_vitbn.create_model("vit_bnffn", depth=depth)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **performance.fit_settings(),
    )
    return model


def child_fit(args):
    """One timed epoch per batch size, after a short untimed fit that compiles the step."""
    rows = []
    x, y = _sample_images(args["epoch_images"])
    for batch in args["batch_sizes"]:
        model = _compiled_model(args["depth"])
        model.fit(x[: 3 * batch], y[: 3 * batch], batch_size=batch, epochs=1, verbose=0)  # compile, warm up
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # returns once the last loss is read
        seconds = time.perf_counter() - start
        rows.append(
            {
                "batch_size": batch,
                "images": len(x),
                "seconds": round(seconds, 3),
                "images_per_s": round(len(x) / seconds, 1),
                "loss": round(history.history["loss"][-1], 4),
                "accuracy": round(history.history["accuracy"][-1], 4),
            }
        )
    return {"device": _device(), "depth": args["depth"], "rows": rows}


def child_save(args):
    """Trains a few steps (BatchNorm statistics move), saves the .keras and the logits it gives here."""
    import numpy as np

    model = _compiled_model(args["depth"])
    x, y = _sample_images(500)
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    model.save(args["model"])
    probe, _ = _sample_images(256, seed=1)
    np.save(args["logits"], np.asarray(model.predict(probe, batch_size=256, verbose=0), dtype="float64"))
    return {"device": _device()}


def child_load(args):
    """Loads the .keras on this process' device (the CPU) and compares its logits with the saved ones."""
    import keras
    import numpy as np

    import keras_vitbn  # noqa: F401  (registers the model classes)

    model = keras.saving.load_model(args["model"])
    probe, _ = _sample_images(256, seed=1)
    here = np.asarray(model.predict(probe, batch_size=256, verbose=0), dtype="float64")
    there = np.load(args["logits"])
    return {
        "device": _device(),
        "max_abs_diff": float(np.max(np.abs(here - there))),
        "max_abs_logit": float(np.max(np.abs(there))),
        "same_argmax": bool(np.array_equal(here.argmax(-1), there.argmax(-1))),
    }


def child_benchmark(args):
    from keras_vitbn.tools.benchmark.run import format_markdown, run_benchmark

    results = run_benchmark(
        models=["vit_bnffn"],
        depth=args["depth"],
        batch_size=100,
        backends=args["backends"],
        steps=args["bench_steps"],
        windows=args["bench_windows"],
        epoch_images=0,
        infer_batch=0,
        data_root=None,
        timeout=args["timeout"],
        log=lambda *a: print(*a, flush=True),
    )
    with open(args["json"], "w") as f:
        json.dump(results, f, indent=1, default=str)
    with open(args["md"], "w") as f:
        f.write(format_markdown(results) + "\n")
    runs = results["runs"]["vit_bnffn"]
    return {
        label: {k: run.get(k) for k in ("train_images_per_s", "ratio_to_yardstick", "error") if k in run}
        for label, run in runs.items()
    } | {"same_work": results.get("same_work")}


CHILDREN = {
    "devices": child_devices,
    "fit": child_fit,
    "save": child_save,
    "load": child_load,
    "benchmark": child_benchmark,
}


# ---------------------------------------------------------------- the parent: steps, budget, files


def _pytest_counts(text):
    counts = {}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", text):
        counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    return counts


def run_tests(backend, tests, timeout):
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=max(1.0, timeout), env=_child_env(backend), cwd=ROOT
        )
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as error:
        out = error.stdout or ""
        text, code = (out.decode(errors="replace") if isinstance(out, bytes) else out), None
    counts = _pytest_counts(text.strip().splitlines()[-1] if text.strip() else "")
    status = "timeout" if code is None else ("passed" if code == 0 else "failed")
    return {
        "status": status,
        "returncode": code,
        "counts": counts,
        "seconds": round(time.perf_counter() - start, 1),
        "tail": text[-2500:],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-check", help="folder for the result files (default %(default)s)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=("jax", "torch", "tensorflow"))
    parser.add_argument("--time-limit", type=float, default=540.0, help="seconds for every step together")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="small sizes (the default where no GPU is seen)")
    size.add_argument("--full", action="store_true", help="the GPU sizes even where no GPU is seen")
    parser.add_argument("--large-batch", type=int, default=None, help="the large fit batch (default 1000; tiny 200)")
    parser.add_argument("--tests", nargs="+", default=None, help="pytest arguments for the tests step")
    parser.add_argument("--devices", action="store_true", help="only print what each backend computes on")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        result = CHILDREN[args.child](json.loads(args.child_args))
        print("RESULT " + json.dumps(result, default=str), flush=True)
        return 0

    start = time.perf_counter()
    deadline = start + args.time_limit
    if not args.devices:
        os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="keras_vitbn_gpu_check_")
    summary = {
        "command": " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "time_limit_s": args.time_limit,
        "steps": {},
    }

    def budget(step):
        """The time left, less what the steps after `step` are owed: time a step leaves unused goes on."""
        later = list(SHARES)[list(SHARES).index(step) + 1 :]
        return max(1.0, deadline - time.perf_counter() - sum(SHARES[s] for s in later) * args.time_limit)

    def record(step, status, began, **extra):
        summary["steps"][step] = {"status": status, "seconds": round(time.perf_counter() - began, 1), **extra}
        print(f"[gpu_check] {step}: {status} in {summary['steps'][step]['seconds']} s", flush=True)

    def write(name, payload):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(payload, f, indent=1, default=str)

    # Devices first: they decide the sizes.
    began = time.perf_counter()
    devices, failures = {}, {}
    for backend in args.backends:
        status, result, tail = _run_child("devices", backend, {}, budget("devices") / len(args.backends))
        devices[backend] = result if result is not None else {"status": status, "tail": tail}
        if result is None:
            failures[backend] = status
    if args.devices:  # `make gpu-venv`'s look at the new environment: printed, no files
        print(json.dumps(devices, indent=1, default=str))
        return 0 if not failures else 1
    write("devices.json", devices)
    record("devices", "passed" if not failures else "failed", began, failures=failures)
    accelerated = any((d.get("device") or {}).get("platform") == "gpu" for d in devices.values())
    tiny = args.tiny or (not accelerated and not args.full)
    sizes = dict(TINY if tiny else FULL)
    if args.large_batch:
        sizes["batch_sizes"] = (100, args.large_batch)
    summary.update(accelerator=accelerated, sizes="tiny" if tiny else "full")
    print(f"[gpu_check] {'GPU' if accelerated else 'no GPU: CPU fallback'}, {summary['sizes']} sizes", flush=True)

    # One fit epoch per backend at each batch size.
    began = time.perf_counter()
    rows, statuses = [], {}
    for i, backend in enumerate(args.backends):
        share = budget("fit") / (len(args.backends) - i)
        status, result, tail = _run_child("fit", backend, sizes, share)
        statuses[backend] = status
        for row in (result or {}).get("rows", []):
            rows.append({"backend": backend, "device": result["device"]["name"], "depth": result["depth"], **row})
        if result is None:
            print(tail, flush=True)
    with open(os.path.join(args.out, "fit.csv"), "w", newline="") as f:
        fields = ["backend", "device", "depth", "batch_size", "images", "seconds", "images_per_s", "loss", "accuracy"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    record("fit", "passed" if all(s == "passed" for s in statuses.values()) else "failed", began, backends=statuses)

    # Saved where it trained, loaded on the CPU.
    began = time.perf_counter()
    checks = {}
    for i, backend in enumerate(args.backends):
        share = budget("save_load") / (len(args.backends) - i)
        paths = {
            "model": os.path.join(work, f"{backend}.keras"),
            "logits": os.path.join(work, f"{backend}.npy"),
            "depth": sizes["depth"],
        }
        full_precision = {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}
        status, saved, tail = _run_child("save", backend, paths, share * 0.6, extra_env=full_precision)
        check = {"saved_on": (saved or {}).get("device"), "save_status": status, "passed": False}
        if saved is not None:
            status, loaded, tail = _run_child("load", backend, paths, share * 0.4, cpu=True)
            check.update(loaded or {"load_status": status})
        if "max_abs_diff" in check:
            bound = LOGIT_ATOL * max(1.0, check["max_abs_logit"])
            check["passed"] = check["same_argmax"] and check["max_abs_diff"] <= bound
        else:
            check["tail"] = tail
        checks[backend] = check
    write(
        "save_load.json",
        {"tolerance": f"max |difference| <= {LOGIT_ATOL:g} x max(1, max |logit|), same argmax", **checks},
    )
    record("save_load", "passed" if all(c["passed"] for c in checks.values()) else "failed", began)

    # The benchmark: model-only training images/s, Keras backends and the yardstick on one device.
    began = time.perf_counter()
    share = budget("benchmark")
    bench_args = {
        **sizes,
        "backends": [b for b in args.backends if b != "tensorflow"] or args.backends,
        "timeout": share,
        "json": os.path.join(args.out, "benchmark.json"),
        "md": os.path.join(args.out, "benchmark.md"),
    }
    status, result, tail = _run_child(
        "benchmark", "torch" if "torch" in args.backends else args.backends[0], bench_args, share
    )
    if result is not None and not result.get("same_work"):
        status = "failed"
    record("benchmark", status, began, result=result, **({} if status == "passed" else {"tail": tail}))

    # The models' and layers' tests, per backend, with the time that is left.
    began = time.perf_counter()
    tests = {}
    for i, backend in enumerate(args.backends):
        share = budget("tests") / (len(args.backends) - i)
        tests[backend] = run_tests(backend, args.tests or list(sizes["tests"]), share)
    write("tests.json", {"selection": args.tests or list(sizes["tests"]), **tests})
    record(
        "tests",
        "passed" if all(t["status"] == "passed" for t in tests.values()) else "failed",
        began,
        backends={b: t["counts"] for b, t in tests.items()},
    )

    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["passed"] = all(step["status"] == "passed" for step in summary["steps"].values())
    write("summary.json", summary)
    print(
        f"[gpu_check] {'all steps passed' if summary['passed'] else 'FAILED'} in {summary['seconds']} s; "
        f"results in {args.out}",
        flush=True,
    )
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
