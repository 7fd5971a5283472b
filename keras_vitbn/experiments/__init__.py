"""Experiments: grids of training runs, a caching runner, statistics and reports.

Run one with `python -m keras_vitbn.experiments --config experiments/depth_sweep.py`
(or `python experiments/run.py ...`); see `experiments/*.py` for the configs.
"""

from keras_vitbn.experiments.config import (
    DATA_PRESETS,
    ExperimentConfig,
    RunSpec,
    data_preset,
    parse_arg,
    quick,
)
from keras_vitbn.experiments.report import Analysis, build_report
from keras_vitbn.experiments.runner import RunRecord, config_hash, load_records, run_experiment

__all__ = [
    "DATA_PRESETS",
    "Analysis",
    "ExperimentConfig",
    "RunRecord",
    "RunSpec",
    "build_report",
    "config_hash",
    "data_preset",
    "load_records",
    "parse_arg",
    "quick",
    "run_experiment",
]
