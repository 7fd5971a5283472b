"""The report on synthetic histories: statistics checked against scipy and by hand.

Every expected number is computed in the test from the synthetic inputs (with
numpy/scipy), never copied from the code under test.
"""

import dataclasses
import json
import math
import os

import numpy as np
import pytest
from scipy import stats as st

from keras_vitbn.experiments import ExperimentConfig, RunRecord, RunSpec, build_report, stats
from keras_vitbn.experiments.report import Analysis, plot_curves

EPOCHS = 3
LO, HI = 0.003, 0.005

# Final augmented-test accuracies at lr 0.003 per depth: (ViT seeds, ViTBNFFN seeds).
# depth 1: ViT clearly better; 2: ViTBNFFN better; 3: noisy, no difference;
# 4 and 5: ViTBNFFN better. So the critical depth is 4 and the first significant one is 2.
FINALS_LO = {
    1: ([0.950, 0.951, 0.952], [0.930, 0.931, 0.933]),
    2: ([0.900, 0.905, 0.910], [0.950, 0.951, 0.953]),
    3: ([0.900, 0.920, 0.940], [0.910, 0.930, 0.900]),
    4: ([0.900, 0.901, 0.903], [0.930, 0.932, 0.931]),
    5: ([0.880, 0.882, 0.881], [0.930, 0.935, 0.933]),
}
# At lr 0.005 ViT loses about 5 pp and ViTBNFFN about 1 pp (with a little seed noise).
VIT_HI_SHIFT = [0.050, 0.052, 0.049]
BN_HI_SHIFT = [0.010, 0.011, 0.008]


def history(final, epochs=EPOCHS, epoch_times=None):
    """A rising curve ending at `final`; clean test accuracy is 2 pp above augmented."""
    rows = []
    for e in range(1, epochs + 1):
        aug = final - 0.03 * (epochs - e)
        rows.append(
            dict(
                epoch=e,
                loss=1.0 / e,
                accuracy=aug + 0.01,
                test_loss=0.3,
                test_accuracy=aug + 0.02,
                test_aug_loss=0.4,
                test_aug_accuracy=aug,
                lr=0.003,
                epoch_time=(epoch_times or [5.0] * epochs)[e - 1],
                images_per_sec=1000.0 / e,
            )
        )
    return rows


def record(model, depth, lr, seed, hist, status="completed"):
    spec = RunSpec(model, depth, lr, seed)
    return RunRecord(spec, f"/runs/{spec.slug()}", "h", status, hist)


def sweep_records():
    recs = []
    for d, (vit, bn) in FINALS_LO.items():
        for s in range(3):
            recs.append(record("vit", d, LO, s, history(vit[s])))
            recs.append(record("vit_bnffn", d, LO, s, history(bn[s])))
            recs.append(record("vit", d, HI, s, history(vit[s] - VIT_HI_SHIFT[s])))
            recs.append(record("vit_bnffn", d, HI, s, history(bn[s] - BN_HI_SHIFT[s])))
    return recs


def sweep_config(**kw):
    base = dict(
        name="synthetic_sweep",
        models=("vit", "vit_bnffn"),
        depths=tuple(FINALS_LO),
        learning_rates=(LO, HI),
        seeds=(0, 1, 2),
        epochs=EPOCHS,
        claims=("critical_depth", "lr_robustness"),
    )
    base.update(kw)
    return ExperimentConfig(**base)


def finals(depth, lr, model):
    vit, bn = FINALS_LO[depth]
    if lr == LO:
        return np.array(vit if model == "vit" else bn)
    shift = VIT_HI_SHIFT if model == "vit" else BN_HI_SHIFT
    return np.array(vit if model == "vit" else bn) - np.array(shift)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    summary = build_report(sweep_config(), sweep_records(), str(out), command="python -m x", backend="jax")
    return out, summary


