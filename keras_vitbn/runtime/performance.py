"""Fast training settings per backend, thread control, and the FLOP count of the ViT models.

`fit_settings(backend)` is what the trainers should pass to `model.compile`:
the fastest correct settings measured with `python -m keras_vitbn.tools.benchmark`
on each backend (see the comment above `FIT_SETTINGS`).

Example:
>>> model.compile(optimizer="adam", loss=loss, **fit_settings())
"""

import os

# Chosen with `python -m keras_vitbn.tools.benchmark` (alternated A/B runs; docs/performance.md):
# - tensorflow: Keras' "auto" switches XLA off on CPU-only machines. XLA and
#   steps_per_execution=8 each cut the per-step overhead; together they trained
#   about 3x faster than Keras' default.
# - jax: XLA jit (Keras' default there); steps_per_execution > 1 saves the per-step
#   Python and callback work of `fit` (each step is still one jitted call).
# - torch: eager. torch.compile (jit_compile=True) compiles each model for minutes and
#   pays back only for the ViT after several long epochs, never for ViTBNFFN, so eager
#   stays the default (the trainers' `--jit-compile true` is the option for long ViT runs);
#   the torch backend supports only steps_per_execution=1.
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
