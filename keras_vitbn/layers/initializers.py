"""PyTorch's default `nn.Linear` initialisation, so Keras runs start like the reference.

PyTorch draws Linear weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in));
Keras' default is Glorot-uniform weights and zero biases.
"""

import math

import keras


def torch_linear_initializers(fan_in):
    """Returns (kernel_initializer, bias_initializer) matching torch.nn.Linear."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
    bias = keras.initializers.RandomUniform(-bound, bound)
    return kernel, bias


def torch_dense(units, fan_in, *, name, use_bias=True, dtype=None):
    """A Dense layer initialised like torch.nn.Linear(fan_in, units)."""
    kernel, bias = torch_linear_initializers(fan_in)
    return keras.layers.Dense(
        units,
        use_bias=use_bias,
        kernel_initializer=kernel,
        bias_initializer=bias,
        name=name,
        dtype=dtype,
    )
