#!/usr/bin/env bash
# The mixture VAE (class enumerated) on MNIST, dynamically binarised: train, then log p(x) by
# importance sampling with the class summed out in every weight; clustering.json holds the
# unsupervised clustering accuracy on the 10,000 test digits.
#   PYROVAE_DATA=../shared/data bash benchmarks/mixture_mnist.sh [EPOCHS] [K] [POINTS]
set -euo pipefail
EPOCHS=${1:-30}; K=${2:-5000}; POINTS=${3:-1000}; THREADS=${THREADS:-1}
PV=${PV:-.venv/bin/pyrovae}
run=runs/zoo/mixture
if [ ! -f "$run/checkpoint.pt" ]; then
  $PV train --model mixture --dataset mnist --epochs "$EPOCHS" --seed 0 --threads "$THREADS" --no-progress \
    --out "$run" --max-minutes "${MAX_MINUTES:-12}"
fi
$PV evaluate "$run" --num-samples "$K" --max-datapoints "$POINTS" --threads "$THREADS" --no-progress
