"""Callbacks of a training run: test evaluation, history files, checkpoints, curves, MLflow.

Keras' own callbacks do the rest (BackupAndRestore for resuming, TensorBoard,
the progress bar). History is written by `HistoryWriter` rather than
`CSVLogger` because a resumed run must drop rows past the restored epoch and
keep the CSV and JSON-lines files in step with the same fixed columns.
"""

import csv
import io
import json
import math
import os
import time

import keras
import numpy as np

from keras_vitbn.data import datasets
from keras_vitbn.utils import files

COLUMNS = (
    "epoch",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
    "test_aug_loss",
    "test_aug_accuracy",
    "lr",
    "epoch_time",
    "images_per_sec",
)


def _finite_or_none(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_history(path):
    """Rows of a history.jsonl file (non-finite values are stored as null; a half-written last line is skipped)."""
    return files.read_jsonl(path)


class DivergenceGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite training loss and remembers where."""

    def __init__(self):
        super().__init__()
        self.reason = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.reason is None and logs and "loss" in logs:
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                self.reason = f"training loss became {loss} in epoch {self._epoch + 1}, batch {batch + 1}"
                self.model.stop_training = True


class InputReplay(keras.callbacks.Callback):
    """On resume, runs the input pipeline through the completed epochs so the rest sees what it would have.

    The training pipeline's shuffle order and augmentation draws come from
    random state that advances with every epoch it serves (tf.data reshuffles
    per iterator, the augmentation layers' seed generators per batch). A new
    process starts that state afresh, so without this a run resumed at epoch
    k would see epoch 1's images again in epoch k + 1. Replaying the k epochs
    (without the model) advances it exactly as the interrupted run had, and the
    resumed run ends bit for bit where an uninterrupted one does. It runs at
    the first epoch's start, after Keras' own look at one batch in `fit` (JAX
    and torch backends), which an uninterrupted run makes at the same point.
    """

    def __init__(self, dataset, verbose=0):
        super().__init__()
        self.dataset = dataset
        self.verbose = verbose
        self.replayed = None  # epochs replayed by the last fit

    def on_train_begin(self, logs=None):
        self.replayed = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.replayed is not None:
            return
        self.replayed = epoch
        if epoch == 0:
            return
        batches = datasets.epoch_steps(self.dataset)
        progress = keras.utils.Progbar(batches and epoch * batches, verbose=self.verbose, unit_name="batch")
        if self.verbose:
            print(
                f"[keras_vitbn] replaying the input pipeline through {epoch} completed epoch{'s' * (epoch > 1)} "
                "(no training), so the rest sees the images an uninterrupted run would",
                flush=True,
            )
        for _ in range(epoch):
            for _ in self.dataset:
                progress.add(1)


class EpochEvaluator(keras.callbacks.Callback):
    """Adds clean and augmented test metrics, learning rate, epoch time and images/s to the epoch logs.

    Must come before the callbacks that record logs.
    """

    def __init__(self, test_data, test_aug_data, train_images, guard=None):
        super().__init__()
        self.test_data = test_data
        self.test_aug_data = test_aug_data
        self.train_images = train_images
        self.guard = guard
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        elapsed = time.perf_counter() - self._start
        logs["epoch_time"] = elapsed
        logs["images_per_sec"] = self.train_images / elapsed if elapsed > 0 else float("nan")
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        diverged = self.guard is not None and self.guard.reason is not None
        for prefix, data in (("test", self.test_data), ("test_aug", self.test_aug_data)):
            if data is None or diverged:
                logs[f"{prefix}_loss"] = float("nan")
                logs[f"{prefix}_accuracy"] = float("nan")
                continue
            results = self.model.evaluate(data, verbose=0, return_dict=True)
            logs[f"{prefix}_loss"] = float(results["loss"])
            logs[f"{prefix}_accuracy"] = float(results["accuracy"])


class HistoryWriter(keras.callbacks.Callback):
    """Writes history.csv and history.jsonl, one row per epoch (1-based), resume-safe."""

    def __init__(self, output_dir, with_validation):
        super().__init__()
        self.csv_path = os.path.join(output_dir, "history.csv")
        self.jsonl_path = os.path.join(output_dir, "history.jsonl")
        self.columns = [c for c in COLUMNS if with_validation or not c.startswith("val_")]
        self.rows = []
        self._started = False

    def start(self, initial_epoch):
        """Keeps the rows of epochs before `initial_epoch` (0-based) and rewrites both files."""
        self.rows = [row for row in read_history(self.jsonl_path) if row["epoch"] <= initial_epoch]
        self._rewrite()
        self._started = True

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:  # first epoch of this fit: BackupAndRestore has set the start epoch
            self.start(epoch)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": epoch + 1}
        for column in self.columns[1:]:
            row[column] = _finite_or_none(logs.get(column))
        self.rows.append(row)
        self._rewrite()

    def _rewrite(self):
        files.write_text(self.jsonl_path, "".join(json.dumps(row) + "\n" for row in self.rows))
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("nan" if row.get(k) is None else row[k]) for k in self.columns})
        files.write_text(self.csv_path, text.getvalue())


class ModelSaver(keras.callbacks.Callback):
    """Saves model_last.keras every epoch and model_best.keras when `monitor` improves.

    Nothing is saved from an epoch whose training loss is not finite.
    """

    def __init__(self, output_dir, monitor, history):
        super().__init__()
        self.last_path = os.path.join(output_dir, "model_last.keras")
        self.best_path = os.path.join(output_dir, "model_best.keras")
        self.monitor = monitor
        self.history = history
        self.best = None
        self.best_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.best is None:
            for row in self.history.rows:
                value = row.get(self.monitor)
                if value is not None and (self.best is None or value > self.best):
                    self.best, self.best_epoch = value, row["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not math.isfinite(float(logs.get("loss", float("nan")))):
            return
        files.save_model(self.model, self.last_path)
        value = logs.get(self.monitor)
        if value is not None and math.isfinite(value) and (self.best is None or value > self.best):
            self.best, self.best_epoch = float(value), epoch + 1
            files.save_model(self.model, self.best_path)


def plot_curves(rows, path, title=""):
    """Accuracy and loss per epoch (train, validation, clean test, augmented test) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = (("", "train"), ("val_", "validation"), ("test_", "test (clean)"), ("test_aug_", "test (augmented)"))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for prefix, label in series:
            values = [row.get(prefix + metric) for row in rows]
            if any(v is not None for v in values):
                values = [np.nan if v is None else v for v in values]
                ax.plot(epochs, values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=100)
    plt.close(fig)


class CurvePlotter(keras.callbacks.Callback):
    """Redraws curves.png after every epoch."""

    def __init__(self, output_dir, history, title=""):
        super().__init__()
        self.path = os.path.join(output_dir, "curves.png")
        self.history = history
        self.title = title

    def on_epoch_end(self, epoch, logs=None):
        if self.history.rows:
            plot_curves(self.history.rows, self.path, self.title)


def _flatten(prefix, value, out):
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value
    return out


class MLflowLogger(keras.callbacks.Callback):
    """Logs parameters, per-epoch metrics, the curve PNG and the models to MLflow.

    Tracks to $MLFLOW_TRACKING_URI, else to a local store in ./mlruns (an
    SQLite file, mlruns/mlflow.db, with artifacts in mlruns/<experiment id>: MLflow 3
    refuses plain file stores by default). A resumed run continues the same
    MLflow run (its id is kept in the run directory).
    """

    LOCAL_DIR = "mlruns"

    def __init__(self, output_dir, params, experiment):
        super().__init__()
        self.output_dir = output_dir
        self.run_params = params  # not `params`: Keras sets that attribute of every callback
        self.experiment = experiment
        self.run_id_path = os.path.join(output_dir, "mlflow_run_id")
        self.run = None

    @classmethod
    def tracking_uri(cls):
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        os.makedirs(cls.LOCAL_DIR, exist_ok=True)
        return "sqlite:///" + os.path.abspath(os.path.join(cls.LOCAL_DIR, "mlflow.db"))

    def on_train_begin(self, logs=None):
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri())
        run_id = None
        if os.path.exists(self.run_id_path):
            with open(self.run_id_path) as f:
                run_id = f.read().strip() or None
        if run_id is None:
            mlflow.set_experiment(self.experiment)
            self.run = mlflow.start_run(run_name=os.path.basename(os.path.abspath(self.output_dir)))
            files.write_text(self.run_id_path, self.run.info.run_id)
            params = {k: ("None" if v is None else str(v)[:500]) for k, v in _flatten("", self.run_params, {}).items()}
            mlflow.log_params(params)
        else:
            self.run = mlflow.start_run(run_id=run_id)

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        metrics = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float, np.floating))}
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        mlflow.log_metrics(metrics, step=epoch + 1)
        curves = os.path.join(self.output_dir, "curves.png")
        if os.path.exists(curves):
            mlflow.log_artifact(curves)

    def finish(self, status, reason=None):
        import mlflow

        if self.run is None:
            return
        mlflow.set_tag("keras_vitbn.status", status)
        if reason:
            mlflow.set_tag("keras_vitbn.reason", reason[:500])
        for name in ("model_best.keras", "model_last.keras", "config.json", "history.csv"):
            path = os.path.join(self.output_dir, name)
            if os.path.exists(path):
                mlflow.log_artifact(path, artifact_path="model" if name.endswith(".keras") else None)
        mlflow.end_run()
        self.run = None