def test_final_accuracy_table_matches_scipy_welch(sweep):
    _, summary = sweep
    for metric, offset in (("test_aug_accuracy", 0.0), ("test_accuracy", 0.02)):
        for lr in (LO, HI):
            for d in FINALS_LO:
                a, b = finals(d, lr, "vit") + offset, finals(d, lr, "vit_bnffn") + offset
                row = summary["comparisons"][metric][f"{lr:g}"][str(d)]
                ref = st.ttest_ind(b, a, equal_var=False)
                ci = ref.confidence_interval(0.95)
                assert row["baseline"]["mean"] == pytest.approx(a.mean())
                assert row["baseline"]["std"] == pytest.approx(a.std(ddof=1))
                assert row["treatment"]["mean"] == pytest.approx(b.mean())
                assert row["diff"] == pytest.approx(b.mean() - a.mean())
                assert row["p"] == pytest.approx(ref.pvalue, rel=1e-6)
                assert row["ci"] == pytest.approx([ci.low, ci.high], rel=1e-6)
                assert row["significant"] == (ref.pvalue < 0.05)


def test_curve_mean_table_is_the_mean_over_epochs(sweep):
    _, summary = sweep
    d = 4
    a = [np.mean([h["test_aug_accuracy"] for h in history(v)]) for v in FINALS_LO[d][0]]
    b = [np.mean([h["test_aug_accuracy"] for h in history(v)]) for v in FINALS_LO[d][1]]
    row = summary["curve_mean_comparisons"][f"{LO:g}"][str(d)]
    assert row["diff"] == pytest.approx(np.mean(b) - np.mean(a))
    assert row["p"] == pytest.approx(st.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-6)


def test_critical_depth(sweep):
    _, summary = sweep
    crit = summary["critical_depth"][f"{LO:g}"]
    # what the test data was built to give, re-derived here with scipy
    verdict = {}
    for d in FINALS_LO:
        a, b = finals(d, LO, "vit"), finals(d, LO, "vit_bnffn")
        p = st.ttest_ind(b, a, equal_var=False).pvalue
        verdict[d] = "n.s." if p >= 0.05 else ("better" if b.mean() > a.mean() else "worse")
    assert verdict == {1: "worse", 2: "better", 3: "n.s.", 4: "better", 5: "better"}
    assert crit["critical_depth"] == 4
    assert crit["first_better"] == 2
    assert crit["better"] == [2, 4, 5] and crit["worse"] == [1] and crit["ns"] == [3]


def _welch_by_hand(groups, weights):
    v = [w * w * np.var(g, ddof=1) / len(g) for g, w in zip(groups, weights)]
    diff = sum(w * np.mean(g) for g, w in zip(groups, weights))
    se = math.sqrt(sum(v))
    df = sum(v) ** 2 / sum(vi * vi / (len(g) - 1) for vi, g in zip(v, groups))
    half = st.t.ppf(0.975, df) * se
    p = 2 * st.t.sf(abs(diff / se), df)
    return diff, diff - half, diff + half, p


def test_lr_robustness_per_depth_and_pooled(sweep):
    _, summary = sweep
    rob = summary["robustness"]
    cells = []
    for d in FINALS_LO:
        groups = [finals(d, LO, "vit"), finals(d, HI, "vit"), finals(d, LO, "vit_bnffn"), finals(d, HI, "vit_bnffn")]
        cells.append(groups)
        diff, lo, hi, p = _welch_by_hand(groups, [1, -1, -1, 1])
        row = rob[str(d)]
        assert row["baseline_drop"] == pytest.approx(np.mean(VIT_HI_SHIFT))
        assert row["treatment_drop"] == pytest.approx(np.mean(BN_HI_SHIFT))
        assert row["difference"] == pytest.approx(diff)
        assert row["difference_ci"] == pytest.approx([lo, hi], rel=1e-6)
        assert row["p"] == pytest.approx(p, rel=1e-6)
        # the drop of one model alone is a two-sample Welch difference
        ref = st.ttest_ind(finals(d, LO, "vit"), finals(d, HI, "vit"), equal_var=False)
        ci = ref.confidence_interval(0.95)
        assert row["baseline_drop_ci"] == pytest.approx([ci.low, ci.high], rel=1e-6)
    k = len(cells)
    groups = [g for c in cells for g in c]
    weights = [w / k for _ in cells for w in (1, -1, -1, 1)]
    diff, lo, hi, p = _welch_by_hand(groups, weights)
    pooled = rob["pooled"]
    assert pooled["difference"] == pytest.approx(np.mean(VIT_HI_SHIFT) - np.mean(BN_HI_SHIFT))
    assert pooled["difference"] == pytest.approx(diff)
    assert pooled["ci"] == pytest.approx([lo, hi], rel=1e-6)
    assert pooled["p"] == pytest.approx(p, rel=1e-6)


