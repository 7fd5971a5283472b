"""timm-style entry point: `create_model(name, **overrides)`.

A variant is a name mapped to a model class and the few arguments that make it
that variant; everything else is the article's MNIST configuration (28x28x1,
patch 7, dim 64, 8 heads of 64, FFN hidden 128, 10 classes, no dropout), or,
for the ImageNet-sized models (CNNs, `vit_b16`), 224x224x3 and 10 classes.
`DEFAULTS` holds a variant's sizes that an override may change (`vit_b16`
with `depth=6` or `ffn_norm="batchnorm"`).
"""

from keras_vitbn.models.cnn import VGG, AlexNet, ResNet
from keras_vitbn.models.mlp import DNN
from keras_vitbn.models.vit import ViT

# ViT-B/16 as torchvision's vit_b_16: 224x224 RGB, 16x16 patches, 12 blocks of width 768,
# 12 heads of 64, MLP 3072, q/k/v bias, no norm in the patch embedding, CLS pooling.
VIT_B16 = {
    "depth": 12,
    "image_size": 224,
    "patch_size": 16,
    "channels": 3,
    "dim": 768,
    "heads": 12,
    "dim_head": 64,
    "mlp_dim": 3072,
    "norm": "layernorm",
    "ffn_norm": "layernorm",
    "patch_norm": "none",
    "qkv_bias": True,
}

VARIANTS = {
    "vit": (ViT, {"norm": "layernorm", "ffn_norm": "layernorm"}),
    "vit_bnffn": (ViT, {"norm": "layernorm", "ffn_norm": "batchnorm"}),
    "vit_bn": (ViT, {"norm": "batchnorm", "ffn_norm": "pre_batchnorm"}),
    "dnn": (DNN, {"batchnorm": False}),
    "dnn_bn": (DNN, {"batchnorm": True}),
    "vit_b16": (ViT, {}),
    "alexnet": (AlexNet, {}),
    "vgg16": (VGG, {"depth": 16}),
    "resnet": (ResNet, {}),  # needs depth=18 or 34: the experiment runner's depth axis
    "resnet18": (ResNet, {"depth": 18}),
    "resnet34": (ResNet, {"depth": 34}),
}

# Overridable defaults per variant (fixed arguments are in VARIANTS).
DEFAULTS = {"vit_b16": VIT_B16}


def is_vit(name):
    """Whether `name` is a registered ViT variant (its depth is the encoder's, not hidden layers)."""
    return name in VARIANTS and VARIANTS[name][0] is ViT


def depth_argument(name):
    """The `create_model` keyword that a run's `depth` sets for `name`, or None when its depth is fixed.

    "depth" for ViTs (encoder blocks) and `resnet` (18 or 34 layers), "hidden_units" for the
    MLPs (that many hidden layers of 100), None for the named CNNs (`resnet34`, `vgg16`, `alexnet`).
    """
    if name not in VARIANTS:
        return None
    cls, arguments = VARIANTS[name]
    if cls is DNN:
        return "hidden_units"
    return None if "depth" in arguments or cls is AlexNet else "depth"


def list_models():
    """Names accepted by `create_model`."""
    return sorted(VARIANTS)


def create_model(name, **overrides):
    """Builds a registered model; keyword arguments override its defaults.

    The article's ViT variants and `resnet` need `depth`.

    Example:
    >>> model = create_model("vit_bnffn", depth=6)
    >>> model = create_model("dnn_bn", hidden_units=[256, 256, 256])
    >>> model = create_model("resnet34", norm="layernorm")
    >>> model = create_model("vit_b16", ffn_norm="batchnorm")  # ViTBNFFN-B/16
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    cls, arguments = VARIANTS[name]
    overrides = {**DEFAULTS.get(name, {}), **overrides}
    if cls is ViT and "depth" not in overrides:
        raise ValueError(f"{name} needs a depth, e.g. create_model({name!r}, depth=6)")
    if cls is ResNet and "depth" not in arguments and "depth" not in overrides:
        raise ValueError(f"{name} needs a depth of 18 or 34, e.g. create_model({name!r}, depth=34)")
    fixed = set(arguments) & set(overrides)
    if fixed:
        raise ValueError(
            f"{name} fixes {', '.join(sorted(fixed))}; to choose them yourself, build "
            f"keras_vitbn.models.{cls.__name__}(...) directly"
        )
    try:
        return cls(**arguments, **overrides, name=overrides.pop("name", name))
    except TypeError as error:  # an unknown keyword: say which model takes what
        raise ValueError(f"{name}: {error}") from None
