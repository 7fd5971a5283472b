"""`python trainers/mnist.py [FLAGS]`: the same as `keras-vitbn-train-mnist` (see `--help`).

A thin script over `keras_vitbn.training.entry.mnist`, for a checkout installed with
`pip install -e .`.
"""

import os
import sys

KERAS_VITBN_ENTRY_POINT = True  # keras_vitbn/__init__.py then holds back TensorFlow's start-up logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: hide its C++ chatter

from keras_vitbn.training.entry import mnist  # noqa: E402

if __name__ == "__main__":
    sys.exit(mnist())
