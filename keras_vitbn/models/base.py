import keras


class ArgumentsConfigModel(keras.Model):
    """A functional model whose config is exactly its constructor arguments.

    Subclasses build their graph in `__init__`, call `super().__init__(inputs=...,
    outputs=..., **kwargs)`, then `self.remember_arguments(...)`.
    """

    MODEL_KWARGS = ("name", "trainable", "dtype")

    def __init__(self, inputs, outputs, **kwargs):
        # keras.Model drops unknown keywords silently; a typo should not pass unnoticed.
        unknown = sorted(set(kwargs) - set(self.MODEL_KWARGS))
        if unknown:
            raise ValueError(f"{type(self).__name__} got an unexpected keyword argument {unknown[0]!r}")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        if kwargs.get("dtype") is not None:
            # keras' functional Model drops `dtype`; without this, get_config would say float32 and a
            # mixed-precision model would come back from its .keras file in float32.
            self.dtype_policy = kwargs["dtype"]

    def remember_arguments(self, **arguments):
        self._arguments = arguments
        for name, value in arguments.items():
            setattr(self, name, value)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            **{name: list(v) if isinstance(v, tuple) else v for name, v in self._arguments.items()},
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return cls(**config)
