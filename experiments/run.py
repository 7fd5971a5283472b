"""Runs an experiment config: `python experiments/run.py --config experiments/depth_sweep.py`.

Same as `keras-vitbn-experiments` and `python -m keras_vitbn.experiments`; see `--help`.
"""

import sys

from keras_vitbn.experiments.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main())
