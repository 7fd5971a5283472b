import keras
from keras import ops

from keras_vitbn.layers.validation import check_choice

POOLS = ("cls", "mean")


@keras.saving.register_keras_serializable(package="keras_vitbn")
class TokenPooling(keras.layers.Layer):
    """(batch, tokens, dim) -> (batch, dim): the CLS token, or the mean of all tokens.

    Args:
        pool: str. `cls` (the reference) or `mean`. Defaults to `cls`.
    """

    def __init__(self, pool="cls", **kwargs):
        super().__init__(**kwargs)
        self.pool = check_choice(pool, "pool", POOLS)

    def call(self, x):
        return x[:, 0] if self.pool == "cls" else ops.mean(x, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(pool=self.pool)
        return config
