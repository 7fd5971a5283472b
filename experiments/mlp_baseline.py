"""Sigmoid MLP (3 hidden layers) with and without BatchNorm (article Figures 1-3).

Command:

  python -m keras_vitbn.experiments --config experiments/mlp_baseline.py --backend jax

Offline / quick:

  python -m keras_vitbn.experiments --config experiments/mlp_baseline.py:data=fashion_mnist
  python -m keras_vitbn.experiments --config experiments/mlp_baseline.py:quick,data=mnist_offline

What it should show (the article's motivation): with BatchNorm the sigmoid MLP reaches
a higher test accuracy in the same number of epochs at lr 0.01 and at lr 0.1, and it
tolerates the higher learning rate better. depth = number of hidden layers (3, of 100
sigmoid units each, the trainer's DNN width); augmentation and the augmented-test metric follow the
rest of the article (set `augment="none"` and `primary_metric="test_accuracy"` for
plain MNIST). Grid: 2 models x 2 learning rates x 3 seeds = 12 runs of 15 epochs.
"""

from keras_vitbn.experiments import ExperimentConfig, data_preset, parse_arg, quick


def get_config(arg=None):
    arg = parse_arg(arg, quick=False, data="mnist", seeds=3)
    cfg = ExperimentConfig(
        name="mlp_baseline",
        article="Figures 1-3: sigmoid DNN vs DNN with BatchNorm at lr 0.01 and 0.1",
        models=("dnn", "dnn_bn"),
        depths=(3,),  # 3 sigmoid hidden layers of 100 units
        learning_rates=(0.01, 0.1),
        seeds=tuple(range(arg.seeds)),
        epochs=15,
        batch_size=100,
        optimizer="adam",
        augment="article",
        primary_metric="test_aug_accuracy",
        claims=("bn_mlp_accuracy", "lr_robustness"),
        **data_preset(arg.data),
    )
    return quick(cfg) if arg.quick else cfg