def test_claims_checklist(sweep):
    _, summary = sweep
    by_claim = {c["claim"]: c for c in summary["claims"]}
    crit = [c for c in summary["claims"] if "critical depth" in c["claim"]]
    assert len(crit) == 2  # one per learning rate
    assert {c["verdict"] for c in crit} == {"supported"}
    assert crit[0]["critical_depth"] == 4
    robust = [c for name, c in by_claim.items() if "robust" in name][0]
    assert robust["verdict"] == "supported"
    assert "+4.07 pp" in robust["evidence"]  # (5.03 - 0.97) pp, see VIT/BN_HI_SHIFT


def test_report_markdown_and_pngs(sweep):
    out, summary = sweep
    text = (out / "report.md").read_text()
    for heading in (
        "## Setup",
        "## The article's claims",
        "## Final accuracy",
        "## Critical depth",
        "## Learning-rate robustness",
        "## Learning curves",
        "## Time per epoch and throughput",
        "## Runs",
    ):
        assert heading in text
    assert "Welch" in text and "Reproduce: `python -m x`" in text
    a, b = finals(4, LO, "vit"), finals(4, LO, "vit_bnffn")
    assert f"{100 * a.mean():.2f} ± {100 * a.std(ddof=1):.2f} (n=3)" in text
    assert f"{100 * (b.mean() - a.mean()):+.2f} pp" in text
    assert "critical depth **4**" in text
    assert text.count("✅ supported") == 3
    import matplotlib.image

    expected = {"final_vs_depth.png", "lr_drop.png"} | {
        f"curves_lr{lr:g}_{m}.png" for lr in (LO, HI) for m in ("test_aug_accuracy", "test_accuracy")
    }
    assert set(summary["figures"]) == expected
    for name in expected:
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(str(path))
        assert img.shape[0] > 200 and img.shape[1] > 300
        assert f"]({name})" in text
    saved = json.loads((out / "summary.json").read_text())
    assert saved["critical_depth"][f"{LO:g}"]["critical_depth"] == 4


def test_timing_drops_the_first_epoch(tmp_path):
    times = {0: [30.0, 4.0, 6.0], 1: [20.0, 5.0, 7.0]}
    recs = [record(m, 1, LO, s, history(0.9, epoch_times=times[s])) for m in ("vit", "vit_bnffn") for s in (0, 1)]
    summary = build_report(sweep_config(depths=(1,), learning_rates=(LO,), seeds=(0, 1)), recs, str(tmp_path))
    t = summary["timing"]["1"]["vit"]
    assert t["seconds_per_epoch"] == pytest.approx(np.median([4.0, 6.0, 5.0, 7.0]))
    assert t["images_per_sec"] == pytest.approx(np.median([500.0, 1000 / 3] * 2))
    assert t["epochs_measured"] == 4
    assert t["fastest_seconds_per_epoch"] == 4.0 and t["fastest_images_per_sec"] == 500.0
    text = (tmp_path / "report.md").read_text()
    timing = text[text.index("## Time per epoch") :]
    row = next(line for line in timing.splitlines() if line.startswith("| 1 |"))
    assert row.split(" | ")[1:4] == ["4.0 (5.5)", "4.0 (5.5)", "1.00"]


