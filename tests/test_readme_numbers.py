"""Every number in the README's "What we found" tables comes from the committed results.

The tables are written by hand from the sweeps; this test recomputes each cell with the
report's own statistics (`Analysis`: final augmented test accuracy, mean over the finished
seeds; ViTBNFFN - ViT with its Welch 95% CI) from the committed records, checks those
records against their run folders, and fails on any number that does not match, so the
first screen of the repository cannot drift from its evidence. The sentences around the
tables quote the reports: their signed differences are checked against the reports they link.
The learning-rate search's paragraph is checked against its results.csv and trials.csv, and
the table of results/reruns/README.md against its rerun.json and rerun.csv files.
"""

import csv
import json
import re
from pathlib import Path

from keras_vitbn.experiments import load_records
from keras_vitbn.experiments.cli import load_config
from keras_vitbn.experiments.report import Analysis
from keras_vitbn.experiments.runner import DONE
from tests.testing import ROOT as _ROOT

ROOT = Path(_ROOT)
CONFIG_ARG = {"fashion_mnist": "data=fashion_mnist", "mnist": "data=mnist_offline"}  # as in evidence.sh
MODELS = {"ViT": "vit", "ViTBNFFN": "vit_bnffn"}
REPORT_LINK = re.compile(r"results/depth_sweep/(\w+)/report\.md")


def _found_section():
    return (ROOT / "README.md").read_text().split("## What we found", 1)[1].split("\n## ", 1)[0]


def _found_tables():
    """[(dataset, header, rows)] of the tables under '## What we found'.

    A table's dataset is the one whose report the nearest line above it links to.
    """
    section = _found_section()
    tables, dataset, block = [], None, []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if block:
            assert dataset, "a table in 'What we found' without a link to its report above it"
            tables.append((dataset, block[0], block[2:]))
            block = []
        links = REPORT_LINK.findall(line)
        if links:
            dataset = links[-1]
    return tables


def _analysis(dataset):
    cfg, _ = load_config(str(ROOT / "experiments" / f"depth_sweep.py:{CONFIG_ARG[dataset]}"))
    records = load_records(ROOT / "results" / "depth_sweep" / dataset / "results.json")
    for record in records:
        if record.status not in DONE:
            continue
        run = Path(record.run_dir)
        status = json.loads((run / "status.json").read_text())["status"]
        with open(run / "history.csv") as f:
            last = list(csv.DictReader(f))[-1]
        assert status == record.status, f"{run.name}: results.json says {record.status}, the run folder {status}"
        assert float(last["test_aug_accuracy"]) == float(record.history[-1]["test_aug_accuracy"]), run.name
    return Analysis(cfg, records)


def _expected(analysis, column, depth):
    """The cell the README should show in `column` ("ViT, lr 0.003" or "ViTBNFFN - ViT, lr 0.003")."""
    label, lr = re.fullmatch(r"(.+), lr ([\d.]+)", column).groups()
    if label == "ViTBNFFN - ViT":
        c = analysis.compare(depth, float(lr))
        if not c.testable:
            return "n/a"
        return f"{100 * c.diff:+.1f} pp [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}]"
    finals = analysis.finals(MODELS[label], depth, float(lr))
    return f"{100 * sum(finals) / len(finals):.1f}%" if finals else "—"


def test_readme_numbers_match_the_committed_runs():
    tables = _found_tables()
    assert tables, "the README lost its 'What we found' table"
    checked = 0
    for dataset, header, rows in tables:
        analysis = _analysis(dataset)
        assert header[0] == "depth", header
        for row in rows:
            depth = int(row[0])
            for column, cell in zip(header[1:], row[1:]):
                assert cell == _expected(analysis, column, depth), f"{dataset} depth {depth} {column}: README {cell}"
                checked += cell not in ("—", "n/a")
    assert checked >= 8, "the README tables lost their numbers"


SIGNED_PP = re.compile(r"([+-]\d+(?:\.\d+)?) pp(?: \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\])?")
REPORT_NUMBER = re.compile(r"[+-]\d+\.\d+")
REPORT_INTERVAL = re.compile(r"([+-]\d+\.\d+) pp[^\[\n]{0,12}\[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]")


def _rounds_to(readme, report):
    """The README gives one decimal where the reports give two."""
    return all(abs(float(a) - float(b)) <= 0.051 for a, b in zip(readme, report))


