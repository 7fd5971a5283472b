"""Results of a learning-rate search, read back from its directory: tables, plots, best models.

Everything here reads the files keras-tuner and `LearningRateTuner` wrote
(`trial.json`, `outcome.json`), so a report can be rebuilt at any time, also
while a search is running (`python tuning/lr_per_depth.py ... --report-only`).

Per cell (model, depth), `results.csv` / `results.md` give:

    best_lr            learning rate of the trial with the highest validation accuracy
    val_accuracy       its validation accuracy at the last epoch (the objective)
    test_accuracy      clean test accuracy of that trial's model (evaluated after the search)
    test_aug_accuracy  the same on the augmented test split (fixed seed; the trainers' protocol)
    trials             trials recorded; completed and failed (diverged) are counted separately
    val_acc_min/max    worst and best validation accuracy over the completed trials
    spread             val_acc_max - val_acc_min: how much the learning rate matters at this depth
    lr_tried           lowest and highest learning rate tried
"""

import csv
import glob
import io
import math
import os
import shutil
import time

import numpy as np

from keras_vitbn.tuning.naming import LR, OBJECTIVE, cell_name, say
from keras_vitbn.utils import files as files_lib
from keras_vitbn.utils.files import read_json, write_json

RESULT_COLUMNS = (
    "model",
    "depth",
    "best_lr",
    "val_accuracy",
    "test_accuracy",
    "test_aug_accuracy",
    "trials",
    "completed",
    "failed",
    "val_acc_min",
    "val_acc_max",
    "spread",
    "lr_tried_min",
    "lr_tried_max",
    "best_trial",
    "best_model",
)
ENDED = ("completed", "failed")  # trial statuses (trials.csv) of a trial that will not run again
TRIAL_COLUMNS = (
    "model",
    "depth",
    "trial_id",
    "learning_rate",
    "status",
    "val_accuracy",
    "val_loss",
    "accuracy",
    "loss",
    "seconds",
    "cpu",
    "tuner_id",
    "reason",
)
HEATMAP_BINS = 8


def _finite(value):
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def _last_line(text):
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def collect_trials(config):
    """One dict per trial of every cell (TRIAL_COLUMNS), in cell order then trial order."""
    rows = []
    for model, depth in config.cells():
        project = os.path.join(config.output_dir, "kt", cell_name(model, depth))
        for path in sorted(glob.glob(os.path.join(project, "trial_*", "trial.json"))):
            trial = read_json(path)
            outcome = read_json(os.path.join(os.path.dirname(path), "outcome.json")) or {}
            status = (trial.get("status") or "").lower()
            if status == "invalid":
                status = "failed"
            metrics = outcome.get("metrics") or {}
            reason = outcome.get("reason") if status == "failed" else None
            if status == "failed" and not reason:
                reason = _last_line(trial.get("message"))
            if status == "running":
                reason = "not finished (running, or interrupted: rerun the search to finish it)"
            rows.append(
                {
                    "model": model,
                    "depth": depth,
                    "trial_id": trial["trial_id"],
                    "learning_rate": trial["hyperparameters"]["values"].get(LR),
                    "status": status,
                    "val_accuracy": metrics.get(OBJECTIVE) if status == "completed" else None,
                    "val_loss": metrics.get("val_loss") if status == "completed" else None,
                    "accuracy": metrics.get("accuracy") if status == "completed" else None,
                    "loss": metrics.get("loss") if status == "completed" else None,
                    "seconds": outcome.get("seconds"),
                    "cpu": (outcome.get("machine") or {}).get("cpu"),
                    "tuner_id": outcome.get("tuner_id"),
                    "reason": reason,
                    "_dir": os.path.dirname(path),
                }
            )
    return rows


