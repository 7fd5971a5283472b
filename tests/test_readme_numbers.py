"""Every accuracy in the README's "What we found" table comes from a committed run folder.

The table is written by hand from the sweep's results; this test reads the run folders the
report reads (config.json, status.json, history.csv) and fails on any number that does
not match, so the first screen of the repository cannot drift from its evidence.
"""

import csv
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "depth_sweep" / "fashion_mnist" / "runs"
MODELS = {"ViT": "vit", "ViTBNFFN": "vit_bnffn"}


def _found_table():
    """Rows of the first table under '## What we found': {(model, lr): {depth: cell}}."""
    section = (ROOT / "README.md").read_text().split("## What we found", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    depths = [int(c) for c in lines[0].strip("|").split("|")[1:]]
    rows = {}
    for line in lines[2:]:
        label, *cells = [c.strip() for c in line.strip("|").split("|")]
        name, lr = re.fullmatch(r"(\w+), lr ([\d.]+)", label).groups()
        rows[(MODELS[name], float(lr))] = dict(zip(depths, cells))
    return rows


def _final_aug_accuracy():
    """{(model, lr, depth): final augmented test accuracy in %} of the finished seed-0 runs."""
    finals = {}
    for run in RUNS.iterdir():
        status = json.loads((run / "status.json").read_text())["status"]
        config = json.loads((run / "config.json").read_text())["config"]
        if status != "completed" or config["seed"] != 0:
            continue
        with open(run / "history.csv") as f:
            last = list(csv.DictReader(f))[-1]
        assert int(last["epoch"]) == config["epochs"], run.name
        key = (config["model"], config["learning_rate"], config["depth"])
        finals[key] = 100 * float(last["test_aug_accuracy"])
    return finals


def test_readme_accuracies_match_the_committed_runs():
    finals = _final_aug_accuracy()
    checked = 0
    for (model, lr), cells in _found_table().items():
        for depth, cell in cells.items():
            if cell == "—":
                continue
            assert cell.endswith("%"), f"{model} lr {lr} depth {depth}: {cell!r}"
            assert (model, lr, depth) in finals, f"README shows {cell} for {model} d{depth} lr {lr}: no finished run"
            assert f"{finals[(model, lr, depth)]:.1f}%" == cell, (model, lr, depth, finals[(model, lr, depth)])
            checked += 1
    assert checked >= 8, "the README table lost its numbers"