def test_a_learning_rate_without_runs_gets_no_empty_figures(tmp_path):
    # A sweep part-way: every depth at lr 0.003, nothing yet at lr 0.005.
    recs = [r for r in sweep_records() if r.learning_rate == LO]
    summary = build_report(sweep_config(), recs, str(tmp_path))
    assert set(summary["figures"]) == {"final_vs_depth.png"} | {
        f"curves_lr{LO:g}_{m}.png" for m in ("test_aug_accuracy", "test_accuracy")
    }
    assert not list(tmp_path.glob(f"curves_lr{HI:g}_*.png")) and not (tmp_path / "lr_drop.png").exists()
    text = (tmp_path / "report.md").read_text()
    assert f"No curves yet at lr {HI:g}: no finished runs." in text
    assert "No figure yet: a drop needs finished runs at both learning rates." in text
    import matplotlib.image

    img = matplotlib.image.imread(str(tmp_path / "final_vs_depth.png"))
    assert img.shape[1] < img.shape[0] * 2  # one panel (lr 0.003), not two side by side


def test_a_depth_without_runs_gets_a_labelled_empty_panel(tmp_path):
    # Depth 2 has no finished run yet at lr 0.003: its panel says so instead of empty axes.
    recs = [r for r in sweep_records() if r.learning_rate == LO and r.depth != 2]
    a = Analysis(sweep_config(), recs)
    fig = plot_curves(a, LO, "test_aug_accuracy", str(tmp_path / "curves.png"))
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert [t.get_text() for t in panels["depth 2"].texts] == ["no finished runs yet"]
    assert not panels["depth 2"].lines and panels["depth 1"].lines and not panels["depth 1"].texts
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def diverged_history():
    h = history(0.9)
    for key in ("loss", "accuracy", "test_accuracy", "test_aug_accuracy"):
        h[1][key] = float("nan")
    return h[:2]  # the trainer stopped at the NaN epoch


def test_diverged_runs_count_as_chance(tmp_path):
    recs = [record("vit", 1, LO, s, history(v)) for s, v in enumerate([0.90, 0.91, 0.92])]
    recs += [record("vit_bnffn", 1, LO, s, history(v)) for s, v in enumerate([0.93, 0.94])]
    recs.append(record("vit_bnffn", 1, LO, 2, diverged_history(), status="diverged"))
    recs.append(record("vit", 1, LO, 3, [], status="failed"))
    cfg = sweep_config(depths=(1,), learning_rates=(LO,), seeds=(0, 1, 2))
    summary = build_report(cfg, recs, str(tmp_path / "chance"))
    row = summary["comparisons"]["test_aug_accuracy"][f"{LO:g}"]["1"]
    assert sorted(row["treatment"]["values"]) == pytest.approx([0.1, 0.93, 0.94])
    assert row["treatment"]["diverged"] == 1 and row["baseline"]["missing"] == 1
    assert row["baseline"]["n"] == 3
    ref = st.ttest_ind([0.93, 0.94, 0.1], [0.90, 0.91, 0.92], equal_var=False)
    assert row["p"] == pytest.approx(ref.pvalue, rel=1e-6)
    text = (tmp_path / "chance" / "report.md").read_text()
    assert "1 div" in text and "1 missing" in text and "chance (10%)" in text

    summary = build_report(cfg.replace(diverged="exclude"), recs, str(tmp_path / "exclude"))
    row = summary["comparisons"]["test_aug_accuracy"][f"{LO:g}"]["1"]
    assert sorted(row["treatment"]["values"]) == pytest.approx([0.93, 0.94])
    assert row["treatment"]["n"] == 2 and row["treatment"]["diverged"] == 1
    assert "excluded from the statistics" in (tmp_path / "exclude" / "report.md").read_text()


