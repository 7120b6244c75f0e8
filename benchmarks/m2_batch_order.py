"""M2's test accuracy with the two streams mixed in every batch (pyrovae) or in separate batches
(Pyro's ss-vae), everything else equal.

pyrovae's M2 (docs/zoo.md) puts labelled and unlabelled rows in the same batches of 200 (about
10 labelled rows in each with 3,000 labels); Pyro's ``examples/vae/ss_vae_M2.py`` trains on
separate batches, a labelled one of 200 every ``(S + U) // S``-th step (S labelled and U
unlabelled batches per epoch). The objective summed over an epoch is the same; what differs is
what Adam sees per step. ``--order alternate`` gives the trainer a data source whose
``minibatches`` cut the epoch Pyro's way; ``--order mixed`` is the library's default. The loss
runs eagerly in both (``jit=False``: a batch without labelled rows takes another path through
the model). Same seed, labelled images (``label_seed``), optimiser (Adam, lr 0.00042), batch
200 and data (MNIST, dynamically binarised; the 10,000 test digits binarised once as held-out
set); the held-out accuracy of argmax q(y | x) after every epoch goes into ``--json``.

    PYROVAE_DATA=../shared/data python benchmarks/m2_batch_order.py --order mixed --max-minutes 30 &
    PYROVAE_DATA=../shared/data python benchmarks/m2_batch_order.py --order alternate --max-minutes 30
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import pyrovae
from pyrovae.models import M2
from pyrovae.models.m2 import PYRO_TRAINING, SemiSupervisedImages

ROOT = Path(__file__).resolve().parents[1]


def alternating_minibatches(data: Sequence[torch.Tensor], batch_size: int, generator: torch.Generator | None = None,
                            shuffle: bool = True) -> Iterator[tuple[torch.Tensor, ...]]:
    """Pyro's ss-vae epoch: labelled and unlabelled rows in separate shuffled batches, a labelled
    batch at every step i with i % ((S + U) // S) == 1 while they last."""
    x, y, labelled = data
    rows = [labelled.nonzero()[:, 0], (~labelled).nonzero()[:, 0]]
    sup, unsup = (r[torch.randperm(len(r), generator=generator)].split(batch_size) for r in rows)
    interval = (len(sup) + len(unsup)) // max(len(sup), 1)
    s = u = 0
    for i in range(len(sup) + len(unsup)):
        if s < len(sup) and (i % interval == 1 or u == len(unsup)):
            idx, s = sup[s], s + 1
        else:
            idx, u = unsup[u], u + 1
        yield x[idx], y[idx], labelled[idx]


@dataclass(frozen=True)
class AlternatingImages(SemiSupervisedImages):
    """:class:`SemiSupervisedImages` cut into batches Pyro's way."""

    minibatches = staticmethod(alternating_minibatches)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The flags every M2 protocol benchmark takes (labels, length, seed, threads, output)."""
    p.add_argument("--num-labels", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-size", type=int, default=None, help="the first N training digits (a quick check)")
    p.add_argument("--json", default=None, help="default: a file in benchmarks/results named after the flags")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--order", choices=["mixed", "alternate"], required=True)
    add_run_arguments(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyrovae.reuse_freed_memory()
    train = pyrovae.load_dataset("mnist", "train")
    test = pyrovae.load_dataset("mnist", "test")
    if args.train_size:
        train, test = train.subset(slice(0, args.train_size)), test.subset(slice(0, args.train_size // 6))
    torch.manual_seed(args.seed)
    m2 = M2(num_labels=args.num_labels, label_seed=args.seed)
    source = m2.prepare_data(train)
    if args.order == "alternate":
        source = AlternatingImages(source.images, source.labelled)
    trainer = pyrovae.Trainer(m2.model, m2.guide, objective=m2.default_objective(), lr=PYRO_TRAINING["lr"], jit=False)
    start = time.perf_counter()
    trainer.fit(source, test, epochs=args.epochs, batch_size=PYRO_TRAINING["batch_size"], seed=args.seed,
                progress=False, verbose=True,
                max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    out = {
        "order": args.order, "num_labels": args.num_labels, "seed": args.seed, "threads": args.threads,
        "data": "MNIST, 60,000 training digits dynamically binarised, the 10,000 test digits binarised once "
                "(held-out set)", "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": time.perf_counter() - start,
        "command": f"python benchmarks/m2_batch_order.py --order {args.order} --num-labels {args.num_labels} "
                   f"--epochs {args.epochs} --seed {args.seed} --threads {args.threads}"
                   + (f" --max-minutes {args.max_minutes:g}" if args.max_minutes is not None else ""),
        "history": [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in trainer.history],
    }
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"m2_batch_order_{args.order}.json")
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
