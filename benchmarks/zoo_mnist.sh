#!/usr/bin/env bash
# The zoo's MNIST results of docs/zoo.md: the CVAE tutorial's table (baseline network and CVAE for
# 1, 2 and 3 given quadrants; grey targets, Bernoulli cross-entropy, as Pyro's examples/cvae), the
# label-conditioned CVAE, and the mixture VAE. Runs land in runs/zoo/; a run trained fewer epochs
# than asked is resumed, an evaluation is redone when its checkpoint is newer.
#   PYROVAE_DATA=../shared/data bash benchmarks/zoo_mnist.sh
# M2 and JointVAE: the commands are in docs/zoo.md (their runs take hours on 2 cores).
set -euo pipefail
THREADS=${THREADS:-1}
PV=${PV:-.venv/bin/pyrovae}

train() {  # run, epochs, flags...
  local run=$1 epochs=$2; shift 2
  if [ -f "$run/checkpoint.pt" ]; then
    $PV train --resume "$run" --epochs "$epochs" --threads "$THREADS" --no-progress
  else
    $PV train "$@" --dataset mnist --epochs "$epochs" --seed 0 --threads "$THREADS" --no-progress --out "$run"
  fi
}

evaluate() {  # run, K, points ("" for the whole test split)
  local run=$1 k=$2 points=$3 name="evaluation-K$2${3:+-first$3}.json"
  if [ ! -f "$run/$name" ] || [ "$run/checkpoint.pt" -nt "$run/$name" ]; then
    $PV evaluate "$run" --num-samples "$k" ${points:+--max-datapoints "$points"} --threads "$THREADS" --no-progress
  fi
}

for q in 1 2 3; do
  for m in quadrant-nn cvae; do
    train runs/zoo/$m-q$q 30 --model $m --model-opt quadrants=$q --data-space grey --batch-size 128 --lr 1e-3
    evaluate runs/zoo/$m-q$q 5000 1000    # K=5000 on the first 1,000 test digits
    evaluate runs/zoo/$m-q$q 500 ""       # K=500 on all 10,000
  done
done
train runs/zoo/cvae-label 30 --model cvae-label
evaluate runs/zoo/cvae-label 5000 1000
train runs/zoo/mixture 30 --model mixture
evaluate runs/zoo/mixture 5000 1000
