import keras

from keras_vitbn.layers.conv_norms import check_conv_norm
from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.validation import check_positive, check_rate, image_hw
from keras_vitbn.models.base import ArgumentsConfigModel
from keras_vitbn.models.cnn.common import (
    apply_norm,
    check_spatial,
    check_width,
    conv,
    relu,
    scaled,
    torch_conv_initializers,
)

ALEXNET_NORMS = ("lrn", "batchnorm", "layernorm", "none")
# (filters, kernel, stride, padding, norm after it, max-pool after it): the paper's single tower.
ALEXNET_CONVS = (
    (96, 11, 4, 2, True, True),
    (256, 5, 1, 2, True, True),
    (384, 3, 1, 1, False, False),
    (384, 3, 1, 1, False, False),
    (256, 3, 1, 1, False, True),
)
ALEXNET_DENSE = (4096, 4096)


@keras.saving.register_keras_serializable(package="keras_vitbn")
class AlexNet(ArgumentsConfigModel):
    """AlexNet (Krizhevsky et al., 2012) as one tower, with the norm as an argument.

    Five convolutions (96 11x11 stride 4, 256 5x5, 384, 384, 256 3x3, each with
    ReLU), the norm after the ReLU of the first two (the paper's local response
    normalisation by default), 3x3 stride-2 max-pooling after the first, second
    and fifth, then dropout, Dense(4096), ReLU, dropout, Dense(4096), ReLU,
    Dense(num_classes). The first convolution pads by 2, as torchvision's, so 224
    pixels give the paper's 55x55 maps. The paper split the network over two GPUs
    (grouped convolutions, fewer weights); this is the single-tower form.
    Initialisation is PyTorch's default (uniform +-1/sqrt(fan_in)).

    Args:
        image_size: int or (int, int). Defaults to 224 (at least 64).
        channels: int. Defaults to 3.
        num_classes: int. Defaults to 10.
        norm: str. `lrn`, `batchnorm`, `layernorm` (each position over its
            channels) or `none`, in the LRN's two places. Defaults to `lrn`.
        dropout: float. Before the two hidden Dense layers. Defaults to 0.5.
        width: float. Multiplier of every filter and hidden width (tiny test
            models). Defaults to 1.

    Example:
    >>> AlexNet(image_size=64, width=0.125)(keras.ops.zeros((2, 64, 64, 3))).shape
    (2, 10)
    """

    def __init__(self, image_size=224, channels=3, num_classes=10, norm="lrn", dropout=0.5, width=1.0, **kwargs):
        height, width_px = image_hw(image_size)
        check_positive(channels=channels, num_classes=num_classes)
        check_conv_norm(norm, ALEXNET_NORMS)
        check_rate(dropout=dropout)
        check_width(width)
        dtype = kwargs.get("dtype")
        inputs = keras.Input((height, width_px, channels), name="images")
        x, fan_channels = inputs, channels
        for i, (filters, kernel, stride, padding, normed, pooled) in enumerate(ALEXNET_CONVS, start=1):
            filters = scaled(filters, width)
            x = conv(
                x,
                filters,
                kernel,
                strides=stride,
                padding=padding,
                initializers=torch_conv_initializers(kernel * kernel * fan_channels),
                name=f"conv{i}",
                dtype=dtype,
            )
            x = relu(x, f"conv{i}_relu", dtype)
            if normed:
                x = apply_norm(x, norm, layer_name=f"conv{i}_norm", dtype=dtype)
            if pooled:
                if min(x.shape[1:3]) < 3:
                    raise ValueError(f"AlexNet: image size {image_size} is too small for its pooling; use at least 64")
                x = keras.layers.MaxPooling2D(3, strides=2, name=f"pool{i}", dtype=dtype)(x)
            fan_channels = filters
        check_spatial(x, "AlexNet", image_size)
        x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
        fan_in = x.shape[-1]
        for i, units in enumerate(ALEXNET_DENSE, start=1):
            units = scaled(units, width)
            x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout", dtype=dtype)(x)
            x = torch_dense(units, fan_in, name=f"fc{i}", dtype=dtype)(x)
            x = relu(x, f"fc{i}_relu", dtype)
            fan_in = units
        outputs = torch_dense(num_classes, fan_in, name="head", dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.remember_arguments(
            image_size=image_size, channels=channels, num_classes=num_classes, norm=norm, dropout=dropout, width=width
        )
