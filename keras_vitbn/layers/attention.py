import keras
from keras import ops

from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.norms import check_norm, make_norm
from keras_vitbn.layers.validation import check_positive, check_rate
from keras_vitbn.performance import attention_kernel


def _heads_first(q, k, v):
    return (ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))


def _attention(q, k, v, scale):
    """softmax(q k^T * scale) v on (batch, tokens, heads, dim_head): the same math as
    `ops.dot_product_attention`, as plain matrix products."""
    q, k, v = _heads_first(q, k, v)
    weights = ops.softmax(ops.matmul(q * scale, ops.swapaxes(k, -1, -2)), axis=-1)
    return ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3))


def _transposed_matmul(a, b):
    """a^T b over the last two axes, as a broadcast product and a sum, in float32.

    XLA fuses this into one loop. As a dot, XLA on the CPU ran this batched
    17 x 17 by 17 x 64 product 3-4x slower than `a b` (TF 856 vs 293 us, JAX
    722 vs 177 us); the multiply-sum took 390 and 236 us.
    """
    product = ops.cast(a, "float32")[..., :, :, None] * ops.cast(b, "float32")[..., :, None, :]
    return ops.cast(ops.sum(product, axis=-3), a.dtype)


def _attention_xla_cpu(q, k, v, scale):
    """`_attention` with its gradient written out, for XLA on the CPU.

    Autodiff of `_attention` needs two products that contract over the tokens
    axis (dk = ds^T q, dv = p^T do); XLA runs those slowly on the CPU, so they
    are `_transposed_matmul`s here. Same values; only the gradient's program differs.
    """

    @ops.custom_gradient
    def attend(q, k, v):
        weights = ops.softmax(ops.matmul(q * scale, ops.swapaxes(k, -1, -2)), axis=-1)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            d_weights = ops.matmul(upstream, ops.swapaxes(v, -1, -2))
            # softmax gradient, then the scale of the scores
            d_scores = weights * (d_weights - ops.sum(d_weights * weights, axis=-1, keepdims=True)) * scale
            return (
                ops.matmul(d_scores, k),
                _transposed_matmul(d_scores, q),
                _transposed_matmul(weights, upstream),
            )

        return ops.matmul(weights, v), grad

    return ops.transpose(attend(*_heads_first(q, k, v)), (0, 2, 1, 3))


_KERNELS = {
    "fused": lambda q, k, v, scale: ops.dot_product_attention(q, k, v, scale=scale),
    "matmul": _attention,
    "xla_cpu": _attention_xla_cpu,
}


def dropout_or_identity(rate, name, dtype):
    if rate:
        return keras.layers.Dropout(rate, name=name, dtype=dtype)
    return keras.layers.Identity(name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_vitbn")
class AttentionBlock(keras.layers.Layer):
    """Pre-norm multi-head self-attention with a residual connection.

    `x + out(attention(qkv(norm(x))))`, with one fused bias-free q/k/v projection
    to 3 x `heads` x `dim_head` (the inner width is independent of `dim`, as in
    the reference: 8 x 64 = 512 with dim 64) and scale `dim_head ** -0.5`.
    The attention is `keras.ops.dot_product_attention`, or the same math as
    plain matrix products where that is faster, with a hand-written gradient
    under XLA on the CPU (see `keras_vitbn.performance.attention_kernel`).

    Args:
        dim: int. Token width (input and output).
        heads: int. Number of attention heads. Defaults to 8.
        dim_head: int. Width of each head. Defaults to 64.
        norm: str. Pre-norm, `layernorm`, `batchnorm` or `none`. Defaults to `layernorm`.
        dropout: float. Dropout after the output projection. Defaults to 0.

    Example:
    >>> block = AttentionBlock(dim=64, heads=8, dim_head=64)
    >>> block(keras.ops.zeros((2, 17, 64))).shape
    (2, 17, 64)
    """

    def __init__(self, dim, heads=8, dim_head=64, norm="layernorm", dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive(dim=dim, heads=heads, dim_head=dim_head)
        check_norm(norm)
        check_rate(dropout=dropout)
        self.dim = dim
        self.heads = heads
        self.dim_head = dim_head
        self.norm = norm
        self.dropout = dropout
        self.inner_dim = heads * dim_head

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(f"AttentionBlock(dim={self.dim}) got tokens of width {input_shape[-1]}")
        self.pre_norm = make_norm(self.norm, layer_name="norm", dtype=self.dtype_policy)
        self.pre_norm.build(input_shape)
        self.qkv = torch_dense(3 * self.inner_dim, self.dim, use_bias=False, name="qkv", dtype=self.dtype_policy)
        self.qkv.build(input_shape)
        self.out = torch_dense(self.dim, self.inner_dim, name="out", dtype=self.dtype_policy)
        self.out.build((*input_shape[:-1], self.inner_dim))
        self.out_dropout = dropout_or_identity(self.dropout, "out_dropout", self.dtype_policy)

    def call(self, x, training=None):
        h = self.pre_norm(x, training=training)
        qkv = self.qkv(h)
        batch, tokens = ops.shape(qkv)[0], ops.shape(qkv)[1]
        # One split of the fused projection: its gradient is one concatenate on every
        # backend (an unstack's is three zero pads and a sum under XLA, index slices'
        # three zero-filled copies on torch).
        q, k, v = (
            ops.reshape(t, (batch, tokens, self.heads, self.dim_head)) for t in ops.split(qkv, 3, axis=-1)
        )
        h = _KERNELS[attention_kernel(q)](q, k, v, self.dim_head**-0.5)
        h = ops.reshape(h, (batch, tokens, self.inner_dim))
        h = self.out_dropout(self.out(h), training=training)
        return x + h

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim, heads=self.heads, dim_head=self.dim_head, norm=self.norm, dropout=self.dropout
        )
        return config
