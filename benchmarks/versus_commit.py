"""This working tree against an earlier commit, in one process: does a change make steps slower?

The development machine is shared and its speed drifts by ±20% between minutes, and a later
session may run on another CPU, so figures measured on different days cannot show a 5%
regression. This script imports the package of an earlier commit as ``pyrovae_base`` (``git
archive``; its imports are relative) beside the working tree's ``pyrovae``, builds the same model
with both, and alternates them step by step: each variant's time is a ratio to the base in the
same round, and the median ratio is reported.

Variants (what users run most): a jit-compiled SVI step with the default ELBO (784-400-20 MLP,
softplus, batch 128 and 1024), the IWAE objective with K = 5 and 50 (IWAE paper architecture,
784-200-200-50 tanh, batch 100), and importance-sampled log p(x) with K = 5000 on 20 images
(IWAE architecture, chunk 2^12).

    python benchmarks/versus_commit.py --base fc9e754 --threads 1
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyro
import torch
from train_speed import write_section

import pyrovae

ROOT = Path(__file__).resolve().parents[1]


def import_base(rev: str, into: Path):
    """The package as it was at ``rev``, importable as ``pyrovae_base``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "pyrovae"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "pyrovae").rename(into / "pyrovae_base")
    sys.path.insert(0, str(into))
    import pyrovae_base

    return pyrovae_base


def _trainer(pkg, name, objective, k, hidden, latent, activation):
    torch.manual_seed(0)
    vae = pkg.VAE(latent_dim=latent, hidden=hidden, activation=activation, name=name)
    return pkg.Trainer(vae.model, vae.guide, objective=objective, num_particles=k, jit=True, max_plate_nesting=1)


def step_case(objective, k, hidden, latent, activation, batch_size):
    data = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))
    batches = list(data[: 20 * batch_size].split(batch_size))

    def make(pkg, name):
        trainer = _trainer(pkg, name, objective, k, hidden, latent, activation)
        for b in batches[:5]:  # warm-up: trace, verify, the executor's profiling runs
            trainer.step(b)
        state = {"i": 0}

        def run(steps):
            for _ in range(steps):
                trainer.step(batches[state["i"] % len(batches)])
                state["i"] += 1

        return run

    return make


def eval_case(pkg_images=20, num_samples=5000):
    x = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))[:pkg_images]

    def make(pkg, name):
        torch.manual_seed(0)
        vae = pkg.VAE(latent_dim=50, hidden=(200, 200), activation="tanh", name=name)

        def run(_):
            pkg.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=num_samples, chunk_size=2**12,
                                        progress=False, khat_warn_share=1.0)

        run(1)
        return run

    return make


CASES = {
    "SVI step, elbo, jit, batch 128": (step_case("elbo", 1, (400,), 20, "softplus", 128), 8),
    "SVI step, elbo, jit, batch 1024": (step_case("elbo", 1, (400,), 20, "softplus", 1024), 3),
    "SVI step, iwae K=5, jit, batch 100": (step_case("iwae", 5, (200, 200), 50, "tanh", 100), 8),
    "SVI step, iwae K=50, jit, batch 100": (step_case("iwae", 50, (200, 200), 50, "tanh", 100), 2),
    "log p(x), K=5000, 20 images": (eval_case(), 1),
}


def measure(base, make, steps, rounds):
    runs = {"base": make(base, "base"), "tree": make(pyrovae, "tree")}
    times = {n: [] for n in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(steps)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    ratio = statistics.median(t / b for t, b in zip(times["tree"], times["base"]))
    return {"base_ms": statistics.median(times["base"]), "tree_ms": statistics.median(times["tree"]),
            "ratio": ratio, "ms_per_round": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare against")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "versus_commit.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], check=True,
                         capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        base = import_base(rev, Path(tmp))
        results = {}
        for name, (make, steps) in CASES.items():
            pyro.clear_param_store()
            results[name] = measure(base, make, steps, args.rounds)
            print(f"{name}: {results[name]['ratio']:.3f}", flush=True)
    command = f"python benchmarks/versus_commit.py --base {args.base}" + (
        f" --threads {args.threads}" if args.threads else "") + (
        f" --rounds {args.rounds}" if args.rounds != 12 else "")
    meta = {"base": rev, "machine": platform.machine(), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "pyro": pyro.__version__,
            "rounds": args.rounds, "command": command, "date": datetime.date.today().isoformat()}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = [
        f"Measured {meta['date']} on this CPU, {meta['threads']} torch thread(s), torch {meta['torch']}, Pyro "
        f"{meta['pyro']}; the working tree against commit `{rev}` in one process, alternating, {args.rounds} rounds, "
        f"median of the per-round ratios. Command: `{command}`; raw numbers in "
        "`benchmarks/results/versus_commit.json`.",
        "",
        f"| case | `{rev}` ms | this tree ms | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['base_ms']:.1f} | {r['tree_ms']:.1f} | {r['ratio']:.3f} |")
    write_section(Path(args.docs), "versus-commit", "\n".join(lines), raw=args.json)
    print(f"wrote {args.json} and {args.docs}")


if __name__ == "__main__":
    main()
