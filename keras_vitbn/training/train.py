"""The one training function behind every trainer script: `train(config) -> dict`.

A run directory holds:

    config.json        resolved config, data provenance, software versions
    status.json        {"status": "running"|"completed"|"diverged", "reason", "epochs_completed"}
    history.csv        one row per epoch: loss, accuracy, [val_loss, val_accuracy,]
    history.jsonl        test_loss, test_accuracy (clean test), test_aug_loss,
                         test_aug_accuracy (augmented test, fixed seed), lr,
                         epoch_time (s, training only), images_per_sec
    model_best.keras   best epoch by val_accuracy (or clean test accuracy without validation)
    model_last.keras   last finished epoch
    curves.png         accuracy and loss curves, redrawn every epoch
    tensorboard/       TensorBoard logs
    backup/            BackupAndRestore state: rerunning the same command resumes here
    .keras_vitbn_run.json, .keras_vitbn.lock
                       the project's marker and the lock held while a process writes here
                       (keras_vitbn.utils.files: --overwrite deletes only a marked folder)

A run whose training loss becomes NaN or infinite stops at once and is recorded
as "diverged" with its history kept: a result, not a crash.
"""

import contextlib
import dataclasses
import logging
import math
import os
import platform
import shutil
import sys
import time

import keras

from keras_vitbn.data import augment as augment_lib
from keras_vitbn.data import datasets, image_folder
from keras_vitbn.models.registry import create_model, depth_argument, list_models
from keras_vitbn.runtime import auto_distribute, distribute
from keras_vitbn.runtime.performance import fit_settings
from keras_vitbn.training import callbacks as cbs
from keras_vitbn.training.config import TrainConfig
from keras_vitbn.utils.files import read_json, run_folder, write_json
from keras_vitbn.utils.progress import format_percent

logger = logging.getLogger("keras_vitbn.training")

# PyTorch's Adam/AdamW epsilon (Keras' default is 1e-7): the article trained in PyTorch.
ADAM_EPSILON = 1e-8
EVAL_BATCH_SIZE = 500


def _say(message):
    logger.info(message)
    print(f"[keras_vitbn] {message}", flush=True)


def run_splits(config):
    """The run's (train, val or None, test) `Split`s and provenance: subsets and validation split applied."""
    if image_folder.selected(config.dataset, config.source, config.data_dir):  # Imagenette's layout, resized
        train, test, provenance = image_folder.load_splits(
            config.dataset,
            config.source,
            config.data_dir,
            config.test_data_dir,
            image_size=config.model_overrides.get("image_size"),
        )
    else:
        train, test, provenance = datasets.load_splits(
            config.dataset,
            config.source,
            config.data_dir,
            config.test_data_dir,
            num_classes=config.num_classes,
            allow_mixed_splits=bool(config.allow_mixed_splits),
        )
    if config.train_subset is not None and config.train_subset < train.size:
        train = train.take(config.train_subset, f"first {config.train_subset} of {train.description}")
        provenance["train_subset"] = config.train_subset
    val = None
    if config.validation_split > 0:
        n_val = int(round(train.size * config.validation_split))
        if not 0 < n_val < train.size:
            raise ValueError(
                f"validation split {config.validation_split} of {train.size} training images leaves no "
                "training or no validation images"
            )
        val = train.skip(train.size - n_val, f"last {n_val} of {train.description}")
        train = train.take(train.size - n_val, f"first {train.size - n_val} of {train.description}")
    if config.test_subset is not None and config.test_subset < test.size:
        test = test.take(config.test_subset, f"first {config.test_subset} of {test.description}")
        provenance["test_subset"] = config.test_subset
    return train, val, test, provenance


