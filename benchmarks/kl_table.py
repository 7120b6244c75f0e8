"""The KL-weighting table of docs/objectives.md, from the runs of benchmarks/kl_weighting_mnist.sh.

For each run in runs/kl/: test log p(x) and ELBO (its evaluation-K5000-first1000.json: the first
1,000 test digits), and on all 10,000 test digits (binarised once, seed 7919) the KL, active
units and I(x; z) (whose estimate cannot exceed log 10,000 = 9.21 nats) of
pyrovae.diagnostics, plus the Fréchet distance (pyrovae.frechet) of 10,000 decoded prior samples
E[x | z], z ~ p(z), to the 10,000 grey test digits. Writes benchmarks/results/kl_weighting.json and
prints the Markdown table.

    PYROVAE_DATA=../shared/data .venv/bin/python benchmarks/kl_table.py
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae import diagnostics
from pyrovae.frechet import frechet_distance
from pyrovae.io import write_json
from pyrovae.runs import heldout_batch, load_run_data

RUNS = ["beta-0.5", "beta-1", "beta-2", "beta-4", "warmup", "cyclical", "capacity", "free-bits"]
ROOT = Path("runs/kl")
OUT = Path("benchmarks/results/kl_weighting.json")


def describe(config) -> str:
    if config.capacity:
        return f"capacity C: 0 → {config.capacity.replace(':', ' nats over ')} steps, γ = {config.capacity_gamma:g}"
    parts = [f"β = {config.beta:g}"]
    if config.kl_anneal:
        parts.append(f"anneal {config.kl_anneal}")
    if config.free_bits is not None:
        parts.append(f"free bits λ = {config.free_bits:g}/dim")
    return ", ".join(parts)


def row(run: Path) -> dict:
    model, config = pyrovae.load_model(run)
    evaluation = json.loads((run / "evaluation-K5000-first1000.json").read_text())
    (x,), _, _ = heldout_batch(model, config, "cpu")  # all 10,000: I(x; z) is at most log N
    with torch.no_grad():
        report = diagnostics.report(model.model, model.guide, x, gap_points=0)
        pyro.set_rng_seed(0)
        samples = model.generate(10_000)
    _, test = load_run_data(config)
    grey = test.with_space("grey").observations()
    return {
        "run": str(run), "setting": describe(config), "epochs": config.epochs,
        "log_px": evaluation["mean_log_px"], "log_px_se": evaluation["data_stderr"],
        "mc_se": evaluation["mc_stderr"], "khat_over_0.7": evaluation["share_khat_over_0.7"],
        "elbo": evaluation["mean_elbo"], "kl": report.rate_distortion.rate.mean().item(),
        "distortion": report.rate_distortion.distortion.mean().item(), "active_units": report.activity.count,
        "latent_dim": len(report.activity.names), "kl_per_dim": report.kl.mean.tolist(),
        "mutual_information": report.mi.mi,
        "frechet_prior_samples": frechet_distance(samples, grey),
    }


def main() -> None:
    torch.set_num_threads(1)
    rows = [row(ROOT / name) for name in RUNS if (ROOT / name / "evaluation-K5000-first1000.json").exists()]
    meta = {
        "data": "MNIST, 60,000 training digits dynamically binarised; test: the first 1,000 of the test split "
                "binarised once (seed 7919)", "model": "784-400-20 softplus MLP VAE, Bernoulli likelihood, N(0, I)",
        "K": 5000, "batch_size": 128, "lr": 1e-3, "seed": 0, "frechet": "10,000 E[x|z], z ~ p(z), against the "
        "10,000 grey test digits, features of pyrovae's MNIST classifier", "machine": platform.processor()
        or platform.machine(), "threads": 1, "torch": torch.__version__, "pyro": pyro.__version__,
    }
    write_json(OUT, {"meta": meta, "rows": rows})
    print("| setting | log p(x) | ELBO | KL | active units | I(x; z) | Fréchet |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['setting']} | {r['log_px']:.2f} ± {r['log_px_se']:.2f} | {r['elbo']:.2f} | {r['kl']:.2f} | "
              f"{r['active_units']} / {r['latent_dim']} | {r['mutual_information']:.2f} | "
              f"{r['frechet_prior_samples']:.1f} |")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
