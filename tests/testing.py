"""Shared test helpers in the style of keras' `run_layer_test`."""

import os
import subprocess
import sys

import keras
import numpy as np

from keras_vitbn.runtime import BACKENDS  # noqa: F401  (re-exported for the tests)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The trainers' command line for a model and a run small enough for a test.
TINY_VIT_ARGS = ["--depth", "1", "--dim", "16", "--heads", "2", "--dim-head", "8", "--mlp-dim", "16"]
TINY_RUN_ARGS = ["--train-subset", "200", "--test-subset", "100", "--batch-size", "50", "--epochs", "1"]


def tiny_trainer_args(verbose=2, model=True):
    """TINY_VIT_ARGS (unless `model` is False) and TINY_RUN_ARGS, at Keras verbosity `verbose`."""
    return [*(TINY_VIT_ARGS if model else []), *TINY_RUN_ARGS, "--verbose", str(verbose)]


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

        def total(*xs):
            return fn(*xs).sum()

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


PRECISION_POLICIES = ("float32", "mixed_bfloat16")


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shape,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights=0,
    tmp_path=None,
):
    """What keras-hub's `run_layer_test` checks, for one layer class:

    config round trip (`from_config`, and `serialize_keras_object` /
    `deserialize_keras_object`), the built state (`build` alone creates every
    weight and builds every sublayer), weight counts, symbolic and eager calls,
    every policy of `PRECISION_POLICIES` (compute and variable dtypes, the same
    policy on every sublayer, values close to float32's), a fit step, and a
    .keras round trip.
    """
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    rebuilt = layer_cls.from_config(config)
    assert rebuilt.get_config() == config, "from_config(get_config()) changed the config"
    for key, value in init_kwargs.items():
        assert config[key] == value, f"get_config()[{key!r}] = {config[key]!r}, constructed with {value!r}"
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is layer_cls and revived.get_config() == config, "serialize/deserialize changed the layer"

    assert_built_state(
        layer_cls(**init_kwargs), input_shape, expected_num_trainable_weights, expected_num_non_trainable_weights
    )

    symbolic = layer(keras.KerasTensor((None, *input_shape[1:])))
    assert tuple(symbolic.shape) == (None, *expected_output_shape[1:])
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights

    x = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    eager = layer(x)
    assert tuple(eager.shape) == tuple(expected_output_shape)
    assert np.all(np.isfinite(_as_numpy(eager)))

    for policy in PRECISION_POLICIES:
        assert_precision(layer_cls, init_kwargs, policy, x, reference=layer)

    inputs = keras.Input(input_shape[1:])
    model = keras.Model(inputs, layer_cls(**init_kwargs)(inputs))
    assert_fit_step_changes_weights(model, x, np.zeros(expected_output_shape, "float32"), "mse")
    if tmp_path is not None:
        assert_keras_round_trip(model, x, tmp_path, name=layer_cls.__name__, check_config=False)
    return layer


def assert_built_state(layer, input_shape, num_trainable, num_non_trainable):
    """`build(input_shape)` alone, without a call, creates every weight and builds every sublayer:
    what lets a saved model reload without a forward pass."""
    layer.build(input_shape)
    assert layer.built, f"{type(layer).__name__}.build did not set built"
    assert len(layer.trainable_weights) == num_trainable, "build did not create every trainable weight"
    assert len(layer.non_trainable_weights) == num_non_trainable, "build did not create every non-trainable weight"
    unbuilt = [sub.name for sub in layer._flatten_layers(include_self=False) if not sub.built]
    assert not unbuilt, f"sublayers not built by {type(layer).__name__}.build: {unbuilt}"


def assert_precision(layer_cls, init_kwargs, policy, x, reference):
    """The layer under dtype policy `policy`: outputs in its compute dtype, weights in its
    variable dtype, every sublayer on the same policy, and values close to `reference`'s
    (float32, given the same weights)."""
    layer = layer_cls(**init_kwargs, dtype=policy)
    out = layer(x)
    policy = keras.dtype_policies.get(policy)
    assert keras.backend.standardize_dtype(out.dtype) == policy.compute_dtype, policy.name
    for weight in layer.weights:
        assert keras.backend.standardize_dtype(weight.dtype) == policy.variable_dtype, (policy.name, weight.path)
    for sub in layer._flatten_layers(include_self=False):
        assert sub.dtype_policy.name == policy.name, (
            f"sublayer {sub.name} runs {sub.dtype_policy.name}, not {policy.name}"
        )
    tolerance = 1e-5 if policy.compute_dtype == "float32" else 0.1  # bfloat16 keeps 8 bits
    np.testing.assert_allclose(
        _as_numpy(keras.ops.cast(out, "float32")),
        _as_numpy(_copy_weights(reference, layer)(x)),
        rtol=tolerance,
        atol=tolerance,
        err_msg=policy.name,
    )


def _copy_weights(source, target):
    """`source`'s float32 outputs with `target`'s weights made equal: compares like with like."""
    for s_weight, t_weight in zip(source.weights, target.weights):
        s_weight.assign(t_weight)
    return source


def run_in_backend(backend, code, timeout=240):
    """Runs Python `code` in a fresh interpreter on `backend`; returns its stdout."""
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{backend} subprocess failed:\n{result.stderr[-3000:]}"
    return result.stdout