def _evaluate_best(trial, best_dir, test_ds, test_aug_ds):
    """Copies the best trial's model to best_models/ and evaluates it on the test splits (cached)."""
    import keras

    name = cell_name(trial["model"], trial["depth"])
    source = os.path.join(trial["_dir"], "model.keras")
    target = os.path.join(best_dir, f"{name}.keras")
    record_path = os.path.join(best_dir, f"{name}.json")
    record = read_json(record_path)
    if not os.path.exists(source) or (test_ds is None and test_aug_ds is None):
        # Weights stay on the machine that trained them (.gitignore), and a clone may lack the data:
        # the test metrics recorded for this trial are results, kept as they are.
        if record and record.get("trial_id") == trial["trial_id"]:
            return (target if os.path.exists(target) else None), record
        missing = "no test data was given" if os.path.exists(source) else f"{source} is missing"
        return None, {"note": f"not evaluated: {missing}"}
    stamp = [os.path.getsize(source), os.path.getmtime(source)]
    if (
        record
        and record.get("trial_id") == trial["trial_id"]
        and record.get("source_stamp") == stamp
        and os.path.exists(target)
    ):
        return target, record
    os.makedirs(best_dir, exist_ok=True)
    with files_lib.atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    model = keras.saving.load_model(target, compile=False)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    record = {
        "model": trial["model"],
        "depth": trial["depth"],
        "trial_id": trial["trial_id"],
        "learning_rate": trial["learning_rate"],
        "val_accuracy": trial["val_accuracy"],
        "source": os.path.relpath(source, os.path.dirname(best_dir)),
        "source_stamp": stamp,
        "backend": keras.backend.backend(),
    }
    for prefix, data in (("test", test_ds), ("test_aug", test_aug_ds)):
        if data is None:
            continue
        values = model.evaluate(data, verbose=0, return_dict=True)
        record[f"{prefix}_loss"] = float(values["loss"])
        record[f"{prefix}_accuracy"] = float(values["accuracy"])
    write_json(record_path, record)
    return target, record


def summarize(config, trials, test_ds=None, test_aug_ds=None, evaluate=True):
    """One dict per cell (RESULT_COLUMNS); evaluates each best model on the test splits when asked."""
    results = []
    best_dir = os.path.join(config.output_dir, "best_models")
    for model, depth in config.cells():
        cell = [t for t in trials if t["model"] == model and t["depth"] == depth]
        done = [t for t in cell if t["status"] == "completed" and _finite(t["val_accuracy"])]
        failed = [t for t in cell if t["status"] == "failed"]
        lrs = [t["learning_rate"] for t in cell if t["learning_rate"] is not None]
        row = dict.fromkeys(RESULT_COLUMNS)
        row.update(model=model, depth=depth, trials=len(cell), completed=len(done), failed=len(failed))
        if lrs:
            row.update(lr_tried_min=min(lrs), lr_tried_max=max(lrs))
        if done:
            # The best by the objective; ties go to the earlier trial, as in keras-tuner.
            best = max(done, key=lambda t: t["val_accuracy"])
            accs = [t["val_accuracy"] for t in done]
            row.update(
                best_lr=best["learning_rate"],
                val_accuracy=best["val_accuracy"],
                val_acc_min=min(accs),
                val_acc_max=max(accs),
                spread=max(accs) - min(accs),
                best_trial=best["trial_id"],
            )
            if evaluate:
                path, record = _evaluate_best(best, best_dir, test_ds, test_aug_ds)
                row.update(
                    best_model=path and os.path.relpath(path, config.output_dir),
                    test_accuracy=record.get("test_accuracy"),
                    test_aug_accuracy=record.get("test_aug_accuracy"),
                )
        results.append(row)
    return results


def _fmt(value, column):
    if value is None:
        return ""
    if isinstance(value, float):
        if column in ("best_lr", "learning_rate", "lr_tried_min", "lr_tried_max"):
            return f"{value:.3g}"
        if column == "seconds":
            return f"{value:.1f}"
        return f"{value:.4f}"
    return str(value)


def _write_csv(path, rows, columns):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    files_lib.write_text(path, text.getvalue())


