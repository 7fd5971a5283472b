"""The evidence machinery around a sweep: the critical depth's bootstrap, the article's
anchors, the compute budget, the cross-backend report and committed results as a cache.

Expected numbers are computed here from the synthetic inputs, not copied from the code.
"""

import json
import os

import numpy as np
import pytest

from keras_vitbn.experiments import ExperimentConfig, RunRecord, RunSpec, article, budget, cross_backend, stats
from keras_vitbn.experiments.report import Analysis
from keras_vitbn.experiments.runner import config_hash, run_experiment
from tests.test_report import HI, LO, history, sweep_config


def test_bootstrap_critical_depth_point_interval_and_single_seed():
    # Depth 1: the treatment behind; 2 and 3: clearly ahead. The point estimate is 2 and
    # every resample agrees, because the seeds of each cell never cross.
    cells = {
        1: ([0.9, 0.91, 0.92], [0.8, 0.81, 0.82]),
        2: ([0.8, 0.81, 0.82], [0.9, 0.91, 0.92]),
        3: ([0.7, 0.71, 0.72], [0.8, 0.81, 0.82]),
    }
    boot = stats.bootstrap_critical_depth(cells, n_boot=300)
    assert (boot["point"], boot["low"], boot["high"], boot["p_none"]) == (2, 2, 2, 0.0)
    # Overlapping seeds at depth 2: some resamples put the treatment behind there, so the
    # interval widens to 3, and it is deterministic for a fixed seed.
    cells[2] = ([0.80, 0.86, 0.83], [0.85, 0.81, 0.84])
    a = stats.bootstrap_critical_depth(cells, n_boot=500, seed=1)
    assert a == stats.bootstrap_critical_depth(cells, n_boot=500, seed=1)
    assert a["point"] == 2 and (a["low"], a["high"]) == (2, 3)
    # One seed per cell: a point estimate, nothing to resample.
    one = stats.bootstrap_critical_depth({1: ([0.8], [0.9])})
    assert one["point"] == 1 and one["min_seeds"] == 1
    assert article.describe_bootstrap(one).endswith("no interval)")


def _record(model, depth, lr, seed, final, run_dir="", status="completed"):
    return RunRecord(RunSpec(model, depth, lr, seed), run_dir, "h", status, history(final, epochs=3))


def test_article_rows_compare_drops_and_critical_depth():
    # ViT drops 13 pp at depth 3 (the article's figure); ViTBNFFN drops 8 pp (the article: 2).
    recs = []
    for s, noise in enumerate((0.0, 0.004, -0.004)):
        for d in (3, 4, 5, 6):
            recs += [
                _record("vit", d, LO, s, 0.90 + noise),
                _record("vit", d, HI, s, 0.77 + noise),
                _record("vit_bnffn", d, LO, s, 0.92 + noise - (0.05 if d < 6 else 0)),
                _record("vit_bnffn", d, HI, s, 0.84 + noise),
            ]
    a = Analysis(sweep_config(depths=(3, 4, 5, 6)), recs)
    rows = {r["anchor"]: r for r in article.article_rows(a)}
    vit, bn = rows["depth 3, ViT, lr 0.003 -> 0.005"], rows["depth 3, ViTBNFFN, lr 0.003 -> 0.005"]
    assert vit["verdict"] == "consistent" and "drop +13.0 pp" in vit["ours"]
    assert bn["verdict"] == "differs" and "drop +3.0 pp" in bn["ours"]
    # At lr 0.003 ViTBNFFN is ahead only at depth 6 (the article's critical depth).
    crit = rows["critical depth at lr 0.003"]
    assert crit["article"] == "6" and crit["bootstrap"]["point"] == 6 and crit["verdict"] == "consistent"
    # MLP grids get no ViT anchors.
    mlp = Analysis(
        ExperimentConfig(name="m", models=("dnn", "dnn_bn"), depths=(3,), learning_rates=(0.01, 0.1), epochs=3), []
    )
    assert article.article_rows(mlp) == []