def load_data(config, dist=None, splits=None):
    """The run's data: (train_ds, val_ds or None, test_ds, test_aug_ds, provenance).

    `train_ds` is shuffled and augmented with `config.seed`; the augmented test
    split is augmented once with `config.test_seed`, so it is the same images
    every epoch (the article's protocol); `test_ds` is the clean test split.
    Under a data-parallel `dist` (a `keras_vitbn.runtime.distribute.DistributeContext`)
    every batch must split evenly across replicas: training drops its last
    partial batch and evaluation uses a batch size that divides each split.
    `splits` is `run_splits(config)`'s result, when the caller has it already.

    Example:
    >>> train_ds, val_ds, test_ds, test_aug_ds, provenance = load_data(TrainConfig(train_subset=500))
    """
    train, val, test, provenance = run_splits(config) if splits is None else splits
    train_augment = augment_lib.augmentation(config.augment, seed=config.seed, **config.augment_options)
    test_options = config.augment_options if config.test_augment == config.augment else {}
    test_augment = augment_lib.augmentation(config.test_augment, seed=config.test_seed, **test_options)

    replicas = dist.num_replicas if dist is not None else 1
    eval_batch = lambda split: _even_batch_size(split.size, replicas)  # noqa: E731
    train_ds = datasets.make_pipeline(
        train, config.batch_size, shuffle=True, seed=config.seed, augment=train_augment, drop_remainder=replicas > 1
    )
    val_ds = datasets.make_pipeline(val, eval_batch(val)) if val is not None else None
    test_ds = datasets.make_pipeline(test, eval_batch(test))
    test_aug_ds = datasets.make_pipeline(datasets.materialize(test, test_augment), eval_batch(test))

    provenance.update(
        {
            "train_images": train.size,
            "val_images": val.size if val is not None else 0,
            "test_images": test.size,
            "train_description": train.description,
            "val_description": val.description if val is not None else None,
            "test_description": test.description,
            "train_augment": augment_lib.describe(config.augment, **config.augment_options),
            "test_protocols": {
                "test": "clean (standard)",
                "test_aug": {
                    **augment_lib.describe(config.test_augment, **test_options),
                    "seed": config.test_seed,
                    "note": "augmented once with a fixed seed: the same images every epoch (the article's protocol)",
                },
            },
        }
    )
    return train_ds, val_ds, test_ds, test_aug_ds, provenance


def _even_batch_size(size, replicas):
    """The largest evaluation batch <= EVAL_BATCH_SIZE that divides `size` into replica-even batches."""
    if replicas == 1:
        return EVAL_BATCH_SIZE
    for batch in range(min(EVAL_BATCH_SIZE, size) // replicas * replicas, 0, -replicas):
        if size % batch == 0:
            return batch
    raise ValueError(
        f"{size} evaluation images cannot be split evenly across {replicas} replicas: "
        f"pass --test-subset (or a validation split) giving a multiple of {replicas}"
    )


def build_model(config, image_shape=None, num_classes=None):
    """The config's model (not compiled), sized for the dataset.

    `depth` is the encoder depth of a ViT, the layers of `resnet` (18 or 34), or
    the number of hidden layers (of the default width 100) of a DNN unless
    `hidden_units` is overridden; the named CNNs have a fixed depth.

    Example:
    >>> model = build_model(TrainConfig(model="vit_bnffn", depth=6))
    """
    if config.model not in list_models():
        raise ValueError(f"unknown model {config.model!r}: choose one of {', '.join(list_models())}")
    if image_shape is None or num_classes is None:
        image_shape, num_classes = datasets.dataset_info(config.dataset)
    height, width, channels = image_shape
    overrides = dict(config.model_overrides)
    overrides.setdefault("image_size", height if height == width else (height, width))
    overrides.setdefault("channels", channels)
    overrides.setdefault("num_classes", num_classes)
    if config.depth is not None:
        argument = depth_argument(config.model)
        if argument == "depth":
            overrides["depth"] = config.depth
        elif argument is None:
            raise ValueError(
                f"{config.model} has a fixed depth: leave out --depth (model 'resnet' takes --depth 18 or 34)"
            )
        elif "hidden_units" not in overrides:
            overrides["hidden_units"] = [100] * config.depth
    return create_model(config.model, **overrides)


def build_optimizer(config, steps_per_epoch):
    learning_rate = config.learning_rate
    if config.schedule == "cosine":
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        total = max(1, config.epochs * steps_per_epoch - warmup)
        if warmup:
            learning_rate = keras.optimizers.schedules.CosineDecay(
                0.0, total, warmup_target=config.learning_rate, warmup_steps=warmup
            )
        else:
            learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    kwargs = {"learning_rate": learning_rate, "epsilon": ADAM_EPSILON, "clipnorm": config.clipnorm}
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=config.weight_decay, **kwargs)
    return keras.optimizers.Adam(weight_decay=config.weight_decay or None, **kwargs)


