#!/usr/bin/env bash
# The KL-weighting table of docs/objectives.md: the default 784-400-20 VAE on dynamically
# binarised MNIST trained with beta in {0.5, 1, 2, 4}, KL warm-up, cyclical annealing, capacity
# control and free bits, then evaluated by importance sampling (K=5000, first 1,000 test digits).
# Runs land in runs/kl/; a run trained fewer epochs than asked is resumed.
#   PYROVAE_DATA=../shared/data bash benchmarks/kl_weighting_mnist.sh
# then: .venv/bin/python benchmarks/kl_table.py   (diagnostics, sample quality, the table)
set -euo pipefail
THREADS=${THREADS:-1}
EPOCHS=${EPOCHS:-20}
PV=${PV:-.venv/bin/pyrovae}
STEPS_PER_EPOCH=469  # 60,000 / 128

train() {  # run, flags...
  local run=$1; shift
  if [ -f "$run/checkpoint.pt" ]; then
    $PV train --resume "$run" --epochs "$EPOCHS" --threads "$THREADS" --no-progress
  else
    $PV train "$@" --dataset mnist --epochs "$EPOCHS" --seed 0 --threads "$THREADS" --no-progress --out "$run"
  fi
  local name="evaluation-K5000-first1000.json"
  if [ ! -f "$run/$name" ] || [ "$run/checkpoint.pt" -nt "$run/$name" ]; then
    $PV evaluate "$run" --num-samples 5000 --max-datapoints 1000 --threads "$THREADS" --no-progress
  fi
}

half=$((EPOCHS * STEPS_PER_EPOCH / 2))
train runs/kl/beta-1
train runs/kl/beta-0.5 --beta 0.5
train runs/kl/beta-2 --beta 2
train runs/kl/beta-4 --beta 4
train runs/kl/warmup --kl-anneal "linear:$half"                     # 0 -> 1 over the first half
train runs/kl/cyclical --kl-anneal "cyclical:$((half / 2))"          # 4 cycles, rising over half of each
train runs/kl/capacity --capacity "25:$half" --capacity-gamma 30     # C: 0 -> 25 nats over the first half
train runs/kl/free-bits --free-bits 0.5                              # 0.5 nats per dimension, 10 in all
