"""Speed of one IWAE training step: pyrovae's ``IWAE`` against Pyro's ``RenyiELBO(alpha=0)``.

Both compute the importance-weighted bound L_K of Burda et al. (2016) (they agree in value,
see tests/test_importance.py). Model: the IWAE paper's MNIST architecture (784-200-200->50,
tanh, Bernoulli likelihood), batch 100, Adam, dynamically binarised embedded MNIST digits.
Variants, round-robin in one process (median over rounds, ratio to the first variant of the
same round):

* Pyro: ``SVI`` + ``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)`` +
  ``pyro.optim.Adam`` -- what a Pyro user writes (reference);
* pyrovae ``Trainer(objective="iwae")`` eager, and with its jit-traced loss (the default).

    python benchmarks/iwae_speed.py --threads 1     # writes JSON + the table in docs/
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI, RenyiELBO
from train_speed import time_steps, write_section

import pyrovae
from pyrovae.infer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _vae(name: str) -> pyrovae.VAE:
    torch.manual_seed(0)
    return pyrovae.VAE(latent_dim=50, hidden=(200, 200), activation="tanh", name=name)


def renyi(k: int):
    vae = _vae(f"renyi{k}")
    loss = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    return SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss).step


def trainer(k: int, jit: bool):
    vae = _vae(f"iwae{k}{jit}")
    return Trainer(vae.model, vae.guide, objective="iwae", num_particles=k, jit=jit, max_plate_nesting=1).step


VARIANTS = {
    "Pyro SVI + RenyiELBO(alpha=0), vectorised (reference)": renyi,
    "pyrovae IWAE, eager": lambda k: trainer(k, False),
    "pyrovae IWAE, jit (default)": lambda k: trainer(k, True),
}


def measure(k: int, rounds: int, steps: int) -> dict:
    data = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))
    batches = list(data[:2000].split(100))
    pyro.clear_param_store()
    steps_fns = {name: make(k) for name, make in VARIANTS.items()}
    for step in steps_fns.values():
        time_steps(step, batches, 3)
    times = {name: [] for name in VARIANTS}
    for _ in range(rounds):
        for name, step in steps_fns.items():
            times[name].append(time_steps(step, batches, steps))
    ref = times[next(iter(VARIANTS))]
    return {
        name: {
            "median_ms": statistics.median(t),
            "ratio": statistics.median(a / b for a, b in zip(t, ref)),
            "ms_per_round": t,
        }
        for name, t in times.items()
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--particles", type=int, nargs="+", default=[5, 50])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=20, help="steps per variant per round at K=5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "iwae_speed.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for k in args.particles:
        results[k] = measure(k, args.rounds, max(3, args.steps * 5 // k))
        print(k, {n: round(r["ratio"], 3) for n, r in results[k].items()}, flush=True)
    meta = {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__, "pyro": pyro.__version__, "rounds": args.rounds,
        "command": f"python benchmarks/iwae_speed.py --threads {args.threads}",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = ["| K | variant | median ms/step | ratio to RenyiELBO |", "| ---: | --- | ---: | ---: |"]
    for k, res in results.items():
        for name, r in res.items():
            lines.append(f"| {k} | {name} | {r['median_ms']:.1f} | {r['ratio']:.3f} |")
    body = (
        f"Measured {meta['date']} on this CPU, {args.threads} torch thread(s), torch {meta['torch']}, "
        f"Pyro {meta['pyro']}; batch 100, IWAE architecture; {args.rounds} alternating rounds, median. "
        f"Command: `{meta['command']}`; raw numbers in `benchmarks/results/iwae_speed.json`.\n\n"
        + "\n".join(lines)
    )
    write_section(Path(args.docs), "iwae-speed", body, raw=args.json)
    print(body)


if __name__ == "__main__":
    main()
