"""Pieces shared by the CNNs: PyTorch-style padded convolutions, initialisers, width scaling."""

import keras

from keras_vitbn.layers.conv_norms import make_conv_norm


def scaled(units, width):
    """`units` times the width multiplier, at least 1 (width 1: the reference sizes)."""
    return max(1, int(round(units * width)))


def check_width(width):
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be a positive number (1.0: the reference sizes), got {width!r}")


def torch_conv_initializers(fan_in):
    """(kernel, bias) initialisers of torch.nn.Conv2d's default, U(+-1/sqrt(fan_in)) for both."""
    bound = fan_in**-0.5
    kernel = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
    return kernel, keras.initializers.RandomUniform(-bound, bound)


def kaiming_fan_out():
    """torchvision ResNet's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu")."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def conv(x, filters, kernel_size, *, strides=1, padding=0, use_bias=True, initializers=None, name, dtype=None):
    """Conv2D with PyTorch's symmetric zero padding (Keras' "same" pads more at the bottom/right
    under a stride of 2, so the sampled positions would differ from the reference)."""
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad", dtype=dtype)(x)
    kernel, bias = initializers or ("glorot_uniform", "zeros")
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=use_bias,
        kernel_initializer=kernel,
        bias_initializer=bias,
        name=name,
        dtype=dtype,
    )(x)


def apply_norm(x, name, *, layer_name, dtype=None):
    """`make_conv_norm` applied to `x`; a `none` norm adds no layer to the graph."""
    if name == "none":
        return x
    return make_conv_norm(name, x.shape[-1], layer_name=layer_name, dtype=dtype)(x)


def relu(x, name, dtype=None):
    return keras.layers.Activation("relu", name=name, dtype=dtype)(x)


def check_spatial(x, model_name, image_size):
    """A clear error when the input is too small for the network's downsampling."""
    if any(d is not None and d < 1 for d in x.shape[1:3]):
        raise ValueError(f"{model_name}: image size {image_size} is too small for its downsampling; use at least 64")
