"""`python -m keras_vitbn.experiments --config experiments/depth_sweep.py[:arg] [options]`."""

import sys

from keras_vitbn.experiments.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main())
