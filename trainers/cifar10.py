"""Train on CIFAR-10 with the small-ViT recipe (patch 4, dim 256, FFN 512, 8 heads, 6 layers,
dropout 0.2, AdamW 3e-4 cosine, clipnorm 1, random flip + resized crop, 100 epochs).

    KERAS_BACKEND=jax python trainers/cifar10.py

Every flag: python trainers/cifar10.py --help
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
    sys.exit(main(defaults=PRESETS["cifar10"], description=__doc__))
