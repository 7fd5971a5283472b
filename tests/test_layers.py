import keras
import numpy as np
import pytest

from keras_vitbn.layers import AttentionBlock, Encoder, FeedForward, PatchEmbedding, TokenPooling, attention_kernels
from keras_vitbn.layers.attention_kernels import FORMS
from tests.testing import gradients, run_layer_test


@pytest.mark.parametrize(
    "norm, trainable, non_trainable",
    # cls, positions, projection kernel+bias, and gamma/beta of each of the two norms
    [("layernorm", 8, 0), ("batchnorm", 8, 4), ("none", 4, 0)],
)
def test_patch_embedding(norm, trainable, non_trainable, tmp_path):
    run_layer_test(
        PatchEmbedding,
        {"image_size": 28, "patch_size": 7, "dim": 16, "channels": 1, "norm": norm},
        input_shape=(3, 28, 28, 1),
        expected_output_shape=(3, 17, 16),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        tmp_path=tmp_path,
    )


def test_patch_embedding_rectangular_rgb_sincos(tmp_path):
    layer = run_layer_test(
        PatchEmbedding,
        {"image_size": [8, 12], "patch_size": 4, "dim": 8, "channels": 3, "pos_embedding": "sincos", "dropout": 0.1},
        input_shape=(2, 8, 12, 3),
        expected_output_shape=(2, 7, 8),
        expected_num_trainable_weights=7,  # no learned position embedding
        tmp_path=tmp_path,
    )
    assert not any("position" in w.path for w in layer.weights)


def test_patchify_order_matches_reference():
    # The reference flattens each patch in (p1, p2, c) order: row-major inside the patch.
    layer = PatchEmbedding(image_size=4, patch_size=2, dim=4, channels=2)
    images = np.arange(4 * 4 * 2, dtype="float32").reshape(1, 4, 4, 2)
    patches = keras.ops.convert_to_numpy(layer.patchify(images))
    expected = [images[0, r : r + 2, c : c + 2, :].reshape(-1) for r in (0, 2) for c in (0, 2)]
    np.testing.assert_array_equal(patches[0], np.stack(expected))


def test_sincos_positions_are_fixed_and_distinct():
    layer = PatchEmbedding(image_size=28, patch_size=7, dim=16, pos_embedding="sincos")
    layer.build((None, 28, 28, 1))
    table = keras.ops.convert_to_numpy(layer.position_embedding)[0]
    assert table.shape == (17, 16)
    assert len({tuple(np.round(row, 5)) for row in table}) == 17


@pytest.mark.parametrize("norm, trainable", [("layernorm", 5), ("batchnorm", 5), ("none", 3)])
def test_attention_block(norm, trainable, tmp_path):
    run_layer_test(
        AttentionBlock,
        {"dim": 16, "heads": 2, "dim_head": 8, "norm": norm},
        input_shape=(2, 5, 16),
        expected_output_shape=(2, 5, 16),
        expected_num_trainable_weights=trainable,  # qkv kernel, out kernel+bias, norm gamma+beta
        expected_num_non_trainable_weights=2 if norm == "batchnorm" else 0,
        tmp_path=tmp_path,
    )


def _explicit_attention(block, x):
    """The block's output in numpy, from its Dense layers' effective kernels."""
    qkv = x @ keras.ops.convert_to_numpy(block.qkv.kernel)
    q, k, v = (qkv[..., i * 8 : (i + 1) * 8].reshape(2, 5, 2, 4).transpose(0, 2, 1, 3) for i in range(3))
    scores = q @ k.transpose(0, 1, 3, 2) * 4**-0.5
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    heads = (weights @ v).transpose(0, 2, 1, 3).reshape(2, 5, 8)
    return x + heads @ keras.ops.convert_to_numpy(block.out.kernel) + keras.ops.convert_to_numpy(block.out.bias)


def _block_in_form(form):
    """A small attention block forced to `form`, and an input for it."""
    block = AttentionBlock(dim=8, heads=2, dim_head=4, norm="none")
    block.build((2, 5, 8))
    block.attention_form = form
    return block, np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32")


@pytest.mark.parametrize("form", FORMS)
def test_attention_matches_explicit_softmax(form):
    # Every attention form (those not picked on this backend and machine too).
    block, x = _block_in_form(form)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block(x)), _explicit_attention(block, x), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("form", FORMS)
def test_every_form_computes_through_the_qkv_layer(form):
    # LoRA on the projection changes what `qkv(x)` computes, not `qkv`'s kernel variable:
    # a form that multiplied by that variable itself would miss it.
    block, x = _block_in_form(form)
    plain = keras.ops.convert_to_numpy(block(x))
    block.qkv.enable_lora(2)
    block.qkv.lora_kernel_b.assign(np.random.default_rng(2).normal(size=(2, 24)).astype("float32"))
    adapted = keras.ops.convert_to_numpy(block(x))
    assert np.abs(adapted - plain).max() > 1e-2
    np.testing.assert_allclose(adapted, _explicit_attention(block, x), rtol=1e-4, atol=1e-5)


