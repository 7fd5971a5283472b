"""The CNNs (AlexNet, VGG16, ResNet18/34) and ViT-B/16 on the current backend.

Tiny sizes (32x32 or 64x64, a width multiplier) for shapes, configs, .keras round
trips and a fit step; the full 224x224 models are only built, without weights
(`keras.StatelessScope` defers their initialisation), to count parameters
against the PyTorch definitions, which are built here in plain torch.nn on the
meta device (torchvision's vgg16, resnet18/34 and vit_b_16; AlexNet with the
paper's single-tower layer sizes).
"""

import math

import keras
import numpy as np
import pytest

import keras_vitbn
from keras_vitbn.layers.conv_norms import LocalResponseNorm, make_conv_norm
from keras_vitbn.models.cnn import VGG, AlexNet, ResNet
from tests.testing import assert_fit_step_changes_weights, assert_keras_round_trip, random_images

TINY = {
    "alexnet": dict(image_size=64, width=0.125),
    "vgg16": dict(image_size=32, width=0.125),
    "resnet18": dict(image_size=32, width=0.125),
    "resnet34": dict(image_size=32, width=0.125),
    "vit_b16": dict(image_size=32, depth=2, dim=32, heads=2, dim_head=16, mlp_dim=64),
}
# Every model with its default norm, and every other norm in at least one CNN (fit steps dominate the time).
NORMS = {
    "alexnet": ("lrn", "batchnorm"),
    "vgg16": ("none", "layernorm"),
    "resnet18": ("batchnorm", "layernorm", "groupnorm", "none"),
    "resnet34": ("batchnorm",),
}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _count(weights):
    return sum(math.prod(w.shape) for w in weights)


def _tiny(name, **overrides):
    return keras_vitbn.create_model(name, **{**TINY[name], **overrides})


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_shapes_config_and_keras_round_trip(name, tmp_path):
    model = _tiny(name, num_classes=7)
    size = TINY[name]["image_size"]
    x = random_images(batch=3, size=size, channels=3)
    assert tuple(model(x, training=False).shape) == (3, 7)
    config = model.get_config()
    assert type(model).from_config(config).get_config() == config
    assert_keras_round_trip(model, x, tmp_path, name=name)


@pytest.mark.parametrize("name,norm", [(n, norm) for n, norms in NORMS.items() for norm in norms])
def test_tiny_model_fit_step_with_each_norm(name, norm):
    model = _tiny(name, norm=norm)
    size = TINY[name]["image_size"]
    x = random_images(batch=4, size=size, channels=3)
    y = np.arange(4) % 10
    changed = assert_fit_step_changes_weights(model, x, y, LOSS)
    assert all(changed), f"{name} norm={norm}: a weight did not move in one step"


def test_vit_b16_ffn_batchnorm_is_a_vitbnffn():
    model = _tiny("vit_b16", ffn_norm="batchnorm")
    x = random_images(batch=4, size=32, channels=3)
    assert_fit_step_changes_weights(model, x, np.arange(4), LOSS)
    bn = [w for w in model.non_trainable_weights if "moving" in w.path]
    assert len(bn) == 2 * TINY["vit_b16"]["depth"], "one BatchNorm (mean, variance) per FFN"


def test_bad_arguments_say_what_to_do():
    with pytest.raises(ValueError, match="unknown norm 'lrn'"):
        keras_vitbn.create_model("resnet34", norm="lrn")
    with pytest.raises(ValueError, match="VGG depth"):
        VGG(depth=15)
    with pytest.raises(ValueError, match="too small"):
        AlexNet(image_size=32)
    with pytest.raises(ValueError, match="width must be a positive number"):
        ResNet(width=0)
    with pytest.raises(ValueError, match="needs a depth of 18 or 34"):
        keras_vitbn.create_model("resnet")
    with pytest.raises(ValueError, match="fixes depth"):
        keras_vitbn.create_model("resnet34", depth=18)


def test_registry_names_and_depth_arguments():
    from keras_vitbn.models.registry import depth_argument, is_vit

    assert {"alexnet", "vgg16", "resnet", "resnet18", "resnet34", "vit_b16"} <= set(keras_vitbn.list_models())
    assert is_vit("vit_b16") and not is_vit("resnet34")
    assert depth_argument("vit_b16") == "depth" and depth_argument("resnet") == "depth"
    assert depth_argument("dnn") == "hidden_units"
    assert depth_argument("resnet34") is None and depth_argument("alexnet") is None
    assert keras_vitbn.create_model("resnet", depth=18, **TINY["resnet18"]).depth == 18


def test_layernorm_in_a_cnn_normalises_each_position_over_its_channels():
    x = random_images(batch=2, size=5, channels=16) * 3.0 + 1.0
    y = keras.ops.convert_to_numpy(make_conv_norm("layernorm", 16, layer_name="ln")(x))
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, atol=1e-3)
    # BatchNorm (training) normalises each channel over batch and positions instead.
    bn = make_conv_norm("batchnorm", 16, layer_name="bn")
    z = keras.ops.convert_to_numpy(bn(x, training=True))
    np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)