def markdown_table(results):
    header = [
        "model",
        "depth",
        "best lr",
        "val acc",
        "test acc",
        "test acc (aug)",
        "trials (failed)",
        "val acc range",
        "spread",
        "lr tried",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        val_range = (
            f"{_fmt(r['val_acc_min'], 'x')}-{_fmt(r['val_acc_max'], 'x')}" if r["val_acc_min"] is not None else ""
        )
        lr_range = (
            f"{_fmt(r['lr_tried_min'], 'best_lr')}-{_fmt(r['lr_tried_max'], 'best_lr')}" if r["lr_tried_min"] else ""
        )
        cells = [
            r["model"],
            str(r["depth"]),
            _fmt(r["best_lr"], "best_lr"),
            _fmt(r["val_accuracy"], "x"),
            _fmt(r["test_accuracy"], "x"),
            _fmt(r["test_aug_accuracy"], "x"),
            f"{r['trials']} ({r['failed']})",
            val_range,
            _fmt(r["spread"], "x"),
            lr_range,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _lr_columns(config):
    """(column values, bin edges or None) of the heatmap's learning-rate axis."""
    if config.tuner == "grid":
        return list(config.grid()), None
    edges = np.logspace(math.log10(config.lr_min), math.log10(config.lr_max), HEATMAP_BINS + 1)
    centers = np.sqrt(edges[:-1] * edges[1:])
    return list(centers), edges


def heatmap_matrix(config, trials, model):
    """(depths, lr columns, best val accuracy [depth, lr] with NaN where none, failed-only mask)."""
    columns, edges = _lr_columns(config)
    depths = list(config.depths)
    values = np.full((len(depths), len(columns)), np.nan)
    failed_only = np.zeros_like(values, dtype=bool)
    for t in trials:
        if t["model"] != model or t["learning_rate"] is None or t["status"] not in ENDED:
            continue
        r = depths.index(t["depth"])
        if edges is None:
            c = int(np.argmin([abs(math.log(t["learning_rate"] / v)) for v in columns]))
        else:
            c = int(np.clip(np.searchsorted(edges, t["learning_rate"], side="right") - 1, 0, len(columns) - 1))
        if t["status"] == "completed" and _finite(t["val_accuracy"]):
            values[r, c] = t["val_accuracy"] if np.isnan(values[r, c]) else max(values[r, c], t["val_accuracy"])
            failed_only[r, c] = False
        elif np.isnan(values[r, c]):
            failed_only[r, c] = True
    return depths, columns, values, failed_only


def plot_heatmaps(config, trials, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(config.models)
    fig, axes = plt.subplots(
        1,
        len(models),
        figsize=(1.0 + 0.9 * (HEATMAP_BINS + 1) * len(models), 1.2 + 0.5 * len(config.depths) + 1.2),
        squeeze=False,
    )
    all_values = [heatmap_matrix(config, trials, m)[2] for m in models]
    finite = np.concatenate([v[np.isfinite(v)] for v in all_values]) if all_values else np.array([])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = None
    for ax, model in zip(axes[0], models):
        depths, columns, values, failed_only = heatmap_matrix(config, trials, model)
        cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
        image = ax.imshow(
            np.ma.masked_invalid(values),
            cmap=cmap,
            vmin=vmin,
            vmax=vmax if vmax > vmin else vmin + 1e-6,
            aspect="auto",
            origin="lower",
        )
        for r in range(len(depths)):
            for c in range(len(columns)):
                if np.isfinite(values[r, c]):
                    ax.text(
                        c,
                        r,
                        f"{values[r, c]:.3f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if values[r, c] < (vmin + vmax) / 2 else "black",
                    )
                elif failed_only[r, c]:
                    ax.text(c, r, "div.", ha="center", va="center", fontsize=7, color="red")
        ax.set_xticks(range(len(columns)), [f"{v:.2g}" for v in columns], rotation=45, fontsize=8)
        ax.set_yticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlabel("learning rate" + (" (bin centre)" if config.tuner != "grid" else ""))
        ax.set_ylabel("depth")
        ax.set_title(f"{model}: best val accuracy")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="validation accuracy (last epoch)")
    fig.suptitle(
        f"{config.train.dataset}: {config.tuner} search, grey = not tried, div. = diverged", fontsize=9, y=1.04
    )
    files_lib.save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_best_lr(config, results, trials, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for i, model in enumerate(config.models):
        color = f"C{i}"
        rows = [r for r in results if r["model"] == model and r["best_lr"] is not None]
        tried = [t for t in trials if t["model"] == model and t["learning_rate"] is not None]
        ok = [t for t in tried if t["status"] == "completed"]
        bad = [t for t in tried if t["status"] == "failed"]
        offset = (i - (len(config.models) - 1) / 2) * 0.08
        ax_lr.scatter([t["depth"] + offset for t in ok], [t["learning_rate"] for t in ok], s=12, color=color, alpha=0.3)
        if bad:
            ax_lr.scatter(
                [t["depth"] + offset for t in bad],
                [t["learning_rate"] for t in bad],
                s=20,
                color=color,
                marker="x",
                alpha=0.6,
            )
        ax_lr.plot([r["depth"] for r in rows], [r["best_lr"] for r in rows], "o-", color=color, label=model)
        ax_acc.plot(
            [r["depth"] for r in rows], [r["val_accuracy"] for r in rows], "o-", color=color, label=f"{model} val"
        )
        test = [r for r in rows if r["test_accuracy"] is not None]
        if test:
            ax_acc.plot(
                [r["depth"] for r in test],
                [r["test_accuracy"] for r in test],
                "s--",
                color=color,
                alpha=0.7,
                label=f"{model} test",
            )
    ax_lr.set_yscale("log")
    low, high = config.lr_bounds()
    ax_lr.set_ylim(low / 1.5, high * 1.5)
    ax_lr.set_xlabel("depth")
    ax_lr.set_ylabel("best learning rate")
    ax_lr.set_title("best lr (dots: tried, x: diverged)")
    ax_lr.legend(fontsize=8)
    ax_acc.set_xlabel("depth")
    ax_acc.set_ylabel("accuracy of the best lr")
    ax_acc.set_title("accuracy at the best lr")
    ax_acc.legend(fontsize=8)
    for ax in (ax_lr, ax_acc):
        ax.set_xticks(list(config.depths))
        ax.grid(alpha=0.3)
    fig.suptitle(f"{config.train.dataset}: learning rate per depth ({config.tuner} search)", fontsize=10)
    fig.tight_layout()
    files_lib.save_figure(fig, path, dpi=110)
    plt.close(fig)


def time_line(trials):
    """The trials' summed wall time and CPUs: a search resumed over several sittings has no single wall time."""
    timed = [t for t in trials if t["status"] in ENDED and t.get("seconds") is not None]
    if not timed:
        return None
    cpus = sorted({t["cpu"] for t in timed if t.get("cpu")}) or ["an unrecorded CPU"]
    hours = sum(t["seconds"] for t in timed) / 3600
    return f"The {len(timed)} finished trials trained for {hours:.1f} h in all, on {'; '.join(cpus)}.\n"


def write_report(config, test_ds=None, test_aug_ds=None, evaluate=True):
    """Writes results.csv/.md, trials.csv, the plots and best_models/; returns {"results", "trials", "files"}."""
    trials = collect_trials(config)
    results = summarize(config, trials, test_ds, test_aug_ds, evaluate=evaluate)
    out = config.output_dir
    files = {
        "results_csv": os.path.join(out, "results.csv"),
        "results_md": os.path.join(out, "results.md"),
        "trials_csv": os.path.join(out, "trials.csv"),
        "best_lr_plot": os.path.join(out, "best_lr_vs_depth.png"),
        "heatmap": os.path.join(out, "heatmap.png"),
    }
    _write_csv(files["results_csv"], results, RESULT_COLUMNS)
    _write_csv(files["trials_csv"], trials, TRIAL_COLUMNS)
    failed = [t for t in trials if t["status"] == "failed"]
    unfinished = [t for t in trials if t["status"] not in ENDED]
    text = [
        f"# Learning rate per depth: {config.train.dataset}",
        "",
        f"{config.tuner} search over lr in [{config.lr_bounds()[0]:g}, {config.lr_bounds()[1]:g}], "
        f"{config.max_trials()} trials per (model, depth); objective: validation accuracy at the last epoch "
        f"({config.train.validation_split:g} of the training data, epochs {config.train.epochs}); "
        "test accuracy of each cell's best model only, evaluated after the search.",
        "",
        markdown_table(results),
    ]
    if line := time_line(trials):
        text.append(line)
    if failed:
        text.append("Failed trials:\n")
        text += [
            f"- {t['model']} d{t['depth']} trial {t['trial_id']} lr {t['learning_rate']:.3g}: {t['reason']}"
            for t in failed
        ]
        text.append("")
    if unfinished:
        text.append(f"{len(unfinished)} trials are not finished: rerun the search to finish them.\n")
    files_lib.write_text(files["results_md"], "\n".join(text))
    plot_best_lr(config, results, trials, files["best_lr_plot"])
    plot_heatmaps(config, trials, files["heatmap"])
    files_lib.append_jsonl(
        os.path.join(out, "report.log"),
        {
            "time": time.time(),
            "pid": os.getpid(),
            "tuner_id": os.environ.get("KERASTUNER_TUNER_ID"),
            "trials": len(trials),
        },
    )
    say(f"results in {files['results_md']}:\n{markdown_table(results)}")
    for t in trials:
        t.pop("_dir", None)
    return {"results": results, "trials": trials, "files": files}
