"""Fast training settings per backend, thread control, and the FLOP count of the ViT models.

`fit_settings(backend)` is what the trainers should pass to `model.compile`:
the fastest correct settings measured with `python -m keras_vitbn.benchmark`
on each backend (see the numbers in the docstring of `FIT_SETTINGS`).

Example:
>>> model.compile(optimizer="adam", loss=loss, **fit_settings())
"""

import os

# Chosen with `python -m keras_vitbn.benchmark` and interleaved A/B runs (ViTBNFFN, depth 6,
# batch 100, 2-core AMD EPYC Zen 4 CPU, shared and heavily loaded when measured):
# - tensorflow: Keras' "auto" switches XLA off on CPU-only machines; XLA with
#   steps_per_execution=8 trained 3.2x faster than that default (221 vs 70 images/s,
#   one thread each, A/B in one process); XLA alone 2.2x, steps_per_execution alone 2.3x.
# - jax: XLA jit (Keras' default there); steps_per_execution > 1 saves the per-step
#   Python/callback work of `fit` (each step is still one jitted call); on this CPU the
#   difference is within noise (ViT 499 with 8 vs 511 images/s with 1, interleaved).
# - torch: eager. torch.compile (jit_compile=True) was slower: ViTBNFFN 658 vs 710 images/s,
#   interleaved, 7 windows (torch 2.13.0); "auto" means eager anyway, and the
#   torch backend only supports steps_per_execution=1. Measured again on 2026-12-01
#   (in-process, interleaved, 8 windows of 20 steps): ViT 821 compiled vs 682 eager,
#   ViTBNFFN 639 vs 629, after 100-160 s of compiling each model (Dynamo's recompile
#   limit raised to 64; at its default of 8 ViTBNFFN fell back to eager frames and
#   trained at 547 vs 588). For the ViT that pays back after about 8 epochs of 60,000
#   images here, for ViTBNFFN never, so eager stays the default; the trainers'
#   `--jit-compile true` is the option for long ViT runs.
FIT_SETTINGS = {
    "jax": {"jit_compile": True, "steps_per_execution": 8},
    "tensorflow": {"jit_compile": True, "steps_per_execution": 8},
    "torch": {"jit_compile": False, "steps_per_execution": 1},
}

# Keras' own defaults, for comparison ("auto" means eager on torch, graph without XLA on a
# CPU-only TensorFlow, XLA on jax).
KERAS_DEFAULT_SETTINGS = {"jit_compile": "auto", "steps_per_execution": 1}


def fit_settings(backend=None):
    """The fastest correct `model.compile` keyword arguments for a backend.

    Args:
        backend: str or None. "jax", "tensorflow" or "torch"; None means the
            current Keras backend.

    Returns:
        dict with `jit_compile` and `steps_per_execution`.

    Example:
    >>> fit_settings("torch")
    {'jit_compile': False, 'steps_per_execution': 1}
    """
    if backend is None:
        import keras

        backend = keras.backend.backend()
    if backend not in FIT_SETTINGS:
        raise ValueError(f"no fit settings for backend {backend!r}: choose one of {', '.join(FIT_SETTINGS)}")
    return dict(FIT_SETTINGS[backend])


ATTENTION_KERNELS = ("fused", "matmul", "xla_cpu")


