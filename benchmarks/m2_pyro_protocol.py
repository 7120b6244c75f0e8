"""M2 trained by Pyro's own ss-vae loop: does the protocol explain the accuracy gap to Pyro's table?

pyrovae's M2 (docs/zoo.md) reaches 0.9323 test accuracy with 3,000 labels after 50 epochs, Pyro's
``examples/vae/ss_vae_M2.py`` reports 0.958. This script keeps pyrovae's ``M2.model`` and
``M2.guide`` (same networks, same objective) and trains them the way Pyro's example does:

* 50,000 training digits, the last 10,000 of MNIST's training set held out for validation;
* separate batches of 200: a labelled one at every step i with i % int(50000 / S) == 1 while
  they last, unlabelled ones otherwise;
* on a labelled batch *two* optimiser steps through one shared ``pyro.optim.Adam`` (lr 0.00042,
  betas (``--beta1``, 0.999)): first the ELBO term L(x, y) (the model with its ``y_aux`` site
  hidden), then the auxiliary loss α·(−log q(y | x)) alone (Pyro's ``model_classify`` with an
  empty guide); on an unlabelled batch one step of U(x) with y enumerated;
* test accuracy at the epoch of best validation accuracy, beside every epoch's.

Pyro's other choices are flags: ``--inputs grey`` feeds grey values to the Bernoulli (Pyro's
example) instead of binarising afresh each epoch; ``--init pyro`` draws every hidden layer's weights
and biases from N(0, 0.001²) as Pyro's ``utils/custom_mlp.py`` does (output layers keep torch's
default); ``--heads pyro`` takes exp instead of softplus for the scale of q(z | x, y); ``--alpha``
sets the auxiliary loss multiplier (46 in Pyro's example run); ``--beta1 0.95`` is the Adam β1 of
Pyro's example run. ``--loop mixed`` trains as pyrovae's Trainer does instead (both streams in every
batch, one step of J per batch), on the same data split, so that each choice can be changed alone.
Results go to
``benchmarks/results/m2_pyro_protocol_<loop>_<inputs>_<init>[_expscale][_alpha<a>]_b<beta1>_<epochs>_labels<N>_seed<S>.json``,
rewritten after every epoch.

    export PYROVAE_DATA=../shared/data
    python benchmarks/m2_pyro_protocol.py --max-minutes 60 &                       # Pyro's loop
    python benchmarks/m2_pyro_protocol.py --inputs grey --init pyro --max-minutes 60  # all of Pyro's choices
    python benchmarks/m2_pyro_protocol.py --loop mixed --beta1 0.95 --epochs 100 --max-minutes 65
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from m2_batch_order import add_run_arguments
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

import pyrovae
from pyrovae.models import M2
from pyrovae.models.m2 import PYRO_TRAINING, M2Objective, choose_labelled

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = 10_000


def pyro_init(m2: M2) -> None:
    """Pyro's ``examples/vae/utils/custom_mlp.py``: every hidden layer's weights and biases drawn from
    N(0, 0.001²) (output layers keep torch's default); a ``LabelInput`` is one such layer."""
    def linears(net):
        return [m for m in net.modules() if isinstance(m, torch.nn.Linear)]

    hidden = linears(m2.encoder_y)[:-1] + linears(m2.encoder_z.input) + linears(m2.encoder_z.body) \
        + linears(m2.decoder.input) + linears(m2.decoder.body)[:-1]
    with torch.no_grad():
        for layer in hidden:
            for p in layer.parameters():
                p.normal_(0, 0.001)


class ExpScaleHead(torch.nn.Module):
    """q(z | x, y)'s head as Pyro's example has it: ``scale = exp(.)`` instead of softplus."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.loc, self.scale = head.loc, head.scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), self.scale(h).exp()


def classification_pair(m2: M2):
    """Pyro's ``model_classify`` / ``guide_classify``: α·log q(y | x) on labelled digits, nothing else."""

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module(m2.name, m2)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=m2.aux_loss_multiplier):
            pyro.sample("y_aux", dist.Categorical(logits=m2.encoder_y(x)), obs=y)

    def guide(x: torch.Tensor, y: torch.Tensor) -> None:
        pass

    return model, guide


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", choices=["binarised", "grey"], default="binarised")
    p.add_argument("--init", choices=["pyrovae", "pyro"], default="pyrovae")
    p.add_argument("--loop", choices=["pyro", "mixed"], default="pyro",
                   help="pyro: separate batches, the auxiliary loss its own step; mixed: pyrovae's batches, one step")
    p.add_argument("--heads", choices=["pyrovae", "pyro"], default="pyrovae",
                   help="pyro: exp for the scale of q(z | x, y), as Pyro's example (pyrovae: softplus)")
    p.add_argument("--alpha", type=float, default=46.0, help="the auxiliary loss multiplier (Pyro's example: 46)")
    p.add_argument("--beta1", type=float, default=0.9, help="Adam's beta1 (Pyro's example run: 0.95)")
    add_run_arguments(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pyrovae.reuse_freed_memory()
    if args.inputs == "grey":
        pyro.enable_validation(False)  # grey values under a Bernoulli, as Pyro's example
    heads = ("_expscale" if args.heads == "pyro" else "") + (f"_alpha{args.alpha:g}" if args.alpha != 46 else "")
    name = (f"m2_pyro_protocol_{args.loop}_{args.inputs}_{args.init}{heads}_b{args.beta1:g}_{args.epochs}"
            f"_labels{args.num_labels}_seed{args.seed}.json")
    path = Path(args.json or ROOT / "benchmarks" / "results" / name)
    full, test = pyrovae.load_dataset("mnist", "train"), pyrovae.load_dataset("mnist", "test")
    grey = full.with_space("grey").observations()
    n_train = args.train_size or len(grey) - VALIDATION
    x_train, y_train = grey[:n_train], full.labels[:n_train]
    held_gen = torch.Generator().manual_seed(7919)
    held = {name: (x if args.inputs == "grey" else torch.bernoulli(x, generator=held_gen), y)
            for name, x, y in [("valid", grey[-VALIDATION:], full.labels[-VALIDATION:]),
                               ("test", test.with_space("grey").observations(), test.labels)]}

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    m2 = M2(num_labels=args.num_labels, label_seed=args.seed, aux_loss_multiplier=args.alpha)
    if args.init == "pyro":
        pyro_init(m2)
    if args.heads == "pyro":
        m2.encoder_z.head = ExpScaleHead(m2.encoder_z.head)
    labelled = choose_labelled(y_train, args.num_labels, m2.num_classes, args.seed)
    sup_rows, unsup_rows = labelled.nonzero()[:, 0], (~labelled).nonzero()[:, 0]
    optim = pyro.optim.Adam({"lr": PYRO_TRAINING["lr"], "betas": (args.beta1, 0.999)})
    mixed = SVI(m2.model, m2.guide, optim, loss=M2Objective())
    basic = SVI(poutine.block(m2.model, hide=["y_aux"]), m2.guide, optim, loss=M2Objective(weighted=False))
    aux = SVI(*classification_pair(m2), optim, loss=Trace_ELBO())
    batch, interval = PYRO_TRAINING["batch_size"], int(n_train / args.num_labels)
    data_gen = torch.Generator().manual_seed(args.seed)
    meta = {  # what the run is; the per-epoch figures are added below
        "loop": args.loop, "inputs": args.inputs, "init": args.init, "heads": args.heads, "alpha": args.alpha,
        "beta1": args.beta1,
        "num_labels": args.num_labels, "seed": args.seed,
        "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M"),
        "data": f"MNIST: the first {n_train:,} training digits for training, the last {VALIDATION:,} for "
                "validation, the 10,000 test digits; " + ("grey values" if args.inputs == "grey" else
                                                         "binarised afresh each epoch, held-out sets once"),
        "command": f"python benchmarks/m2_pyro_protocol.py --loop {args.loop} --inputs {args.inputs} "
                   f"--init {args.init} --heads {args.heads} --alpha {args.alpha:g} --beta1 {args.beta1:g} "
                   f"--num-labels {args.num_labels} "
                   f"--epochs {args.epochs} --seed {args.seed}",
    }
    history, start, best = [], time.perf_counter(), (-1.0, None)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        x_epoch = x_train if args.inputs == "grey" else torch.bernoulli(x_train, generator=data_gen)
        loss_sup = loss_unsup = loss_aux = 0.0
        if args.loop == "mixed":  # pyrovae's Trainer: every batch holds both streams, one step of J
            for rows in torch.randperm(n_train, generator=data_gen).split(batch):
                loss_unsup += mixed.step(x_epoch[rows], y_train[rows], labelled[rows])
        else:
            sup = sup_rows[torch.randperm(len(sup_rows), generator=data_gen)].split(batch)
            unsup = unsup_rows[torch.randperm(len(unsup_rows), generator=data_gen)].split(batch)
            s = u = 0
            for i in range(len(sup) + len(unsup)):
                if s < len(sup) and (i % interval == 1 or u == len(unsup)):
                    rows, s = sup[s], s + 1
                    xb, yb = x_epoch[rows], y_train[rows]
                    loss_sup += basic.step(xb, yb, torch.ones(len(rows), dtype=torch.bool))
                    loss_aux += aux.step(xb, yb)
                else:
                    rows, u = unsup[u], u + 1
                    loss_unsup += basic.step(x_epoch[rows], y_train[rows], torch.zeros(len(rows), dtype=torch.bool))
        seconds = time.perf_counter() - t0
        unsup_per = n_train if args.loop == "mixed" else len(unsup_rows)  # mixed: J over every row
        record = {"epoch": epoch, "seconds": seconds, "loss_sup": loss_sup / len(sup_rows),
                  "loss_unsup": loss_unsup / unsup_per, "loss_aux": loss_aux / len(sup_rows),
                  **{f"{name}_accuracy": m2.accuracy(*held[name]) for name in held}}
        if record["valid_accuracy"] > best[0]:
            best = (record["valid_accuracy"], record)
        history.append(record)
        print(f"epoch {epoch}: {seconds:.1f} s, loss U {record['loss_unsup']:.2f}, valid "
              f"{record['valid_accuracy']:.4f}, test {record['test_accuracy']:.4f}", flush=True)
        out = {
            **meta,
            "seconds": time.perf_counter() - start, "epochs_run": epoch,
            "best_valid": {"epoch": best[1]["epoch"], "valid_accuracy": best[0],
                           "test_accuracy": best[1]["test_accuracy"]},
            "history": history,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2))
        os.replace(tmp, path)  # whole file or none: a run stopped mid-write leaves the last epoch's
        if args.max_minutes is not None and time.perf_counter() - start > 60 * args.max_minutes:
            break


if __name__ == "__main__":
    main()
