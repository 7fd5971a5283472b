import keras
from keras import ops

from keras_vitbn.layers.initializers import torch_dense
from keras_vitbn.layers.identity import call_unless_identity, dropout_or_identity
from keras_vitbn.layers.norms import check_norm, make_norm
from keras_vitbn.layers.validation import check_positive, check_rate
from keras_vitbn.performance import attention_kernel

# Every form computes the heads' outputs side by side (batch, tokens, heads x dim_head),
# from the fused q/k/v projection (batch, tokens, 3 x heads x dim_head) or, for
# "matmul", from its input and kernel; see `attention_kernel`.


def _split_qkv(qkv, heads):
    """Three (batch, tokens, heads, dim_head) tensors.

    One split of the fused projection: its gradient is one concatenate on every
    backend (an unstack's is three zero pads and a sum under XLA, index slices'
    three zero-filled copies on torch).
    """
    return [_split_heads(t, heads) for t in ops.split(qkv, 3, axis=-1)]


def _split_heads(t, heads):
    """(batch, tokens, heads x dim_head) -> (batch, tokens, heads, dim_head)."""
    return ops.reshape(t, (ops.shape(t)[0], ops.shape(t)[1], heads, -1))


def _heads_first(t):
    return ops.transpose(t, (0, 2, 1, 3))


def _merge_heads(t):
    """(batch, heads, tokens, dim_head) -> (batch, tokens, heads x dim_head)."""
    batch, heads, tokens, dim_head = ops.shape(t)
    return ops.reshape(_heads_first(t), (batch, tokens, heads * dim_head))


def _fused_attention(qkv, heads, scale):
    q, k, v = _split_qkv(qkv, heads)
    out = ops.dot_product_attention(q, k, v, scale=scale)
    return ops.reshape(out, (ops.shape(qkv)[0], ops.shape(qkv)[1], -1))


def _softmax_weights(q, k, scale):
    """softmax(q k^T * scale) over (batch, heads, tokens, dim_head) q and k; the scale on the
    (tokens x tokens) scores, as the reference, is a quarter of the work of scaling q."""
    return ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)) * scale, axis=-1)


def _weights(qkv, heads, scale):
    """q, k, v as (batch, heads, tokens, dim_head) and softmax(q k^T * scale)."""
    q, k, v = (_heads_first(t) for t in _split_qkv(qkv, heads))
    return q, k, v, _softmax_weights(q, k, scale)


def _sliced_matmul_attention(h, kernel, heads, scale):
    """softmax(q k^T * scale) v as plain matrix products, the same math as
    `ops.dot_product_attention`, from the projection's input `h` and fused `kernel`:
    q, k and v are three products with the kernel's column blocks.

    The same values and the same weights; what differs is the gradient. Splitting the
    fused product's output costs a concatenation of the three (batch, tokens, inner)
    gradients on the way back (10 MB at batch 100: 1-2 ms per block on torch on the
    CPU); slicing the kernel costs one of three (dim, inner) blocks (0.4 MB). In a
    torch profile of the ViT step (depth 6, batch 100) the projection's products and
    that concatenation took 53 + 7 ms per step fused and 43 + 0.5 ms sliced (the
    narrower products' outputs stay in cache).
    """
    q, k, v = (_heads_first(_split_heads(ops.matmul(h, w), heads)) for w in ops.split(kernel, 3, axis=-1))
    return _merge_heads(ops.matmul(_softmax_weights(q, k, scale), v))


def _transposed_matmul(a, b):
    """a^T b over the last two axes, as a broadcast product and a sum, in float32.

    XLA fuses this into one loop. As a dot, XLA on the CPU ran this batched
    17 x 17 by 17 x 64 product 3-4x slower than `a b` (TF 856 vs 293 us, JAX
    722 vs 177 us); the multiply-sum took 390 and 236 us.
    """
    product = ops.cast(a, "float32")[..., :, :, None] * ops.cast(b, "float32")[..., :, None, :]
    return ops.cast(ops.sum(product, axis=-3), a.dtype)


def _xla_cpu_attention(qkv, heads, scale):
    """softmax(q k^T * scale) v as plain matrix products with its gradient written out, for XLA on the CPU.

    Autodiff needs two products that contract over the tokens axis (dk = ds^T q,
    dv = p^T do); XLA runs those slowly on the CPU, so they are `_transposed_matmul`s
    here. The gradient covers the split and the head transposes too, so XLA can
    write the q/k/v gradients into the projection's gradient in one pass. Same
    values; only the gradient's program differs.
    """

    @ops.custom_gradient
    def attend(qkv):
        q, k, v, weights = _weights(qkv, heads, scale)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            d_out = _heads_first(_split_heads(upstream, heads))
            d_weights = ops.matmul(d_out, ops.swapaxes(v, -1, -2))
            # softmax gradient, then the scale of the scores
            d_scores = weights * (d_weights - ops.sum(d_weights * weights, axis=-1, keepdims=True)) * scale
            d_qkv = (
                ops.matmul(d_scores, k),
                _transposed_matmul(d_scores, q),
                _transposed_matmul(weights, d_out),
            )
            return ops.concatenate([_merge_heads(g) for g in d_qkv], axis=-1)

        return _merge_heads(ops.matmul(weights, v)), grad

    return attend(qkv)


# The forms that take the fused projection's output; "matmul" takes its input and kernel.
_FUSED_PROJECTION_KERNELS = {"fused": _fused_attention, "xla_cpu": _xla_cpu_attention}


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
        h = call_unless_identity(self.pre_norm, x, training=training)
        scale = self.dim_head**-0.5
        form = attention_kernel(h)
        if form == "matmul":
            h = _sliced_matmul_attention(h, self.qkv.kernel, self.heads, scale)
        else:
            h = _FUSED_PROJECTION_KERNELS[form](self.qkv(h), self.heads, scale)
        return x + call_unless_identity(self.out_dropout, self.out(h), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            dim=self.dim, heads=self.heads, dim_head=self.dim_head, norm=self.norm, dropout=self.dropout
        )
        return config
