"""How much M2's test accuracy can lose to binarised inputs: a supervised classifier on the
labelled digits alone, fed grey values or dynamically binarised ones.

M2 (docs/zoo.md) scores dynamically binarised digits, so its classifier q(y | x) sees one
random binarisation per epoch and is tested on test digits binarised once; Pyro's ss-vae feeds
grey values to the classifier and tests on grey digits. This script trains M2's classifier
network alone (784-500-10, softplus, Pyro's encoder_y) on the labelled images M2 would use
(``choose_labelled``: balanced per class, label seed 0), with M2's optimiser (Adam, lr 0.00042,
β1 0.9), batch 200, and reports test accuracy for each input:

* ``grey``: trained and tested on grey values k/255;
* ``binary-dynamic``: trained on a fresh binarisation each epoch, tested on the test digits
  binarised once (seed 7919), as M2's held-out set;
* ``binary-dynamic, grey test``: the same network tested on grey values.

    PYROVAE_DATA=../shared/data python benchmarks/m2_classifier_inputs.py --num-labels 3000 --seeds 0 1 2

Writes ``benchmarks/results/m2_classifier_inputs.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import pyrovae
from pyrovae.models.m2 import choose_labelled

ROOT = Path(__file__).resolve().parents[1]


def train_classifier(x: torch.Tensor, y: torch.Tensor, binarise: bool, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(784, 500), nn.Softplus(), nn.Linear(500, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.00042, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        xe = torch.bernoulli(x, generator=gen) if binarise else x
        for idx in torch.randperm(len(x), generator=gen).split(200):
            loss = nn.functional.cross_entropy(net(xe[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (net(x).argmax(-1) == y).double().mean().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-labels", type=int, nargs="+", default=[3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=100, help="passes over the labelled images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "m2_classifier_inputs.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train = pyrovae.load_dataset("mnist", "train")
    test = pyrovae.load_dataset("mnist", "test")
    grey, grey_test = train.with_space("grey").observations(), test.with_space("grey").observations()
    binary_test = torch.bernoulli(grey_test, generator=torch.Generator().manual_seed(7919))
    start = time.perf_counter()
    rows = []
    for n in args.num_labels:
        for seed in args.seeds:
            mask = choose_labelled(train.labels, n, 10, seed)
            x, y = grey[mask], train.labels[mask]
            g = train_classifier(x, y, False, args.epochs, seed)
            b = train_classifier(x, y, True, args.epochs, seed)
            row = {"num_labels": n, "seed": seed, "grey": accuracy(g, grey_test, test.labels),
                   "binary-dynamic": accuracy(b, binary_test, test.labels),
                   "binary-dynamic, grey test": accuracy(b, grey_test, test.labels)}
            rows.append(row)
            print(row, flush=True)
    summary = {}
    for n in args.num_labels:
        for key in ("grey", "binary-dynamic", "binary-dynamic, grey test"):
            vals = [r[key] for r in rows if r["num_labels"] == n]
            summary[f"{n} labels, {key}"] = {"mean": statistics.mean(vals),
                                              "sd": statistics.stdev(vals) if len(vals) > 1 else None}
    out = {"command": "python benchmarks/m2_classifier_inputs.py --num-labels "
                      f"{' '.join(map(str, args.num_labels))} --seeds {' '.join(map(str, args.seeds))} "
                      f"--epochs {args.epochs} --threads {args.threads}",
           "data": "MNIST: labelled training digits chosen by choose_labelled (balanced, label seed = seed); "
                   "all 10,000 test digits", "date": time.strftime("%Y-%m-%d %H:%M"),
           "seconds": time.perf_counter() - start, "runs": rows, "summary": summary}
    Path(args.json).write_text(json.dumps(out, indent=2))
    for k, v in summary.items():
        print(f"{k}: {v['mean']:.4f}" + (f" ± {v['sd']:.4f}" if v["sd"] is not None else ""))


if __name__ == "__main__":
    main()
