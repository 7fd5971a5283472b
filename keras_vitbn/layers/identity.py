"""Sublayers that may be an `Identity` (a norm of `none`, a dropout of 0), and calling them cheaply."""

import keras


def dropout_or_identity(rate, name, dtype):
    if rate:
        return keras.layers.Dropout(rate, name=name, dtype=dtype)
    return keras.layers.Identity(name=name, dtype=dtype)


def call_unless_identity(layer, x, **kwargs):
    """`layer(x, **kwargs)`, or `x` itself when `layer` is an `Identity`.

    The Identity sublayers stay (the layer's structure does not depend on its
    arguments) but are not called: in eager torch a Keras layer call costs about
    100 us of Python, and a ViT of depth 6 has 24 of them per training step.
    """
    if isinstance(layer, keras.layers.Identity):
        return x
    return layer(x, **kwargs)
