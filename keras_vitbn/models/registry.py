"""timm-style entry point: `create_model(name, **overrides)`.

A variant is a name mapped to a model class and the few arguments that make it
that variant; everything else is the article's MNIST configuration (28x28x1,
patch 7, dim 64, 8 heads of 64, FFN hidden 128, 10 classes, no dropout).
"""

from keras_vitbn.models.mlp import DNN
from keras_vitbn.models.vit import ViT

VARIANTS = {
    "vit": (ViT, {"norm": "layernorm", "ffn_norm": "layernorm"}),
    "vit_bnffn": (ViT, {"norm": "layernorm", "ffn_norm": "batchnorm"}),
    "vit_bn": (ViT, {"norm": "batchnorm", "ffn_norm": "pre_batchnorm"}),
    "dnn": (DNN, {"batchnorm": False}),
    "dnn_bn": (DNN, {"batchnorm": True}),
}


def is_vit(name):
    """Whether `name` is a registered ViT variant (its depth is the encoder's, not hidden layers)."""
    return name in VARIANTS and VARIANTS[name][0] is ViT


def list_models():
    """Names accepted by `create_model`."""
    return sorted(VARIANTS)


def create_model(name, **overrides):
    """Builds a registered model; keyword arguments override its defaults.

    ViT variants need `depth`.

    Example:
    >>> model = create_model("vit_bnffn", depth=6)
    >>> model = create_model("dnn_bn", hidden_units=[256, 256, 256])
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    cls, arguments = VARIANTS[name]
    if cls is ViT and "depth" not in overrides:
        raise ValueError(f"{name} needs a depth, e.g. create_model({name!r}, depth=6)")
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
