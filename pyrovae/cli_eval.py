"""``pyrovae evaluate``: importance-sampled log p(x) of a run's held-out data, written to files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

from .data import heldout_generator, heldout_seed
from .importance import log_marginal_likelihood
from .runs import load_vae, write_csv, write_json, write_text
from .scoring import ComparisonError, compare, format_table, on_scale


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="estimate log p(x) per held-out datapoint by importance sampling",
        description="Estimate log p(x_i) for each held-out datapoint of a run (the test split for "
        "mnist/fashion-mnist) with K importance samples from the guide, with Monte Carlo "
        "standard errors, effective sample sizes and PSIS k-hat. Writes "
        "RUN/evaluation-K<K>.json (summary), RUN/evaluation-K<K>.csv (per datapoint) and "
        "RUN/khat-K<K>.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder written by `pyrovae train`")
    p.add_argument("--num-samples", type=int, default=5000, help="importance samples K per datapoint")
    p.add_argument("--max-datapoints", type=int, default=None, help="evaluate only the first N held-out points")
    p.add_argument(
        "--chunk-size", type=int, default=2**12, help="most (sample, datapoint) pairs per pass; bounds memory"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: the run's device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    c = sub.add_parser(
        "compare",
        help="rank evaluated runs by test log p(x), with paired standard errors",
        description="Rank runs evaluated by `pyrovae evaluate` by mean test log p(x) per image on one "
        "scale (8-bit log-mass for dequantised continuous and categorical likelihoods, binarised "
        "log-mass for Bernoulli), with the paired standard error of each run's difference to the "
        "best (same test points, same K). Refuses runs scored on different data or scales. "
        "Prints a Markdown table and writes a PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("runs", nargs="+", help="run folders with evaluation-K<K>.json/.csv")
    c.add_argument("--num-samples", type=int, default=None, help="which evaluation K (default: the largest)")
    c.add_argument("--png", default="comparison.png", help="where to write the picture")
    c.add_argument("--markdown", default=None, help="also write the table to this Markdown file")
    c.set_defaults(func=cmd_compare)


def heldout_observations(config: dict, device) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The run's held-out set as observations, drawn once with the run's fixed seed."""
    from .cli import load_run_data

    _, heldout = load_run_data(config)
    gen = heldout_generator(config["seed"])
    x = heldout.observations(gen, device=device)
    return x, heldout.labels, heldout.name


def cmd_evaluate(args) -> None:
    from . import plots
    from .cli import CLIError, _device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_samples < 2:
        raise CLIError("--num-samples must be at least 2 (standard errors and k-hat need two)")
    vae, config = load_vae(args.run)
    device = _device(args.device or config["device"])
    vae = vae.to(device)
    x, labels, name = heldout_observations(config, device)
    if args.max_datapoints:
        x = x[: args.max_datapoints]
        labels = labels[: args.max_datapoints] if labels is not None else None
    vae.check_data(x, "held-out data")
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    res = log_marginal_likelihood(
        vae.model, vae.guide, x, num_samples=args.num_samples, chunk_size=args.chunk_size,
        progress=args.progress,
    )
    seconds = time.perf_counter() - start
    k = args.num_samples
    run = Path(args.run)
    summary = {
        **res.summary(),
        "seconds": seconds,
        "data": name,
        "dataset": config["dataset"],
        "data_space": config["data_space"],
        "levels": config.get("levels"),
        "heldout_seed": heldout_seed(config["seed"]),
        "sample_seed": args.seed,
        "discrete_likelihood": vae.likelihood.discrete,
        "likelihood": config["likelihood"],
        "prior": config["prior"],
        **on_scale(res.mean, config["data_dim"], config["data_space"], config.get("levels")),
        "data_dim": config["data_dim"],
        "run": str(run),
    }
    rows = [
        {
            "index": i,
            "label": int(labels[i]) if labels is not None else "",
            "log_px": f"{res.log_px[i].item():.6f}",
            "stderr": f"{res.stderr[i].item():.6g}",
            "elbo": f"{res.elbo[i].item():.6f}",
            "ess": f"{res.ess[i].item():.4f}",
            "khat": f"{res.khat[i].item():.4f}",
        }
        for i in range(len(res))
    ]
    write_csv(run / f"evaluation-K{k}.csv", rows)
    plots.plot_khat(run / f"khat-K{k}.png", res.khat)
    write_json(run / f"evaluation-K{k}.json", summary)
    print(
        f"log p(x) = {res.mean:.3f} nats/image (Monte Carlo s.e. {res.mean_stderr:.3f}; "
        f"s.e. over data {res.data_stderr:.3f}) on {len(res)} {name} images, K={k}, "
        f"{seconds:.0f} s; ELBO {res.elbo.mean().item():.3f}; "
        f"k-hat > 0.7 for {summary['share_khat_over_0.7']:.1%}\n"
        f"on the {summary['scale']} scale: {summary['nats_per_image']:.3f} nats/image, "
        f"{summary['bits_per_dim']:.4f} bits/dim"
    )
    print(f"wrote {run / f'evaluation-K{k}.json'}, .csv and khat-K{k}.png")


def cmd_compare(args) -> None:
    from . import plots
    from .cli import CLIError

    try:
        table = compare(args.runs, args.num_samples)
    except ComparisonError as err:
        raise CLIError(str(err)) from None
    text = format_table(table)
    print(text)
    plots.plot_compare(args.png, table)
    if args.markdown:
        write_text(args.markdown, text + "\n")
    print(f"wrote {args.png}" + (f" and {args.markdown}" if args.markdown else ""))
