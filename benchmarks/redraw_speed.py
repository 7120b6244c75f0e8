"""The small per-epoch and per-pass costs of docs/benchmarks.md, each against the code it replaced.

* the dynamic-binarisation redraw of MNIST's 60,000 training digits: the former expression (the
  images converted to floats and scaled on every draw) against ``ImageData.observations``, which
  keeps the grey values;
* the Bernoulli support check on those 47 M values: one pass over the whole tensor against the
  library's 4,096-row pieces;
* the Bernoulli log-probability of 4,096 x 784 logits against one data row (importance sampling
  with K >= the chunk size): the former formula against the library's matrix-vector product.

One thread, medians of ``--repeats`` alternating runs.

    PYROVAE_DATA=../shared/data .venv/bin/python benchmarks/redraw_speed.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import pyrovae
from pyrovae.distributions import bernoulli_log_prob
from pyrovae.likelihoods import Bernoulli

ROOT = Path(__file__).resolve().parents[1]


def former_redraw(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    k = images.to(torch.float32)
    u = torch.rand(k.shape, generator=generator)
    return u.lt_(k.div_(255))


def former_support_check(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def former_bernoulli(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    d = logits.shape[-1]
    group = max(g for g in range(1, min(d, 64) + 1) if d % g == 0)
    buf = logits.abs()
    relu_sum = (buf.sum(-1) + logits.sum(-1)) / 2
    log_sigmoid_abs = buf.sigmoid_().unflatten(-1, (d // group, group)).prod(-1).log_().sum(-1)
    xl = torch.mul(logits, value, out=buf).sum(-1)
    return xl - relu_sum + log_sigmoid_abs


def timed(fn, repeats: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "redraw_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    train = pyrovae.load_dataset("mnist", "train", os.environ.get("PYROVAE_DATA"))
    data = train.with_space("binary-dynamic")
    g = torch.Generator().manual_seed(0)
    x = data.observations(g)
    logits = torch.randn(4096, 1, 784, generator=g) * 3
    row = x[:1]
    assert torch.allclose(bernoulli_log_prob(logits, row), former_bernoulli(logits, row), atol=1e-2)
    pairs = {
        "redraw of 60,000 digits, s": (lambda: former_redraw(train.images, g), lambda: data.observations(g)),
        "Bernoulli support check of 47 M values, s": (lambda: former_support_check(x),
                                                      lambda: Bernoulli().check_support(x)),
        "Bernoulli log-prob, 4,096 x 784 logits, one data row, s": (lambda: former_bernoulli(logits, row),
                                                                    lambda: bernoulli_log_prob(logits, row)),
    }
    results = {}
    for name, (before, after) in pairs.items():
        t_before, t_after = [], []
        for _ in range(args.repeats):  # alternate
            t_before += timed(before, 1)
            t_after += timed(after, 1)
        results[name] = {"before": statistics.median(t_before), "library": statistics.median(t_after),
                         "before_runs": t_before, "library_runs": t_after}
        print(f"{name}: {results[name]['before']:.4f} -> {results[name]['library']:.4f}", flush=True)
    meta = {"threads": 1, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M"),
            "load": os.getloadavg(), "command": f"python benchmarks/redraw_speed.py --repeats {args.repeats}"}
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
