"""How far M1's code lets a classifier go: a supervised network on the means of M1's active units.

M1+M2's classifier q(y | z1) sees only M1's code. This trains the same kind of network
(active units -> 500 softplus -> 10, Adam lr 1e-3, batch 200) on the means of q(z1 | x) for the
labelled digits M1+M2 uses (``choose_labelled``, label seed 0), or on all 60,000 labels, and gives
its accuracy on the 10,000 test digits (binarised once, seed 7919; training digits binarised
once, seed 0, both by ``ImageData.observations``). The units are those ``M1M2`` itself models
(``m1_active`` after its ``prepare_data``: Var > 0.01 over the first 10,000 training means).

    python benchmarks/m1_codes_classifier.py runs/m1 --labels 600 3000 60000 \\
        --json benchmarks/results/m1_codes_classifier.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from m1m2_runs import read_m1

from pyrovae.data import ImageData, load_dataset
from pyrovae.models.m1m2 import M1M2
from pyrovae.models.m2 import choose_labelled


def codes(vae, images: ImageData, seed: int) -> torch.Tensor:
    """Means of q(z1 | x) for one binarisation of ``images``."""
    x = images.with_space("binary-dynamic").observations(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return torch.cat([vae.encoder(x[i:i + 5000])[0] for i in range(0, len(x), 5000)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("m1", type=Path, help="a `pyrovae train --model vae` run folder")
    p.add_argument("--labels", type=int, nargs="+", default=[600, 3000, 60000])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    m1m2 = M1M2(m1=str(a.m1), num_labels=100)  # loads the M1 run
    m1m2.prepare_data(train)  # chooses the units M1+M2 models, as `pyrovae train --model m1m2` does
    vae, active = m1m2.m1, m1m2.m1_active
    z_train, z_test = codes(vae, train, 0), codes(vae, test, 7919)
    out = {"m1": str(a.m1), **read_m1(a.m1), "active_units": int(active.sum()), "steps": a.steps,
           "machine": f"{platform.processor() or platform.machine()}, one thread", "test_accuracy": {}}
    for n in a.labels:
        mask = choose_labelled(train.labels, n, 10, seed=0) if n < len(train.labels) else slice(None)
        x, y = z_train[mask][:, active], train.labels[mask]
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 500), torch.nn.Softplus(), torch.nn.Linear(500, 10))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        curve = []
        for step in range(1, a.steps + 1):
            i = torch.randint(len(x), (min(200, len(x)),))
            loss = torch.nn.functional.cross_entropy(net(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 1000 == 0:
                with torch.no_grad():
                    curve.append((net(z_test[:, active]).argmax(1) == test.labels).float().mean().item())
                print(f"{n} labels, step {step}: test accuracy {curve[-1]:.4f}", flush=True)
        out["test_accuracy"][str(n)] = {"every_1000_steps": curve, "last": curve[-1]}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
