"""Speed of one SVI training step: pyrovae against a hand-written PyTorch VAE.

Every variant trains the same networks (``pyrovae.nets``: 784-400-20 MLP encoder, mirrored
decoder, softplus) on the same objective (single-sample Monte Carlo ELBO, Bernoulli
likelihood, N(0, I) prior) with Adam, on dynamically binarised MNIST digits (the embedded
subset). Variants run in one process, round-robin, so that machine noise hits all of them;
each round times ``--steps`` steps per variant and we report the median over rounds, and
the ratio to the hand-written step of the same round.

    python benchmarks/train_speed.py                # writes JSON + the table in docs/
    python benchmarks/train_speed.py --compile      # also try torch.compile (slow to build)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO

import pyrovae
from pyrovae.distributions import bernoulli_log_prob
from pyrovae.infer import Trainer
from pyrovae.likelihoods import Bernoulli
from pyrovae.nets import MLPDecoder, MLPEncoder

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, LATENT = (400,), 20


class ToEventBernoulli(Bernoulli):
    """The generic ``Bernoulli(logits).to_event(1)``, to measure what the fused one saves."""

    def forward(self, out):
        return dist.Bernoulli(logits=out).to_event(1)


def hand_written(x_batches, log_px_fn=None):
    torch.manual_seed(0)
    enc, dec = MLPEncoder(784, HIDDEN, LATENT), MLPDecoder(LATENT, HIDDEN, 784)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    std_normal = torch.distributions.Normal(0.0, 1.0)

    def step(x):
        loc, scale = enc(x)
        z = loc + scale * torch.randn_like(loc)
        if log_px_fn is None:
            log_px = -F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(-1)
        else:
            log_px = log_px_fn(dec(z), x)
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        loss = -(log_px + std_normal.log_prob(z).sum(-1) - log_q).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _vae(name, likelihood="bernoulli"):
    torch.manual_seed(0)
    return pyrovae.VAE(latent_dim=LATENT, hidden=HIDDEN, likelihood=likelihood, name=name)


def pyro_svi(x_batches):
    """What Pyro's examples do: SVI + Trace_ELBO + pyro.optim.Adam, to_event Bernoulli."""
    vae = _vae("svi", ToEventBernoulli())
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    return svi.step


def trainer(jit, likelihood="bernoulli", name="t"):
    def make(x_batches):
        vae = _vae(name, likelihood)
        tr = Trainer(vae.model, vae.guide, jit=jit, max_plate_nesting=1)
        return tr.step

    return make


def compiled(x_batches):
    vae = _vae("compiled")
    tr = Trainer(vae.model, vae.guide, jit=False, max_plate_nesting=1)
    tr.setup(x_batches[0])
    loss_fn = torch.compile(tr._loss)

    def step(x):
        loss = loss_fn(x)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tr.optimizer.step()

    return step


VARIANTS = {
    "torch, hand-written (reference)": hand_written,
    "Pyro SVI + pyro.optim.Adam, to_event Bernoulli": pyro_svi,
    "pyrovae eager, to_event Bernoulli": trainer(False, ToEventBernoulli(), "te"),
    "pyrovae eager, pyrovae Bernoulli": trainer(False, "bernoulli", "eager"),
    "pyrovae jit, pyrovae Bernoulli (default)": trainer(True, "bernoulli", "jit"),
    "torch, hand-written with pyrovae's Bernoulli log-prob": lambda b: hand_written(b, bernoulli_log_prob),
}


def time_steps(step, batches, steps):
    start = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return (time.perf_counter() - start) / steps * 1e3


def measure(batch_size, rounds, steps, variants):
    data = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))
    batches = list(data[: 40 * batch_size].split(batch_size))
    pyro.clear_param_store()
    steps_fns = {name: make(batches) for name, make in variants.items()}
    for step in steps_fns.values():  # warm-up: jit traces, allocator, compile
        time_steps(step, batches, 5)
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in steps_fns.items():
            times[name].append(time_steps(step, batches, steps))
    ref = next(iter(variants))
    out = {}
    for name, t in times.items():
        ratios = [a / b for a, b in zip(t, times[ref])]
        out[name] = {
            "median_ms": statistics.median(t),
            "ratio": statistics.median(ratios),
            "ms_per_round": t,
        }
    return out


