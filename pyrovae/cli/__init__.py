"""The ``pyrovae`` command: train, sample, evaluate, compare and diagnose models from run folders.

Run ``pyrovae COMMAND --help`` for every flag of a command. Each command lives in its own
module (``train``, ``sample``, ``evaluate``, ``compare``, ``diagnose``) and adds its parser here; they share
only :mod:`.common`.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .._version import __version__
from ..config import ConfigError
from ..data import DataError
from ..infer import ContractError, TrainingError
from ..infer.trainer import request_stop
from ..memory import reuse_freed_memory
from ..runs import RunBusyError
from . import compare, diagnose, evaluate, sample, train
from .common import CLIError, Parser, to_flags

COMMANDS = (train, sample, evaluate, compare, diagnose)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pyrovae",
        description="Variational autoencoders as Pyro model/guide pairs. "
        "Commands write into run folders; `pyrovae COMMAND --help` explains each flag.",
    )
    parser.add_argument("--version", action="version", version=f"pyrovae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a flag refused with its one-line error
        return done.code if isinstance(done.code, int) else 2
    args.given = given_flags(parser, args.command, argv)
    reuse_freed_memory()
    previous = _terminate_as_interrupt()
    try:
        args.func(args)
    except (CLIError, DataError, ContractError, ConfigError, TrainingError, RunBusyError, FileNotFoundError) as err:
        print(f"pyrovae {args.command}: error: {to_flags(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # permissions, a folder where a file should be, a full disk
        where = f": {err.filename}" if err.filename else ""
        print(f"pyrovae {args.command}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; files of completed work are intact (a run resumes from its last completed "
              "epoch with --resume RUN)", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def given_flags(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> set[str]:
    """The destinations of the options written on the command line (not defaults)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    words = {w.split("=", 1)[0] for w in argv if w.startswith("--")}
    return {a.dest for a in sub._actions if words.intersection(a.option_strings)}


def _terminate(signum, frame):
    if not request_stop():  # a training stops between two steps; anything else (or a second SIGTERM) at once
        raise KeyboardInterrupt


def _terminate_as_interrupt():
    """SIGTERM (a scheduler's stop) ends a command as Ctrl-C does; the old handler is returned."""
    try:
        return signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        return None
