#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py) on a machine that has JAX and PyTorch with CUDA
# but no Keras, no TensorFlow and no internet. Wheels carried in .whl/ (scripts/gpu_wheels.sh
# downloads them where pip works) are installed offline into a folder of their own first.
#   scripts/gpu_check.sh OUT [gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gpu_check.sh OUT [gpu_check.py options]}"
shift
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
  site="${TMPDIR:-/tmp}/keras_vitbn_site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
exec "$python" scripts/gpu_check.py --out "$out" "$@"