def test_budget_measures_finished_runs_and_prices_the_rest(tmp_path):
    recs = []
    for depth, seconds in ((1, 100.0), (3, 300.0)):
        run_dir = tmp_path / f"vit-d{depth}"
        run_dir.mkdir()
        (run_dir / "runner.json").write_text(
            json.dumps(
                {"seconds": seconds, "machine": {"cpu": "Test CPU", "cores": 2, "load_start": 1.0}, "load_end": 3.0}
            )
        )
        recs.append(_record("vit", depth, LO, 0, 0.9, str(run_dir)))
    recs.append(_record("vit", 5, LO, 0, 0.9, status="planned"))  # line through (1,100),(3,300)
    est = budget.estimate(recs)
    assert est["measured_seconds"] == pytest.approx(400.0)
    assert est["remaining_seconds"] == pytest.approx(500.0)
    assert est["cpus"] == ["Test CPU, 2 cores"] and est["load"] == pytest.approx(2.0)
    # A model with no finished run cannot be priced.
    assert budget.estimate(recs + [_record("vit_bnffn", 1, LO, 0, 0.9, status="planned")])["remaining_seconds"] is None


def test_budget_lines_estimate_only_while_runs_remain(tmp_path):
    (tmp_path / "runner.json").write_text(json.dumps({"seconds": 3600.0, "machine": {"cpu": "Test CPU", "cores": 2}}))
    done = [_record(m, 1, LO, 0, 0.9, str(tmp_path)) for m in ("vit", "vit_bnffn")]
    cfg = sweep_config(depths=(1,))
    finished = budget.budget_lines(Analysis(cfg, done), str)[-1]
    assert finished.startswith("The whole grid took 2.0 h of CPU time on Test CPU, 2 cores.")
    assert "remain" not in finished and "so far" not in finished
    running = budget.budget_lines(Analysis(cfg, done + [_record("vit", 1, HI, 0, 0.9, status="planned")]), str)[-1]
    assert running.startswith("Measured so far: 2.0 h") and "of which 1.0 h remain" in running


def test_budget_prices_a_resumed_run_as_a_whole_run(tmp_path):
    # Its runner.json times the last process only: 2 of 3 epochs were trained before the resume.
    def run(name, meta):
        (tmp_path / name).mkdir()
        (tmp_path / name / "runner.json").write_text(json.dumps(meta))
        return _record("vit", 1, LO, 0, 0.9, str(tmp_path / name))  # 3 epochs of 5 s

    assert budget.run_seconds(run("resumed", {"seconds": 8.0, "resumed_after_epoch": 2}))[0] == pytest.approx(24.0)
    assert budget.run_seconds(run("whole", {"seconds": 18.0, "resumed_after_epoch": 0}))[0] == pytest.approx(18.0)
    # Resumed before runner.json said so: less time than its own epochs took, so at least their 15 s.
    assert budget.run_seconds(run("older", {"seconds": 6.0}))[0] == pytest.approx(15.0)


def _fake_run(runs_dir, model, backend, seed, final):
    run_dir = runs_dir / f"{model}-d6-lr0.005-s{seed}-{backend[:4]}{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "runner.json").write_text(
        json.dumps({"backend": backend, "spec": {"model": model, "depth": 6, "learning_rate": 0.005, "seed": seed}})
    )
    (run_dir / "status.json").write_text(json.dumps({"status": "completed"}))
    (run_dir / "history.jsonl").write_text("\n".join(json.dumps(h) for h in history(final, epochs=3)))


