"""Other forms of `AttentionBlock`'s softmax(q k^T * scale) v, and the switch that picks one per layer.

`AttentionBlock.call` holds the math itself (the `"math"` form: plain matrix
products and autodiff). The forms here compute the same values from the same
fused projection, `qkv(x)` of shape (batch, tokens, 3 x heads x dim_head), and
return (batch, tokens, heads x dim_head); they differ in speed:

- `"fused"`: `keras.ops.dot_product_attention`, the fast kernel on a GPU.
- `"xla_cpu"`: plain matrix products with a hand-written gradient, for XLA on
  the CPU (JAX, and TensorFlow under `jit_compile=True`, which the trainers use).
  Autodiff's two products that contract over the tokens axis (dk = ds^T q,
  dv = p^T do) are batched products that XLA runs several times slower on the
  CPU than the others; as a multiply-sum XLA fuses them into one loop.
- `"math"`: the plain form. torch on the CPU, where `scaled_dot_product_attention`
  picks a flash-attention kernel that trains slower at these small sizes.

`default_form()` is the switch, like timm's `use_fused_attn()`: read once, when a
layer is built, from the backend and the devices; the `KERAS_VITBN_ATTENTION`
environment variable overrides it (e.g. `math` for TensorFlow trained without XLA,
where the multiply-sum is not fused).
"""

import os

import keras
from keras import ops

FORMS = ("math", "fused", "xla_cpu")
ENV = "KERAS_VITBN_ATTENTION"


def default_form():
    """The fastest form here, or `KERAS_VITBN_ATTENTION` when set: one of `FORMS`."""
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen:
        if chosen not in FORMS:
            raise ValueError(f"{ENV}={chosen!r} is not an attention form: set it to one of {', '.join(FORMS)}")
        return chosen
    if keras.backend.backend() == "torch":
        # No keras.distribution on torch: where new tensors go ("meta" while tracing counts as the CPU).
        device = getattr(getattr(ops.zeros(()), "device", None), "type", "cpu")
        return "math" if device in ("cpu", "meta") else "fused"
    if any(not device.lower().startswith("cpu") for device in keras.distribution.list_devices()):
        return "fused"
    return "xla_cpu"


def split_heads(qkv, heads):
    """The fused projection -> q, k, v, each (batch, heads, tokens, dim_head).

    One split of the projection: its gradient is one concatenate on every
    backend (an unstack's is three zero pads and a sum under XLA, index slices'
    three zero-filled copies on torch).
    """
    return [_heads_first(_per_head(t, heads)) for t in ops.split(qkv, 3, axis=-1)]


def merge_heads(t):
    """(batch, heads, tokens, dim_head) -> (batch, tokens, heads x dim_head)."""
    batch, heads, tokens, dim_head = ops.shape(t)
    return ops.reshape(_heads_first(t), (batch, tokens, heads * dim_head))


def _per_head(t, heads):
    """(batch, tokens, heads x dim_head) -> (batch, tokens, heads, dim_head)."""
    return ops.reshape(t, (ops.shape(t)[0], ops.shape(t)[1], heads, -1))


def _heads_first(t):
    """Swaps the tokens and heads axes (its own inverse)."""
    return ops.transpose(t, (0, 2, 1, 3))


def attention_weights(q, k, scale):
    """softmax(q k^T * scale) over the last axis. The scale goes on the (tokens x tokens)
    scores, as in the reference: a quarter of the work of scaling q at 17 tokens and dim_head 64."""
    return ops.softmax(ops.matmul(q, ops.swapaxes(k, -1, -2)) * scale, axis=-1)


def fused_attention(qkv, heads, scale):
    """`keras.ops.dot_product_attention` on the (batch, tokens, heads, dim_head) layout it takes."""
    q, k, v = (_per_head(t, heads) for t in ops.split(qkv, 3, axis=-1))
    out = ops.dot_product_attention(q, k, v, scale=scale)
    return ops.reshape(out, (ops.shape(qkv)[0], ops.shape(qkv)[1], -1))


def _transposed_matmul(a, b):
    """a^T b over the last two axes, as a broadcast product and a sum, in float32.

    XLA fuses this into one loop; as a dot, XLA on the CPU ran this batched
    17 x 17 by 17 x 64 product 3-4x slower than `a b`.
    """
    product = ops.cast(a, "float32")[..., :, :, None] * ops.cast(b, "float32")[..., :, None, :]
    return ops.cast(ops.sum(product, axis=-3), a.dtype)


def xla_cpu_attention(qkv, heads, scale):
    """The math form's values, with its gradient written out for XLA on the CPU.

    The gradient covers the split and the head transposes too, so XLA writes the
    q/k/v gradients into the projection's gradient in one pass, and its two
    products over the tokens axis are `_transposed_matmul`s.
    """

    @ops.custom_gradient
    def attend(qkv):
        q, k, v = split_heads(qkv, heads)
        weights = attention_weights(q, k, scale)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            d_out = _heads_first(_per_head(upstream, heads))
            d_weights = ops.matmul(d_out, ops.swapaxes(v, -1, -2))
            # the softmax's gradient, then the scale of the scores
            d_scores = weights * (d_weights - ops.sum(d_weights * weights, axis=-1, keepdims=True)) * scale
            d_qkv = (ops.matmul(d_scores, k), _transposed_matmul(d_scores, q), _transposed_matmul(weights, d_out))
            return ops.concatenate([merge_heads(g) for g in d_qkv], axis=-1)

        return merge_heads(ops.matmul(weights, v)), grad

    return attend(qkv)


# The forms other than "math", which `AttentionBlock.call` writes out.
KERNELS = {"fused": fused_attention, "xla_cpu": xla_cpu_attention}
