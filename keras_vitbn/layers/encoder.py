import keras

from keras_vitbn.layers.attention import AttentionBlock
from keras_vitbn.layers.feed_forward import FeedForward
from keras_vitbn.layers.identity import call_unless_identity
from keras_vitbn.layers.norms import check_norm, make_norm
from keras_vitbn.layers.validation import check_positive


@keras.saving.register_keras_serializable(package="keras_vitbn")
class Encoder(keras.layers.Layer):
    """`depth` x (AttentionBlock, FeedForward), then a final norm over all tokens.

    Args:
        dim: int. Token width.
        depth: int. Number of (attention, feed-forward) blocks.
        heads: int. Attention heads. Defaults to 8.
        dim_head: int. Width of each head. Defaults to 64.
        mlp_dim: int. Feed-forward hidden width. Defaults to 128.
        norm: str. Norm before attention and at the end: `layernorm`, `batchnorm`
            or `none`. Defaults to `layernorm`.
        ffn_norm: str. Feed-forward norm placement, see `FeedForward`. Defaults to `layernorm`.
        dropout: float. Dropout inside the blocks. Defaults to 0.
        qkv_bias: bool. A bias in each block's q/k/v projection. Defaults to False.

    Example:
    >>> encoder = Encoder(dim=64, depth=2, ffn_norm="batchnorm")
    >>> encoder(keras.ops.zeros((2, 17, 64))).shape
    (2, 17, 64)
    """

    def __init__(
        self,
        dim,
        depth,
        heads=8,
        dim_head=64,
        mlp_dim=128,
        norm="layernorm",
        ffn_norm="layernorm",
        dropout=0.0,
        qkv_bias=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive(dim=dim, depth=depth, heads=heads, dim_head=dim_head, mlp_dim=mlp_dim)
        check_norm(norm)
        self.dim = dim
        self.depth = depth
        self.heads = heads
        self.dim_head = dim_head
        self.mlp_dim = mlp_dim
        self.norm = norm
        self.ffn_norm = ffn_norm
        self.dropout = dropout
        self.qkv_bias = bool(qkv_bias)
        # Validate the FFN and attention arguments now, not at first call.
        FeedForward(dim, mlp_dim, norm=ffn_norm, dropout=dropout)
        AttentionBlock(dim, heads, dim_head, norm=norm, dropout=dropout)

    def build(self, input_shape):
        dtype = self.dtype_policy
        # Two parallel lists (not a list of tuples) so Keras tracks every sublayer.
        self.attention_blocks, self.ffn_blocks = [], []
        for i in range(self.depth):
            attention = AttentionBlock(
                self.dim,
                self.heads,
                self.dim_head,
                norm=self.norm,
                dropout=self.dropout,
                qkv_bias=self.qkv_bias,
                name=f"block{i}_attention",
                dtype=dtype,
            )
            attention.build(input_shape)
            ffn = FeedForward(
                self.dim,
                self.mlp_dim,
                norm=self.ffn_norm,
                dropout=self.dropout,
                name=f"block{i}_ffn",
                dtype=dtype,
            )
            ffn.build(input_shape)
            self.attention_blocks.append(attention)
            self.ffn_blocks.append(ffn)
        self.final_norm = make_norm(self.norm, layer_name="final_norm", dtype=dtype)
        self.final_norm.build(input_shape)

    def call(self, x, training=None):
        for attention, ffn in zip(self.attention_blocks, self.ffn_blocks):
            x = attention(x, training=training)
            x = ffn(x, training=training)
        return call_unless_identity(self.final_norm, x, training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            dim_head=self.dim_head,
            mlp_dim=self.mlp_dim,
            norm=self.norm,
            ffn_norm=self.ffn_norm,
            dropout=self.dropout,
            qkv_bias=self.qkv_bias,
        )
        return config
