#!/usr/bin/env bash
# The article-scale evidence in results/, in the order that answers most soonest.
#
#   bash experiments/evidence.sh            # train what is missing, then rewrite every report
#   bash experiments/evidence.sh --report   # only rewrite the reports from results/
#
# Every step is resumable: a run whose results are in results/ (committed or not) is never
# trained again, and an interrupted run resumes from its last epoch on the same machine.
# Runs train on TensorFlow, the fastest backend on these CPUs (the benchmark's table in
# docs/benchmark.md); each run's runner.json records the backend, the CPU and the load.
# Data: KERAS_VITBN_DATA, else ../shared/data beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${KERAS_VITBN_DATA:-$(cd .. && pwd)/shared/data}
export KERAS_VITBN_DATA=$DATA TF_CPP_MIN_LOG_LEVEL=3
REPORT_ONLY=${1:-}

experiment() {  # experiment NAME DATASET CONFIG_ARG [runner flags...]
  local name=$1 dataset=$2 arg=$3; shift 3
  local flags=(--config "experiments/$name.py:$arg" --out "results/$name/$dataset"
               --cache-dir "results/$name/$dataset/runs")
  "$PY" -m keras_vitbn.experiments "${flags[@]}" --backend tensorflow "$@"
}

cross_backend_runs() {  # cross_backend_runs [runner flags...]: the cell on JAX and PyTorch
  for backend in jax torch; do
    "$PY" -m keras_vitbn.experiments --backend "$backend" \
      --config experiments/depth_sweep.py:data=fashion_mnist --depths 6 --lrs 0.005 --seeds 1 \
      --out "results/cross_backend/fashion_mnist/$backend" \
      --cache-dir results/depth_sweep/fashion_mnist/runs "$@"
  done
}

lr_search() {  # lr_search [search flags...]: 20,000 training and 5,000 validation images
  "$PY" tuning/lr_per_depth.py --preset fashion_mnist --data-dir "$DATA/fashion-mnist" \
    --models vit vit_bnffn --depths 1 2 3 4 5 6 7 8 --tuner grid \
    --lr-grid 0.0001 0.0003 0.001 0.003 0.01 --epochs 5 \
    --train-subset 25000 --validation-split 0.2 --output-dir results/lr_per_depth/fashion_mnist "$@"
}

if [ "$REPORT_ONLY" != "--report" ]; then
  # 1. Seed 0 of both depth sweeps: whole curves over depth for both learning rates.
  experiment depth_sweep fashion_mnist data=fashion_mnist --seeds 1
  experiment depth_sweep mnist data=mnist_offline --seeds 1
  # 2. MNIST seeds 1 and 2: 5,000 training images make its grid a twelfth of Fashion-MNIST's
  #    time, so one dataset has its intervals within hours.
  experiment depth_sweep mnist data=mnist_offline
  # 3. The MLP baselines (article Figures 1-3), cheap.
  experiment mlp_baseline fashion_mnist data=fashion_mnist
  experiment mlp_baseline mnist data=mnist_offline
  # 4. The cross-backend cell: ViT and ViTBNFFN, depth 6, lr 0.005, seed 0 on JAX and PyTorch
  #    (TensorFlow's is in the sweep); runs live beside the sweep's, keyed by backend.
  cross_backend_runs
  # 5. Fashion-MNIST seeds 1 and 2: its intervals (about 10 CPU hours).
  experiment depth_sweep fashion_mnist data=fashion_mnist
  # 6. Learning rate per depth (keras-tuner grid).
  lr_search
fi

# Reports from results/ alone (no training): the full grids, missing cells listed.
experiment depth_sweep fashion_mnist data=fashion_mnist --report-only
experiment depth_sweep mnist data=mnist_offline --report-only
experiment mlp_baseline fashion_mnist data=fashion_mnist --report-only
experiment mlp_baseline mnist data=mnist_offline --report-only
cross_backend_runs --report-only
lr_search --report-only
"$PY" -m keras_vitbn.experiments.cross_backend --runs results/depth_sweep/fashion_mnist/runs \
  --model vit_bnffn --depth 6 --lr 0.005 --seed 0 --out results/cross_backend/fashion_mnist
