"""Commands beside the core: checkpoint conversion, prediction, evaluation, the benchmark.

Each is a module with a `main` (see `[project.scripts]` in pyproject.toml); `reference` holds the
plain-PyTorch model they compare against.
"""
