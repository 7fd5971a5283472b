"""Normalisation of NHWC feature maps by name, for the CNNs (AlexNet, VGG, ResNet).

Every norm here acts on the channels axis, with the PyTorch reference's
defaults (epsilon 1e-5, BatchNorm momentum 0.9 in Keras terms, see
`keras_vitbn.layers.norms`):

- `batchnorm`: each channel over the batch and every position (torch.nn.BatchNorm2d);
- `layernorm`: each position (pixel) over its channels, with a per-channel scale
  and shift. This is what "LayerNorm in a CNN" means here: the token-wise
  LayerNorm of a ViT, applied to every pixel as a token (ConvNeXt's
  channels-last LayerNorm), not torch.nn.LayerNorm([C, H, W]) over a whole map;
- `groupnorm`: each sample over groups of channels and every position
  (torch.nn.GroupNorm(32, C); fewer groups when C is not a multiple of 32);
- `lrn`: AlexNet's local response normalisation (`LocalResponseNorm`), no weights;
- `none`: identity.
"""

import math

import keras
from keras import ops

from keras_vitbn.layers.norms import BATCHNORM_MOMENTUM, EPSILON
from keras_vitbn.layers.validation import check_choice, check_positive

CONV_NORMS = ("batchnorm", "layernorm", "groupnorm", "lrn", "none")
GROUPNORM_GROUPS = 32


@keras.saving.register_keras_serializable(package="keras_vitbn")
class LocalResponseNorm(keras.layers.Layer):
    """Local response normalisation across channels, as torch.nn.LocalResponseNorm.

    `b_c = a_c / (k + alpha / size * sum_{c' near c} a_{c'}^2) ** beta`, the sum over
    `size` neighbouring channels (zero beyond the edges). PyTorch divides `alpha`
    by `size`; the AlexNet paper's formula does not (its alpha = 1e-4 is
    alpha = 5e-4 here). Keras has no such layer.

    Args:
        size: int. Channels in the window. Defaults to 5.
        alpha: float. Defaults to 1e-4.
        beta: float. Defaults to 0.75.
        k: float. Defaults to 2 (the paper's; PyTorch's default is 1).

    Example:
    >>> LocalResponseNorm()(keras.ops.ones((2, 8, 8, 16))).shape
    (2, 8, 8, 16)
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, **kwargs):
        super().__init__(**kwargs)
        check_positive(size=size)
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def call(self, x):
        squares = ops.square(ops.cast(x, "float32"))
        channels = squares.shape[-1]
        before, after = self.size // 2, (self.size - 1) // 2  # PyTorch's padding of the window
        padded = ops.pad(squares, [[0, 0]] * (len(squares.shape) - 1) + [[before, after]])
        window = padded[..., 0:channels]
        for shift in range(1, self.size):
            window = window + padded[..., shift : shift + channels]
        scale = ops.power(self.k + (self.alpha / self.size) * window, -self.beta)
        return x * ops.cast(scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)
        return config


def check_conv_norm(name, choices=CONV_NORMS):
    return check_choice(name, "norm", choices)


def make_conv_norm(name, channels, *, layer_name, dtype=None):
    """A fresh normalisation layer for NHWC maps with `channels` channels (see the module doc)."""
    check_conv_norm(name)
    if name == "batchnorm":
        return keras.layers.BatchNormalization(
            momentum=BATCHNORM_MOMENTUM, epsilon=EPSILON, name=layer_name, dtype=dtype
        )
    if name == "layernorm":
        return keras.layers.LayerNormalization(axis=-1, epsilon=EPSILON, name=layer_name, dtype=dtype)
    if name == "groupnorm":
        groups = math.gcd(GROUPNORM_GROUPS, channels)
        return keras.layers.GroupNormalization(groups=groups, epsilon=EPSILON, name=layer_name, dtype=dtype)
    if name == "lrn":
        return LocalResponseNorm(name=layer_name, dtype=dtype)
    return keras.layers.Identity(name=layer_name, dtype=dtype)
