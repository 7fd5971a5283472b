#!/usr/bin/env bash
# Downloads into .whl/ the pure-Python and small wheels that scripts/gpu_check.sh installs
# offline on a GPU machine that has JAX, PyTorch and Keras' other needs but not Keras itself.
# Versions from constraints.txt; PY_VERSION is the GPU machine's Python (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" constraints.txt; }
python="${PYTHON:-.venv/bin/python}"
"$python" -m pip download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "$(pin keras)" "$(pin namex)" "$(pin optree)"
ls -l .whl
