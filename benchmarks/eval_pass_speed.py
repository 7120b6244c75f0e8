"""Where an importance-sampling pass spends its time, on one thread: the weight pass alone, eager
and compiled with ``torch.jit``, against the decoder's matrix products, and the per-image work
after it (PSIS k-hat); and the pass's two largest pieces alone on the same shapes: the decoder
and the Bernoulli log-probability of its logits.

Model and data as ``eval_speed.py`` (IWAE architecture, untrained weights, embedded MNIST digits
binarised once); one image, ``P`` particles per pass. "jit" runs ``log_importance_weights``
through :class:`pyrovae.infer.importance.CompiledWeights`, what ``log_marginal_likelihood(jit=True)``
does (the trainer's ``TracedLoss``, parameters as graph inputs). 2,500 is the pass size of K = 5000
at the default chunk of 4,096 pairs. Medians of ``--repeats`` alternating calls; writes JSON.

    python benchmarks/eval_pass_speed.py --particles 1024 2500 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import pyro
import torch
from eval_speed import DECODER_FLOPS, matmul_gflops

import pyrovae
from pyrovae.distributions import bernoulli_log_prob
from pyrovae.infer import psis_khat
from pyrovae.infer.importance import CompiledWeights, log_importance_weights

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--particles", type=int, nargs="+", default=[1024, 2500, 4096])
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "eval_pass_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    pyrovae.reuse_freed_memory()
    torch.manual_seed(0)
    vae = pyrovae.VAE(latent_dim=50, hidden=(200, 200), activation="tanh")
    x = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))[:1]
    peak = matmul_gflops()
    rows = []
    for particles in args.particles:
        def weights(xb, particles=particles):
            with pyro.validation_enabled(False), pyro.poutine.block():
                return log_importance_weights(vae.model, vae.guide, xb, num_particles=particles, max_plate_nesting=1)

        compiled = CompiledWeights(vae.model, vae.guide, plate_name="data", max_plate_nesting=1)

        def traced(xb, particles=particles, compiled=compiled):
            with pyro.validation_enabled(False), pyro.poutine.block():
                return compiled(xb, num_particles=particles)

        z = torch.randn(particles, 1, vae.latent_dim)
        logits = vae.decoder(z).detach()
        parts = {  # the pass's two largest pieces alone, on the same shapes
            "decoder": lambda _x, z=z: vae.decoder(z),
            "bernoulli": lambda xb, logits=logits: bernoulli_log_prob(logits, xb),
        }
        times = {"eager": [], "jit": [], "decoder": [], "bernoulli": []}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):  # warm-up: parameters, tracing, the check against eager
                weights(x), traced(x)
            if compiled.failed:
                raise SystemExit("the compiled pass fell back to eager; nothing to compare")
            for _ in range(args.repeats):
                for name, fn in (("eager", weights), ("jit", traced), *parts.items()):
                    start = time.perf_counter()
                    fn(x)
                    times[name].append(time.perf_counter() - start)
        us = {k: statistics.median(v) / particles * 1e6 for k, v in times.items()}
        rows.append({"particles": particles, "us_per_pair_eager": us["eager"], "us_per_pair_jit": us["jit"],
                     "us_per_pair_decoder": us["decoder"], "us_per_pair_bernoulli_log_prob": us["bernoulli"],
                     "us_per_pair_matmul_at_peak": DECODER_FLOPS / peak / 1e3})
        print(f"{particles} particles: eager {us['eager']:.2f}, jit {us['jit']:.2f} (of which decoder alone "
              f"{us['decoder']:.2f}, Bernoulli log-prob alone {us['bernoulli']:.2f}), decoder matmul at peak "
              f"{rows[-1]['us_per_pair_matmul_at_peak']:.2f} us per pair", flush=True)
    lw = torch.randn(1, 5000, dtype=torch.float64).numpy() * 3
    psis_khat(lw)
    start = time.perf_counter()
    for _ in range(20):
        psis_khat(lw)
    psis_ms = (time.perf_counter() - start) / 20 * 1e3
    print(f"PSIS k-hat of 5000 weights: {psis_ms:.2f} ms per image")
    out = {"date": time.strftime("%Y-%m-%d"), "threads": 1, "matmul_gflops": peak, "psis_ms_per_image": psis_ms,
           "command": "python benchmarks/eval_pass_speed.py --particles " + " ".join(map(str, args.particles)),
           "rows": rows}
    Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
