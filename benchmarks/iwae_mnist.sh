#!/usr/bin/env bash
# Burda et al. (2016) Table 1 setting on dynamically binarised MNIST: VAE (k=1), IWAE (k=5),
# IWAE (k=50), architecture q: 784-200-200->50, p: 50-200-200->784, tanh; test log p(x) with
# K=5000 importance samples. Runs one model after another on one CPU thread; each epoch is
# checkpointed, so rerunning this script (with a larger EPOCHS) resumes where it stopped.
#
#   PYROVAE_DATA=../shared/data EPOCHS=100 bash benchmarks/iwae_mnist.sh
#   python benchmarks/iwae_table.py     # writes the table into docs/benchmarks.md
set -euo pipefail
EPOCHS=${EPOCHS:-100}
OUT=${OUT:-benchmarks/out}
THREADS=${THREADS:-1}
PYROVAE=${PYROVAE:-.venv/bin/pyrovae}
common=(--dataset mnist --hidden 200,200 --activation tanh --latent-dim 50 --batch-size 100
        --lr 1e-3 --lr-decay 0.99 --epochs "$EPOCHS" --threads "$THREADS" --no-progress)
for spec in "vae-k1 elbo 1" "iwae-k5 iwae 5" "iwae-k50 iwae 50"; do
  read -r name objective k <<<"$spec"
  run="$OUT/burda-$name"
  if [ -f "$run/checkpoint.pt" ]; then
    $PYROVAE train --resume "$run" --epochs "$EPOCHS" --threads "$THREADS" --no-progress
  else
    $PYROVAE train "${common[@]}" --objective "$objective" --particles "$k" --out "$run"
  fi
  $PYROVAE evaluate "$run" --num-samples 5000 --threads "$THREADS" --no-progress
done
