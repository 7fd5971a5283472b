"""Learning-rate robustness of ViT and ViTBNFFN per depth (article Figure 10).

For every depth, each model is trained at lr 0.003 and at lr 0.005; the report gives
the drop in final augmented-test accuracy when the learning rate is raised, its 95%
CI, and whether ViTBNFFN's drop is significantly smaller than ViT's.

The grid is the same as `depth_sweep.py`, so with the default cache
(`runs/cache`, shared by every experiment under `runs/`) this reuses the depth
sweep's runs and trains nothing new after it:

  python -m keras_vitbn.experiments --config experiments/lr_stability.py --backend jax

Offline / quick variants as in depth_sweep.py, e.g.

  python -m keras_vitbn.experiments --config experiments/lr_stability.py:quick,data=mnist_offline

What it should show (article): ViTBNFFN loses less accuracy than ViT when the
learning rate goes from 0.003 to 0.005, i.e. it is more robust to a higher lr.
"""

import dataclasses
import os

from keras_vitbn.experiments.cli import load_config


def get_config(arg=None):
    # The depth sweep's grid, so both experiments share (and cache) the same runs.
    sweep = os.path.join(os.path.dirname(os.path.abspath(__file__)), "depth_sweep.py")
    cfg, _ = load_config(f"{sweep}:{arg}" if arg else sweep)
    return dataclasses.replace(
        cfg,
        name=cfg.name.replace("depth_sweep", "lr_stability"),  # keeps a " (quick)" suffix
        article="Figure 10: accuracy drop from lr 0.003 to 0.005, ViT vs ViTBNFFN, per depth",
        claims=("lr_robustness",),
    )
