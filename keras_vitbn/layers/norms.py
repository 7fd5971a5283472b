"""Normalisation layers by name, with the PyTorch reference's defaults.

Keras defaults differ from PyTorch (LayerNorm/BatchNorm epsilon 1e-3, BatchNorm
momentum 0.99). The article's reference implementation is PyTorch, so every norm
here uses epsilon 1e-5 and BatchNorm momentum 0.9 (= PyTorch's momentum 0.1).
"""

import keras

EPSILON = 1e-5
BATCHNORM_MOMENTUM = 0.9  # Keras keeps `momentum` of the old value; PyTorch's 0.1 is 1 - 0.9.

NORMS = ("layernorm", "batchnorm", "none")


def check_norm(name, argument="norm", choices=NORMS):
    if name not in choices:
        raise ValueError(f"unknown {argument} {name!r}: choose one of {', '.join(choices)}")
    return name


def make_norm(name, *, layer_name, dtype=None):
    """Returns a fresh normalisation layer over the last axis.

    `batchnorm` normalises each feature over every other axis, i.e. over the
    batch and the tokens for (batch, tokens, features) inputs.
    """
    check_norm(name)
    if name == "layernorm":
        return keras.layers.LayerNormalization(epsilon=EPSILON, name=layer_name, dtype=dtype)
    if name == "batchnorm":
        return keras.layers.BatchNormalization(
            momentum=BATCHNORM_MOMENTUM, epsilon=EPSILON, name=layer_name, dtype=dtype
        )
    return keras.layers.Identity(name=layer_name, dtype=dtype)