def _autodiff_attention(qkv, heads, scale):
    """softmax(q k^T * scale) v from the fused projection, as plain matmuls with autodiff's gradient."""
    q, k, v = attention_kernels.split_heads(qkv, heads)
    return attention_kernels.merge_heads(keras.ops.matmul(attention_kernels.attention_weights(q, k, scale), v))


@pytest.mark.parametrize("xla", [False, True], ids=["traced", "xla"])
def test_xla_cpu_attention_gradient_matches_autodiff(xla):
    # The hand-written gradient against autodiff of the same math as plain matmuls,
    # for the q, k and v parts of the projection, with an upstream gradient that is not all ones.
    rng = np.random.default_rng(2)
    qkv = rng.normal(size=(3, 7, 3 * 2 * 4)).astype("float32")  # 2 heads of width 4
    upstream = keras.ops.convert_to_tensor(rng.normal(size=(3, 7, 2 * 4)).astype("float32"))
    (expected,) = gradients(lambda t: _autodiff_attention(t, 2, 0.5) * upstream, (qkv,), xla=xla)
    (got,) = gradients(lambda t: attention_kernels.xla_cpu_attention(t, 2, 0.5) * upstream, (qkv,), xla=xla)
    for name, part in zip("qkv", range(3)):
        e, g = (a[..., part * 8 : (part + 1) * 8] for a in (expected, got))
        assert np.abs(e).max() > 1e-3, f"d{name} is zero: the test would not see a wrong gradient"
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("xla", [False, True], ids=["traced", "xla"])
def test_every_form_gives_the_same_gradients(xla):
    # The whole block, every form: gradients for its input and for each weight
    # (qkv kernel with its q, k and v blocks, output kernel and bias).
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 7, 8)).astype("float32")
    upstream = keras.ops.convert_to_tensor(rng.normal(size=(3, 7, 8)).astype("float32"))
    block = AttentionBlock(dim=8, heads=2, dim_head=4, norm="none")
    block.build(x.shape)
    weights = [keras.ops.convert_to_numpy(w) for w in block.trainable_variables]
    names = [w.path for w in block.trainable_variables]

    def grads(form):
        block.attention_form = form
        return gradients(lambda x, *ws: block.stateless_call(list(ws), [], x)[0] * upstream, (x, *weights), xla=xla)

    expected = grads("math")
    for form in FORMS[1:]:
        for name, e, g in zip(["input", *names], expected, grads(form)):
            assert np.abs(e).max() > 1e-3, f"d {name} is zero: the test would not see a wrong gradient"
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=f"{form}: d {name}")


def test_attention_form_is_chosen_once_at_build(monkeypatch):
    from keras_vitbn import create_model

    model = create_model("vit_bnffn", depth=2, dim=16, heads=2, dim_head=8, mlp_dim=32)
    blocks = [layer for layer in model._flatten_layers() if isinstance(layer, AttentionBlock)]
    assert len(blocks) == 2 and {b.attention_form for b in blocks} == {attention_kernels.default_form()}
    if keras.backend.backend() == "torch":
        on_cpu = keras.ops.zeros(()).device.type == "cpu"
    else:
        on_cpu = all(d.lower().startswith("cpu") for d in keras.distribution.list_devices())
    if on_cpu:  # plain autodiff on torch, the hand-written gradient for XLA
        assert attention_kernels.default_form() == ("math" if keras.backend.backend() == "torch" else "xla_cpu")
    monkeypatch.setenv(attention_kernels.ENV, "fused")
    assert blocks[0].attention_form != "fused" or not on_cpu  # a built layer keeps its form
    block = AttentionBlock(dim=8, heads=2, dim_head=4)
    block.build((2, 5, 8))
    assert block.attention_form == "fused"
    monkeypatch.setenv(attention_kernels.ENV, "flash")
    with pytest.raises(ValueError, match="KERAS_VITBN_ATTENTION='flash' is not an attention form: set it to one of"):
        AttentionBlock(dim=8, heads=2, dim_head=4).build((2, 5, 8))


@pytest.mark.parametrize(
    "norm, trainable, non_trainable",
    [("layernorm", 6, 0), ("batchnorm", 6, 2), ("pre_batchnorm", 6, 2), ("none", 4, 0)],
)
def test_feed_forward(norm, trainable, non_trainable, tmp_path):
    run_layer_test(
        FeedForward,
        {"dim": 16, "mlp_dim": 32, "norm": norm},
        input_shape=(2, 5, 16),
        expected_output_shape=(2, 5, 16),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        tmp_path=tmp_path,
    )


