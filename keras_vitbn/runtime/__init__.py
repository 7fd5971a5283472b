"""How a process runs the models: allocator settings, fit settings per backend, data parallelism.

Entry points opt in (`allocator.tune_for_training`); importing this package changes nothing.
"""

BACKENDS = ("jax", "tensorflow", "torch")  # the Keras backends every command accepts and CI tests