def compile_model(model, config, steps_per_epoch):
    model.compile(
        optimizer=build_optimizer(config, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if not config.label_smoothing
        else _smoothed_loss(config.label_smoothing),
        metrics=["accuracy"],
        **_fit_settings(config),
    )
    return model


def _fit_settings(config):
    """The backend's fastest correct compile settings (keras_vitbn.runtime.performance), unless jit is forced."""
    settings = fit_settings()
    if config.jit_compile != "auto":
        settings["jit_compile"] = config.jit_compile
    return settings


def _smoothed_loss(amount):
    def loss(y_true, y_pred):
        num_classes = keras.ops.shape(y_pred)[-1]
        y_true = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), num_classes)
        return keras.losses.categorical_crossentropy(y_true, y_pred, from_logits=True, label_smoothing=amount)

    return loss


def _result(output_dir, status, reason, history, extra=None):
    result = {
        "status": status,
        "reason": reason,
        "output_dir": output_dir,
        "history": history,
        "epochs_completed": sum(1 for row in history if row.get("loss") is not None),
    }
    if history:
        result["final"] = history[-1]
    result.update(extra or {})
    return result


def _process_output_dir(config):
    """The run directory; in a multi-process run, processes other than 0 write under worker<id>/."""
    process_id = 0
    if config.distribute == "multi_worker":
        process_id = config.distribute_options.get("process_id")
        if process_id is None:
            process_id = int(os.environ.get(distribute.ENV_PROCESS_ID, "0") or 0)
    return config.output_dir if not process_id else os.path.join(config.output_dir, f"worker{process_id}")


