import keras
from keras import ops

from keras_vitbn.layers import attention_kernels
from keras_vitbn.layers.attention_kernels import attention_weights, merge_heads, split_heads
from keras_vitbn.layers.identity import call_unless_identity, dropout_or_identity
from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.norms import check_norm, make_norm
from keras_vitbn.layers.validation import check_positive, check_rate


@keras.saving.register_keras_serializable(package="keras_vitbn")
class AttentionBlock(keras.layers.Layer):
    """Pre-norm multi-head self-attention with a residual connection.

    `x + out(attention(qkv(norm(x))))`, with one fused q/k/v projection (bias-free unless `qkv_bias`)
    to 3 x `heads` x `dim_head` (the inner width is independent of `dim`, as in
    the reference: 8 x 64 = 512 with dim 64) and scale `dim_head ** -0.5`.
    `call` computes softmax(q k^T * scale) v as written; where another form of
    the same values is faster (`keras.ops.dot_product_attention` on a GPU, a
    hand-written gradient for XLA on the CPU), the layer uses that one, chosen
    once at build (`attention_form`; see `keras_vitbn.layers.attention_kernels`).

    Args:
        dim: int. Token width (input and output).
        heads: int. Number of attention heads. Defaults to 8.
        dim_head: int. Width of each head. Defaults to 64.
        norm: str. Pre-norm, `layernorm`, `batchnorm` or `none`. Defaults to `layernorm`.
        dropout: float. Dropout after the output projection. Defaults to 0.
        qkv_bias: bool. A bias in the q/k/v projection (torchvision's ViT has one, the
            article's reference none). Defaults to False.

    Example:
    >>> block = AttentionBlock(dim=64, heads=8, dim_head=64)
    >>> block(keras.ops.zeros((2, 17, 64))).shape
    (2, 17, 64)
    """

    def __init__(self, dim, heads=8, dim_head=64, norm="layernorm", dropout=0.0, qkv_bias=False, **kwargs):
        super().__init__(**kwargs)
        check_positive(dim=dim, heads=heads, dim_head=dim_head)
        check_norm(norm)
        check_rate(dropout=dropout)
        self.dim = dim
        self.heads = heads
        self.dim_head = dim_head
        self.norm = norm
        self.dropout = dropout
        self.qkv_bias = bool(qkv_bias)
        self.inner_dim = heads * dim_head
        self.scale = dim_head**-0.5

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(f"AttentionBlock(dim={self.dim}) got tokens of width {input_shape[-1]}")
        self.pre_norm = make_norm(self.norm, layer_name="norm", dtype=self.dtype_policy)
        self.pre_norm.build(input_shape)
        self.qkv = torch_dense(
            3 * self.inner_dim, self.dim, use_bias=self.qkv_bias, name="qkv", dtype=self.dtype_policy
        )
        self.qkv.build(input_shape)
        self.out = torch_dense(self.dim, self.inner_dim, name="out", dtype=self.dtype_policy)
        self.out.build((*input_shape[:-1], self.inner_dim))
        self.out_dropout = dropout_or_identity(self.dropout, "out_dropout", self.dtype_policy)
        # Which form of the attention runs: "math" (below) or one of attention_kernels.KERNELS.
        self.attention_form = attention_kernels.default_form()

    def call(self, x, training=None):
        h = call_unless_identity(self.pre_norm, x, training=training)
        qkv = self.qkv(h)  # (batch, tokens, 3 x heads x dim_head)
        if self.attention_form == "math":
            q, k, v = split_heads(qkv, self.heads)  # each (batch, heads, tokens, dim_head)
            h = merge_heads(ops.matmul(attention_weights(q, k, self.scale), v))
        else:
            h = attention_kernels.KERNELS[self.attention_form](qkv, self.heads, self.scale)
        return x + call_unless_identity(self.out_dropout, self.out(h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim,
            heads=self.heads,
            dim_head=self.dim_head,
            norm=self.norm,
            dropout=self.dropout,
            qkv_bias=self.qkv_bias,
        )
        return config
