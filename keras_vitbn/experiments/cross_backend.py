"""One grid cell trained on every backend: the curves side by side, and whether the conclusion holds.

    python -m keras_vitbn.experiments.cross_backend --runs results/depth_sweep/fashion_mnist/runs \
        --model vit_bnffn --depth 6 --lr 0.005 --seed 0 --out results/cross_backend/fashion_mnist

Reads the run folders of that cell (one per backend, told apart by their runner.json),
the baseline's (ViT's) runs of the same cell where they exist, and every seed of the cell
for the seed-to-seed spread, taken on one backend so that it does not mix in the backend's.
Trains nothing. Writes report.md, curves.png and summary.json into --out.

The conclusion is "the treatment is ahead of (or behind) the baseline in this cell"; it does
not depend on the backend when every backend that trained both models gives the same sign.
"""

import os
import sys

import numpy as np
from matplotlib.figure import Figure

from keras_vitbn.experiments.runner import DONE, RUNNER_FILE, read_history, run_status
from keras_vitbn.utils.cli_errors import ArgumentParser, command
from keras_vitbn.utils.files import read_json, save_figure, write_json, write_text

METRICS = ("test_aug_accuracy", "test_accuracy")
VERDICT = {
    "incomplete": "incomplete: not every backend has trained both models of this cell yet.",
    "does not depend on the backend": "the conclusion **does not depend on the backend**: "
    "the sign of {model} - {baseline} "
    "is the same on every backend.",
    "depends on the backend": "the conclusion **depends on the backend**: the sign of {model} - {baseline} differs.",
}


def find_runs(runs_dir, model, depth, lr):
    """[(backend, seed, history)] of the finished runs of a cell, every seed and backend."""
    prefix = f"{model}-d{depth}-lr{lr:g}-s"
    out = []
    for name in sorted(os.listdir(runs_dir)):
        if not name.startswith(prefix):
            continue
        run_dir = os.path.join(runs_dir, name)
        meta = read_json(os.path.join(run_dir, RUNNER_FILE)) or {}
        spec = meta.get("spec") or {}
        if run_status(run_dir)[0] not in DONE:
            continue
        out.append((meta.get("backend", "?"), spec.get("seed"), read_history(run_dir)))
    return out


def final(history, metric):
    return float(history[-1].get(metric, np.nan)) if history else float("nan")


BACKEND_COLORS = {"tensorflow": "tab:orange", "jax": "tab:blue", "torch": "tab:red"}


def plot(cell, baseline, path, title, names):
    fig = Figure(figsize=(5 * len(METRICS), 3.6), layout="constrained")
    for ax, metric in zip(fig.subplots(1, len(METRICS), squeeze=False)[0], METRICS):
        for runs, style, label in ((cell, "-", names[0]), (baseline, ":", names[1])):
            for backend, _, hist in runs:
                epochs = [h["epoch"] for h in hist]
                ax.plot(
                    epochs,
                    [100 * h.get(metric, np.nan) for h in hist],
                    style,
                    marker="o",
                    markersize=3,
                    color=BACKEND_COLORS.get(backend),
                    label=f"{backend}: {label}",
                )
        ax.set(title=metric.replace("_", " "), xlabel="epoch", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path, dpi=110)


def seed_spread(runs, metric):
    """S.d. of the final accuracy over seeds on the backend with the most seeds of the cell."""
    by_backend = {}
    for backend, seed, hist in runs:
        by_backend.setdefault(backend, {})[seed] = final(hist, metric)
    if not by_backend:
        return dict(backend=None, seeds=0, sd=float("nan"))
    backend = max(sorted(by_backend), key=lambda b: len(by_backend[b]))
    finals = list(by_backend[backend].values())
    sd = float(np.std(finals, ddof=1)) if len(finals) > 1 else float("nan")
    return dict(backend=backend, seeds=len(finals), sd=sd)