def test_local_response_norm_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 7)).astype("float32") * 10
    ours = keras.ops.convert_to_numpy(LocalResponseNorm(size=5, alpha=1e-2, beta=0.75, k=2.0)(x))
    reference = torch.nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)(torch.from_numpy(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(ours, reference.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    layer = LocalResponseNorm(size=3, alpha=1e-3)
    assert LocalResponseNorm.from_config(layer.get_config()).get_config() == layer.get_config()


def test_initialisations_glorot_for_vgg_kaiming_fan_out_for_resnet():
    vgg = VGG(image_size=32, width=0.5)
    kernel = keras.ops.convert_to_numpy(vgg.get_layer("stage5_conv1").kernel)  # 3x3, 256 -> 256
    bound = math.sqrt(6.0 / (9 * 256 + 9 * 256))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound
    resnet = ResNet(depth=18, image_size=32, width=0.5)
    kernel = keras.ops.convert_to_numpy(resnet.get_layer("stage4_block1_conv2").kernel)  # 3x3, 256 -> 256
    np.testing.assert_allclose(kernel.std(), math.sqrt(2.0 / (9 * 256)), rtol=0.02)
    assert not resnet.get_layer("stage4_block1_conv2").use_bias


# --- parameter counts at full size against the PyTorch definitions -------------------------------


def _torch_alexnet(nn, num_classes):
    """The paper's AlexNet as one tower (torchvision's layout, the paper's 96/256/384/384/256 filters)."""
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, 4, 2),
        nn.ReLU(),
        nn.LocalResponseNorm(5, k=2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2),
        nn.ReLU(),
        nn.LocalResponseNorm(5, k=2.0),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, num_classes),
    )


def _torch_vgg16(nn, num_classes, batchnorm=False):
    """torchvision.models.vgg16 (cfg "D"), or vgg16_bn."""
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), *([nn.BatchNorm2d(v)] if batchnorm else []), nn.ReLU()]
            cin = v
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d((7, 7)),
        nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, num_classes),
    )


def _torch_resnet(nn, blocks, num_classes):
    """torchvision.models.resnet18/34: BasicBlock, [2, 2, 2, 2] or [3, 4, 6, 3]."""

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for stage, (n, cout) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for i in range(n):
            layers.append(BasicBlock(cin, cout, 2 if stage and not i else 1))
            cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


def _torch_vit_b16(nn, torch, num_classes):
    """torchvision.models.vit_b_16: conv patch projection, class token and position embedding held
    directly by the model, 12 x (LayerNorm, MultiheadAttention, LayerNorm, MLP 3072), LayerNorm, head."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(768, eps=1e-6)
            self.self_attention = nn.MultiheadAttention(768, 12, batch_first=True)
            self.ln_2 = nn.LayerNorm(768, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(768, 3072), nn.GELU(), nn.Dropout(0.0), nn.Linear(3072, 768))

    class VisionTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_proj = nn.Conv2d(3, 768, 16, 16)
            self.class_token = nn.Parameter(torch.zeros(1, 1, 768))
            self.pos_embedding = nn.Parameter(torch.empty(1, 197, 768))
            self.layers = nn.Sequential(*[Block() for _ in range(12)])
            self.ln = nn.LayerNorm(768, eps=1e-6)
            self.head = nn.Linear(768, num_classes)

    return VisionTransformer()


def _torch_count(name, num_classes=10):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    builders = {
        "alexnet": lambda: _torch_alexnet(nn, num_classes),
        "vgg16": lambda: _torch_vgg16(nn, num_classes),
        "resnet18": lambda: _torch_resnet(nn, (2, 2, 2, 2), num_classes),
        "resnet34": lambda: _torch_resnet(nn, (3, 4, 6, 3), num_classes),
        "vit_b16": lambda: _torch_vit_b16(nn, torch, num_classes),
    }
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = builders[name]()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Trainable parameters for 10 classes (README/docs table); the torch definitions must agree.
EXPECTED = {
    "alexnet": 58_322_314,
    "vgg16": 134_301_514,
    "resnet18": 11_181_642,
    "resnet34": 21_289_802,
    "vit_b16": 85_806_346,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_trainable_parameters_equal_the_pytorch_reference(name):
    with keras.StatelessScope():  # built, not initialised: a 134M-parameter VGG in about a second
        model = keras_vitbn.create_model(name)
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 10)
    assert _count(model.trainable_weights) == EXPECTED[name] == _torch_count(name)


def test_full_size_norm_swaps_keep_or_change_counts_as_documented():
    with keras.StatelessScope():
        counts = {
            norm: _count(keras_vitbn.create_model("resnet34", norm=norm).trainable_weights)
            for norm in ("batchnorm", "layernorm", "groupnorm", "none")
        }
        vitbnffn = _count(keras_vitbn.create_model("vit_b16", ffn_norm="batchnorm").trainable_weights)
        vgg_bn = _count(keras_vitbn.create_model("vgg16", norm="batchnorm").trainable_weights)
    # LayerNorm and GroupNorm have BatchNorm's per-channel scale and shift; no norm: the convolutions get biases.
    assert counts["batchnorm"] == counts["layernorm"] == counts["groupnorm"] == EXPECTED["resnet34"]
    # Every convolution feeds a norm: 8,512 channels lose a scale and a shift (2 x 8,512) and gain a bias.
    assert counts["none"] == EXPECTED["resnet34"] - 8_512
    # ViTBNFFN-B/16: per block, BatchNorm over the 3072 hidden features replaces LayerNorm over 768.
    assert vitbnffn == EXPECTED["vit_b16"] + 12 * 2 * (3072 - 768)
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        reference = _torch_vgg16(torch.nn, 10, batchnorm=True)
    assert vgg_bn == sum(p.numel() for p in reference.parameters())  # torchvision's vgg16_bn
