"""The ``pyrovae`` command: train, sample, evaluate and compare models from run folders.

Run ``pyrovae COMMAND --help`` for every flag of a command. Each command lives in its own
module (``train``, ``sample``, ``evaluate``, ``compare``) and adds its parser here; they share
only :mod:`.common`.
"""

from __future__ import annotations

import argparse
import sys

from .._version import __version__
from ..config import ConfigError
from ..data import DataError
from ..infer import ContractError, TrainingError
from . import compare, evaluate, sample, train
from .common import CLIError, to_flags

COMMANDS = (train, sample, evaluate, compare)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae",
        description="Variational autoencoders as Pyro model/guide pairs. "
        "Commands write into run folders; `pyrovae COMMAND --help` explains each flag.",
    )
    parser.add_argument("--version", action="version", version=f"pyrovae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, DataError, ContractError, ConfigError, TrainingError, FileNotFoundError) as err:
        print(f"pyrovae {args.command}: error: {to_flags(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files of completed work are intact (a run resumes from its last completed "
              "epoch with --resume RUN)", file=sys.stderr)
        return 130
    return 0
