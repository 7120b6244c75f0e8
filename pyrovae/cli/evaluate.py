"""``pyrovae evaluate``: importance-sampled log p(x) of a run's held-out data, written to files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

from ..data import as_tensors, heldout_generator, heldout_seed
from ..infer import log_marginal_likelihood
from ..infer.importance import DEFAULT_CHUNK_SIZE
from ..io import write_csv, write_json
from ..plots import plot_khat
from ..runs import load_model, load_run_data
from ..scoring import on_scale
from .common import CLIError, device


def add_parser(sub) -> None:
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
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
        help="most (sample, datapoint) pairs per pass; bounds memory",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: the run's device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def heldout_batch(model, config, dev) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, str]:
    """The run's held-out tensors as the model observes them, drawn once with the run's seed."""
    _, heldout = load_run_data(config)
    batch = as_tensors(model.prepare_data(heldout), heldout_generator(config.seed), dev, "held-out data")
    return batch, heldout.labels, heldout.name


def cmd_evaluate(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_samples < 2:
        raise CLIError("--num-samples must be at least 2 (standard errors and k-hat need two)")
    model, config = load_model(args.run)
    dev = device(args.device or config.device)
    model = model.to(dev)
    batch, labels, name = heldout_batch(model, config, dev)
    if args.max_datapoints:
        batch = tuple(t[: args.max_datapoints] for t in batch)
        labels = labels[: args.max_datapoints] if labels is not None else None
    model.check_data(*batch, what="held-out data")
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    res = log_marginal_likelihood(
        model.model, model.guide, *batch, num_samples=args.num_samples, chunk_size=args.chunk_size,
        progress=args.progress,
    )
    seconds = time.perf_counter() - start
    k = args.num_samples
    run = Path(args.run)
    summary = {
        **res.summary(),
        "seconds": seconds,
        "data": name,
        "dataset": config.dataset,
        "data_space": config.data_space,
        "levels": config.levels,
        "heldout_seed": heldout_seed(config.seed),
        "sample_seed": args.seed,
        "model": config.model,
        **model.report(),
        **on_scale(res.mean, config.data_dim, config.data_space, config.levels),
        "data_dim": config.data_dim,
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
    plot_khat(run / f"khat-K{k}.png", res.khat)
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
