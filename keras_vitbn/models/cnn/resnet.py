import keras

from keras_vitbn.layers.conv_norms import check_conv_norm
from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.validation import check_choice, check_positive, image_hw
from keras_vitbn.models.base import ArgumentsConfigModel
from keras_vitbn.models.cnn.common import apply_norm, check_width, conv, kaiming_fan_out, relu, scaled

RESNET_NORMS = ("batchnorm", "layernorm", "groupnorm", "none")
# depth -> basic blocks per stage (He et al., 2016, Table 1).
RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
RESNET_FILTERS = (64, 128, 256, 512)


@keras.saving.register_keras_serializable(package="keras_vitbn")
class ResNet(ArgumentsConfigModel):
    """ResNet-18/34 (He et al., 2016) of basic residual blocks, with the norm as an argument.

    As torchvision's `resnet18`/`resnet34`: a 7x7 stride-2 convolution (64),
    norm, ReLU, 3x3 stride-2 max-pool; four stages of basic blocks (3x3 conv,
    norm, ReLU, 3x3 conv, norm, plus the shortcut, ReLU) with 64, 128, 256, 512
    filters, the first block of stages 2-4 striding by 2 with a 1x1 stride-2
    convolution and norm on its shortcut; global average pooling and
    Dense(num_classes). Convolutions are initialised Kaiming-normal (fan-out,
    ReLU gain), as torchvision; norm scales 1, shifts 0; the head as torch.nn.Linear.
    Convolutions carry no bias unless `norm="none"` (a norm's shift replaces it).

    Args:
        depth: int. 18 or 34. Defaults to 34.
        image_size: int or (int, int). Defaults to 224 (at least 32).
        channels: int. Defaults to 3.
        num_classes: int. Defaults to 10.
        norm: str. `batchnorm`, `layernorm` (each position over its channels),
            `groupnorm` (32 groups) or `none`. Defaults to `batchnorm`.
        width: float. Multiplier of every filter count. Defaults to 1.

    Example:
    >>> ResNet(depth=18, image_size=32, width=0.125)(keras.ops.zeros((2, 32, 32, 3))).shape
    (2, 10)
    """

    def __init__(self, depth=34, image_size=224, channels=3, num_classes=10, norm="batchnorm", width=1.0, **kwargs):
        check_choice(depth, "ResNet depth", tuple(RESNET_BLOCKS))
        height, width_px = image_hw(image_size)
        check_positive(channels=channels, num_classes=num_classes)
        check_conv_norm(norm, RESNET_NORMS)
        check_width(width)
        if min(height, width_px) < 32:
            raise ValueError(f"ResNet: image size {image_size} is too small for its 32x downsampling; use at least 32")
        dtype = kwargs.get("dtype")
        use_bias = norm == "none"
        init = (kaiming_fan_out(), "zeros")

        def conv_norm(x, filters, kernel, stride, name, activate=True):
            x = conv(
                x,
                filters,
                kernel,
                strides=stride,
                padding=kernel // 2,
                use_bias=use_bias,
                initializers=init,
                name=name,
                dtype=dtype,
            )
            x = apply_norm(x, norm, layer_name=f"{name}_norm", dtype=dtype)
            return relu(x, f"{name}_relu", dtype) if activate else x

        inputs = keras.Input((height, width_px, channels), name="images")
        x = conv_norm(inputs, scaled(64, width), 7, 2, "stem_conv")
        x = keras.layers.ZeroPadding2D(1, name="stem_pool_pad", dtype=dtype)(x)  # after ReLU: 0 pads like -inf
        x = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool", dtype=dtype)(x)
        for stage, (blocks, filters) in enumerate(zip(RESNET_BLOCKS[depth], RESNET_FILTERS), start=1):
            filters = scaled(filters, width)
            for block in range(blocks):
                name = f"stage{stage}_block{block}"
                stride = 2 if stage > 1 and block == 0 else 1
                shortcut = x
                if stride != 1 or x.shape[-1] != filters:
                    shortcut = conv_norm(x, filters, 1, stride, f"{name}_shortcut", activate=False)
                h = conv_norm(x, filters, 3, stride, f"{name}_conv1")
                h = conv_norm(h, filters, 3, 1, f"{name}_conv2", activate=False)
                x = keras.layers.Add(name=f"{name}_add", dtype=dtype)([h, shortcut])
                x = relu(x, f"{name}_relu", dtype)
        x = keras.layers.GlobalAveragePooling2D(name="pool", dtype=dtype)(x)
        outputs = torch_dense(num_classes, x.shape[-1], name="head", dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.remember_arguments(
            depth=depth, image_size=image_size, channels=channels, num_classes=num_classes, norm=norm, width=width
        )
