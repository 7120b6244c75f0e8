#!/usr/bin/env bash
# Burda et al. (2016) Table 1 setting on dynamically binarised MNIST: VAE (k=1), IWAE (k=5),
# IWAE (k=50), architecture q: 784-200-200->50, p: 50-200-200->784, tanh, batch 100, Adam;
# test log p(x) with K=5000 importance samples on all 10,000 test images. Every epoch is
# checkpointed, so rerunning this script (larger EPOCHS or MAX_MINUTES) resumes each run.
#
#   PYROVAE_DATA=../shared/data EPOCHS=100 bash benchmarks/iwae_mnist.sh          # CPU, in turn
#   DEVICE=cuda PARALLEL=1 MAX_MINUTES=6 bash benchmarks/iwae_mnist.sh            # GPU, together
#   python benchmarks/iwae_table.py     # writes the table into docs/benchmarks.md
set -euo pipefail
EPOCHS=${EPOCHS:-3280}          # Burda et al.'s budget; MAX_MINUTES usually stops us first
MAX_MINUTES=${MAX_MINUTES:-}
OUT=${OUT_DIR:-benchmarks/out}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
PARALLEL=${PARALLEL:-0}
read -r -a PYROVAE <<<"${PYROVAE:-.venv/bin/pyrovae}"
budget=()
[ -n "$MAX_MINUTES" ] && budget=(--max-minutes "$MAX_MINUTES")
common=(--dataset mnist --hidden 200,200 --activation tanh --latent-dim 50 --batch-size 100
        --lr 1e-3 --lr-decay 0.99 --threads "$THREADS" --device "$DEVICE" --no-progress)

one() {  # name objective k
  local run="$OUT/burda-$1"
  if [ -f "$run/checkpoint.pt" ]; then
    "${PYROVAE[@]}" train --resume "$run" --epochs "$EPOCHS" --threads "$THREADS" --no-progress "${budget[@]}"
  else
    "${PYROVAE[@]}" train "${common[@]}" --epochs "$EPOCHS" "${budget[@]}" \
      --objective "$2" --particles "$3" --out "$run"
  fi
  "${PYROVAE[@]}" evaluate "$run" --num-samples 5000 --threads "$THREADS" --device "$DEVICE" --no-progress
}

mkdir -p "$OUT"
for spec in "vae-k1 elbo 1" "iwae-k5 iwae 5" "iwae-k50 iwae 50"; do
  read -r name objective k <<<"$spec"
  if [ "$PARALLEL" = 1 ]; then
    one "$name" "$objective" "$k" >"$OUT/burda-$name.log" 2>&1 &
  else
    one "$name" "$objective" "$k"
  fi
done
wait
