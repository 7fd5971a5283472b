"""`python trainers/imagenette.py [FLAGS]`: the same as `keras-vitbn-train-imagenette` (see `--help`).

A thin script over `keras_vitbn.training.entry.imagenette`, for a checkout installed with
`pip install -e .`. The models, the data layout and the walk-through's anchors: docs/cnn.md.
"""

import os
import sys

KERAS_VITBN_ENTRY_POINT = True  # keras_vitbn/__init__.py then holds back TensorFlow's start-up logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: hide its C++ chatter

from keras_vitbn.training.entry import imagenette  # noqa: E402

if __name__ == "__main__":
    sys.exit(imagenette())
