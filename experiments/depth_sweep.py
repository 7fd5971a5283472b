"""ViT vs ViTBNFFN across depth 1-8 at two learning rates (article Figures 8-9).

Command (full article setup; MNIST through tfds, so it needs the data online):

  python -m keras_vitbn.experiments --config experiments/depth_sweep.py --backend jax

Offline (real data in ../shared/data), smaller:

  python -m keras_vitbn.experiments --config experiments/depth_sweep.py:data=fashion_mnist \
      --backend jax --depths 1,3,5,7 --seeds 2 --epochs 3 --train-subset 6000

Quick smoke run (2 depths, 2 epochs, 1,000 images, 2 seeds; minutes on 2 CPU cores):

  python -m keras_vitbn.experiments --config experiments/depth_sweep.py:quick,data=mnist_offline

What it should show (the article's claims, checked in report.md): at small depth the
two models are close; beyond a critical depth ViTBNFFN reaches a significantly higher
augmented-test accuracy than ViT after the same number of epochs (it converges
faster), at both learning rates. The report estimates that critical depth per
learning rate and also gives the lr-robustness table of `lr_stability.py`.
Grid: 2 models x 8 depths x 2 learning rates x 3 seeds = 96 runs of 10 epochs.
"""

from keras_vitbn.experiments import ExperimentConfig, data_preset, parse_arg, quick


def get_config(arg=None):
    arg = parse_arg(arg, quick=False, data="mnist", seeds=3)
    cfg = ExperimentConfig(
        name="depth_sweep",
        article="Figures 8-9: ViT vs ViTBNFFN, test accuracy vs epoch for depths 1-8",
        models=("vit", "vit_bnffn"),
        depths=tuple(range(1, 9)),
        learning_rates=(0.003, 0.005),
        seeds=tuple(range(arg.seeds)),
        epochs=10,
        batch_size=100,
        optimizer="adam",
        augment="article",
        primary_metric="test_aug_accuracy",
        claims=("critical_depth", "lr_robustness"),
        **data_preset(arg.data),
    )
    return quick(cfg) if arg.quick else cfg
