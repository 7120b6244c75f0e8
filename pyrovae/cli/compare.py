"""``pyrovae compare``: rank evaluated runs by test log p(x) with paired standard errors."""

from __future__ import annotations

import argparse

from ..io import write_text
from ..plots import plot_compare
from ..scoring import METHODS, ComparisonError, compare, format_table
from .common import CLIError, positive_int


def add_parser(sub) -> None:
    c = sub.add_parser(
        "compare",
        help="rank evaluated runs by test log p(x), with paired standard errors",
        description="Rank runs evaluated by `pyrovae evaluate` by mean test log p(x) per image on one "
        "scale (8-bit log-mass for dequantised continuous and categorical likelihoods, binarised "
        "log-mass for Bernoulli), with the paired standard error of each run's difference to the "
        "best (same test points, same K). Refuses runs scored on different data or scales, or by "
        "different estimators (--method: importance sampling, defensive IS, AIS and its T). "
        "Prints a Markdown table and writes a PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("runs", nargs="+", help="run folders with evaluation-K<K>.json/.csv")
    c.add_argument("--num-samples", type=positive_int, default=None, help="which evaluation K (default: the largest)")
    c.add_argument("--method", choices=METHODS, default="is",
                   help="which estimator's evaluations to rank (AIS: the most steps)")
    c.add_argument("--png", default="comparison.png", help="where to write the picture")
    c.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    c.set_defaults(func=cmd_compare)


def cmd_compare(args) -> None:
    try:
        table = compare(args.runs, args.num_samples, args.method)
    except ComparisonError as err:
        raise CLIError(str(err)) from None
    text = format_table(table)
    print(text)
    plot_compare(args.png, table)
    if args.markdown:
        write_text(args.markdown, text + "\n")
    print(f"wrote {args.png}" + (f" and {args.markdown}" if args.markdown else ""))
