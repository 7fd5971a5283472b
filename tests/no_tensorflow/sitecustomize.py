"""Makes TensorFlow look not installed: put this folder first on PYTHONPATH.

Python imports `sitecustomize` at start. The path finder is wrapped so that
`tensorflow*` and `tf_keras` are not found, exactly as on a machine without them
(`importlib.util.find_spec` answers None; torch's import probes rely on that).
"""

import importlib.machinery
import sys

HIDDEN = ("tensorflow", "tensorflow_datasets", "tensorflow_io", "tensorflow_metadata", "tf_keras")


class _WithoutTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return None
        return importlib.machinery.PathFinder.find_spec(name, path, target)


sys.meta_path[:] = [_WithoutTensorFlow if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
