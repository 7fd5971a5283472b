import keras

from keras_vitbn.layers.conv_norms import check_conv_norm
from keras_vitbn.layers.validation import check_choice, check_positive, check_rate, image_hw
from keras_vitbn.models.base import ArgumentsConfigModel
from keras_vitbn.models.cnn.common import apply_norm, check_spatial, check_width, conv, relu, scaled

VGG_NORMS = ("none", "batchnorm", "layernorm")
# torchvision's configurations: filters of each 3x3 convolution, "M" a 2x2 max-pool.
VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
VGG_DENSE = (4096, 4096)


@keras.saving.register_keras_serializable(package="keras_vitbn")
class VGG(ArgumentsConfigModel):
    """VGG (Simonyan and Zisserman, 2014) with the norm as an argument.

    3x3 convolutions (padding 1) with ReLU in five stages, each ended by a 2x2
    max-pool, then Dense(4096), ReLU, dropout, Dense(4096), ReLU, dropout,
    Dense(num_classes), as torchvision's `vgg16` (depth 16: 13 convolutions and 3
    dense layers). The norm sits between each convolution and its ReLU, as
    torchvision's `vgg16_bn`. Glorot-uniform kernels and zero biases everywhere.
    torchvision's adaptive average pooling to 7x7 is left out: at 224 pixels the
    maps are already 7x7, and a smaller test image then gives a smaller first
    Dense layer instead of upsampled maps.

    Args:
        depth: int. 11, 13, 16 or 19 weight layers. Defaults to 16.
        image_size: int or (int, int). Defaults to 224 (at least 32).
        channels: int. Defaults to 3.
        num_classes: int. Defaults to 10.
        norm: str. `none`, `batchnorm` or `layernorm` (each position over its
            channels). Defaults to `none`.
        dropout: float. After the two hidden Dense layers. Defaults to 0.5.
        width: float. Multiplier of every filter and hidden width. Defaults to 1.

    Example:
    >>> VGG(image_size=32, width=0.125)(keras.ops.zeros((2, 32, 32, 3))).shape
    (2, 10)
    """

    def __init__(
        self, depth=16, image_size=224, channels=3, num_classes=10, norm="none", dropout=0.5, width=1.0, **kwargs
    ):
        check_choice(depth, "VGG depth", tuple(VGG_CONFIGS))
        height, width_px = image_hw(image_size)
        check_positive(channels=channels, num_classes=num_classes)
        check_conv_norm(norm, VGG_NORMS)
        check_rate(dropout=dropout)
        check_width(width)
        if min(height, width_px) < 32:
            raise ValueError(f"VGG: image size {image_size} is too small for its five 2x2 poolings; use at least 32")
        dtype = kwargs.get("dtype")
        inputs = keras.Input((height, width_px, channels), name="images")
        x, stage, index = inputs, 1, 1
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                x = keras.layers.MaxPooling2D(2, strides=2, name=f"pool{stage}", dtype=dtype)(x)
                stage, index = stage + 1, 1
                continue
            name = f"stage{stage}_conv{index}"
            # Biased even before a norm, as torchvision's vgg16_bn (the norm's shift makes the bias redundant).
            x = conv(x, scaled(item, width), 3, padding=1, name=name, dtype=dtype)
            x = apply_norm(x, norm, layer_name=f"{name}_norm", dtype=dtype)
            x = relu(x, f"{name}_relu", dtype)
            index += 1
        check_spatial(x, "VGG", image_size)
        x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
        for i, units in enumerate(VGG_DENSE, start=1):
            x = keras.layers.Dense(scaled(units, width), name=f"fc{i}", dtype=dtype)(x)
            x = relu(x, f"fc{i}_relu", dtype)
            x = keras.layers.Dropout(dropout, name=f"fc{i}_dropout", dtype=dtype)(x)
        outputs = keras.layers.Dense(num_classes, name="head", dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.remember_arguments(
            depth=depth,
            image_size=image_size,
            channels=channels,
            num_classes=num_classes,
            norm=norm,
            dropout=dropout,
            width=width,
        )
