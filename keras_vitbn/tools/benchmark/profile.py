"""Where a training step's time goes: `python -m keras_vitbn.tools.benchmark.profile`.

    python -m keras_vitbn.tools.benchmark.profile --backend tensorflow --model vit --depth 6
    python -m keras_vitbn.tools.benchmark.profile --backend torch --model vit_bnffn --steps 10
    python -m keras_vitbn.tools.benchmark.profile --compare runs/profile/A runs/profile/B   # what changed

Trains the model with the trainers' settings (`performance.fit_settings`, and on
JAX the trainers' device default) in a fresh subprocess on random images,
warms up one epoch, then profiles `fit` over `--steps` batches and writes to
`--output` (default `runs/profile/<model>-d<depth>-<backend>-<time>`; an
existing profile is never overwritten):

- `ops.md` / `ops.json`: milliseconds per training step by kind (matmul,
  reduction, layout = copies/transposes/concatenations, elementwise) and by
  operation, largest first;
- `trace/`: the raw profile (TensorFlow and JAX: an XLA profile for
  TensorBoard's profile plugin or Perfetto; torch: a Chrome trace);
- `hlo/` (TensorFlow and JAX): the HLO XLA compiled, which names each
  operation's output shape and lets the table tell a matmul fusion from a copy.

`--compare FIRST SECOND` prints what changed between two finished profiles
(e.g. ViT -> ViTBNFFN: what the BatchNorm FFN costs, operation by operation).
The profiler slows the step a little; compare kinds and operations, and take
speeds from `python -m keras_vitbn.tools.benchmark`.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np

from keras_vitbn.models import create_model
from keras_vitbn.models.registry import is_vit
from keras_vitbn.runtime import BACKENDS, allocator, auto_distribute, performance
from keras_vitbn.tools.benchmark import op_table

# The article's 28x28 models, which the profiler feeds; the 224x224 CNNs are GPU-sized.
PROFILED_MODELS = ("vit", "vit_bnffn", "vit_bn", "dnn", "dnn_bn")


def profile_training(
    model="vit_bnffn",
    depth=6,
    batch_size=100,
    steps=16,
    backend=None,
    distribute="auto",
    threads=None,
    output=None,
    seed=0,
    timeout=1800,
):
    """Profiles `steps` training steps in a subprocess on `backend`; returns the result dict (also in ops.json).

    Args:
        model: str. One of `PROFILED_MODELS`.
        depth: int. Encoder depth of the ViTs.
        batch_size: int.
        steps: int. Traced training steps (after a warm-up epoch of as many).
        backend: str. A Keras backend; None: `KERAS_BACKEND`, else "jax".
        distribute: "auto" (the trainers' default) or "none" (one device).
        threads: int. CPU threads; None: every core.
        output: str. Folder for ops.md, ops.json, trace/ and hlo/.
    """
    backend = backend or os.environ.get("KERAS_BACKEND") or "jax"
    if model not in PROFILED_MODELS:
        raise ValueError(f"unknown model {model!r}: choose one of {', '.join(PROFILED_MODELS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if distribute not in ("auto", "none"):
        raise ValueError(f"unknown distribute {distribute!r}: choose auto or none")
    if int(steps) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    threads = int(threads or auto_distribute.cores())
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    output = os.path.abspath(output or os.path.join("runs", "profile", f"{model}-d{depth}-{backend}-{stamp}"))
    if os.path.exists(os.path.join(output, "ops.json")):
        raise FileExistsError(f"{output} already holds a profile: choose another --output, or delete it first")
    os.makedirs(output, exist_ok=True)
    env = {
        **os.environ,
        **performance.thread_environment(threads),
        **allocator.training_environment(backend),
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    if backend != "torch":
        env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_dump_to={os.path.join(output, 'hlo')} --xla_dump_hlo_as_text"
        if distribute == "auto":
            auto_distribute.request_cpu_devices(model, depth, environ=env, backend=backend)
    spec = dict(
        model=model,
        depth=depth,
        batch_size=int(batch_size),
        steps=int(steps),
        distribute=distribute,
        threads=threads,
        output=output,
        seed=seed,
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "keras_vitbn.tools.benchmark.profile", "--worker", f.name],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the profiling subprocess ({backend}) failed with status {done.returncode}:\n{tail}")
    with open(os.path.join(output, "ops.json")) as f:
        return json.load(f)


def load_profile(path):
    """A finished profile's result: `path` is its folder or its ops.json."""
    file = os.path.join(path, "ops.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no profile at {path}: give a folder written by keras_vitbn.tools.benchmark.profile")
    with open(file) as f:
        return json.load(f)


def _profile_here(spec):
    """The worker: set up, warm up, trace, write ops.json and ops.md."""
    # deferred: the tf.data pipeline loads TensorFlow, which only this worker process needs
    from keras_vitbn.data import Split, make_pipeline

    backend = keras.backend.backend()
    performance.set_threads(spec["threads"], backend)
    batch, steps = spec["batch_size"], spec["steps"]
    rng = np.random.default_rng(spec["seed"])
    images = rng.random((batch * steps, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, batch * steps)
    devices = 1
    if spec["distribute"] == "auto":
        devices, _ = auto_distribute.apply_default(spec["model"], spec["depth"], batch, len(labels))
    keras.utils.set_random_seed(spec["seed"])
    model = create_model(spec["model"], **({"depth": spec["depth"]} if is_vit(spec["model"]) else {}))
    settings = performance.fit_settings(backend)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        **settings,
    )
    data = make_pipeline(Split.from_arrays(images, labels, 10, "random images"), batch)
    model.fit(data, epochs=1, verbose=0)  # compile and warm up
    trace_dir = os.path.join(spec["output"], "trace")
    table, source, wall = _traced_fit(backend, model, data, trace_dir)
    rows, kinds = op_table.summarize(table, steps)
    result = dict(
        model=spec["model"],
        depth=spec["depth"],
        batch_size=batch,
        backend=backend,
        steps=steps,
        devices=devices,
        settings=", ".join(f"{k}={v}" for k, v in settings.items()),
        source=source,
        wall_ms_per_step=1000 * wall / steps,
        images_per_s=batch * steps / wall,
        kinds=kinds,
        ops=rows,
        trace=trace_dir,
        hlo=op_table.training_step_hlo(os.path.join(spec["output"], "hlo")),
    )
    with open(os.path.join(spec["output"], "ops.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(spec["output"], "ops.md"), "w") as f:
        f.write(op_table.format_markdown(result))


def _timed_fit(model, data):
    start = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)  # returns once the epoch's loss is read back
    return time.perf_counter() - start


def _traced_fit(backend, model, data, trace_dir):
    """One profiled epoch: (op table, a description of what was timed, seconds of `fit`)."""
    if backend == "torch":
        import torch

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            wall = _timed_fit(model, data)
        os.makedirs(trace_dir, exist_ok=True)
        prof.export_chrome_trace(os.path.join(trace_dir, "trace.json"))
        return op_table.torch_ops(prof.key_averages()), "PyTorch ops (self CPU time)", wall
    if backend == "jax":
        import jax

        jax.profiler.start_trace(trace_dir)
        try:
            wall = _timed_fit(model, data)
        finally:
            jax.profiler.stop_trace()
    else:
        import tensorflow as tf

        tf.profiler.experimental.start(trace_dir)
        try:
            wall = _timed_fit(model, data)
        finally:
            tf.profiler.experimental.stop()
    hlo = op_table.training_step_hlo(os.path.join(os.path.dirname(trace_dir), "hlo"))
    instructions = None
    if hlo:
        with open(hlo) as f:
            instructions = op_table.parse_hlo(f.read())
    events = op_table.read_xspace(op_table.find_xspace(trace_dir))
    source = "XLA operations" + ("" if hlo else " (no HLO dump: kinds guessed)")
    return op_table.xla_ops(events, instructions), source, wall


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m keras_vitbn.tools.benchmark.profile",
        description="Profile a training step: milliseconds per step by kind of operation and by operation.",
    )
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="default: KERAS_BACKEND, else jax")
    parser.add_argument("--model", choices=PROFILED_MODELS, default="vit_bnffn")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=16, help="traced training steps (default 16)")
    parser.add_argument("--distribute", choices=("auto", "none"), default="auto", help="JAX devices as the trainers")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--top", type=int, default=25, help="operation groups in the printed table")
    parser.add_argument(
        "--output", default=None, help="a new folder (default runs/profile/<model>-d<depth>-<backend>-<time>)"
    )
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("FIRST", "SECOND"),
        default=None,
        help="print what changed between two finished profiles (their folders or ops.json files), then exit",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.worker:
        with open(args.worker) as f:
            _profile_here(json.load(f))
        return 0
    try:
        if args.compare:
            first, second = (load_profile(path) for path in args.compare)
            print(op_table.format_comparison(first, second, top=args.top))
            return 0
        result = profile_training(
            model=args.model,
            depth=args.depth,
            batch_size=args.batch_size,
            steps=args.steps,
            backend=args.backend,
            distribute=args.distribute,
            threads=args.threads,
            output=args.output,
        )
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        if os.environ.get("KERAS_VITBN_DEBUG"):  # the trainers' switch for the whole traceback
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(op_table.format_markdown(result, top=args.top))
    print(
        f"wrote {os.path.join(os.path.dirname(result['trace']), 'ops.md')} and ops.json; "
        f"raw profile in {result['trace']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
