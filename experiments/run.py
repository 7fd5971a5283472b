"""Runs an experiment config: `python experiments/run.py --config experiments/depth_sweep.py`.

Same as `python -m keras_vitbn.experiments`; see `--help`.
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from keras_vitbn.experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
