"""Statistics for comparing runs over seeds: Welch t-tests and t-based confidence intervals.

Every comparison in the report is a linear contrast of independent group means,
`c = sum_i w_i * mean_i`, with unequal group variances (Welch). Its standard
error is `sqrt(sum_i w_i**2 * s_i**2 / n_i)` and its degrees of freedom come from
the Welch-Satterthwaite approximation. The two-sample case (weights -1, +1) is
exactly `scipy.stats.ttest_ind(b, a, equal_var=False)`; the difference of two
learning-rate drops (weights +1, -1, -1, +1) is the same recipe with four groups.

Example:

>>> r = welch_diff([0.90, 0.91, 0.92], [0.93, 0.95, 0.94])
>>> round(r.diff, 3), r.significant
(0.03, True)
"""

import dataclasses
import math

import numpy as np
from scipy import stats as _st

ALPHA = 0.05

METHOD = (
    "Welch's unequal-variance t-test on final accuracies over seeds; the 95% confidence "
    "interval of a difference of means is diff +- t(0.975, df) * SE with "
    "SE = sqrt(s1^2/n1 + s2^2/n2) and Welch-Satterthwaite df "
    "(scipy.stats.ttest_ind(equal_var=False) / scipy.stats.t). "
    "Differences of learning-rate drops use the same recipe on the four-group contrast "
    "(acc_lo - acc_hi)_A - (acc_lo - acc_hi)_B. "
    f"A difference is significant when p < {ALPHA} (equivalently, its 95% CI excludes 0). "
    "With fewer than 2 seeds in a group, or zero variance in every group, no test is made (n/a)."
)


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A linear contrast of group means with its Welch standard error, CI and p-value.

    Args:
        diff: float. The contrast value (e.g. mean_b - mean_a).
        se: float. Standard error; nan when it cannot be estimated.
        df: float. Welch-Satterthwaite degrees of freedom; nan when untestable.
        ci_low: float. Lower end of the (1 - alpha) confidence interval.
        ci_high: float. Upper end of the confidence interval.
        p: float. Two-sided p-value; nan when untestable.
        testable: bool. Whether every group had >= 2 values and some variance.
        alpha: float. Significance level. Defaults to 0.05.
    """

    diff: float
    se: float
    df: float
    ci_low: float
    ci_high: float
    p: float
    testable: bool
    alpha: float = ALPHA

    @property
    def significant(self):
        return bool(self.testable and self.p < self.alpha)

    @property
    def verdict(self):
        """'better' / 'worse' (sign of a significant diff), 'n.s.', or 'n/a'."""
        if not self.testable:
            return "n/a"
        if not self.significant:
            return "n.s."
        return "better" if self.diff > 0 else "worse"


def summarize(values):
    """Mean, sample standard deviation (ddof=1; nan for n < 2) and count of `values`."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(x.size)
    mean = float(x.mean()) if n else float("nan")
    std = float(x.std(ddof=1)) if n >= 2 else float("nan")
    return mean, std, n


def welch_contrast(groups, weights, alpha=ALPHA):
    """Welch contrast `sum_i weights[i] * mean(groups[i])` with a t-based CI.

    Args:
        groups: list of sequences of floats. Independent samples (e.g. final
            accuracies over seeds); non-finite values are dropped.
        weights: list of floats. One weight per group.
        alpha: float. Two-sided significance level. Defaults to 0.05.

    Returns:
        A `Contrast`. When a group has fewer than 2 values, or all groups have zero
        variance, the contrast is returned with `testable=False` and nan se/p/CI.
    """
    if len(groups) != len(weights):
        raise ValueError(f"got {len(groups)} groups but {len(weights)} weights")
    summaries = [summarize(g) for g in groups]
    diff = float(sum(w * m for w, (m, _, _) in zip(weights, summaries)))
    nan = float("nan")
    if any(n < 2 for _, _, n in summaries):
        return Contrast(diff, nan, nan, nan, nan, nan, False, alpha)
    v = [w * w * s * s / n for w, (_, s, n) in zip(weights, summaries)]
    var = sum(v)
    if var <= 0:
        return Contrast(diff, 0.0, nan, nan, nan, nan, False, alpha)
    se = math.sqrt(var)
    df = var**2 / sum(vi * vi / (n - 1) for vi, (_, _, n) in zip(v, summaries) if vi > 0)
    t = diff / se
    p = float(2.0 * _st.t.sf(abs(t), df))
    half = float(_st.t.ppf(1.0 - alpha / 2.0, df)) * se
    return Contrast(diff, se, float(df), diff - half, diff + half, p, True, alpha)


