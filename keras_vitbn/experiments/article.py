"""The article's own numbers, set beside what a sweep measured.

"Vision Transformer with BatchNorm" reports (28x28 MNIST, augmented test split, epoch 10):
the critical depth beyond which ViTBNFFN is ahead of ViT is 6 at lr 0.003 and 4 at
lr 0.005; at depth 3, raising the learning rate from 0.003 to 0.005 takes ViT from
about 91% to 78% and ViTBNFFN from about 92% to 90% (Figure 10).

`article_rows(a)` gives one row per anchor: what the article says, what these runs
say, and whether they agree: "consistent" (the article's value lies inside these runs'
95% interval, however wide), "differs" (outside it) or "inconclusive". On another
dataset (Fashion-MNIST) absolute accuracies are not comparable; the drops and the
critical depths are.
"""

import math

import numpy as np

from keras_vitbn.experiments import stats

CRITICAL_DEPTH = {0.003: 6, 0.005: 4}
DEPTH3_ACCURACY = {  # (model, lr) -> % at epoch 10, augmented test, read off Figure 10
    ("vit", 0.003): 91.0,
    ("vit", 0.005): 78.0,
    ("vit_bnffn", 0.003): 92.0,
    ("vit_bnffn", 0.005): 90.0,
}
MODELS = ("vit", "vit_bnffn")


def applies(a):
    """Whether the article's ViT anchors apply to this experiment's grid."""
    return tuple(a.cfg.models) == MODELS


def critical_depth_uncertainty(a, lr):
    """`stats.bootstrap_critical_depth` over this experiment's final accuracies at `lr`."""
    cells = {d: (a.finals(a.baseline, d, lr), a.finals(a.treatment, d, lr)) for d in a.depths if d is not None}
    return stats.bootstrap_critical_depth(cells)


def describe_bootstrap(boot):
    """One phrase: the point estimate and its interval, or why there is none."""
    if boot["min_seeds"] == 0:
        return "no runs yet at some depth"
    point = "none" if boot["point"] is None else str(boot["point"])
    if boot["min_seeds"] < 2:
        return f"point estimate {point} (one seed per cell: no interval)"
    if boot["low"] is None:
        return f"point estimate {point}; no resample finds one"
    return (
        f"point estimate {point}, bootstrap 95% interval {boot['low']}-{boot['high']}, "
        f"none in {100 * boot['p_none']:.0f}% of resamples"
    )


def _critical_row(a, lr):
    article = CRITICAL_DEPTH.get(float(lr))
    boot = critical_depth_uncertainty(a, lr)
    welch = a.critical_depth(lr)["critical_depth"]
    ours = f"Welch: {'not found' if welch is None else welch}; {describe_bootstrap(boot)}"
    if article is None or boot["min_seeds"] < 2:
        verdict = "inconclusive"
    elif boot["low"] is not None and boot["low"] <= article <= boot["high"]:
        verdict = "consistent"
    else:
        verdict = "differs"
    return dict(
        anchor=f"critical depth at lr {lr:g}",
        article=str(article) if article is not None else "-",
        ours=ours,
        verdict=verdict,
        bootstrap=boot,
    )


def _depth3_row(a, model):
    lo, hi = a.lrs[0], a.lrs[-1]
    art_lo, art_hi = DEPTH3_ACCURACY[(model, lo)], DEPTH3_ACCURACY[(model, hi)]
    drop = a.drop(model, 3)
    mean_lo = np.mean(a.finals(model, 3, lo)) if a.finals(model, 3, lo) else math.nan
    mean_hi = np.mean(a.finals(model, 3, hi)) if a.finals(model, 3, hi) else math.nan
    article_drop = art_lo - art_hi
    if not drop.testable:
        verdict = "inconclusive"
    elif drop.ci_low <= article_drop / 100 <= drop.ci_high:
        verdict = "consistent"
    else:
        verdict = "differs"
    ci = f", 95% CI {100 * drop.ci_low:+.1f} to {100 * drop.ci_high:+.1f}" if drop.testable else ""
    ours = (
        f"{100 * mean_lo:.1f}% -> {100 * mean_hi:.1f}% (drop {100 * drop.diff:+.1f} pp{ci})"
        if math.isfinite(mean_lo) and math.isfinite(mean_hi)
        else "no runs yet"
    )
    display = "ViT" if model == "vit" else "ViTBNFFN"
    return dict(
        anchor=f"depth 3, {display}, lr {lo:g} -> {hi:g}",
        article=f"{art_lo:.0f}% -> {art_hi:.0f}% (drop {article_drop:+.0f} pp)",
        ours=ours,
        verdict=verdict,
    )


def article_rows(a):
    """Rows comparing the article's anchors with these runs; [] when they do not apply."""
    if not applies(a):
        return []
    rows = [_critical_row(a, lr) for lr in a.lrs if float(lr) in CRITICAL_DEPTH]
    if 3 in a.depths and tuple(float(x) for x in (a.lrs[0], a.lrs[-1])) == (0.003, 0.005):
        rows += [_depth3_row(a, m) for m in MODELS]
    return rows
