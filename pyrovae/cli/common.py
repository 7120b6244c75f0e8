"""What the CLI commands share: user errors, argument types, and library messages in flags."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import re
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData
from ..runs import RunFolder, load_run, run_exists


class CLIError(Exception):
    """A user error, printed without a traceback."""


# Python keyword -> command-line flag, for library messages such as "lower lr= or set clip_norm="
FLAGS = {
    "lr": "--lr", "lr_decay": "--lr-decay", "clip_norm": "--clip-norm", "batch_size": "--batch-size",
    "epochs": "--epochs", "objective": "--objective", "num_particles": "--particles", "particles": "--particles",
    "levels": "--levels", "train_size": "--train-size", "heldout_size": "--heldout-size", "seed": "--seed",
    "data_space": "--data-space", "beta": "--beta", "kl_anneal": "--kl-anneal", "capacity": "--capacity",
    "capacity_gamma": "--capacity-gamma", "free_bits": "--free-bits",
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


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``pyrovae train: error: argument --lr: ...``, status 2) and
    without abbreviated flags (``--epoch`` is not ``--epochs``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, cast, kind: str):
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed(text: str) -> int:
    value = _number(text, int, "a whole number")
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**32 - 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def spec_of(parse):
    """A flag type that keeps the text after ``parse(text)`` accepted it (its ValueError is the message)."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    check.__name__ = parse.__name__.removeprefix("parse_")
    return check


def at_least(low: int):
    """An integer >= ``low`` (e.g. 2 importance samples, 2 grey levels)."""

    def check(text: str) -> int:
        value = _number(text, int, "a whole number")
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    check.__name__ = f"integer >= {low}"
    return check


def int_list(text: str) -> list[int]:
    """Comma-separated positive widths, e.g. ``400`` or ``200,200``."""
    parts = [t.strip() for t in text.split(",")]
    if not text.strip() or not all(p.lstrip("-").isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers like 200,200, got {text!r}")
    widths = [int(p) for p in parts]
    if min(widths) < 1:
        raise argparse.ArgumentTypeError(f"widths must be at least 1, got {text!r}")
    return widths


def option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``: VALUE is a number, ``a,b`` (a tuple of numbers), ``true``/``false``,
    ``none``, or a word."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), _option_value(value.strip())


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if "," in text:
        return tuple(_option_value(t.strip()) for t in text.split(","))
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"option values must be finite, got {text!r}")
        return value
    return text


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


def datapoint_unit(config) -> str:
    """What one datapoint of a run is, for "nats per ...": a sentence for text, else an image."""
    return "sentence" if config.data_space == "tokens" else "image"


def device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def describe(train: ImageData, heldout: ImageData, space: str) -> str:
    if hasattr(train, "vocab"):  # text (pyrovae.text.TextData)
        return (f"data: {train.name}; {len(train):,} training / {len(heldout):,} held-out ({heldout.name}) sentences, "
                f"{train.num_tokens:,} training tokens with <eos>, vocabulary of {len(train.vocab):,} ids")
    origin = (
        "the first 10,000 MNIST training digits shipped with pyrovae"
        if train.name.startswith("mnist-embedded") else train.name
    )
    return f"data: {origin}; {len(train):,} training / {len(heldout):,} held-out images, data space {space}"


@contextlib.contextmanager
def trained_run(args):
    """``(folder, model, config, stamp)`` of the run ``args.run``, read and written under its lock
    (one writer from reading to writing), after ``--threads``; a missing folder is a one-line error."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    if not run_exists(run):
        raise CLIError(f"{run} is not a run folder (no such folder)")
    with RunFolder(run, fresh=False) as folder:
        yield (folder, *load_run(run))