def welch_diff(a, b, alpha=ALPHA):
    """Welch comparison of mean(b) - mean(a): `welch_contrast([a, b], [-1, 1])`."""
    return welch_contrast([a, b], [-1.0, 1.0], alpha)


def drop_contrast(lo, hi, alpha=ALPHA):
    """Accuracy drop when raising the learning rate: mean(lo) - mean(hi), with its CI."""
    return welch_contrast([lo, hi], [1.0, -1.0], alpha)


def drop_difference(a_lo, a_hi, b_lo, b_hi, alpha=ALPHA):
    """(drop of A) - (drop of B); positive means B loses less accuracy than A."""
    return welch_contrast([a_lo, a_hi, b_lo, b_hi], [1.0, -1.0, -1.0, 1.0], alpha)


def pooled_drop_difference(cells, alpha=ALPHA):
    """Average over depths of (drop of A) - (drop of B), each depth weighted equally.

    Args:
        cells: list of (a_lo, a_hi, b_lo, b_hi) tuples of samples, one per depth.
    """
    if not cells:
        raise ValueError("pooled_drop_difference needs at least one depth")
    k = len(cells)
    groups, weights = [], []
    for cell in cells:
        groups.extend(cell)
        weights.extend([1.0 / k, -1.0 / k, -1.0 / k, 1.0 / k])
    return welch_contrast(groups, weights, alpha)


def critical_depth(comparisons):
    """Smallest depth from which the treatment is significantly better at every deeper depth.

    Args:
        comparisons: dict depth -> Contrast (treatment - baseline).

    Returns:
        dict with `critical_depth` (int or None): the smallest tested depth d such that
        the treatment is significantly better at d and at every larger tested depth;
        `first_better` (int or None): the smallest depth where it is significantly
        better at all; `better`, `worse`, `ns`, `na`: sorted lists of depths by verdict.
    """
    depths = sorted(d for d in comparisons if d is not None)
    verdicts = {d: comparisons[d].verdict for d in depths}
    crit = None
    for d in reversed(depths):
        if verdicts[d] != "better":
            break
        crit = d
    better = [d for d in depths if verdicts[d] == "better"]
    return {
        "critical_depth": crit,
        "first_better": better[0] if better else None,
        "better": better,
        "worse": [d for d in depths if verdicts[d] == "worse"],
        "ns": [d for d in depths if verdicts[d] == "n.s."],
        "na": [d for d in depths if verdicts[d] == "n/a"],
    }


def bootstrap_critical_depth(cells, n_boot=2000, seed=0):
    """The point-estimate critical depth and its bootstrap 95% interval.

    The point rule uses means, not tests: the smallest depth d at which the
    treatment's mean is above the baseline's at d and at every deeper depth. Its
    uncertainty comes from resampling the seeds of every cell with replacement
    (a percentile bootstrap, seeded, so a report is reproducible).

    Args:
        cells: dict depth -> (baseline values, treatment values).
        n_boot: int. Bootstrap resamples. Defaults to 2000.
        seed: int. Seed of the resampling. Defaults to 0.

    Returns:
        dict with `point` (int or None), `low` and `high` (the 2.5% and 97.5%
        percentiles over the resamples that found a critical depth, or None),
        `p_none` (share of resamples without one; nan when nothing could be
        resampled), `n_boot` and `min_seeds` (fewest values in any group).

    Example:

    >>> cells = {1: ([.9, .9], [.8, .8]), 2: ([.8, .81], [.9, .91])}
    >>> bootstrap_critical_depth(cells)["point"]
    2
    """
    depths = sorted(d for d in cells if d is not None)
    groups = [(np.asarray(cells[d][0], float), np.asarray(cells[d][1], float)) for d in depths]
    sizes = [min(len(b), len(t)) for b, t in groups]
    out = dict(point=None, low=None, high=None, p_none=float("nan"), n_boot=0, min_seeds=min(sizes) if sizes else 0)
    if not depths or min(sizes) == 0:
        return out

    def rule(diffs):
        crit = None
        for d, diff in zip(reversed(depths), reversed(diffs)):
            if not diff > 0:
                break
            crit = d
        return crit

    out["point"] = rule([t.mean() - b.mean() for b, t in groups])
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(n_boot):
        diffs = [rng.choice(t, t.size).mean() - rng.choice(b, b.size).mean() for b, t in groups]
        found.append(rule(diffs))
    hits = [d for d in found if d is not None]
    out.update(n_boot=n_boot, p_none=1.0 - len(hits) / n_boot)
    if hits:
        out["low"], out["high"] = (int(x) for x in np.percentile(hits, [2.5, 97.5], method="nearest"))
    return out
