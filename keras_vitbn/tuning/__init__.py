"""Learning-rate search per depth with keras-tuner: which learning rate works at which depth,
with and without BatchNorm (`tuning/lr_per_depth.py`).

    python tuning/lr_per_depth.py --preset fashion_mnist --data-dir ../shared/data/fashion-mnist --depths 1 2 3
"""

from keras_vitbn.tuning.config import TUNERS, SearchConfig
from keras_vitbn.tuning.search import LearningRateHyperModel, LearningRateTuner, distributed_role, search

__all__ = ["TUNERS", "LearningRateHyperModel", "LearningRateTuner", "SearchConfig", "distributed_role", "search"]