def test_diverged_curve_is_chance_from_the_nan_epoch():
    from keras_vitbn.experiments.report import curve

    r = record("vit", 1, LO, 0, diverged_history(), status="diverged")
    c = curve(r, "test_aug_accuracy", EPOCHS, 0.1, "chance")
    assert c == pytest.approx([history(0.9)[0]["test_aug_accuracy"], 0.1, 0.1])
    assert np.all(np.isnan(curve(r, "test_aug_accuracy", EPOCHS, 0.1, "exclude")))


def test_claim_not_supported_and_inconclusive(tmp_path):
    # ViT better at the deepest depth -> not supported
    recs = []
    for s, (v, b) in enumerate(zip([0.95, 0.951, 0.952], [0.90, 0.902, 0.901])):
        for d in (1, 2):
            recs += [record("vit", d, LO, s, history(v)), record("vit_bnffn", d, LO, s, history(b))]
    cfg = sweep_config(depths=(1, 2), learning_rates=(LO,), claims=("critical_depth", "lr_robustness"))
    claims = build_report(cfg, recs, str(tmp_path / "a"))["claims"]
    assert claims[0]["verdict"] == "not supported"
    assert claims[1]["verdict"] == "inconclusive"  # one learning rate only
    # one seed: nothing is testable -> inconclusive, shown as n/a
    one = [r for r in recs if r.seed == 0]
    summary = build_report(cfg.replace(seeds=(0,)), one, str(tmp_path / "b"))
    assert summary["claims"][0]["verdict"] == "inconclusive"
    row = summary["comparisons"]["test_aug_accuracy"][f"{LO:g}"]["1"]
    assert row["verdict"] == "n/a" and math.isnan(row["p"])
    assert "(n=1)" in (tmp_path / "b" / "report.md").read_text()


def test_mlp_report(tmp_path):
    cfg = ExperimentConfig(
        name="mlp",
        models=("dnn", "dnn_bn"),
        depths=(None,),
        learning_rates=(0.01, 0.1),
        seeds=(0, 1, 2),
        epochs=EPOCHS,
        claims=("bn_mlp_accuracy", "lr_robustness"),
    )
    dnn = {0.01: [0.80, 0.81, 0.82], 0.1: [0.30, 0.45, 0.20]}
    bn = {0.01: [0.90, 0.905, 0.91], 0.1: [0.88, 0.89, 0.885]}
    recs = [
        record(m, None, lr, s, history(v[lr][s]))
        for m, v in (("dnn", dnn), ("dnn_bn", bn))
        for lr in (0.01, 0.1)
        for s in range(3)
    ]
    summary = build_report(cfg, recs, str(tmp_path))
    claims = {c["claim"].split(" (")[0]: c["verdict"] for c in summary["claims"]}
    for lr in (0.01, 0.1):
        ref = st.ttest_ind(bn[lr], dnn[lr], equal_var=False)
        assert summary["comparisons"]["test_aug_accuracy"][f"{lr:g}"]["-"]["p"] == pytest.approx(ref.pvalue)
    assert list(claims.values())[0] == "supported"
    drop_diff = (np.mean(dnn[0.01]) - np.mean(dnn[0.1])) - (np.mean(bn[0.01]) - np.mean(bn[0.1]))
    assert summary["robustness"]["-"]["difference"] == pytest.approx(drop_diff)
    assert summary["critical_depth"] == {}
    assert (tmp_path / "curves_lr0.1_test_aug_accuracy.png").exists()
    assert "DNN+BN" in (tmp_path / "report.md").read_text()