def test_batchnorm_ffn_structure():
    ffn = FeedForward(dim=16, mlp_dim=32, norm="batchnorm")
    ffn.build((None, 5, 16))
    assert isinstance(ffn.pre_norm, keras.layers.Identity)  # no LayerNorm before the FFN
    bn = ffn.hidden_norm
    assert isinstance(bn, keras.layers.BatchNormalization)
    assert bn.gamma.shape == (32,)  # over the hidden features, statistics over batch and tokens
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)


def test_batchnorm_ffn_keeps_its_statistics_in_float32_under_mixed_bfloat16():
    """bfloat16 compute, float32 BatchNorm statistics: what mixed-precision training of ViTBNFFN needs.

    The hidden features sit near 8, where bfloat16 resolves 1/16: E[h^2] - E[h]^2 taken in
    bfloat16 would be off by tens of percent, far beyond the tolerance below.
    """
    ffn = FeedForward(dim=8, mlp_dim=16, norm="batchnorm", dtype="mixed_bfloat16")
    x = np.random.default_rng(0).standard_normal((4, 5, 8)).astype("float32")
    ffn.build(x.shape)
    ffn.fc1.bias.assign(np.full((16,), 8.0, "float32"))
    hidden = keras.ops.convert_to_numpy(keras.ops.cast(ffn.fc1(x), "float32")).astype("float64")
    assert keras.backend.standardize_dtype(ffn.fc1(x).dtype) == "bfloat16"
    bn = ffn.hidden_norm
    assert keras.backend.standardize_dtype(bn.moving_mean.dtype) == "float32"
    assert keras.backend.standardize_dtype(bn.moving_variance.dtype) == "float32"
    out = ffn(x, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    keep = bn.momentum  # Keras: new = keep * old + (1 - keep) * batch statistic; old mean 0, old variance 1
    mean, variance = hidden.mean(axis=(0, 1)), hidden.var(axis=(0, 1))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), (1 - keep) * mean, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), keep + (1 - keep) * variance, rtol=1e-4)


def test_layernorm_ffn_uses_exact_gelu():
    ffn = FeedForward(dim=4, mlp_dim=4, norm="none")
    ffn.build((None, 1, 4))
    ffn.fc1.kernel.assign(np.eye(4, dtype="float32"))
    ffn.fc1.bias.assign(np.zeros(4, "float32"))
    ffn.fc2.kernel.assign(np.eye(4, dtype="float32"))
    ffn.fc2.bias.assign(np.zeros(4, "float32"))
    x = np.array([[[-2.0, -0.5, 0.5, 2.0]]], dtype="float32")
    from math import erf, sqrt

    exact = np.array([[[v * 0.5 * (1 + erf(v / sqrt(2))) for v in x[0, 0]]]], dtype="float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ffn(x)), x + exact, atol=1e-6)


@pytest.mark.parametrize("ffn_norm, non_trainable", [("layernorm", 0), ("batchnorm", 4)])
def test_encoder(ffn_norm, non_trainable, tmp_path):
    run_layer_test(
        Encoder,
        {"dim": 16, "depth": 2, "heads": 2, "dim_head": 8, "mlp_dim": 32, "ffn_norm": ffn_norm},
        input_shape=(2, 5, 16),
        expected_output_shape=(2, 5, 16),
        expected_num_trainable_weights=2 * (5 + 6) + 2,  # per block: attention 5, FFN 6; final norm 2
        expected_num_non_trainable_weights=non_trainable,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_token_pooling(pool, tmp_path):
    layer = run_layer_test(
        TokenPooling,
        {"pool": pool},
        input_shape=(2, 5, 4),
        expected_output_shape=(2, 4),
        expected_num_trainable_weights=0,
        tmp_path=None,  # no weights: the model tests cover its .keras round trip
    )
    x = np.random.default_rng(0).random((2, 5, 4), dtype=np.float32)
    expected = x[:, 0] if pool == "cls" else x.mean(axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (lambda rate: AttentionBlock(dim=8, heads=2, dim_head=4, dropout=rate), (2, 4, 8)),
        (lambda rate: FeedForward(dim=8, mlp_dim=16, dropout=rate), (2, 4, 8)),
        (lambda rate: PatchEmbedding(image_size=8, patch_size=4, dim=8, channels=1, dropout=rate), (2, 8, 8, 1)),
    ],
    ids=["attention", "ffn", "patch_embedding"],
)
def test_dropout_applies_only_in_training(layer, input_shape):
    # A dropout of 0 is an Identity sublayer that the blocks skip; a positive rate must still drop.
    x = np.random.default_rng(4).normal(size=input_shape).astype("float32")
    for rate in (0.0, 0.5):
        block = layer(rate)
        inference = keras.ops.convert_to_numpy(block(x, training=False))
        training = keras.ops.convert_to_numpy(block(x, training=True))
        if rate:
            assert not np.allclose(training, inference), "dropout changed nothing in training"
        else:
            np.testing.assert_allclose(training, inference, rtol=1e-6)
