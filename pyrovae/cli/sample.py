"""``pyrovae sample``: draws from a trained run's model, as a PNG grid (and a tensor)."""

from __future__ import annotations

import argparse
import contextlib
import inspect
from pathlib import Path

import torch

from ..io import atomic_write
from ..plots import plot_samples
from ..runs import RunFolder, heldout_batch, load_model, load_run_data
from .common import CLIError, positive_int, seed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="draw images from a trained run's model",
        description="Decode z ~ p(z) with a run's trained decoder and save the grid of E[x|z] "
        "(or of draws x ~ p(x|z) with --draws) as PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder written by `pyrovae train`")
    p.add_argument("--num", type=positive_int, default=64, help="number of samples")
    p.add_argument("--seed", type=seed, default=0, help="seed of the prior draws")
    p.add_argument("--draws", action="store_true", help="draw x ~ p(x|z) instead of showing E[x|z]")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/samples-seed<seed>.png)")
    p.add_argument("--save-tensor", default=None, metavar="PATH", help="also save the samples as a .pt tensor")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> None:
    model, config = load_model(args.run)
    torch.manual_seed(args.seed)
    if hasattr(model, "sample_text"):  # a text model: sentences, printed and written as text
        _sample_text(args, model, config)
        return
    extra = {}
    if "heldout" in inspect.signature(model.generate).parameters:  # a conditional model completes held-out inputs
        extra["heldout"] = heldout_batch(model, config, torch.device("cpu"))[0][0]
    images = model.generate(args.num, sample=args.draws, **extra)
    out = Path(args.out) if args.out else Path(args.run) / f"samples-seed{args.seed}.png"
    what = "draws x ~ p(x | z)" if args.draws else "E[x | z]"
    inside = out.resolve().parent == Path(args.run).resolve()
    inside = inside or (args.save_tensor and Path(args.save_tensor).resolve().parent == Path(args.run).resolve())
    with RunFolder(args.run, fresh=False) if inside else contextlib.nullcontext():  # one writer per run
        plot_samples(
            out, model.to_picture(images), config.image_shape, f"{args.num} samples ({what}), seed {args.seed}"
        )
        if args.save_tensor:
            atomic_write(args.save_tensor, lambda f: torch.save(images, f))
    print(f"wrote {out}")


def _sample_text(args, model, config) -> None:
    _, heldout = load_run_data(config)  # the vocabulary, to spell the sentences
    model.prepare_data(heldout)
    lines = model.sample_text(args.num, sample=args.draws, seed=args.seed)
    out = Path(args.out) if args.out else Path(args.run) / f"samples-seed{args.seed}.txt"
    if out.suffix == ".png":
        raise CLIError(f"a text model's samples are sentences: give --out a .txt path, not {out}")
    inside = out.resolve().parent == Path(args.run).resolve()
    with RunFolder(args.run, fresh=False) if inside else contextlib.nullcontext():
        atomic_write(out, lambda f: f.write(("\n".join(lines) + "\n").encode()))
    print("\n".join(lines))
    print(f"wrote {out}")
