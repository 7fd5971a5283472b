"""Trains a committed run again from its config.json and compares the two histories epoch by epoch.

    KERAS_BACKEND=tensorflow python -m keras_vitbn.experiments.rerun \
        results/depth_sweep/mnist/runs/vit-d1-lr0.003-s0-e633602a02e9 --epochs 3

The question it answers: do the committed numbers come out of the code as it is, on this
machine? The rerun trains into its own folder (--out, default runs/rerun/<run folder>;
resumable like any run) with the recorded config: same seed, data, augmentation and model.
It prints loss and accuracies side by side, writes them to rerun.csv (the verdict and both
CPUs to rerun.json) in that folder, and exits with status 1 when an accuracy differs by more
than --tolerance.

The backend must be the one the run trained on: other backends draw other random numbers
(results/cross_backend shows by how much). Data folders recorded on another machine are
looked up by name under $KERAS_VITBN_DATA (or --data-root).
"""

import csv
import io
import os
import sys

import keras

from keras_vitbn.data import locations
from keras_vitbn.experiments.runner import RUNNER_FILE, read_history, run_status
from keras_vitbn.training.config import TrainConfig
from keras_vitbn.training.train import train
from keras_vitbn.utils.cli_errors import ArgumentParser, command, positive_int
from keras_vitbn.utils.files import read_json, write_json, write_text
from keras_vitbn.utils.machine import cpu_id

COMPARED = ("loss", "test_accuracy", "test_aug_accuracy")
ACCURACIES = ("test_accuracy", "test_aug_accuracy")


class StopAfter(keras.callbacks.Callback):
    """Ends training after `epochs` epochs (counted from the first, a resumed run included)."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            self.model.stop_training = True


def _local(path, data_root, what):
    """`path` if it exists here, else the folder of the same name under the data root."""
    if path is None or os.path.exists(path):
        return path
    root = data_root or locations.data_root()
    moved = os.path.join(root, os.path.basename(os.path.normpath(path))) if root else None
    if moved is None or not os.path.exists(moved):
        raise FileNotFoundError(
            f"the run's {what} {path} is not on this machine: set {locations.DATA_ENV} "
            "(or pass --data-root) to the folder that holds it"
        )
    return moved


def recorded_run(run_dir, data_root=None):
    """(TrainConfig, backend, CPU) of a recorded run, its data folders found on this machine."""
    recorded = read_json(os.path.join(run_dir, "config.json"))
    if recorded is None:
        raise FileNotFoundError(
            f"no config.json in {run_dir}: give a run folder (results/<experiment>/<data>/runs/<run>)"
        )
    values = dict(recorded["config"])
    values["data_dir"] = _local(values.get("data_dir"), data_root, "data folder")
    values["test_data_dir"] = _local(values.get("test_data_dir"), data_root, "test data folder")
    machine = (read_json(os.path.join(run_dir, RUNNER_FILE)) or {}).get("machine") or {}
    backend = (recorded.get("environment") or {}).get("backend")
    return TrainConfig.from_dict(values), backend, machine.get("cpu", "an unrecorded CPU")


def _rerun_so_far(config, epochs):
    """The history of an earlier rerun of this run in its folder when it has `epochs` epochs (or diverged),
    else None. `train` alone would resume a run that stopped short of its config's epochs."""
    earlier = read_json(os.path.join(config.output_dir, "config.json"))
    if (
        earlier is None
        or TrainConfig.from_dict(earlier["config"]).run_key() != config.run_key()
        or (earlier.get("environment") or {}).get("backend") != keras.backend.backend()
    ):
        return None  # nothing there, or another run: `train` says so
    history = read_history(config.output_dir)
    return history if len(history) >= epochs or run_status(config.output_dir)[0] == "diverged" else None


def compare(recorded, rerun):
    """Rows (epoch, metric, recorded, rerun, difference) over the epochs both have."""
    rows = []
    for old, new in zip(recorded, rerun):
        for metric in COMPARED:
            a, b = old.get(metric), new.get(metric)
            if a is not None and b is not None:
                rows.append((old["epoch"], metric, a, b, b - a))
    return rows


@command
def main(argv=None):
    p = ArgumentParser(prog="python -m keras_vitbn.experiments.rerun", description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run folder with config.json and history.jsonl")
    p.add_argument("--epochs", type=positive_int, help="compare the first N epochs only (default: all recorded)")
    p.add_argument("--out", help="folder of the rerun (default runs/rerun/<run folder>)")
    p.add_argument("--data-root", help=f"where the run's data folders are (default ${locations.DATA_ENV})")
    p.add_argument("--tolerance", type=float, default=0.005, help="largest accuracy gap accepted (0.005: 0.5 pp)")
    args = p.parse_args(argv)
    run_dir = os.path.normpath(args.run)
    config, trained_on, trained_cpu = recorded_run(run_dir, args.data_root)
    if trained_on and trained_on != keras.backend.backend():
        raise ValueError(f"{run_dir} trained on {trained_on}: rerun it with KERAS_BACKEND={trained_on}")
    recorded = read_history(run_dir)
    if not recorded:
        raise ValueError(f"{run_dir} has no recorded epochs to compare: rerun a finished run")
    epochs = min(args.epochs or len(recorded), len(recorded))
    out = args.out or os.path.join("runs", "rerun", os.path.basename(run_dir))

    config = TrainConfig.from_dict({**config.to_dict(), "output_dir": out})
    history = _rerun_so_far(config, epochs)
    if history is None:
        history = train(config, callbacks=[StopAfter(epochs)])["history"]
    rows = compare(recorded[:epochs], history[:epochs])
    table = io.StringIO()
    csv.writer(table, lineterminator="\n").writerows([("epoch", "metric", "recorded", "rerun", "difference"), *rows])
    write_text(os.path.join(out, "rerun.csv"), table.getvalue())
    worst = max((abs(d) for _, m, *_, d in rows if m in ACCURACIES), default=0.0)
    summary = dict(
        run=run_dir,
        backend=keras.backend.backend(),
        recorded_cpu=trained_cpu,
        rerun_cpu=cpu_id(),
        epochs=epochs,
        largest_accuracy_difference=worst,
        tolerance=args.tolerance,
        reproduces=worst <= args.tolerance,
    )
    write_json(os.path.join(out, "rerun.json"), summary)
    print(f"\n{run_dir} ({trained_on}, {trained_cpu}) vs this rerun ({summary['rerun_cpu']})")
    for epoch, metric, a, b, d in rows:
        print(f"  epoch {epoch:>3}  {metric:<18} {a:>9.4f} {b:>9.4f}  {d:+.2e}")
    print(
        f"{'reproduces' if summary['reproduces'] else 'does NOT reproduce'}: largest accuracy difference "
        f"{100 * worst:.2f} pp over {epochs} epochs (tolerance {100 * args.tolerance:.2f} pp); "
        f"rerun.csv and rerun.json in {out}"
    )
    return 0 if summary["reproduces"] else 1


if __name__ == "__main__":
    sys.exit(main())
