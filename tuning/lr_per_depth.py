"""Which learning rate works at which depth, with and without BatchNorm: a keras-tuner search of
the learning rate for every (model, depth), by default ViT and ViTBNFFN at depths 1 to 8.

    KERAS_BACKEND=jax python tuning/lr_per_depth.py --preset fashion_mnist \
        --data-dir ../shared/data/fashion-mnist --depths 1 2 3 4 --trials 6 --epochs 5

Rerun the same command to resume a stopped search. Distributed (one chief, N workers, the
same command everywhere, a shared --output-dir):

    export KERASTUNER_ORACLE_IP=10.0.0.1 KERASTUNER_ORACLE_PORT=8000
    KERASTUNER_TUNER_ID=chief  python tuning/lr_per_depth.py ...   # on the chief
    KERASTUNER_TUNER_ID=tuner0 python tuning/lr_per_depth.py ...   # on each worker

Results: <output-dir>/results.md (see docs/tuning.md). Every flag: python tuning/lr_per_depth.py --help
"""

import os
import sys

KERAS_VITBN_ENTRY_POINT = True  # keras_vitbn/__init__.py then holds back TensorFlow's start-up logging
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: hide its C++ chatter

from keras_vitbn.tuning.cli import console_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(console_main())
