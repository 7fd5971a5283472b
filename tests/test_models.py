import json

import keras
import numpy as np
import pytest

import keras_vitbn
from keras_vitbn.models import DNN, ViT
from tests.testing import (
    BACKENDS,
    assert_fit_step_changes_weights,
    assert_keras_round_trip,
    random_images,
    run_in_backend,
)

TINY_VIT = {"depth": 2, "dim": 16, "heads": 2, "dim_head": 8, "mlp_dim": 32}
TINY = {
    "vit": TINY_VIT,
    "vit_bnffn": TINY_VIT,
    "vit_bn": TINY_VIT,
    "dnn": {"hidden_units": [16, 16, 16]},
    "dnn_bn": {"hidden_units": [16, 16, 16]},
}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tiny(name):
    return keras_vitbn.create_model(name, **TINY[name])


def test_registry_lists_every_variant():
    from tests.test_cnn_models import TINY as IMAGENET_SIZED  # the CNNs and vit_b16, tested there

    assert keras_vitbn.list_models() == sorted([*TINY, *IMAGENET_SIZED, "resnet"])


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_shapes_fit_and_keras_round_trip(name, tmp_path):
    model = tiny(name)
    x = random_images(8)
    assert tuple(model(x).shape) == (8, 10)
    assert tuple(model.compute_output_shape((None, 28, 28, 1))) == (None, 10)

    config = model.get_config()
    json.dumps(config)  # a config is plain JSON
    rebuilt = type(model).from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.count_params() == model.count_params()

    changed = assert_fit_step_changes_weights(model, x, np.arange(8) % 10, LOSS)
    assert all(changed), "some trainable weight got no update"
    assert_keras_round_trip(model, x, tmp_path, name=name)


@pytest.mark.parametrize(
    "name, norm, ffn_norm",
    [
        ("vit", "layernorm", "layernorm"),
        ("vit_bnffn", "layernorm", "batchnorm"),
        ("vit_bn", "batchnorm", "pre_batchnorm"),
    ],
)
def test_variants_place_norms(name, norm, ffn_norm):
    model = tiny(name)
    assert isinstance(model, ViT) and (model.norm, model.ffn_norm) == (norm, ffn_norm)
    layer_types = {type(layer).__name__ for layer in _all_layers(model)}
    if name == "vit":
        assert "BatchNormalization" not in layer_types
    if name == "vit_bnffn":
        ffn = model.get_layer("encoder").ffn_blocks[0]
        assert isinstance(ffn.pre_norm, keras.layers.Identity)
        assert isinstance(ffn.hidden_norm, keras.layers.BatchNormalization)
        assert isinstance(model.get_layer("encoder").attention_blocks[0].pre_norm, keras.layers.LayerNormalization)
    if name == "vit_bn":
        assert "LayerNormalization" not in layer_types


def _all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def test_dnn_places_batchnorm_before_each_sigmoid():
    model = tiny("dnn_bn")
    names = [layer.name for layer in model.layers]
    for i in range(3):
        assert names.index(f"hidden{i}") < names.index(f"hidden{i}_norm") < names.index(f"hidden{i}_sigmoid")
        assert isinstance(model.get_layer(f"hidden{i}_norm"), keras.layers.BatchNormalization)
    assert isinstance(tiny("dnn").get_layer("hidden0_norm"), keras.layers.Identity)
    assert isinstance(model, DNN)


def test_article_defaults():
    model = keras_vitbn.create_model("vit_bnffn", depth=1)
    assert (model.image_size, model.patch_size, model.channels, model.num_classes) == (28, 7, 1, 10)
    assert (model.dim, model.heads, model.dim_head, model.mlp_dim, model.dropout) == (64, 8, 64, 128, 0.0)
    assert model.get_layer("encoder").attention_blocks[0].qkv.kernel.shape == (64, 3 * 512)


