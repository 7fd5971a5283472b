"""Image-folder data (Imagenette's layout) and tfds datasets of varying image size, resized on the fly.

An image folder holds one sub-folder per split and one per class inside it:

    DIR/train/<class>/*.JPEG      training images
    DIR/val/<class>/*.JPEG        test images (also `validation/` or `test/`)

as the Imagenette archives unpack (`imagenette2`, `imagenette2-320`, ...). Images
are read by Keras' own `keras.utils.image_dataset_from_directory` while training:
each is decoded as RGB, cropped to its central square and resized (bilinear) to
`image_size`; nothing is cached, so the folder may be larger than memory. Class
labels are the sorted class-folder names of `train/`, and the test split uses
the same ones. `source="tfds"` with `dataset="imagenette"` (or a config such as
`imagenette/320px-v2`) does the same to tensorflow-datasets' Imagenette (its
`validation` split as the test split); it downloads, so it needs the internet.

The walk-through's random flip and crop are the `imagenette` augmentation policy
(`keras_vitbn.data.augment`), applied per batch like every other policy.

Example:
>>> train, test, provenance = load_splits("imagenette", "folder", "/data/imagenette2-320", image_size=224)
"""

import os

import tensorflow as tf

from keras_vitbn.data.datasets import KNOWN_DATASETS, Split, resolve_dirs, split_provenance

TEST_FOLDERS = ("val", "validation", "test")
DEFAULT_IMAGE_SIZE = 224
TFDS_FAMILIES = ("imagenette", "imagewang", "imagenet2012")  # tfds image classification of varying size


def is_image_folder(directory):
    """Whether `directory` has a `train/` folder of class folders (else it may be an IDX folder)."""
    train = os.path.join(directory, "train") if directory else None
    return (
        bool(train)
        and os.path.isdir(train)
        and any(os.path.isdir(os.path.join(train, entry)) for entry in os.listdir(train))
    )


def selected(dataset, source, data_dir):
    """Whether this module, not `datasets.load_splits`, provides the data of a run."""
    if source == "folder":
        return True
    if source == "tfds":
        return dataset.split("/")[0] in TFDS_FAMILIES
    data_dir, _, _ = resolve_dirs(data_dir, None)
    return source == "auto" and data_dir is not None and is_image_folder(data_dir)


def resolve_image_size(dataset, image_size=None):
    """(height, width): the given size, else the dataset's known size, else 224."""
    if image_size is None:
        image_size = KNOWN_DATASETS.get(dataset, ((DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3),))[0][:2]
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or any(not isinstance(s, int) or s < 1 for s in image_size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return tuple(image_size)


def load_splits(dataset, source="folder", data_dir=None, test_data_dir=None, image_size=None):
    """(train Split, test Split, provenance) of an image folder or a tfds dataset of varying image size.

    Args:
        dataset: str. A label for the data ("imagenette"), or the tfds name with `source="tfds"`.
        source: str. "folder", "auto" (a `data_dir` holding `train/`) or "tfds".
        data_dir: str or None. The folder (else `$KERAS_VITBN_DATA_DIR`).
        test_data_dir: must be None: the folder's own `val/` is the test split.
        image_size: int, (int, int) or None. Size the images are cropped and resized to;
            None: the dataset's known size (224 for imagenette), else 224.
    """
    if test_data_dir is not None:
        raise ValueError("an image folder or tfds imagenette brings its own test split: drop --test-data-dir")
    height, width = resolve_image_size(dataset, image_size)
    if source == "tfds":
        train, test, split = _tfds_splits(dataset, (height, width))
        data_dir = None
    else:
        data_dir, _, _ = resolve_dirs(data_dir, None)
        if data_dir is None:
            raise ValueError(
                "source 'folder' needs a folder: pass --data-dir DIR holding train/<class>/ and val/<class>/"
            )
        train, test, split = _folder_splits(data_dir, (height, width))
        source = "folder"
    provenance = split_provenance(
        dataset,
        source,
        train,
        test,
        split,
        data_dir=data_dir,
        notes=[f"images cropped to their central square and resized to {height}x{width} while reading"],
        warning=None,
    )
    return train, test, provenance


def _to_uint8(image, label):
    """The Split convention (uint8 HWC images, int64 labels), as the IDX and tfds sources give."""
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    return image, tf.cast(label, tf.int64)


def _read_folder(directory, size, class_names=None):
    import keras

    try:
        ds = keras.utils.image_dataset_from_directory(
            directory,
            labels="inferred",
            label_mode="int",
            class_names=class_names,
            color_mode="rgb",
            batch_size=None,
            image_size=size,
            shuffle=False,
            interpolation="bilinear",
            crop_to_aspect_ratio=True,
            verbose=False,
        )
    except ValueError as error:  # no images, a class folder missing in val/, ...
        raise ValueError(f"cannot read the image folder {directory}: {error}") from None
    count = len(ds.file_paths)
    if count == 0:
        raise ValueError(f"{directory} has no images (.jpeg, .jpg, .png, .bmp, .gif) in class folders")
    return ds.map(_to_uint8), count, list(ds.class_names)


def _folder_splits(directory, size):
    if not os.path.isdir(directory):
        raise ValueError(f"data directory {directory} does not exist: pass an existing --data-dir")
    if not is_image_folder(directory):
        raise ValueError(
            f"{directory} is no image folder: it needs train/<class>/*.JPEG and val/<class>/*.JPEG "
            "(Imagenette's layout)"
        )
    test_name = next((n for n in TEST_FOLDERS if os.path.isdir(os.path.join(directory, n))), None)
    if test_name is None:
        raise ValueError(f"{directory} has train/ but no val/ (or validation/, test/) folder for the test split")
    train_ds, train_count, classes = _read_folder(os.path.join(directory, "train"), size)
    test_ds, test_count, _ = _read_folder(os.path.join(directory, test_name), size, class_names=classes)
    shape = (*size, 3)
    train = Split(
        train_ds, train_count, shape, len(classes), f"image folder {directory}/train ({len(classes)} classes)"
    )
    test = Split(test_ds, test_count, shape, len(classes), f"image folder {directory}/{test_name}")
    return train, test, f"the folder's train/ and {test_name}/ images; classes: {', '.join(classes)}"


def center_crop_resize(image, size):
    """The central square of an HWC image, resized (bilinear) to `size`: what the folder reader does."""
    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    square = image[top : top + side, left : left + side]
    return tf.image.resize(tf.cast(square, tf.float32), size, method="bilinear")


def _tfds_splits(name, size):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name)
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as error:  # offline, checksum: one clear line
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"tensorflow-datasets could not prepare {name!r} ({type(error).__name__}: {message[:200]}); "
                "download Imagenette (github.com/fastai/imagenette) and pass --data-dir DIR with its train/ and val/"
            ) from None
    image_key, label_key = builder.info.supervised_keys
    num_classes = builder.info.features[label_key].num_classes
    test_split = next(s for s in ("test", "validation") if s in builder.info.splits)
    splits = []
    for split in ("train", test_split):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
        ds = ds.map(lambda x, y: _to_uint8(center_crop_resize(x, size), y))
        splits.append(
            Split(ds, builder.info.splits[split].num_examples, (*size, 3), num_classes, f"tfds {name} split {split!r}")
        )
    return splits[0], splits[1], f"tfds 'train' and {test_split!r} splits"
