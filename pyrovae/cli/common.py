"""What the CLI commands share: user errors, argument types, and library messages in flags."""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Any

import torch

from ..data import ImageData


class CLIError(Exception):
    """A user error, printed without a traceback."""


# Python keyword -> command-line flag, for library messages such as "lower lr= or set clip_norm="
FLAGS = {
    "lr": "--lr", "lr_decay": "--lr-decay", "clip_norm": "--clip-norm", "batch_size": "--batch-size",
    "epochs": "--epochs", "objective": "--objective", "num_particles": "--particles", "particles": "--particles",
    "levels": "--levels", "train_size": "--train-size", "heldout_size": "--heldout-size", "seed": "--seed",
    "data_space": "--data-space",
}
_KEYWORD = re.compile(r"\b(" + "|".join(sorted(FLAGS, key=len, reverse=True)) + r")=('([^']*)'|(-?[\w.]+))?")


_WITH_SPACE = re.compile(r"data\.with_space\('([\w-]+)'(?:, (\d+))?\)")


def to_flags(message: str) -> str:
    """``lr=`` -> ``--lr``, ``objective='elbo'`` -> ``--objective elbo``,
    ``data.with_space('levels', 16)`` -> ``--data-space levels --levels 16``: the library speaks Python."""

    def flag(m: re.Match) -> str:
        value = m.group(3) if m.group(3) is not None else m.group(4)
        return FLAGS[m.group(1)] + (f" {value}" if value else "")

    def space(m: re.Match) -> str:
        return f"--data-space {m.group(1)}" + (f" --levels {m.group(2)}" if m.group(2) else "")

    return _KEYWORD.sub(flag, _WITH_SPACE.sub(space, message))


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a number when it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def options_help(registry: dict[str, type], skip: tuple[str, ...] = ()) -> str:
    """'name: key=default, ...' for each class in a registry, from its constructor."""
    parts = []
    for name, cls in sorted(registry.items()):
        params = [
            f"{p.name}={p.default}"
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in ("self", *skip) and p.default is not inspect.Parameter.empty
        ]
        if params:
            parts.append(f"{name}: {', '.join(params)}")
    return "options (default): " + "; ".join(parts) if parts else "no options"


def device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def describe(train: ImageData, heldout: ImageData, space: str) -> str:
    origin = (
        "the first 10,000 MNIST training digits shipped with pyrovae"
        if train.name.startswith("mnist-embedded") else train.name
    )
    return f"data: {origin}; {len(train):,} training / {len(heldout):,} held-out images, data space {space}"
