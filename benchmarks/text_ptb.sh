#!/usr/bin/env bash
# The Penn Treebank runs of docs/text.md: the LSTM language model and the sentence VAE, the same code,
# data, widths, optimiser, batch size and epochs; then the table (benchmarks/text_ptb.py).
# The published table used three epochs of each (the runs were started with --epochs 6, stopped after
# their first checkpoint, and continued with `pyrovae train --resume RUN --epochs 3`).
set -euo pipefail
export OMP_NUM_THREADS=1 PYROVAE_DATA=${PYROVAE_DATA:-../shared/data}
EPOCHS=${EPOCHS:-3}
COMMON=(--dataset ptb --epochs "$EPOCHS" --batch-size 64 --lr 1e-3 --clip-norm 5 --seed 0 --threads 1 --no-progress
        --hidden 200 --model-opt embed_dim=200)
pyrovae train "${COMMON[@]}" --model text-lm --out runs/text/ptb-lm &
pyrovae train "${COMMON[@]}" --model text-vae --latent-dim 32 --free-bits 0.125 --kl-anneal linear:1300 \
    --out runs/text/ptb-vae &
wait
pyrovae train --dataset ptb --model text-bow --latent-dim 32 --hidden 256 --epochs 3 --batch-size 64 --lr 1e-3 \
    --clip-norm 5 --seed 0 --threads 1 --no-progress --out runs/text/ptb-bow
pyrovae evaluate runs/text/ptb-bow --num-samples 500 --max-datapoints 500 --threads 1
python benchmarks/text_ptb.py --lm runs/text/ptb-lm --vae runs/text/ptb-vae --subset 1000 -K 500 --workers 2
