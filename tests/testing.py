"""Shared test helpers in the style of keras' `run_layer_test`."""

import os
import subprocess
import sys

import keras
import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")


def random_images(batch=4, size=28, channels=1, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, channels), dtype=np.float32)


def _as_numpy(x):
    return keras.ops.convert_to_numpy(x)


def gradients(fn, inputs, xla=False):
    """d sum(fn(*inputs)) / d inputs as numpy arrays, on the current backend.

    `xla=True` traces on TensorFlow inside `tf.function(jit_compile=True)` (JAX
    always compiles with XLA; torch has no XLA).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def grad(*xs):
            with tf.GradientTape() as tape:
                tape.watch(xs)
                total = tf.reduce_sum(fn(*xs))
            return tape.gradient(total, xs)

        grad = tf.function(grad, jit_compile=True) if xla else grad
        return [g.numpy() for g in grad(*(tf.constant(x) for x in inputs))]
    if backend == "jax":
        import jax

        total = lambda *xs: fn(*xs).sum()
        return [np.asarray(g) for g in jax.jit(jax.grad(total, argnums=tuple(range(len(inputs)))))(*inputs)]
    import torch

    xs = [torch.tensor(x, requires_grad=True) for x in inputs]
    fn(*xs).sum().backward()
    return [x.grad.numpy() for x in xs]


def assert_fit_step_changes_weights(model, x, y, loss):
    """One `fit` step runs and moves every trainable weight that gets a gradient."""
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    before = [_as_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [_as_numpy(w) for w in model.trainable_weights]
    changed = [not np.allclose(b, a) for b, a in zip(before, after)]
    assert any(changed) or not changed, "no trainable weight changed in one fit step"
    return changed


def assert_keras_round_trip(model, x, tmp_path, name="model", check_config=True):
    """Saves to .keras, reloads, and checks identical inference outputs; returns the path."""
    path = os.path.join(str(tmp_path), f"{name}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_as_numpy(model(x, training=False)), _as_numpy(reloaded(x, training=False)), atol=1e-6)
    assert type(reloaded) is type(model)
    if check_config:
        assert reloaded.get_config() == model.get_config()
    return path


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights=0,
    tmp_path=None,
):
    """Config round trip, weight counts, symbolic and eager calls, a fit step, .keras round trip."""
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config, "from_config(get_config()) changed the config"
    for key, value in init_kwargs.items():
        assert config[key] == value, f"get_config()[{key!r}] = {config[key]!r}, constructed with {value!r}"

    symbolic = layer(keras.KerasTensor((None, *input_shape[1:])))
    assert tuple(symbolic.shape) == (None, *expected_output_shape[1:])
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights

    x = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    eager = layer(x)
    assert tuple(eager.shape) == tuple(expected_output_shape)
    assert np.all(np.isfinite(_as_numpy(eager)))

    # Mixed precision: bfloat16 compute, float32 variables.
    mixed = layer_cls(**init_kwargs, dtype="mixed_bfloat16")
    mixed_out = mixed(x)
    assert keras.backend.standardize_dtype(mixed_out.dtype) == "bfloat16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in mixed.weights)
    np.testing.assert_allclose(
        _as_numpy(keras.ops.cast(mixed_out, "float32")), _as_numpy(_copy_weights(layer, mixed)(x)), rtol=0.1, atol=0.1
    )

    inputs = keras.Input(input_shape[1:])
    model = keras.Model(inputs, layer_cls(**init_kwargs)(inputs))
    assert_fit_step_changes_weights(model, x, np.zeros(expected_output_shape, "float32"), "mse")
    if tmp_path is not None:
        assert_keras_round_trip(model, x, tmp_path, name=layer_cls.__name__, check_config=False)
    return layer


def _copy_weights(source, target):
    """`source`'s float32 outputs with `target`'s weights made equal: compares like with like."""
    for s_weight, t_weight in zip(source.weights, target.weights):
        s_weight.assign(t_weight)
    return source


def run_in_backend(backend, code, timeout=240):
    """Runs Python `code` in a fresh interpreter on `backend`; returns its stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{backend} subprocess failed:\n{result.stderr[-3000:]}"
    return result.stdout
