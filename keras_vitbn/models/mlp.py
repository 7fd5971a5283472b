import keras

from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.norms import make_norm
from keras_vitbn.layers.validation import check_positive, image_hw
from keras_vitbn.models.base import ArgumentsConfigModel


@keras.saving.register_keras_serializable(package="keras_vitbn")
class DNN(ArgumentsConfigModel):
    """The article's MLP baseline: flatten, sigmoid hidden layers, linear head.

    With `batchnorm=True`, a BatchNorm sits between each hidden Dense and its
    sigmoid (the article's "DNN with BatchNorm").

    Args:
        image_size: int or (int, int). Defaults to 28.
        channels: int. Defaults to 1.
        num_classes: int. Defaults to 10.
        hidden_units: list of int. Widths of the hidden layers. Defaults to (100, 100, 100).
        batchnorm: bool. BatchNorm before each sigmoid. Defaults to False.

    Example:
    >>> DNN(batchnorm=True)(keras.ops.zeros((4, 28, 28, 1))).shape
    (4, 10)
    """

    def __init__(
        self, image_size=28, channels=1, num_classes=10, hidden_units=(100, 100, 100), batchnorm=False, **kwargs
    ):
        height, width = image_hw(image_size)
        hidden_units = [int(u) for u in hidden_units]
        check_positive(
            channels=channels, num_classes=num_classes, **{f"hidden_units[{i}]": u for i, u in enumerate(hidden_units)}
        )
        dtype = kwargs.get("dtype")
        inputs = keras.Input((height, width, channels), name="images")
        x = keras.layers.Flatten(name="flatten", dtype=dtype)(inputs)
        fan_in = height * width * channels
        for i, units in enumerate(hidden_units):
            x = torch_dense(units, fan_in, name=f"hidden{i}", dtype=dtype)(x)
            x = make_norm("batchnorm" if batchnorm else "none", layer_name=f"hidden{i}_norm", dtype=dtype)(x)
            x = keras.layers.Activation("sigmoid", name=f"hidden{i}_sigmoid", dtype=dtype)(x)
            fan_in = units
        outputs = torch_dense(num_classes, fan_in, name="head", dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.remember_arguments(
            image_size=image_size,
            channels=channels,
            num_classes=num_classes,
            hidden_units=hidden_units,
            batchnorm=batchnorm,
        )
