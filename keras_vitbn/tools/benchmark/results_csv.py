"""The benchmark's summary rows as CSV, one file per machine and setting, appended run after run.

Measurements are data, not prose: every full run of `python -m keras_vitbn.tools.benchmark`
appends one row per (model, backend) to `results/benchmarks/benchmark-<cpu>-<n>cpu.csv`
(`-mixed_bfloat16` added under that policy), the way timm keeps `results/*.csv`.
`results/benchmarks/README.md` explains the columns.
"""

import csv
import datetime
import os
import re

from keras_vitbn.tools.benchmark.run import MODELS, window_range
from keras_vitbn.utils.machine import code_commit as current_commit  # `rows` takes a code_commit argument

DEFAULT_DIRECTORY = os.path.join("results", "benchmarks")
COLUMNS = (
    "date",
    "time_utc",
    "cpu",
    "cpu_count",
    "matmul_peak_gflops",
    "code_commit",
    "command",
    "output",
    "dtype_policy",
    "depth",
    "batch_size",
    "model",
    "backend",
    "devices",
    "train_images_per_s",
    "window_slowest",
    "window_fastest",
    "x_yardstick",
    "pct_matmul_peak",
    "epoch_vs_model_only",
    "epoch_images_per_s",
    "infer_images_per_s",
    "compile_s",
    "peak_rss_mib",
    "first_step_loss",
    "same_work",
    "recorded_in",
    "note",
)


def _number(value, digits):
    return "" if value is None else f"{value:.{digits}f}"


def _command(results):
    # Under `python -m`, sys.argv[0] is the path of __main__.py: name the module instead.
    words = results.get("command", "").split()
    if words and words[0].endswith(os.path.join("benchmark", "__main__.py")):
        words[0:1] = ["python", "-m", "keras_vitbn.tools.benchmark"]
    return " ".join(words)


def _utc(date):
    moment = datetime.datetime.fromisoformat(date)
    return moment.astimezone(datetime.timezone.utc)  # a naive time is the machine's local time


def rows(results, output="", code_commit=None):
    """One dict per (model, backend) of a `run_benchmark` result, keyed by `COLUMNS`."""
    machine, config = results["machine"], results["config"]
    moment = _utc(results["date"])
    peak = machine.get("matmul_peak_flops")
    common = {
        "date": moment.strftime("%Y-%m-%d"),
        "time_utc": moment.strftime("%H:%M"),
        "cpu": machine.get("cpu_id") or machine.get("processor", ""),
        "cpu_count": machine.get("cpu_count", ""),
        "matmul_peak_gflops": _number(peak and peak / 1e9, 0),
        "code_commit": current_commit() if code_commit is None else code_commit,
        "command": _command(results),
        "output": output,
        "dtype_policy": config.get("dtype_policy") or "float32",
        "depth": config["depth"],
        "batch_size": config["batch_size"],
        "recorded_in": "",
    }
    table = []
    for model, runs in results["runs"].items():
        for backend, run in runs.items():
            row = {**common, "model": MODELS.get(model, model), "backend": backend}
            if "error" in run:
                table.append({**row, "note": f"failed: {run['error']}"})
                continue
            slowest, fastest = window_range(run).split("-") if run.get("train_window_seconds") else ("", "")
            fraction = run.get("fraction_of_matmul_peak")
            same_work = run.get("same_work")
            table.append(
                {
                    **row,
                    "devices": run.get("devices", ""),
                    "train_images_per_s": _number(run["train_images_per_s"], 0),
                    "window_slowest": slowest,
                    "window_fastest": fastest,
                    "x_yardstick": _number(run.get("ratio_to_yardstick"), 2),
                    "pct_matmul_peak": _number(fraction and 100 * fraction, 0),
                    "epoch_vs_model_only": _number(run.get("epoch_vs_model_only"), 2),
                    "epoch_images_per_s": _number(run.get("epoch_images_per_s"), 0),
                    "infer_images_per_s": _number(run.get("infer_images_per_s"), 0),
                    "compile_s": _number(run.get("compile_seconds"), 1),
                    "peak_rss_mib": _number(run.get("peak_rss_mib"), 0),
                    "first_step_loss": _number(run.get("first_step_loss"), 6),
                    "same_work": "" if same_work is None else ("yes" if same_work else "no"),
                    "note": "",
                }
            )
    return table


def default_path(results, directory=DEFAULT_DIRECTORY):
    """`directory/benchmark-<cpu>-<n>cpu[-<dtype policy>].csv`: one file per machine and setting."""
    machine = results["machine"]
    cpu = re.sub(r"[^a-z0-9]+", "-", (machine.get("cpu_id") or machine.get("processor") or "cpu").lower()).strip("-")
    policy = results["config"].get("dtype_policy") or "float32"
    suffix = "" if policy == "float32" else f"-{policy}"
    return os.path.join(directory, f"benchmark-{cpu}-{machine.get('cpu_count', 0)}cpu{suffix}.csv")


def append(results, path, output=""):
    """Appends `rows(results)` to the CSV at `path` (header first if the file is new); returns the row count."""
    table = rows(results, output=output)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    unended = False
    if not new:  # a run killed mid-write leaves a last line without its newline: end it first
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            unended = f.read(1) != b"\n"
    with open(path, "a", newline="") as f:
        if unended:
            f.write("\n")
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(table)
    return len(table)
