"""Default `TrainConfig` values of the trainer scripts, one preset per dataset.

MNIST and Fashion-MNIST follow the article's experiment setup: 28x28x1, patch 7,
dim 64, 8 heads of 64, FFN 128, no dropout, Adam at 0.003 (the article's lower
learning rate; it also runs 0.005), batch size 100, 10 epochs, constant learning
rate, and the article's augmentation of the training images (rotation 20
degrees, translation 20%, zoom-out 2-3x with probability 0.2). Both the clean
and the augmented (fixed seed) test split are reported every epoch. (The
reference code trains Fashion-MNIST on clean images at 1e-3: `--augment none
--lr 1e-3`.)

CIFAR-10 follows the well-known small-ViT CIFAR-10 recipe: patch 4, dim 256,
FFN 512, 8 heads (of 32), 6 layers, dropout 0.2, AdamW at 3e-4 with cosine
decay after 5 warm-up epochs, gradient clipping at norm 1, random flip and
random resized crop.
"""

ARTICLE = {
    "model": "vit_bnffn",
    "depth": 6,
    "optimizer": "adam",
    "learning_rate": 3e-3,
    "schedule": "constant",
    "batch_size": 100,
    "epochs": 10,
}

PRESETS = {
    "mnist": {**ARTICLE, "dataset": "mnist", "augment": "article"},
    "fashion_mnist": {**ARTICLE, "dataset": "fashion_mnist", "augment": "article"},
    "cifar10": {
        "dataset": "cifar10",
        "model": "vit_bnffn",
        "depth": 6,
        "model_overrides": {"patch_size": 4, "dim": 256, "mlp_dim": 512, "heads": 8, "dim_head": 32, "dropout": 0.2},
        "optimizer": "adamw",
        "learning_rate": 3e-4,
        "schedule": "cosine",
        "warmup_epochs": 5,
        "clipnorm": 1.0,
        "batch_size": 128,
        "epochs": 100,
        "augment": "cifar",
    },
    # The Imagenette walk-through (AlexNet, VGG16, ResNet34, ViT-B/16 at 224x224): AdamW 1e-4, weight
    # decay 1e-2, batch 256, 200 epochs, random flip and crop; ResNet34 by default. Depth None: each
    # model's own (vit_b16: 12 blocks).
    "imagenette": {
        "dataset": "imagenette",
        "model": "resnet34",
        "depth": None,
        "optimizer": "adamw",
        "learning_rate": 1e-4,
        "weight_decay": 1e-2,
        "schedule": "constant",
        "batch_size": 256,
        "epochs": 200,
        "augment": "imagenette",
    },
}