@pytest.mark.parametrize("name", ["vit_bnffn", "dnn_bn"])
def test_batchnorm_statistics_train_and_infer(name):
    model = tiny(name)
    bn = next(layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization))
    x = random_images(16) * 3.0 + 1.0
    before = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    model.compile(optimizer="adam", loss=LOSS)
    model.fit(x, np.arange(16) % 10, batch_size=16, epochs=1, verbose=0)
    assert not np.allclose(before, keras.ops.convert_to_numpy(bn.moving_mean)), "moving mean did not move"

    # Inference uses the moving statistics: a sample's output does not depend on its batch...
    alone = keras.ops.convert_to_numpy(model(x[:1], training=False))
    batched = keras.ops.convert_to_numpy(model(x, training=False))[:1]
    np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-5)
    # ...while in training mode it does (batch statistics), and changing the moving stats moves outputs.
    train_alone = keras.ops.convert_to_numpy(model(x[:2], training=True))[:1]
    assert not np.allclose(train_alone, keras.ops.convert_to_numpy(model(x, training=True))[:1], atol=1e-5)
    bn.moving_mean.assign(keras.ops.convert_to_numpy(bn.moving_mean) + 1.0)
    assert not np.allclose(alone, keras.ops.convert_to_numpy(model(x[:1], training=False)), atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_mixed_bfloat16_model_trains_and_reloads_in_mixed_bfloat16(name, tmp_path):
    """`dtype="mixed_bfloat16"`: bfloat16 compute, float32 weights, and the .keras file keeps the policy."""
    model = keras_vitbn.create_model(name, **TINY[name], dtype="mixed_bfloat16")
    x = random_images(8)
    assert keras.backend.standardize_dtype(model(x).dtype) == "bfloat16"
    assert {keras.backend.standardize_dtype(w.dtype) for w in model.weights} == {"float32"}
    model.compile(optimizer="adam", loss=LOSS)
    model.fit(x, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras")
    layers = [layer for layer in _all_layers(loaded) if not isinstance(layer, keras.layers.InputLayer)]
    policies = {layer.dtype_policy.name for layer in layers}
    assert loaded.dtype_policy.name == "mixed_bfloat16" and policies == {"mixed_bfloat16"}
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(keras.ops.cast(loaded(x), "float32")),
        keras.ops.convert_to_numpy(keras.ops.cast(model(x), "float32")),
    )


def test_saved_model_loads_on_every_other_backend(tmp_path):
    x = random_images(4, seed=3)
    for name in TINY:
        model = tiny(name)
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", keras.ops.convert_to_numpy(model(x, training=False)))
    np.save(tmp_path / "x.npy", x)
    code = f"""
import numpy as np, keras, keras_vitbn
x = np.load({str(tmp_path / "x.npy")!r})
for name in {sorted(TINY)!r}:
    model = keras.saving.load_model({str(tmp_path)!r} + f"/{{name}}.keras")
    expected = np.load({str(tmp_path)!r} + f"/{{name}}.npy")
    diff = np.abs(keras.ops.convert_to_numpy(model(x, training=False)) - expected).max()
    print(name, diff)
"""
    for backend in BACKENDS:
        if backend == keras.backend.backend():
            continue
        lines = run_in_backend(backend, code).split()
        diffs = dict(zip(lines[::2], map(float, lines[1::2])))
        assert sorted(diffs) == sorted(TINY), f"{backend} loaded {sorted(diffs)}"
        assert max(diffs.values()) < 1e-5, f"{backend}: {diffs}"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "vit", "depth": 2, "image_size": 30}, "image size 30x30 is not divisible by patch size 7"),
        ({"name": "resnet50"}, "unknown model 'resnet50'"),  # resnet (18 or 34) is registered
        ({"name": "vit"}, "vit needs a depth"),
        ({"name": "vit", "depth": 0}, "depth must be a positive integer, got 0"),
        ({"name": "vit", "depth": 2, "dim": -4}, "dim must be a positive integer, got -4"),
        ({"name": "vit", "depth": 2, "heads": 0}, "heads must be a positive integer"),
        ({"name": "vit", "depth": 2, "ffn_norm": "batchnorm"}, "vit fixes ffn_norm"),
        ({"name": "vit", "depth": 2, "pool": "max"}, "unknown pool 'max'"),
        ({"name": "vit", "depth": 2, "pos_embedding": "rope"}, "unknown pos_embedding 'rope'"),
        ({"name": "vit", "depth": 2, "dropout": 1.5}, "dropout must be in [0, 1)"),
        ({"name": "vit", "depth": 2, "colour": True}, "unexpected keyword argument 'colour'"),
        ({"name": "dnn", "hidden_units": [100, 0]}, "hidden_units[1] must be a positive integer"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        keras_vitbn.create_model(**kwargs)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_unknown_norms_in_model_class():
    with pytest.raises(ValueError, match="unknown ffn norm 'groupnorm'"):
        ViT(depth=1, ffn_norm="groupnorm")
    with pytest.raises(ValueError, match="unknown norm 'groupnorm': choose one of layernorm, batchnorm, none"):
        ViT(depth=1, norm="groupnorm")


def test_wrong_input_channels_raise_clear_error():
    model = tiny("vit_bnffn")
    with pytest.raises(ValueError, match=r"expects NHWC images of shape \(28, 28, 1\), got \(28, 28, 3\)"):
        model(np.zeros((1, 28, 28, 3), "float32"))
    from keras_vitbn.layers import PatchEmbedding

    with pytest.raises(ValueError, match="expects NHWC images"):
        PatchEmbedding(28, 7, 16, channels=1)(np.zeros((1, 28, 28, 3), "float32"))
