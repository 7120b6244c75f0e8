"""Seconds for one pass of M2 training steps over 10,000 MNIST digits (batch 200, 1,000 labels),
one thread: pyrovae's Trainer with the jit-compiled loss, the Trainer eager, and Pyro's own
``pyro.infer.SVI`` on the same model, guide and objective (``M2Objective``). The same batches in
every mode; modes alternate round by round, medians; writes JSON.

    PYROVAE_DATA=../shared/data python benchmarks/m2_step_speed.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import SVI

import pyrovae
from pyrovae.models import M2
from pyrovae.models.m2 import PYRO_TRAINING, M2Objective

ROOT = Path(__file__).resolve().parents[1]


def make_stepper(mode: str, batches):
    """A fresh M2 and a function taking one step on a batch, warmed up on the first batches."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    m2 = M2(num_labels=1000)
    if mode == "svi":
        svi = SVI(m2.model, m2.guide, pyro.optim.Adam({"lr": PYRO_TRAINING["lr"]}), loss=M2Objective())
        step = svi.step
    else:
        trainer = pyrovae.Trainer(m2.model, m2.guide, objective=m2.default_objective(), lr=PYRO_TRAINING["lr"],
                                  jit=mode == "trainer jit")
        step = trainer.step
    for b in batches[:3]:  # set-up, tracing and the jit check are not what a pass costs
        step(*b)
    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "m2_step_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    pyrovae.reuse_freed_memory()
    train = pyrovae.load_dataset("mnist", "train").subset(slice(0, 10_000))
    source = M2(num_labels=1000).prepare_data(train)
    x, y, labelled = source.tensors(torch.Generator().manual_seed(0))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split(PYRO_TRAINING["batch_size"])
    batches = [(x[r], y[r], labelled[r]) for r in order]
    modes = ["trainer jit", "trainer eager", "svi"]
    times = {m: [] for m in modes}
    for r in range(args.rounds):
        for mode in modes:
            step = make_stepper(mode, batches)
            start = time.perf_counter()
            for b in batches:
                step(*b)
            times[mode].append(time.perf_counter() - start)
            print(f"round {r}: {mode}: {times[mode][-1]:.2f} s", flush=True)
    out = {"date": time.strftime("%Y-%m-%d"), "threads": 1, "digits": len(x), "batch_size": PYRO_TRAINING["batch_size"],
           "num_labels": 1000, "command": f"python benchmarks/m2_step_speed.py --rounds {args.rounds}",
           "seconds_median": {m: statistics.median(t) for m, t in times.items()}, "seconds": times}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(out["seconds_median"])


if __name__ == "__main__":
    main()
