"""Command line of the learning-rate search (`keras-vitbn-tune`, `tuning/lr_per_depth.py`).

Flags -> SearchConfig -> search().

The data, augmentation, test-protocol, model-size and optimisation flags are
the trainers' (`keras_vitbn.training.cli`), over the defaults of `--preset`;
`--models`, `--depths` and the learning-rate range replace `--model`,
`--depth` and `--lr`.

    python tuning/lr_per_depth.py --preset fashion_mnist --data-dir ../shared/data/fashion-mnist \\
        --depths 1 2 3 4 --trials 6 --epochs 5

Errors in the arguments or the data print one line and exit with status 2
(KERAS_VITBN_DEBUG=1 for the traceback); Ctrl-C exits 130, and rerunning the
same command resumes the search.
"""

import argparse
import json
import os
import shlex
import sys

from keras_vitbn.runtime import allocator, auto_distribute
from keras_vitbn.training.cli import build_parser, config_from_args
from keras_vitbn.training.presets import PRESETS
from keras_vitbn.training.train import load_data
from keras_vitbn.tuning import report
from keras_vitbn.tuning.config import TUNERS, SearchConfig
from keras_vitbn.tuning.naming import say
from keras_vitbn.tuning.search import search
from keras_vitbn.utils.cli_errors import ArgumentParser, command

# Trainer flags that make no sense for a search.
UNSUPPORTED = ("mlflow", "distribute")


def _parser(preset):
    defaults = {**PRESETS[preset], "validation_split": 0.1}
    p = build_parser(defaults, description=__doc__)
    p.conflict_handler = "resolve"  # the flags below replace the trainers' --model, --depth, --lr, --output-dir
    p.add_argument(
        "--preset",
        default="mnist",
        choices=sorted(PRESETS),
        help="trainer defaults to start from (default %(default)s)",
    )
    g = p.add_argument_group("search")
    g.add_argument(
        "--models",
        "--model",
        nargs="+",
        default=["vit", "vit_bnffn"],
        metavar="MODEL",
        help="models to search (default: vit vit_bnffn)",
    )
    g.add_argument(
        "--depths",
        "--depth",
        type=int,
        nargs="+",
        default=list(range(1, 9)),
        metavar="DEPTH",
        help="depths to search (default: 1 to 8)",
    )
    g.add_argument("--tuner", default="bayesian", choices=TUNERS, help="keras-tuner oracle (default %(default)s)")
    g.add_argument("--lr-min", type=float, default=1e-4, help="log-uniform range, low end (default %(default)s)")
    g.add_argument("--lr-max", type=float, default=1e-2, help="log-uniform range, high end (default %(default)s)")
    g.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=None, help=argparse.SUPPRESS)
    g.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=None,
        metavar="LR",
        help="learning rates of the grid tuner (default: --grid-points values log-spaced over the range)",
    )
    g.add_argument("--grid-points", type=int, default=5, help="size of the default grid (default %(default)s)")
    g.add_argument(
        "--trials",
        type=int,
        default=None,
        help="trials per (model, depth), failed ones included (default 6; grid: the whole grid)",
    )
    g.add_argument(
        "--initial-points", type=int, default=None, help="random trials before Bayesian optimisation starts (default 3)"
    )
    g.add_argument("--output-dir", default="", help="search directory (default runs/tuning/<dataset>)")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh: once the new search has validated, delete the old one (only a folder this project wrote)",
    )
    g.add_argument(
        "--report-only", action="store_true", help="rewrite the results from the search directory without training"
    )
    g.add_argument(
        "--chief-timeout",
        type=float,
        default=3600.0,
        help="distributed: seconds a worker waits for the chief (default %(default)s)",
    )
    g.add_argument(
        "--allow-all-interfaces",
        action="store_true",
        help="distributed: let the chief listen on KERASTUNER_ORACLE_IP=0.0.0.0 or :: (refused otherwise)",
    )
    return p


def config_from_cli(argv):
    """(SearchConfig, parsed args) from command-line flags."""
    pre = ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="mnist", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults = {**PRESETS[known.preset], "validation_split": 0.1}
    args = _parser(known.preset).parse_args(argv)
    for name in UNSUPPORTED:
        if getattr(args, name, None) not in (None, False, "none", "auto"):
            raise ValueError(f"--{name} is not supported by the search")
    if args.learning_rate is not None:
        raise ValueError(
            "the learning rate is what the search chooses: give its range with --lr-min/--lr-max, "
            "or the values of --tuner grid with --lr-grid"
        )
    # The trainers' config_from_args reads one model, depth and lr: give it placeholders.
    args.model, args.depth, args.learning_rate = args.models[0], args.depths[0], defaults["learning_rate"]
    train = config_from_args(args, defaults)
    config = SearchConfig(
        train=train,
        models=tuple(args.models),
        depths=tuple(args.depths),
        tuner=args.tuner,
        lr_min=args.lr_min,
        lr_max=args.lr_max,
        lr_grid=tuple(args.lr_grid) if args.lr_grid else None,
        grid_points=args.grid_points,
        trials=args.trials,
        initial_points=args.initial_points,
        output_dir=args.output_dir,
    )
    return config, args


@command
def main(argv=None):
    """Parses flags, runs (or resumes, or reports) the search, prints a summary; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(shlex.quote(a) for a in [sys.argv[0], *argv])
    try:
        config, args = config_from_cli(argv)
        verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
        if args.report_only:
            summary = report_only(config)
        else:
            if config.train.distribute is None:  # before anything starts JAX, as the trainers do
                for model, depth in config.cells():
                    auto_distribute.request_cpu_devices(model, depth)

            summary = search(
                config,
                overwrite=args.overwrite,
                verbose=verbose,
                command=command,
                chief_timeout=args.chief_timeout,
                allow_all_interfaces=args.allow_all_interfaces,
            )
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume the search", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as error:
        if os.environ.get("KERAS_VITBN_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # keras-tuner's FatalError: a trial raised something other than divergence
        import keras_tuner

        if not isinstance(error, keras_tuner.errors.FatalError) or os.environ.get("KERAS_VITBN_DEBUG"):
            raise
        print(f"error: {error}; fix it, then rerun the same command to resume the search", file=sys.stderr)
        return 1
    brief = {k: summary.get(k) for k in ("output_dir", "role", "seconds")}
    if "files" in summary:
        brief["files"] = summary["files"]
    print(json.dumps(brief, default=str))
    return 0


def console_main():
    """`keras-vitbn-tune`: the trainers' process settings (`allocator.tune_for_training`), then `main`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds tf.data here
    allocator.tune_for_training()
    return main()


def report_only(config):
    """Rewrites the report of an existing search directory (evaluating best models on the test data)."""
    if not config.output_dir:
        config = SearchConfig.from_dict({**config.to_dict(), "output_dir": config.default_output_dir()})
    if not os.path.exists(os.path.join(config.output_dir, "search.json")):
        raise FileNotFoundError(f"{config.output_dir} holds no search (no search.json)")
    try:
        _, _, test_ds, test_aug_ds, _ = load_data(config.train)
    except ValueError as error:  # a clone without the data still has each best model's recorded test metrics
        say(f"WARNING: no test data ({error}); the best models' recorded test metrics are kept, none is evaluated")
        test_ds = test_aug_ds = None
    summary = report.write_report(config, test_ds, test_aug_ds)
    summary["output_dir"] = config.output_dir
    summary["role"] = "report"
    return summary
