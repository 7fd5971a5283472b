"""`python -m keras_vitbn.experiments.rerun`: a recorded run trained again and compared epoch by epoch."""

import csv
import json
import shutil

import keras
import pytest

from keras_vitbn.experiments import rerun
from keras_vitbn.training import train
from tests.test_training import tiny_config


@pytest.fixture(scope="module")
def recorded(mnist_sample_dir, tmp_path_factory):
    """A finished 2-epoch run, as the runner leaves one in results/."""
    out = tmp_path_factory.mktemp("recorded") / "vit-d1-lr0.003-s0-0123456789ab"
    train(tiny_config(mnist_sample_dir, out, epochs=2), verbose=0)
    return out


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_rerun_reproduces_the_run_and_a_changed_number_is_caught(recorded, tmp_path, capsys):
    assert rerun.main([str(recorded), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "reproduces: largest accuracy difference 0.00 pp over 2 epochs" in out
    with open(tmp_path / "again" / "rerun.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["metric"]) for r in rows] == [
        (e, m) for e in ("1", "2") for m in ("loss", "test_accuracy", "test_aug_accuracy")
    ]
    assert all(abs(float(r["difference"])) < 1e-6 for r in rows)
    summary = json.loads((tmp_path / "again" / "rerun.json").read_text())
    assert summary["run"] == str(recorded) and summary["backend"] == keras.backend.backend()
    assert summary["reproduces"] is True and summary["epochs"] == 2 and summary["largest_accuracy_difference"] < 1e-6

    # The committed history says 1 pp more than the code gives: the rerun (found finished, not
    # trained again) reports it and exits 1.
    changed = tmp_path / "changed"
    shutil.copytree(recorded, changed)
    lines = (changed / "history.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    last["test_aug_accuracy"] += 0.01
    (changed / "history.jsonl").write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    assert rerun.main([str(changed), "--out", str(tmp_path / "again")]) == 1
    assert "does NOT reproduce: largest accuracy difference 1.00 pp" in capsys.readouterr().out
    assert json.loads((tmp_path / "again" / "rerun.json").read_text())["reproduces"] is False


def test_a_rerun_compares_the_first_epochs_only_when_asked(recorded, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        rerun.main([str(recorded), "--epochs", "0", "--out", str(tmp_path / "one")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "expected a positive integer, got 0" in err and "\n" not in err
    assert rerun.main([str(recorded), "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    assert "over 1 epochs" in capsys.readouterr().out
    status = json.loads((tmp_path / "one" / "status.json").read_text())
    assert status["epochs_completed"] == 1  # stopped there: nothing trained that is not compared
    # Asked again: compared from the folder, not trained on (a run short of its config's epochs
    # would otherwise resume).
    assert rerun.main([str(recorded), "--epochs", "1", "--out", str(tmp_path / "one")]) == 0
    assert len((tmp_path / "one" / "history.jsonl").read_text().splitlines()) == 1


def test_a_rerun_on_another_backend_is_refused_in_one_line(recorded, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(recorded, other)
    backend = "torch" if keras.backend.backend() != "torch" else "jax"
    edit_json(other / "config.json", lambda d: d["environment"].update(backend=backend))
    assert rerun.main([str(other), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"KERAS_BACKEND={backend}" in err and "\n" not in err
    assert not (tmp_path / "x").exists()


def test_data_folders_recorded_elsewhere_are_found_by_name_under_the_data_root(recorded, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(recorded, moved)
    edit_json(moved / "config.json", lambda d: d["config"].update(data_dir="/another/machine/fashion-mnist"))
    (tmp_path / "data" / "fashion-mnist").mkdir(parents=True)
    config, backend, _ = rerun.recorded_run(str(moved), data_root=str(tmp_path / "data"))
    assert config.data_dir == str(tmp_path / "data" / "fashion-mnist") and backend == keras.backend.backend()
    monkeypatch.delenv("KERAS_VITBN_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="/another/machine/fashion-mnist is not on this machine: set"):
        rerun.recorded_run(str(moved))
