"""``pyrovae evaluate``: importance-sampled log p(x) of a run's held-out data, written to files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro

from ..data import heldout_seed
from ..infer import log_marginal_likelihood
from ..infer.importance import DEFAULT_CHUNK_SIZE
from ..io import file_fingerprint, write_csv, write_json
from ..plots import plot_khat
from ..runs import checkpoint_fingerprint, heldout_batch
from ..scoring import on_scale
from .common import CLIError, at_least, device, positive_int, seed, trained_run


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
    p.add_argument("--num-samples", type=at_least(2), default=5000, help="importance samples K per datapoint")
    p.add_argument(
        "--max-datapoints", type=positive_int, default=None,
        help="evaluate only the first N held-out points",
    )
    p.add_argument(
        "--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE,
        help="most (sample, datapoint) pairs per pass; bounds memory",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the importance samples")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: the run's device")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def evaluation_name(num_samples: int, subset: int | None) -> str:
    """``evaluation-K5000`` for the whole held-out set, ``evaluation-K5000-first100`` for a subset:
    a subset never takes the name (and so the place) of a fuller evaluation."""
    return f"evaluation-K{num_samples}" + (f"-first{subset}" if subset else "")


def cmd_evaluate(args) -> None:
    run = Path(args.run)
    with trained_run(args) as (folder, model, config, stamp):
        refusal = model.report().get("no_log_px")  # a model without p(x) (an autoencoder) says why
        if refusal:
            raise CLIError(f"cannot evaluate {run} (model {config.model!r}): {refusal}")
        dev = device(args.device or config.device)
        model = model.to(dev)
        batch, labels, name = heldout_batch(model, config, dev)
        total = batch[0].shape[0]
        subset = args.max_datapoints if args.max_datapoints and args.max_datapoints < total else None
        if subset:
            batch = tuple(t[:subset] for t in batch)
            labels = labels[:subset] if labels is not None else None
        model.check_data(*batch, what="held-out data")
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        res = log_marginal_likelihood(
            model.model, model.guide, *batch, num_samples=args.num_samples, chunk_size=args.chunk_size,
            progress=args.progress,
        )
        seconds = time.perf_counter() - start
        k = args.num_samples
        report = model.report()
        scored_dim = report.get("scored_dim", config.data_dim)  # a completion model scores only its output pixels
        summary = {
            **res.summary(),
            "seconds": seconds,
            "data": name,
            "dataset": config.dataset,
            "data_space": config.data_space,
            "levels": config.levels,
            "heldout_seed": heldout_seed(config.seed),
            "heldout_size": total,
            "subset": subset,
            "sample_seed": args.seed,
            "model": config.model,
            **report,
            **on_scale(res.mean, scored_dim, config.data_space, config.levels,
                       discrete=report.get("discrete_likelihood", True), scales=report.get("scales")),
            "data_dim": scored_dim,
            "checkpoint_epoch": stamp["epoch"],
            "checkpoint_fingerprint": stamp["fingerprint"],
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
        base = evaluation_name(k, subset)
        if checkpoint_fingerprint(run) != stamp["fingerprint"]:
            raise CLIError(f"{run}'s checkpoint changed while it was evaluated; evaluate it again")
        # the summary last, with the CSV's fingerprint: a reader sees all three files or stale ones it can tell
        write_csv(folder.dir / f"{base}.csv", rows)
        plot_khat(folder.dir / f"khat-K{k}{base[len(f'evaluation-K{k}'):]}.png", res.khat)
        summary["csv_fingerprint"] = file_fingerprint(folder.dir / f"{base}.csv")
        write_json(folder.dir / f"{base}.json", summary)
    scope = f"the first {subset} of {total}" if subset else f"all {total}"
    print(
        f"log p(x) = {res.mean:.3f} nats/image (Monte Carlo s.e. {res.mean_stderr:.3f}; "
        f"s.e. over data {res.data_stderr:.3f}) on {scope} {name} images, K={k}, "
        f"{seconds:.0f} s; ELBO {res.elbo.mean().item():.3f}; "
        f"k-hat > 0.7 for {summary['share_khat_over_0.7']:.1%}\n"
        f"on the {summary['scale']} scale: {summary['nats_per_image']:.3f} nats/image, "
        f"{summary['bits_per_dim']:.4f} bits/dim"
    )
    print(f"wrote {run / f'{base}.json'}, .csv and khat PNG (checkpoint of epoch {stamp['epoch']})")
