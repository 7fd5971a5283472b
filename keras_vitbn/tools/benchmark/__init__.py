"""Training-speed benchmark of the Keras models on every backend against a plain-PyTorch yardstick.

    python -m keras_vitbn.tools.benchmark                       # the article's configuration, all backends
    python -m keras_vitbn.tools.benchmark --smoke               # a few steps at depth 1: a CI check
    python -m keras_vitbn.tools.benchmark.profile --backend tensorflow   # time per operation of one step

For each model (ViTBNFFN and ViT by default, depth 6, batch 100, 28x28x1, Adam)
and each backend, a subprocess (threads pinned, `KERAS_BACKEND` set) sets up
alone, then all of a model's subprocesses take turns, window by window, so the
backends share the machine's good and bad minutes. Each measures: training
images/s of `fit` on in-memory batches (median of timed windows after a
warm-up epoch), the first-step loss, compile/warm-up time, a
real epoch through the trainers' input pipeline with the article's
augmentation, inference images/s at batch 5000, peak memory, and the float32
matmul peak of the machine. The yardstick is the same model and training step
written directly in PyTorch (`keras_vitbn.tools.reference.torch_vit`), started from
the same weights; every backend must reproduce its first-step loss.
"""

from keras_vitbn.tools.benchmark.run import BACKENDS, MODELS, format_markdown, run_benchmark, write_results

__all__ = ["BACKENDS", "MODELS", "format_markdown", "run_benchmark", "write_results"]