def test_readme_sentences_quote_their_reports():
    # The prose beside the tables: every signed difference ("+2.7 pp", "+2.7 pp [-0.4, +5.9]")
    # must be in a report its paragraph links to, interval and all.
    section = _found_section()
    checked = 0
    for paragraph in section.split("\n\n"):
        if paragraph.lstrip().startswith("|"):
            continue  # tables: test_readme_numbers_match_the_committed_runs
        links = re.findall(r"\((results/[\w/]+/report\.md)\)", paragraph)
        reports = [(ROOT / link).read_text() for link in links]
        for m in SIGNED_PP.finditer(paragraph):
            if m.group(2):
                found = any(_rounds_to(m.groups(), c) for r in reports for c in REPORT_INTERVAL.findall(r))
            else:
                found = any(_rounds_to([m.group(1)], [x]) for r in reports for x in REPORT_NUMBER.findall(r))
            assert found, f"README's '{m.group(0)}' is in none of the reports its paragraph links to: {links}"
            checked += 1
    assert checked >= 6, "the README's findings lost their numbers"


LR_SEARCH = "results/lr_per_depth/fashion_mnist"


def test_readme_learning_rate_search_quotes_its_trials():
    # The search's paragraph lists each model's best lr at depths 1-8 and a range of validation
    # accuracies at one lr over a span of depths: both must be what results.csv and trials.csv say.
    paragraph = next(p for p in _found_section().split("\n\n") if f"({LR_SEARCH}/results.md)" in p)
    text = " ".join(paragraph.split())
    with open(ROOT / LR_SEARCH / "results.csv") as f:
        results = list(csv.DictReader(f))
    with open(ROOT / LR_SEARCH / "trials.csv") as f:
        trials = [t for t in csv.DictReader(f) if t["status"] == "completed"]
    best = {}
    for name, model in MODELS.items():
        listed = re.search(rf"{name} ((?:\d\.\d+, ){{7}}\d\.\d+)", text)
        assert listed, f"the README no longer lists {name}'s best lr per depth"
        best[model] = [
            float(r["best_lr"]) for r in sorted(results, key=lambda r: int(r["depth"])) if r["model"] == model
        ]
        assert [float(x) for x in listed.group(1).split(", ")] == best[model], name
    if "BatchNorm never moves the best one up" in text:
        assert all(bn <= vit for vit, bn in zip(best["vit"], best["vit_bnffn"]))
    span = re.search(r"At lr ([\d.]+), ViTBNFFN keeps .* at depths (\d)-(\d) \(([\d.-]+)% against ([\d.-]+)%\)", text)
    assert span, "the README lost its comparison at the highest learning rate"
    lr, low, high = float(span.group(1)), int(span.group(2)), int(span.group(3))
    acc = {
        (t["model"], int(t["depth"])): 100 * float(t["val_accuracy"]) for t in trials if float(t["learning_rate"]) == lr
    }
    for model, quoted in (("vit_bnffn", span.group(4)), ("vit", span.group(5))):
        vals = [acc[model, d] for d in range(low, high + 1)]
        assert quoted == f"{min(vals):.1f}-{max(vals):.1f}", (model, quoted)
    assert all(acc["vit_bnffn", d] > acc["vit", d] for d in range(low, high + 1))
    margin = re.search(r"ViT's ([\d.]+) at depth (\d) beats ([\d.]+) by ([\d.]+) pp", text)
    if margin:
        won, depth, lost, pp = margin.groups()
        at = {
            float(t["learning_rate"]): 100 * float(t["val_accuracy"])
            for t in trials
            if t["model"] == "vit" and t["depth"] == depth
        }
        assert f"{at[float(won)] - at[float(lost)]:.1f}" == pp
    behind = re.search(r"but not at depths (\d) and (\d)", text)
    assert behind and all(acc["vit_bnffn", int(d)] < acc["vit", int(d)] for d in behind.groups())


def test_reruns_table_states_its_rerun_files():
    # results/reruns/README.md is written by hand from the rerun.json files beside it.
    folder = ROOT / "results" / "reruns"
    rows = [line.split("|")[1:-1] for line in (folder / "README.md").read_text().splitlines()]
    rows = [[c.strip() for c in r] for r in rows if r and "rerun.csv" in r[0]]
    runs = [re.search(r"\]\(([^/]+)/rerun\.csv\)", r[0]).group(1) for r in rows]
    assert sorted(runs) == sorted(p.name for p in folder.iterdir() if p.is_dir())
    for run, (link, backend, trained_on, rerun_on, epochs, difference, verdict) in zip(runs, rows):
        summary = json.loads((folder / run / "rerun.json").read_text())
        history = list(csv.DictReader((folder / run / "rerun.csv").read_text().splitlines()))
        dataset, name = link.split("`")[1].split("/")
        assert summary["run"].endswith(f"/{dataset}/runs/{name}"), link
        assert (backend, trained_on, rerun_on, int(epochs)) == (
            summary["backend"],
            summary["recorded_cpu"],
            summary["rerun_cpu"],
            summary["epochs"],
        )
        worst = max(abs(float(r["difference"])) for r in history if r["metric"] != "loss")
        assert worst == summary["largest_accuracy_difference"] and difference == f"{100 * worst:.2f} pp", run
        assert verdict == ("reproduces" if summary["reproduces"] else "does not reproduce"), run
