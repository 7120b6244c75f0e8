#!/usr/bin/env bash
# The CVAE tutorial's table on MNIST (Pyro examples/cvae): for 1, 2 and 3 given quadrants, the
# baseline network and the CVAE trained on the 60,000 training digits (grey values, Bernoulli
# cross-entropy as in the tutorial), scored on the test digits by importance sampling.
#   PYROVAE_DATA=../shared/data bash benchmarks/cvae_mnist.sh [EPOCHS] [K] [POINTS]
set -euo pipefail
EPOCHS=${1:-30}; K=${2:-5000}; POINTS=${3:-1000}; THREADS=${THREADS:-1}
PV=${PV:-.venv/bin/pyrovae}
for q in 1 2 3; do
  for m in quadrant-nn cvae; do
    run=runs/zoo/$m-q$q
    if [ ! -f "$run/checkpoint.pt" ]; then
      $PV train --model $m --model-opt quadrants=$q --dataset mnist --data-space grey --epochs "$EPOCHS" \
        --batch-size 128 --lr 1e-3 --seed 0 --threads "$THREADS" --no-progress --out "$run" \
        --max-minutes "${MAX_MINUTES:-12}"
    fi
    $PV evaluate "$run" --num-samples "$K" --max-datapoints "$POINTS" --threads "$THREADS" --no-progress
  done
done