def test_cross_backend_report(tmp_path):
    runs = tmp_path / "runs"
    for backend, (bn, vit) in {"tensorflow": (0.80, 0.78), "jax": (0.81, 0.77), "torch": (0.79, 0.78)}.items():
        _fake_run(runs, "vit_bnffn", backend, 0, bn)
        _fake_run(runs, "vit", backend, 0, vit)
    _fake_run(runs, "vit_bnffn", "tensorflow", 1, 0.82)
    out = tmp_path / "out"
    assert cross_backend.main(["--runs", str(runs), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "does not depend on the backend"
    assert summary["backend_spread"] == pytest.approx(0.02)
    assert summary["baseline_backend_spread"] == pytest.approx(0.01)
    # The seed spread comes from one backend (TensorFlow's two seeds), not from mixed backends.
    sd = pytest.approx(np.std([0.80, 0.82], ddof=1))
    assert summary["seed_spread"] == {"backend": "tensorflow", "seeds": 2, "sd": sd}
    assert "vit n/a (under two seeds on any one backend)" in (out / "report.md").read_text()
    assert (out / "curves.png").stat().st_size > 10_000
    assert "does not depend on the backend" in (out / "report.md").read_text()
    # One backend where ViT is ahead: the conclusion depends on it.
    _fake_run(tmp_path / "runs2", "vit_bnffn", "tensorflow", 0, 0.80)
    _fake_run(tmp_path / "runs2", "vit", "tensorflow", 0, 0.78)
    _fake_run(tmp_path / "runs2", "vit_bnffn", "jax", 0, 0.76)
    _fake_run(tmp_path / "runs2", "vit", "jax", 0, 0.78)
    _fake_run(tmp_path / "runs2", "vit_bnffn", "torch", 0, 0.80)
    assert cross_backend.main(["--runs", str(tmp_path / "runs2"), "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["verdict"] == "depends on the backend"


def test_cross_backend_before_any_run(tmp_path, capsys):
    # A fresh clone: the folder exists, the cell has no finished run. A report, no empty figure.
    (tmp_path / "runs").mkdir()
    out = tmp_path / "out"
    assert cross_backend.main(["--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "No curves yet: no finished run of this cell." in (out / "report.md").read_text()
    assert not (out / "curves.png").exists()
    assert json.loads((out / "summary.json").read_text())["verdict"] == "incomplete"
    # Only the baseline has run, on one backend: its row shows it, nothing is compared yet.
    _fake_run(tmp_path / "runs", "vit", "tensorflow", 0, 0.77)
    assert cross_backend.main(["--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| tensorflow | — | 77.00 | — |" in text and "vit n/a (under two backends)" in text
    assert (out / "curves.png").exists()
    # No run folder at all: one line that says what to do, exit status 2.
    capsys.readouterr()
    assert cross_backend.main(["--runs", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run folders at") and "evidence.sh" in err and "\n" not in err


def test_committed_results_are_finished_runs_in_another_checkout(tmp_path):
    """A results folder copied elsewhere, with the data somewhere else, trains nothing again."""
    cfg = ExperimentConfig(
        name="demo", depths=(1, 2), seeds=(0,), epochs=1, source="idx", data_dir=str(tmp_path / "data_a")
    )
    calls = []

    def train(config):
        calls.append(config)
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "status.json"), "w") as f:
            json.dump({"status": "completed"}, f)
        with open(os.path.join(config.output_dir, "history.jsonl"), "w") as f:
            f.write(json.dumps({"epoch": 1, "test_aug_accuracy": 0.5}) + "\n")
        return {"status": "completed"}

    first = run_experiment(
        cfg,
        str(tmp_path / "a" / "out"),
        cache_dir=str(tmp_path / "a" / "runs"),
        train_fn=train,
        log=lambda m: None,
        clear_session=False,
    )
    assert len(calls) == 4 and all(r.status == "completed" for r in first)
    os.rename(tmp_path / "a", tmp_path / "b")  # a clone elsewhere, data elsewhere
    moved = cfg.replace(data_dir=str(tmp_path / "data_b"))
    again = run_experiment(
        moved,
        str(tmp_path / "b" / "out"),
        cache_dir=str(tmp_path / "b" / "runs"),
        train_fn=train,
        log=lambda m: None,
        clear_session=False,
    )
    assert len(calls) == 4 and all(r.cached for r in again)
    # The data's identity still counts: another dataset is another run.
    d = dict(cfg.train_dict(cfg.runs()[0]))
    assert config_hash(d, "jax") == config_hash(dict(d, data_dir="/elsewhere"), "jax")
    assert config_hash(d, "jax") != config_hash(dict(d, dataset="fashion_mnist"), "jax")


def test_grid_runs_seed_first():
    cfg = sweep_config(depths=(1, 2), seeds=(0, 1))
    order = [(r.seed, r.learning_rate, r.depth, r.model) for r in cfg.runs()]
    assert order == sorted(order, key=lambda k: (k[0], k[1], k[2], k[3] != "vit"))
    assert order[: len(order) // 2] == [k for k in order if k[0] == 0]