def _environment():
    import numpy
    import tensorflow as tf

    return {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def train(config, callbacks=None, overwrite=False, verbose="auto", command=None):
    """Trains one run and writes its directory; see the module docstring for the layout.

    Rerunning with the same config resumes from the last completed epoch, or
    returns the recorded result of a finished (completed or diverged) run; a
    larger `epochs` continues a completed run.

    Args:
        config: TrainConfig.
        callbacks: list or None. Extra Keras callbacks.
        overwrite: bool. Start afresh: once the config and data have validated,
            delete the contents of the run directory, which must be one this
            project created (it carries `keras_vitbn.utils.files.MARKER`).
        verbose: "auto", 0, 1 or 2. Keras progress output ("auto": a progress
            bar on a terminal, one line per epoch otherwise).
        command: str or None. The command line, recorded in config.json.

    Returns:
        dict with "status" ("completed" or "diverged"), "reason", "output_dir",
        "history" (list of per-epoch dicts), "epochs_completed", "final",
        "best_epoch", "best_metric" and "provenance".

    Example:
    >>> result = train(TrainConfig(dataset="fashion_mnist", data_dir="../shared/data/fashion-mnist", epochs=3))
    >>> result["final"]["test_accuracy"]
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not config.output_dir:
        output_dir = config.default_output_dir(keras.backend.backend())
        config = TrainConfig.from_dict({**config.to_dict(), "output_dir": output_dir})
    # Locked for this process; with `overwrite`, emptied only once the config and data have validated.
    with run_folder(_process_output_dir(config), "run", overwrite=overwrite, command=command) as folder:
        return _train(config, folder, callbacks, verbose, command)


def _train(config, folder, callbacks, verbose, command):
    output_dir = folder.path
    paths = {name: os.path.join(output_dir, name) for name in ("config.json", "status.json", "history.jsonl")}
    backup_dir = os.path.join(output_dir, "backup")
    recorded = _recorded_result(config, folder, paths)
    if recorded is not None:
        return recorded

    keras.utils.set_random_seed(config.seed)
    splits = run_splits(config)
    scope, automatic = _distribution_scope(config, splits)
    with scope as dist:
        if dist is not None:
            dist.per_replica_batch_size(config.batch_size)  # fails fast on a batch that does not split
            _say(dist.describe() + (f" ({automatic})" if automatic else ""))
        train_ds, val_ds, test_ds, test_aug_ds, provenance = load_data(config, dist, splits)
        if provenance.get("warning"):
            print(f"\n{'!' * 78}\n[keras_vitbn] WARNING: {provenance['warning']}\n{'!' * 78}\n", flush=True)
        fit_steps = datasets.epoch_steps(train_ds)  # to fit: one shuffle and augmentation draw per epoch
        steps_per_epoch = fit_steps or math.ceil(provenance["train_images"] / config.batch_size)
        model = _compiled_model(config, provenance, dist, automatic, steps_per_epoch)
        folder.clear()  # --overwrite: the new run has validated, the old one goes

        monitor = "val_accuracy" if val_ds is not None else "test_accuracy"
        _write_run_config(paths["config.json"], config, provenance, model, monitor, command)
        resumed = os.path.exists(os.path.join(backup_dir, "training_metadata.json"))
        _say(
            f"{'resuming' if resumed else 'starting'} {config.model} (depth {config.depth}, "
            f"{model.count_params():,} parameters) on {config.dataset} [{provenance['source']}: "
            f"{provenance['train_images']:,} train, {provenance['val_images']:,} val, {provenance['test_images']:,} "
            f"test images] with {keras.backend.backend()}; writing {output_dir}"
        )
        write_json(paths["status.json"], {"status": "running", "reason": None, "epochs_completed": None})

        recorders, run_callbacks = _recording_callbacks(
            config, output_dir, provenance, monitor, val_ds, test_ds, test_aug_ds
        )
        if verbose == "auto":
            verbose = 1 if sys.stdout.isatty() else 2
        run_callbacks.append(cbs.InputReplay(train_ds, verbose=verbose))
        run_callbacks.extend(callbacks or [])
        # Last, so that an epoch is backed up only after it has been recorded.
        run_callbacks.append(keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False))
        start = time.perf_counter()
        _fit(model, config, train_ds, val_ds, fit_steps, run_callbacks, verbose, recorders.mlflow_logger)
    return _finish(config, output_dir, paths["status.json"], backup_dir, recorders, monitor, provenance, start)


def _recorded_result(config, folder, paths):
    """The recorded result when the folder holds this run finished (nothing to train), else None.

    Raises ValueError when the folder holds another run (another config or backend).
    """
    backend = keras.backend.backend()
    previous = None if folder.overwrite else read_json(paths["config.json"])
    status = None if folder.overwrite else read_json(paths["status.json"])
    if previous is not None:
        old = TrainConfig.from_dict(previous["config"])
        if old.run_key() != config.run_key() or previous.get("environment", {}).get("backend") != backend:
            changed = sorted(k for k, v in config.run_key().items() if old.run_key().get(k) != v)
            if previous.get("environment", {}).get("backend") != backend:
                changed.append("backend")
            raise ValueError(
                f"{folder.path} holds a different run (differs in {', '.join(changed)}): "
                "choose another output directory, or pass --overwrite to replace it"
            )
    output_dir = folder.path
    if status is not None and status["status"] == "diverged":
        _say(f"{output_dir}: this run diverged before ({status['reason']}); nothing to do (--overwrite to rerun)")
        return _result(output_dir, "diverged", status["reason"], cbs.read_history(paths["history.jsonl"]), status)
    if status is not None and status["status"] == "completed" and status["epochs_completed"] >= config.epochs:
        _say(f"{output_dir}: already completed {status['epochs_completed']} epochs; nothing to do")
        return _result(output_dir, "completed", None, cbs.read_history(paths["history.jsonl"]), status)
    return None


def _distribution_scope(config, splits):
    """(scope, why): the run's distribution scope (a null context on one device) and, when the config
    leaves the choice to `auto_distribute`, why it chose so (else None).
    """
    mode, automatic = config.distribute, None
    if mode is None:
        train_split, val_split, test_split, _ = splits
        eval_sizes = [split.size for split in (val_split, test_split) if split is not None]
        mode, automatic = auto_distribute.choose(config, train_split.size, eval_sizes)
    if mode and mode != "none":
        return distribute.distribution_scope(mode, **config.distribute_options), automatic
    return contextlib.nullcontext(None), automatic


def _compiled_model(config, provenance, dist, automatic, steps_per_epoch):
    """The run's model, prepared for `dist` and compiled; records the distribution in `provenance`."""
    model = build_model(config, tuple(provenance["image_shape"]), provenance["num_classes"])
    if dist is not None:
        dist.prepare_model(model)  # synchronised BatchNorm on TensorFlow replicas
        provenance["distribution"] = {**dist.as_dict(), "automatic": automatic}
    elif automatic is not None:  # why this default run stayed on one device
        provenance["distribution"] = {"mode": "none", "num_replicas": 1, "automatic": automatic}
    compile_model(model, config, steps_per_epoch)
    return model


def _write_run_config(path, config, provenance, model, monitor, command):
    """config.json: the resolved config, the data's provenance, the model, and the software it ran on."""
    write_json(
        path,
        {
            "config": config.to_dict(),
            "data": provenance,
            "model": {"name": config.model, "parameters": int(model.count_params()), "config": model.get_config()},
            "optimizer": {"name": config.optimizer, "epsilon": ADAM_EPSILON, "note": "PyTorch's Adam epsilon"},
            "best_metric": monitor,
            "environment": _environment(),
            "command": command,
        },
    )


@dataclasses.dataclass
class _Recorders:
    """The run's callbacks whose state it reads once `fit` returns."""

    guard: cbs.DivergenceGuard
    history: cbs.HistoryWriter
    saver: cbs.ModelSaver
    mlflow_logger: object  # cbs.MLflowLogger, or None without --mlflow


def _recording_callbacks(config, output_dir, provenance, monitor, val_ds, test_ds, test_aug_ds):
    """(recorders, callbacks): the callbacks that evaluate and record every epoch, in the order they run."""
    guard = cbs.DivergenceGuard()
    history = cbs.HistoryWriter(output_dir, with_validation=val_ds is not None)
    saver = cbs.ModelSaver(output_dir, monitor, history)
    callbacks = [
        guard,
        cbs.EpochEvaluator(test_ds, test_aug_ds, provenance["train_images"], guard),
        history,
        saver,
        cbs.CurvePlotter(output_dir, history, title=f"{config.model} d{config.depth} on {config.dataset}"),
        keras.callbacks.TensorBoard(os.path.join(output_dir, "tensorboard"), write_graph=False, profile_batch=0),
    ]
    mlflow_logger = None
    if config.mlflow:
        mlflow_logger = cbs.MLflowLogger(
            output_dir,
            {"config": config.to_dict(), "data": {k: v for k, v in provenance.items() if k != "notes"}},
            experiment=f"keras_vitbn-{config.dataset}",
        )
        callbacks.append(mlflow_logger)
    return _Recorders(guard, history, saver, mlflow_logger), callbacks


def _fit(model, config, train_ds, val_ds, fit_steps, callbacks, verbose, mlflow_logger):
    """`model.fit` over the run's epochs; an MLflow run it logs to ends as KILLED if fit raises."""
    try:
        model.fit(
            train_ds,
            epochs=config.epochs,
            steps_per_epoch=fit_steps,
            validation_data=val_ds,
            shuffle=False,  # train_ds is shuffled by tf.data with the run's seed
            callbacks=callbacks,
            verbose=verbose,
        )
    except BaseException:
        if mlflow_logger is not None and mlflow_logger.run is not None:
            import mlflow  # optional: only runs with --mlflow need it

            mlflow.end_run(status="KILLED")
        raise


def _finish(config, output_dir, status_path, backup_dir, recorders, monitor, provenance, start):
    """Records how the run ended (status.json, MLflow), says so, and returns `train`'s result."""
    rows = recorders.history.rows
    if recorders.guard.reason is not None:
        status, reason = "diverged", recorders.guard.reason
        shutil.rmtree(backup_dir, ignore_errors=True)  # never resume from a non-finite state
    else:
        status, reason = "completed", None
    result = _result(output_dir, status, reason, rows)
    write_json(
        status_path,
        {
            "status": status,
            "reason": reason,
            "epochs_completed": result["epochs_completed"],
            "best_metric": monitor,
            "best_epoch": recorders.saver.best_epoch,
            "best_value": recorders.saver.best,
            "wall_time_this_session": time.perf_counter() - start,
        },
    )
    if recorders.mlflow_logger is not None:
        recorders.mlflow_logger.finish(status, reason)
    result.update({"best_metric": monitor, "best_epoch": recorders.saver.best_epoch, "provenance": provenance})
    final = rows[-1] if rows else {}
    _say(
        f"{status}{f' ({reason})' if reason else ''}: {result['epochs_completed']} epochs; last epoch test accuracy "
        f"clean {format_percent(final.get('test_accuracy'))}, "
        f"augmented {format_percent(final.get('test_aug_accuracy'))}, "
        f"{final.get('images_per_sec') or 0:.0f} images/s; results in {output_dir}"
    )
    return result
