"""Train on Fashion-MNIST with the article's setup (ViTBNFFN, depth 6, Adam 0.003, batch 100,
10 epochs, the article's augmentation of the training images; clean and augmented test accuracy).

    KERAS_BACKEND=jax python trainers/fashion_mnist.py --data-dir ../shared/data/fashion-mnist

Every flag: python trainers/fashion_mnist.py --help
"""

import os
import sys

KERAS_VITBN_ENTRY_POINT = True  # keras_vitbn/__init__.py then holds back TensorFlow's start-up logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow only feeds tf.data here: hide its C++ chatter

try:
    import keras_vitbn  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_vitbn.training.cli import main
from keras_vitbn.training.presets import PRESETS

if __name__ == "__main__":
    sys.exit(main(defaults=PRESETS["fashion_mnist"], description=__doc__))
