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

from keras_vitbn.experiments import ExperimentConfig, data_preset, parse_arg, quick


def get_config(arg=None):
    arg = parse_arg(arg, quick=False, data="mnist", seeds=3)
    cfg = ExperimentConfig(
        name="lr_stability",
        article="Figure 10: accuracy drop from lr 0.003 to 0.005, ViT vs ViTBNFFN, per depth",
        models=("vit", "vit_bnffn"),
        depths=tuple(range(1, 9)),
        learning_rates=(0.003, 0.005),
        seeds=tuple(range(arg.seeds)),
        epochs=10,
        batch_size=100,
        optimizer="adam",
        augment="article",
        primary_metric="test_aug_accuracy",
        claims=("lr_robustness",),
        **data_preset(arg.data),
    )
    return quick(cfg) if arg.quick else cfg