# ---------------------------------------------------------------------------- stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_welch_diff_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.9, 0.01, size=3 + seed)
    b = rng.normal(0.91, 0.03, size=2 + 2 * seed)
    c = stats.welch_diff(a, b)
    ref = st.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert c.diff == pytest.approx(b.mean() - a.mean())
    assert c.p == pytest.approx(ref.pvalue, rel=1e-9)
    assert (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert c.df == pytest.approx(ref.df, rel=1e-9)
    assert c.significant == (ref.pvalue < 0.05)


def test_untestable_contrasts():
    assert stats.welch_diff([0.9], [0.8, 0.81]).verdict == "n/a"
    z = stats.welch_diff([0.1, 0.1], [0.1, 0.1])
    assert z.verdict == "n/a" and z.diff == 0
    assert stats.welch_diff([0.9, float("nan"), 0.91], [0.8, 0.81]).testable
    with pytest.raises(ValueError, match="groups"):
        stats.welch_contrast([[1, 2]], [1, -1])


def test_pooled_drop_with_one_depth_is_the_drop_difference():
    g = ([0.9, 0.91, 0.92], [0.8, 0.85, 0.83], [0.93, 0.94, 0.95], [0.92, 0.925, 0.93])
    one = stats.pooled_drop_difference([g])
    direct = stats.drop_difference(*g)
    assert (one.diff, one.p, one.ci_low) == pytest.approx((direct.diff, direct.p, direct.ci_low))


def test_critical_depth_requires_every_deeper_depth():
    c = lambda v: stats.Contrast(v, 0.01, 4, v - 0.01, v + 0.01, 0.01 if v else 0.5, True)  # noqa: E731
    assert stats.critical_depth({1: c(0.0), 2: c(0.05), 3: c(0.05)})["critical_depth"] == 2
    assert stats.critical_depth({1: c(0.05), 2: c(0.0), 3: c(0.05)})["critical_depth"] == 3
    res = stats.critical_depth({1: c(0.05), 2: c(0.05), 3: c(0.0)})
    assert res["critical_depth"] is None and res["first_better"] == 1
    assert stats.critical_depth({1: c(-0.05)})["worse"] == [1]


def test_run_folders_are_named_relative_to_the_report_inside_the_checkout(tmp_path, monkeypatch):
    # Committed reports move with the repository: no absolute path of the machine that wrote them.
    cfg = sweep_config(depths=(1,), learning_rates=(LO,), seeds=(0,))
    recs = [
        dataclasses.replace(r, run_dir=str(tmp_path / "sweep" / "runs" / os.path.basename(r.run_dir)))
        for r in sweep_records()
        if r.depth == 1 and r.learning_rate == LO and r.seed == 0
    ]
    out = tmp_path / "cross" / "jax"
    monkeypatch.chdir(tmp_path)
    build_report(cfg, recs, str(out))
    assert "| run folders | `../../sweep/runs` |" in (out / "report.md").read_text()
    monkeypatch.chdir(tmp_path / "cross")  # the runs lie outside the working folder: shown as they are
    build_report(cfg, recs, str(out))
    assert f"| run folders | `{tmp_path / 'sweep' / 'runs'}` |" in (out / "report.md").read_text()


def test_runs_table_names_the_cpu_each_run_trained_on(tmp_path):
    # Runs from other CPU models need not match bit for bit, so the table says where each ran.
    cfg = sweep_config(depths=(1,), learning_rates=(LO,), seeds=(0,))
    recs = []
    for r in sweep_records():
        if r.depth == 1 and r.learning_rate == LO and r.seed == 0:
            run_dir = tmp_path / "runs" / os.path.basename(r.run_dir)
            run_dir.mkdir(parents=True)
            recs.append(dataclasses.replace(r, run_dir=str(run_dir)))
    cpu = "Example CPU (family 1, model 2)"
    (tmp_path / "runs" / os.path.basename(recs[0].run_dir) / "runner.json").write_text(
        json.dumps({"machine": {"cpu": cpu, "cores": 2}})
    )
    build_report(cfg, recs, str(tmp_path / "out"))
    text = (tmp_path / "out" / "report.md").read_text()
    runs = text[text.index("## Runs") :]
    assert "| CPU | run folder |" in runs
    rows = {line.split("`")[-2]: line for line in runs.splitlines() if line.endswith("` |")}
    assert f"| {cpu} | `{os.path.basename(recs[0].run_dir)}` |" in rows[os.path.basename(recs[0].run_dir)]
    assert f"| — | `{os.path.basename(recs[1].run_dir)}` |" in rows[os.path.basename(recs[1].run_dir)]
