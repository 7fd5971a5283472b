"""What a grid costs: measured seconds per run, and an estimate for the runs not done yet.

Each finished run's `runner.json` records its wall time, the CPU and the load average
at its start and end; a resumed run's time is of its last process, priced up to the
whole run. Per model, the seconds of a run are fitted as a straight line in depth (a
ViT's step time grows about linearly with its blocks); runs not measured yet are priced
from that line, so the estimate sharpens as the sweep covers more depths.
The machine may have been shared while it ran: the load column says how busy it was.
"""

import os

import numpy as np

from keras_vitbn.experiments.runner import DONE, RUNNER_FILE, whole_run_seconds
from keras_vitbn.utils.files import read_json


def _runner_meta(record):
    return (read_json(os.path.join(record.run_dir, RUNNER_FILE)) or {}) if record.run_dir else {}


def run_cpu(record):
    """The CPU model a run trained on (its runner.json), else None."""
    return (_runner_meta(record).get("machine") or {}).get("cpu")


def run_seconds(record):
    """(seconds, machine dict) of a finished run from its runner.json, else (None, {})."""
    if record.status not in DONE or not record.run_dir:
        return None, {}
    meta = _runner_meta(record)
    seconds = meta.get("seconds")
    machine = dict(meta.get("machine") or {}, load_end=meta.get("load_end"))
    if not seconds:
        return None, machine
    seconds = whole_run_seconds(float(seconds), meta.get("resumed_after_epoch") or 0, len(record.history))
    # Runs resumed before runner.json recorded it timed less than their own epochs took: at least those.
    return max(seconds, sum(float(h.get("epoch_time") or 0) for h in record.history)), machine


def _fit(points):
    """seconds(depth) from (depth, seconds) points: a line through >= 2 depths, else their mean."""
    depths = {d for d, _ in points}
    if len(depths) >= 2:
        slope, intercept = np.polyfit(*zip(*points), 1)
        return lambda d: max(float(slope * d + intercept), 0.0)
    mean = float(np.mean([s for _, s in points]))
    return lambda d: mean


def estimate(records):
    """Measured and estimated CPU time of a grid.

    Returns:
        dict with `measured_seconds` (finished runs), `remaining_seconds` (estimate for
        the others; None when a model has no finished run), `per_cell` {(model, depth):
        [seconds, ...]}, `cpus` (the CPU models seen) and `load` (mean load average at
        the start and end of the measured runs).
    """
    per_cell, cpus, loads = {}, set(), []
    for r in records:
        seconds, machine = run_seconds(r)
        if seconds is None:
            continue
        per_cell.setdefault((r.model, r.depth), []).append(seconds)
        if machine.get("cpu"):
            cpus.add(f"{machine['cpu']}, {machine.get('cores', '?')} cores")
        loads += [x for x in (machine.get("load_start"), machine.get("load_end")) if x is not None]
    fits = {}
    for model in {r.model for r in records}:
        points = [(d or 0, s) for (m, d), ss in per_cell.items() if m == model for s in ss]
        fits[model] = _fit(points) if points else None
    measured = sum(sum(v) for v in per_cell.values())
    remaining = 0.0
    for r in records:
        if r.status in DONE:
            continue
        fit = fits.get(r.model)
        if fit is None:
            remaining = None
            break
        remaining += fit(r.depth or 0)
    return dict(
        measured_seconds=measured,
        remaining_seconds=remaining,
        per_cell=per_cell,
        cpus=sorted(cpus),
        load=float(np.mean(loads)) if loads else None,
    )


def _hours(seconds):
    return "unknown" if seconds is None else f"{seconds / 3600:.1f} h"


def budget_lines(a, display):
    """Markdown lines: seconds per run by depth and model, the total and what is left."""
    est = estimate(a.records)
    models = (a.baseline, a.treatment)
    rows = []
    for d in a.depths:
        cells = []
        for m in models:
            ss = est["per_cell"].get((m, d), [])
            cells.append(f"{np.median(ss) / 60:.1f} min (n={len(ss)})" if ss else "—")
        rows.append(f"| {'-' if d is None else d} | " + " | ".join(cells) + " |")
    total = None if est["remaining_seconds"] is None else est["measured_seconds"] + est["remaining_seconds"]
    machine = "; ".join(est["cpus"]) or "unknown"
    load = "" if est["load"] is None else f" Mean load average while they ran: {est['load']:.1f}."
    if a.records and all(r.status in DONE for r in a.records):
        total_line = f"The whole grid took {_hours(est['measured_seconds'])} of CPU time on {machine}.{load}"
    else:
        total_line = (
            f"Measured so far: {_hours(est['measured_seconds'])} of CPU time on {machine}.{load} "
            f"Estimated for the whole grid: {_hours(total)}, of which "
            f"{_hours(est['remaining_seconds'])} remain (unmeasured depths priced from a line "
            "fitted through the measured ones per model; a busier machine inflates both)."
        )
    return [
        "Wall time of one run (training, and the clean and augmented test evaluation after "
        "every epoch), median over the finished runs of each cell.",
        "",
        "| depth | " + " | ".join(f"{display(m)} per run" for m in models) + " |",
        "|---|" + "---|" * len(models),
        *rows,
        "",
        total_line,
    ]
