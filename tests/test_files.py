"""keras_vitbn.utils.files: atomic writes, tolerant readers, run-folder markers, locks and safe --overwrite."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_vitbn.utils import files
from keras_vitbn.utils.files import MARKER, RunFolderError, read_json, run_folder
from tests.testing import ROOT


def _no_temp_files(folder):
    return [name for name in os.listdir(folder) if ".tmp" in name] == []


def test_json_round_trip_and_damaged_file(tmp_path):
    path = tmp_path / "a.json"
    assert files.read_json(path) is None and files.read_json(path, {}) == {}
    files.write_json(path, {"b": 1, "a": [1.5, None]}, sort_keys=True)
    assert files.read_json(path) == {"a": [1.5, None], "b": 1}
    assert path.read_text().startswith('{\n  "a"') and _no_temp_files(tmp_path)
    path.write_text('{"a": ')
    with pytest.raises(ValueError, match="a.json is not valid JSON"):
        files.read_json(path)


def test_jsonl_half_written_last_line(tmp_path):
    path = tmp_path / "history.jsonl"
    assert files.read_jsonl(path) == []
    files.append_jsonl(path, {"epoch": 1, "loss": float("nan")})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "lo')  # a kill in the middle of a write
    rows = files.read_jsonl(path)
    assert len(rows) == 1 and rows[0]["epoch"] == 1 and np.isnan(rows[0]["loss"])
    files.append_jsonl(path, {"epoch": 2})  # drops the half line, then appends
    assert [r["epoch"] for r in files.read_jsonl(path)] == [1, 2]
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        files.read_jsonl(path)


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_path(path) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".keras")
        with open(tmp, "wb") as f:
            f.write(b"half a mod")
        raise RuntimeError("killed mid-save")
    assert path.read_bytes() == b"old" and _no_temp_files(tmp_path)


def test_save_model_atomic_loads(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = str(tmp_path / "m.keras")
    files.save_model(model, path)
    x = np.ones((1, 3), "float32")
    np.testing.assert_allclose(keras.saving.load_model(path).predict(x, verbose=0), model.predict(x, verbose=0))
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]


def test_foreign_folder_is_refused_and_kept(tmp_path):
    mine = tmp_path / "my_files"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "config.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match="not a keras_vitbn run folder.*thesis.tex"):
            with run_folder(mine, "run", overwrite=overwrite):
                pass
    assert sorted(os.listdir(mine)) == ["config.json", "thesis.tex"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"), run_folder(tmp_path / "file", "run"):
        pass


def test_overwrite_clears_only_marked_folder_when_asked(tmp_path):
    out = tmp_path / "run"
    with run_folder(out, "run") as folder:
        assert folder.created and files.is_marked(out)
        (out / "history.jsonl").write_text("{}\n")
        (out / "backup").mkdir()
    with run_folder(out, "run", overwrite=True) as folder:
        assert (out / "history.jsonl").exists()  # nothing goes before clear()
        folder.clear()
    assert sorted(os.listdir(out)) == sorted([MARKER, files.LOCK])
    with pytest.raises(RunFolderError, match="run folder, not a search folder"), run_folder(out, "search"):
        pass
    # A folder this call created goes again when the body fails before writing anything.
    with pytest.raises(ValueError), run_folder(tmp_path / "new", "run"):
        raise ValueError("bad data")
    assert not (tmp_path / "new").exists()


def test_folder_of_an_older_version_is_adopted(tmp_path):
    out = tmp_path / "old_run"
    out.mkdir()
    for name in ("config.json", "status.json", "history.jsonl", "runner.json"):
        (out / name).write_text("{}")
    with run_folder(out, "run"):
        pass
    assert files.is_marked(out) and (out / "status.json").exists()


HOLD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("files", sys.argv[1])
files = importlib.util.module_from_spec(spec); spec.loader.exec_module(files)
with files.run_folder(sys.argv[2], "run", command="holder --lr 0.1"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_process_refused_and_lock_freed_by_kill_9(tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, files.__file__, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"in use by pid {holder.pid} on .*holder --lr 0.1"):
            with run_folder(out, "run"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_folder(out, "run", command="second") as folder:  # no stale lock after kill -9
        lock = read_json(os.path.join(folder.path, files.LOCK))
        assert lock["pid"] == os.getpid() and lock["command"] == "second"


def test_train_refuses_foreign_folder_and_keeps_old_run_on_bad_input(shared_data, tmp_path):
    from keras_vitbn.training import TrainConfig
    from keras_vitbn.training.train import train

    tiny = {
        "dataset": "fashion_mnist",
        "data_dir": os.path.join(shared_data, "fashion-mnist"),
        "depth": 1,
        "model_overrides": {"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16},
        "train_subset": 100,
        "test_subset": 50,
        "batch_size": 50,
        "epochs": 1,
        "augment": "none",
    }
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError):
        train(TrainConfig(**tiny, output_dir=str(mine)), overwrite=True, verbose=0)
    assert os.listdir(mine) == ["notes.txt"]

    out = tmp_path / "run"
    with run_folder(out, "run"):  # an earlier run's folder
        (out / "history.jsonl").write_text('{"epoch": 1}\n')
        (out / "model_last.keras").write_bytes(b"weights")
    before = sorted(os.listdir(out))
    with pytest.raises(ValueError, match="does not exist"):  # bad data with --overwrite: the old run stays
        train(
            TrainConfig(**{**tiny, "data_dir": str(tmp_path / "nowhere")}, output_dir=str(out)),
            overwrite=True,
            verbose=0,
        )
    with pytest.raises(ValueError, match="no_such"):  # a bad model argument, found after the data
        train(
            TrainConfig(**{**tiny, "model_overrides": {"no_such": 1}}, output_dir=str(out)), overwrite=True, verbose=0
        )
    assert sorted(os.listdir(out)) == before and (out / "model_last.keras").read_bytes() == b"weights"

    with run_folder(out, "run", command="another trainer"):  # held by someone else
        with pytest.raises(RunFolderError, match="in use by pid .*another trainer"):
            train(TrainConfig(**tiny, output_dir=str(out)), overwrite=True, verbose=0)
    result = train(TrainConfig(**{**tiny, "learning_rate": 0.01}, output_dir=str(out)), overwrite=True, verbose=0)
    assert result["status"] == "completed" and result["history"][0]["lr"] == pytest.approx(0.01)
    assert files.read_jsonl(out / "history.jsonl") == result["history"] and files.is_marked(out)
    assert keras.saving.load_model(str(out / "model_last.keras")) is not None and _no_temp_files(out)


def test_search_overwrite_keeps_the_old_search_when_the_data_fail(tmp_path):
    from keras_vitbn.training import TrainConfig
    from keras_vitbn.tuning.config import SearchConfig
    from keras_vitbn.tuning.search import search

    out = tmp_path / "search"
    with run_folder(out, "search"):
        (out / "search.json").write_text("{}")
    config = SearchConfig(
        TrainConfig(dataset="fashion_mnist", data_dir=str(tmp_path / "nowhere"), validation_split=0.1),
        depths=(1,),
        trials=1,
        output_dir=str(out),
    )
    with pytest.raises(ValueError, match="does not exist"):
        search(config, overwrite=True)
    assert (out / "search.json").read_text() == "{}"
    with pytest.raises(RunFolderError, match="run folder, not a search folder"):
        with run_folder(tmp_path / "run", "run"):
            search(SearchConfig(config.train, depths=(1,), trials=1, output_dir=str(tmp_path / "run")))


SAVE_LOOP = """
import sys
import time
import keras
from keras_vitbn.utils import files
inputs = keras.Input((64,))
model = keras.Model(inputs, keras.layers.Dense(256)(keras.layers.Dense(256)(inputs)))
files.save_model(model, sys.argv[1])
print("saved", flush=True)
while True:
    files.save_model(model, sys.argv[1])
"""


@pytest.mark.large
def test_kill_9_during_saves_leaves_a_loadable_model(tmp_path):
    path = str(tmp_path / "model_last.keras")
    env = {**os.environ, "PYTHONPATH": ROOT}
    for delay in (0.05, 0.2, 0.5):
        saver = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, path], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert saver.stdout.readline().strip() == "saved"
            time.sleep(delay)
        finally:
            saver.send_signal(signal.SIGKILL)
            saver.wait()
        assert keras.saving.load_model(path).count_params() == 64 * 256 + 256 + 256 * 256 + 256