def profile_split(batch_size, variants):
    """Share of step time inside aten operators vs outside (Python, Pyro, dispatch)."""
    from torch.profiler import ProfilerActivity, profile

    data = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))
    batches = list(data[: 10 * batch_size].split(batch_size))
    pyro.clear_param_store()
    out = {}
    for name, make in variants.items():
        step = make(batches)
        time_steps(step, batches, 5)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = time_steps(step, batches, 20)
        ops = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::"))
        top = sorted(
            (e for e in prof.key_averages() if e.key.startswith("aten::")),
            key=lambda e: -e.self_cpu_time_total,
        )[:5]
        out[name] = {
            "wall_ms_under_profiler": wall,
            "aten_ms": ops / 1e3 / 20,
            "top_ops": {e.key: round(e.self_cpu_time_total / 1e3 / 20, 3) for e in top},
        }
    return out


def table(results):
    lines = [
        "| batch | variant | median ms/step | ratio to hand-written |",
        "| ---: | --- | ---: | ---: |",
    ]
    for batch, res in results.items():
        for name, r in res.items():
            lines.append(f"| {batch} | {name} | {r['median_ms']:.2f} | {r['ratio']:.3f} |")
    return "\n".join(lines)


def write_section(path: Path, marker: str, body: str, raw: str | Path | None = None) -> None:
    """Replace the text between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``path``.

    ``raw``: the JSON the table cites. A table of the repository's docs is left as it is when
    its raw numbers are written outside the repository (a scratch or smoke run, whose
    numbers no reader could find): the docs cite committed results only."""
    if raw is not None and path.resolve().is_relative_to(ROOT) and not Path(raw).resolve().is_relative_to(ROOT):
        print(f"{path} not rewritten: its raw numbers would be in {raw}, outside the repository")
        return
    text = path.read_text() if path.exists() else ""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=30, help="steps per variant per round (batch 128)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the loss")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = dict(VARIANTS)
    if args.compile:
        variants["pyrovae torch.compile of the loss"] = compiled
    results, profiles = {}, {}
    for b in args.batch_sizes:
        steps = max(3, args.steps * 128 // b)
        results[b] = measure(b, args.rounds, steps, variants)
        print(table({b: results[b]}), flush=True)
        profiles[b] = profile_split(b, variants)
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "rounds": args.rounds,
        "steps_per_round": {b: max(3, args.steps * 128 // b) for b in args.batch_sizes},
        "command": "python benchmarks/train_speed.py"
        + (" --compile" if args.compile else "")
        + (f" --threads {args.threads}" if args.threads else ""),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "profile": profiles}, indent=2))
    prof_lines = [
        "| batch | variant | ms/step (profiled) | in aten ops | outside ops |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for b, res in profiles.items():
        for name, r in res.items():
            outside = r["wall_ms_under_profiler"] - r["aten_ms"]
            prof_lines.append(
                f"| {b} | {name} | {r['wall_ms_under_profiler']:.2f} | {r['aten_ms']:.2f} | {outside:.2f} |"
            )
    body = (
        f"Measured {meta['date']} on this CPU ({meta['cpu_threads']} torch threads), torch "
        f"{meta['torch']}, Pyro {meta['pyro']}; {args.rounds} alternating rounds, median. "
        f"Command: `{meta['command']}`; raw numbers in `benchmarks/results/train_speed.json`.\n\n"
        + table(results)
        + "\n\nWhere the time goes (torch.profiler, 20 steps; 'outside ops' is Python, Pyro's "
        "tracing and dispatch):\n\n"
        + "\n".join(prof_lines)
    )
    write_section(Path(args.docs), "train-speed", body, raw=args.json)
    print(f"wrote {args.json} and {args.docs}")


if __name__ == "__main__":
    main()