def summarize(cell, baseline, seeds, baseline_seeds=()):
    """Final accuracies per backend, the backend spreads, the seed spreads and the verdict."""
    metric = METRICS[0]
    per_backend = {b: final(h, metric) for b, _, h in cell}
    base = {b: final(h, metric) for b, _, h in baseline}
    signs = {b: float(np.sign(per_backend[b] - base[b])) for b in per_backend if b in base}

    def ptp(values):
        return float(np.ptp(list(values))) if len(values) > 1 else float("nan")

    if len(per_backend) < 3 or len(signs) < 2:
        verdict = "incomplete"
    elif len(set(signs.values())) == 1:
        verdict = "does not depend on the backend"
    else:
        verdict = "depends on the backend"
    return dict(
        metric=metric,
        final=per_backend,
        baseline_final=base,
        sign=signs,
        backend_spread=ptp(per_backend.values()),
        baseline_backend_spread=ptp(base.values()),
        seed_spread=seed_spread(seeds, metric),
        baseline_seed_spread=seed_spread(baseline_seeds, metric),
        verdict=verdict,
    )


def report_lines(args, s):
    def pct(values, b):
        return f"{100 * values[b]:.2f}" if b in values else "—"

    rows = [
        f"| {b} | {pct(s['final'], b)} | {pct(s['baseline_final'], b)} | "
        + (f"{100 * (s['final'][b] - s['baseline_final'][b]):+.2f}" if b in s["sign"] else "—")
        + " |"
        for b in sorted(set(s["final"]) | set(s["baseline_final"]))
    ]

    def spread(value):
        return f"{100 * value:.2f} pp" if np.isfinite(value) else "n/a (under two backends)"

    def sd(x):
        if not np.isfinite(x["sd"]):
            return "n/a (under two seeds on any one backend)"
        return f"{100 * x['sd']:.2f} pp ({x['backend']}, {x['seeds']} seeds)"

    return [
        f"# Cross-backend check: {args.model}, depth {args.depth}, lr {args.lr:g}, seed {args.seed}",
        "",
        "The same cell of the depth sweep (same config, seed and data) trained on each Keras "
        f"backend; final-epoch {s['metric'].replace('_', ' ')} in %.",
        "",
        f"| backend | {args.model} | {args.baseline} | difference (pp) |",
        "|---|---|---|---|",
        *rows,
        "",
        f"- Spread between backends (highest - lowest final accuracy): {args.model} "
        f"{spread(s['backend_spread'])}, {args.baseline} {spread(s['baseline_backend_spread'])}.",
        f"- Seed-to-seed s.d. of this cell on one backend, the yardstick for those spreads: "
        f"{args.model} {sd(s['seed_spread'])}, {args.baseline} {sd(s['baseline_seed_spread'])}.",
        f"- Verdict: {VERDICT[s['verdict']].format(model=args.model, baseline=args.baseline)}",
        "",
        "![curves](curves.png)"
        if s["final"] or s["baseline_final"]
        else "No curves yet: no finished run of this cell.",
        "",
    ]


@command
def main(argv=None):
    p = ArgumentParser(prog="python -m keras_vitbn.experiments.cross_backend", description=__doc__.split("\n")[0])
    p.add_argument("--runs", required=True, help="run folders of the sweep")
    p.add_argument("--model", default="vit_bnffn")
    p.add_argument("--baseline", default="vit")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if not os.path.isdir(args.runs):
        raise FileNotFoundError(f"no run folders at {args.runs}; train the cell first (bash experiments/evidence.sh)")
    seeds = find_runs(args.runs, args.model, args.depth, args.lr)
    baseline_seeds = find_runs(args.runs, args.baseline, args.depth, args.lr)
    cell = [r for r in seeds if r[1] == args.seed]
    baseline = [r for r in baseline_seeds if r[1] == args.seed]
    s = summarize(cell, baseline, seeds, baseline_seeds)
    os.makedirs(args.out, exist_ok=True)
    if cell or baseline:
        title = f"{args.model} vs {args.baseline}, depth {args.depth}, lr {args.lr:g}, seed {args.seed}"
        plot(cell, baseline, os.path.join(args.out, "curves.png"), title, (args.model, args.baseline))
    write_text(os.path.join(args.out, "report.md"), "\n".join(report_lines(args, s)))
    write_json(os.path.join(args.out, "summary.json"), s)
    print(
        f"cross-backend: {s['verdict']} ({', '.join(sorted(s['final'])) or 'no runs'}); "
        f"report {os.path.join(args.out, 'report.md')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
