import keras

from keras_vitbn.layers import Encoder, PatchEmbedding, TokenPooling
from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.validation import check_positive, image_hw
from keras_vitbn.models.base import ArgumentsConfigModel


@keras.saving.register_keras_serializable(package="keras_vitbn")
class ViT(ArgumentsConfigModel):
    """Pre-norm Vision Transformer whose normalisation placement is an argument.

    The named variants differ only in `norm` and `ffn_norm` (see `VARIANTS` in
    `keras_vitbn.models.registry`): `vit` (LayerNorm everywhere), `vit_bnffn`
    (the article's ViTBNFFN: BatchNorm inside the FFN, no norm before it) and
    `vit_bn` (BatchNorm in place of every LayerNorm).

    Args:
        depth: int. Number of encoder blocks.
        image_size: int or (int, int). Defaults to 28.
        patch_size: int. Defaults to 7.
        channels: int. Input channels. Defaults to 1.
        num_classes: int. Defaults to 10.
        dim: int. Token width. Defaults to 64.
        heads: int. Defaults to 8.
        dim_head: int. Defaults to 64.
        mlp_dim: int. Feed-forward hidden width. Defaults to 128.
        norm: str. Norm in the patch embedding, before attention and at the end. Defaults to `layernorm`.
        ffn_norm: str. Feed-forward norm placement (`layernorm`, `batchnorm`, `pre_batchnorm`, `none`).
            Defaults to `layernorm`.
        pool: str. `cls` or `mean`. Defaults to `cls`.
        pos_embedding: str. `learned` or `sincos`. Defaults to `learned`.
        dropout: float. Dropout inside the encoder blocks. Defaults to 0.
        emb_dropout: float. Dropout on the embedded tokens. Defaults to 0.
        patch_norm: str or None. The two norms of the patch embedding (`layernorm`,
            `batchnorm`, `none`); None means `norm`. torchvision's ViT has none. Defaults to None.
        qkv_bias: bool. A bias in the q/k/v projections (torchvision's ViT has one). Defaults to False.

    Inputs are NHWC float32 pixels in [0, 1]; outputs are logits.

    Example:
    >>> model = ViT(depth=2, ffn_norm="batchnorm")
    >>> model(keras.ops.zeros((4, 28, 28, 1))).shape
    (4, 10)
    """

    def __init__(
        self,
        depth,
        image_size=28,
        patch_size=7,
        channels=1,
        num_classes=10,
        dim=64,
        heads=8,
        dim_head=64,
        mlp_dim=128,
        norm="layernorm",
        ffn_norm="layernorm",
        pool="cls",
        pos_embedding="learned",
        dropout=0.0,
        emb_dropout=0.0,
        patch_norm=None,
        qkv_bias=False,
        **kwargs,
    ):
        check_positive(num_classes=num_classes)
        height, width = image_hw(image_size)
        dtype = kwargs.get("dtype")
        inputs = keras.Input((height, width, channels), name="images")
        x = PatchEmbedding(
            image_size,
            patch_size,
            dim,
            channels=channels,
            norm=norm if patch_norm is None else patch_norm,
            pos_embedding=pos_embedding,
            dropout=emb_dropout,
            name="patch_embedding",
            dtype=dtype,
        )(inputs)
        x = Encoder(
            dim,
            depth,
            heads=heads,
            dim_head=dim_head,
            mlp_dim=mlp_dim,
            norm=norm,
            ffn_norm=ffn_norm,
            dropout=dropout,
            qkv_bias=qkv_bias,
            name="encoder",
            dtype=dtype,
        )(x)
        x = TokenPooling(pool, name="pool", dtype=dtype)(x)
        outputs = torch_dense(num_classes, dim, name="head", dtype=dtype)(x)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.remember_arguments(
            depth=depth,
            image_size=image_size,
            patch_size=patch_size,
            channels=channels,
            num_classes=num_classes,
            dim=dim,
            heads=heads,
            dim_head=dim_head,
            mlp_dim=mlp_dim,
            norm=norm,
            ffn_norm=ffn_norm,
            pool=pool,
            pos_embedding=pos_embedding,
            dropout=dropout,
            emb_dropout=emb_dropout,
            patch_norm=patch_norm,
            qkv_bias=qkv_bias,
        )