def attention_kernel(tensor=None):
    """Which form of the same attention math is fastest here (see `ATTENTION_KERNELS`).

    - `fused`: `keras.ops.dot_product_attention`. On a GPU (every backend).
    - `xla_cpu`: plain matrix products with a hand-written gradient, under XLA on
      the CPU (JAX; TensorFlow inside `jit_compile=True`). XLA ran the two
      gradient products that contract over the tokens axis 3-4x slower than the
      others; written as a multiply-sum they are 2-3x faster. Full benchmark
      (ViT, depth 6, batch 100, 2-core AMD EPYC, 470 GFLOP/s matmul peak), images/s before ->
      after: TensorFlow 1491 -> 1799, JAX (2 devices) 1250 -> 1372; ViTBNFFN
      TensorFlow 1673 -> 1762, JAX 1339 -> 1367.
    - `matmul`: plain matrix products, autodiff, with q, k and v projected by
      the fused kernel's three column blocks (no split of the projection's
      output, whose gradient is a large concatenation). torch on the CPU, where
      `scaled_dot_product_attention` picks PyTorch's CPU flash-attention kernel
      (a ViTBNFFN training step 1.3x slower: 455 vs 586 images/s), and
      TensorFlow on the CPU without XLA, where the multiply-sum would not be fused.
      (TensorFlow's XLA had run the fused form's products in its own dot loops,
      a quarter of the step: ViT 949 -> 983 images/s as plain matmuls.)

    Args:
        tensor: the attention's input, whose device decides on torch; None means
            where the torch backend puts new tensors.

    Returns:
        str, one of `ATTENTION_KERNELS`.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "xla_cpu" if jax.default_backend() == "cpu" else "fused"
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return "fused"
        return "xla_cpu" if _tracing_for_xla() else "matmul"
    if backend != "torch":
        return "fused"
    device = getattr(tensor if tensor is not None else keras.ops.zeros(()), "device", None)
    return "matmul" if getattr(device, "type", "cpu") == "cpu" else "fused"


def _tracing_for_xla():
    """Whether TensorFlow is tracing a `tf.function(jit_compile=True)` right now."""
    import tensorflow as tf

    try:
        from tensorflow.python.ops import control_flow_util  # no public API tells
    except ImportError:  # another TensorFlow layout: plain autodiff, the same values
        return False
    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def thread_environment(threads):
    """Environment variables that pin the libraries' CPU thread pools to `threads` threads.

    Set them before importing TensorFlow, JAX or PyTorch (e.g. in a subprocess's env).
    XLA has no flag for a thread count: with `threads > 1` it uses every CPU the
    process may run on (limit those with `taskset`), with 1 a single thread. The
    user's own `XLA_FLAGS` come first and are kept. (`intra_op_parallelism_threads=N`,
    which this function used to add, is not an XLA flag: XLA silently dropped it and
    every flag after it.)
    """
    threads = int(threads)
    return {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OPENBLAS_NUM_THREADS": str(threads),
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_NUM_INTEROP_THREADS": "1",
        "XLA_FLAGS": " ".join(
            f
            for f in (os.environ.get("XLA_FLAGS", ""), f"--xla_cpu_multi_thread_eigen={str(threads > 1).lower()}")
            if f
        ),
    }


def set_threads(threads, backend=None):
    """Sets the intra-op thread count of the libraries already importable in this process."""
    threads = int(threads)
    if backend in (None, "torch"):
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
    if backend in (None, "tensorflow"):
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except (ImportError, RuntimeError):  # RuntimeError: TF already initialised
            pass


def vit_forward_flops(
    depth, image_size=28, patch_size=7, channels=1, num_classes=10, dim=64, heads=8, dim_head=64, mlp_dim=128
):
    """Multiply-add FLOPs (2 per multiply-accumulate) of one image through a ViT forward pass.

    Counts the matrix products (patch projection, q/k/v, q.k^T, attention.v, output
    projection, the two FFN layers, the head), the usual convention for model FLOPs
    utilisation; norms, softmax, GELU and residuals are a few percent more and not counted.

    Example:
    >>> vit_forward_flops(6)
    33733888
    """
    patches = (image_size // patch_size) ** 2
    tokens = patches + 1
    inner = heads * dim_head
    patch_dim = patch_size * patch_size * channels
    per_block = (
        2 * tokens * dim * 3 * inner  # fused q/k/v
        + 2 * heads * tokens * tokens * dim_head * 2  # q.k^T and attention.v
        + 2 * tokens * inner * dim  # output projection
        + 2 * tokens * dim * mlp_dim * 2  # FFN
    )
    return 2 * patches * patch_dim * dim + depth * per_block + 2 * dim * num_classes


def vit_training_flops(depth, **sizes):
    """FLOPs of one image through a training step: forward + backward, backward = 2 x forward."""
    return 3 * vit_forward_flops(depth, **sizes)
