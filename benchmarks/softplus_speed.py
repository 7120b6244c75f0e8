"""The hidden layers' softplus: ``pyrovae.nets.softplus`` against ``torch.nn.functional.softplus``.

* the activation alone, forward, and forward + backward, at the (rows, 400) hidden layers of
  the default VAE for batches of 128, 256 and 1,024;
* whole ``Trainer.step`` calls (jit, the default) of the 784-400-50 VAE of ``epoch_speed.py``'s
  Pyro comparison, one with ``nn.Softplus`` swapped back into its encoder and decoder.

One thread (``--threads``), ``pyrovae.reuse_freed_memory()`` as the CLI runs; variants alternate
within each repeat, medians of ``--repeats``; writes JSON.

    .venv/bin/python benchmarks/softplus_speed.py
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from torch import nn

import pyrovae
from pyrovae.infer import Trainer
from pyrovae.nets import Softplus, softplus

ROOT = Path(__file__).resolve().parents[1]


def per_call(fn, calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def forward_backward(act, x: torch.Tensor, g: torch.Tensor) -> None:
    leaf = x.detach().requires_grad_()
    act(leaf).backward(g)


def with_torch_softplus(vae: pyrovae.VAE) -> pyrovae.VAE:
    """``vae`` with every pyrovae ``Softplus`` module replaced by ``nn.Softplus``."""
    for module in list(vae.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Softplus):
                setattr(module, name, nn.Softplus())
    return vae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[128, 256, 1024])
    p.add_argument("--step-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "softplus_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyrovae.reuse_freed_memory()
    torch.manual_seed(0)
    results: dict = {"activation": [], "step": {}}
    for rows in args.rows:
        x, g = torch.randn(rows, 400) * 3, torch.randn(rows, 400)
        variants = {
            ("F.softplus", "forward"): functools.partial(F.softplus, x),
            ("pyrovae softplus", "forward"): functools.partial(softplus, x),
            ("F.softplus", "forward + backward"): functools.partial(forward_backward, F.softplus, x, g),
            ("pyrovae softplus", "forward + backward"): functools.partial(forward_backward, softplus, x, g),
        }
        times = {k: [] for k in variants}
        calls = max(20, 20_000 // rows)
        for fn in variants.values():
            fn()
        for _ in range(args.repeats):
            for k, fn in variants.items():
                times[k].append(per_call(fn, calls))
        for (name, what), t in times.items():
            base = times[("F.softplus", what)]
            results["activation"].append({
                "rows": rows, "cols": 400, "softplus": name, "pass": what, "median_us": statistics.median(t) * 1e6,
                "ratio_to_torch": statistics.median([a / b for a, b in zip(t, base)]), "seconds_per_call": t,
            })
            print(f"{rows} x 400 {what}, {name}: {statistics.median(t) * 1e6:.0f} us", flush=True)
    x = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))[: args.step_batch]
    trainers = {}
    pyro.clear_param_store()
    for name in ("nn.Softplus", "pyrovae Softplus"):
        torch.manual_seed(0)
        vae = pyrovae.VAE(latent_dim=50, hidden=(400,), name=name.split()[0].replace(".", "_"))
        if name == "nn.Softplus":
            with_torch_softplus(vae)
        trainers[name] = Trainer(vae.model, vae.guide)
        for _ in range(5):  # tracing, the checks against eager
            trainers[name].step(x)
    steps = {k: [] for k in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            steps[name].append(per_call(lambda trainer=trainer: trainer.step(x), 10))
    for name, t in steps.items():
        ratio = statistics.median([a / b for a, b in zip(t, steps["nn.Softplus"])])
        results["step"][name] = {"median_ms": statistics.median(t) * 1e3, "ratio_to_nn_softplus": ratio,
                                 "seconds_per_step": t}
        print(f"Trainer.step, batch {args.step_batch}, {name}: {statistics.median(t) * 1e3:.2f} ms ({ratio:.3f})")
    meta = {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__, "pyro": pyro.__version__, "repeats": args.repeats,
        "step_batch": args.step_batch, "step_model": "VAE 784-400-50 softplus, Bernoulli, jit",
        "load_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": f"python benchmarks/softplus_speed.py --rows {' '.join(map(str, args.rows))} "
                   f"--step-batch {args.step_batch} --repeats {args.repeats} --threads {args.threads}",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, **results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
