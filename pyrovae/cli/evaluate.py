"""``pyrovae evaluate``: log p(x) of a run's held-out data by importance sampling, defensive
importance sampling or AIS (and BDMC on simulated data), written to files."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro

from ..data import heldout_seed
from ..infer import AIS, ContractError, bdmc, log_marginal_likelihood
from ..infer.importance import DEFAULT_CHUNK_SIZE
from ..io import file_fingerprint, write_csv, write_json
from ..plots import plot_khat
from ..runs import checkpoint_fingerprint, heldout_batch
from ..scoring import METHODS, evaluation_name, on_scale
from .common import CLIError, at_least, datapoint_unit, device, positive_int, seed, trained_run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="estimate log p(x) per held-out datapoint (importance sampling, defensive IS or AIS)",
        description="Estimate log p(x_i) for each held-out datapoint of a run (the test split for "
        "mnist/fashion-mnist), with Monte Carlo standard errors, effective sample sizes and PSIS "
        "k-hat. --method is: K importance samples from the guide; defensive: K samples from a "
        "mixture of the guide, a heavy-tailed guide and the prior; ais: annealed importance "
        "sampling with K chains and T steps. Writes RUN/evaluation-[METHOD-]K<K>.json (summary), "
        ".csv (per datapoint) and RUN/khat-....png; --bdmc N also runs BDMC on N datapoints "
        "simulated from the model and writes RUN/bdmc-T<T>-K<K>.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder written by `pyrovae train`")
    p.add_argument("--method", choices=METHODS, default="is", help="the estimator of log p(x)")
    p.add_argument("--num-samples", type=at_least(2), default=None,
                   help="importance samples K per datapoint (default 5000), or AIS chains (default 16)")
    p.add_argument("--ais-steps", type=positive_int, default=1000, help="AIS: T, the number of annealing steps")
    p.add_argument("--ais-leapfrog", type=positive_int, default=5, help="AIS: leapfrog steps per HMC move")
    p.add_argument("--bdmc", type=positive_int, default=None, metavar="N",
                   help="AIS: also sandwich log p(x) of N datapoints simulated from the model (BDMC)")
    p.add_argument(
        "--max-datapoints", type=positive_int, default=None,
        help="evaluate only the first N held-out points",
    )
    p.add_argument(
        "--chunk-size", type=positive_int, default=None,
        help=f"most (sample, datapoint) pairs per pass; bounds memory (default {DEFAULT_CHUNK_SIZE}, or the "
        "model's own: 64 sentences for text models, whose passes hold a softmax per token)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the importance samples")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: the run's device")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes that evaluate chunks side by side, one thread each (default: one per "
                   "thread on the CPU when the work is large; 1 = in this process); the result does not depend on it")
    p.add_argument("--no-jit", dest="jit", action="store_false", default=None,
                   help="do not compile the importance-sampling pass with torch.jit.trace (default: compiled when "
                   "the evaluation is long; checked against eager, so the result does not depend on it)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> None:
    run = Path(args.run)
    if args.method != "ais" and (args.bdmc or args.ais_steps != 1000 or args.ais_leapfrog != 5):
        raise CLIError("--ais-steps, --ais-leapfrog and --bdmc belong to --method ais")
    k = args.num_samples or (16 if args.method == "ais" else 5000)
    options = AIS(num_steps=args.ais_steps, num_leapfrog=args.ais_leapfrog) if args.method == "ais" else args.method
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
            model.model, model.guide, *batch, num_samples=k, method=options,
            chunk_size=args.chunk_size or getattr(model, "evaluation_chunk_size", DEFAULT_CHUNK_SIZE),
            progress=args.progress, khat_warn_share=1.0,  # the caution printed below says it in full
            workers=args.workers, jit=args.jit,
        )
        seconds = time.perf_counter() - start
        simulated = _bdmc(model, batch, args, options) if args.bdmc else None
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
        if hasattr(model, "evaluation_summary"):  # e.g. text: NLL per sentence, perplexity per word
            summary.update(model.evaluation_summary(res, *batch))
        rows = [
            {
                "index": i,
                "label": int(labels[i]) if labels is not None else "",
                "log_px": f"{res.log_px[i].item():.6f}",
                "stderr": f"{res.stderr[i].item():.6g}",
                "elbo": f"{res.elbo[i].item():.6f}",
                "ess": f"{res.ess[i].item():.4f}",
                "khat": f"{res.khat[i].item():.4f}",
                **({"acceptance": f"{res.extras['acceptance'][i].item():.4f}",
                    "step_size": f"{res.extras['step_size'][i].item():.5g}"} if args.method == "ais" else {}),
            }
            for i in range(len(res))
        ]
        base = evaluation_name(k, subset, args.method, args.ais_steps)
        if checkpoint_fingerprint(run) != stamp["fingerprint"]:
            raise CLIError(f"{run}'s checkpoint changed while it was evaluated; evaluate it again")
        # the summary last, with the CSV's fingerprint: a reader sees all three files or stale ones it can tell
        write_csv(folder.dir / f"{base}.csv", rows)
        plot_khat(folder.dir / f"khat-{base[len('evaluation-'):]}.png", res.khat)
        summary["csv_fingerprint"] = file_fingerprint(folder.dir / f"{base}.csv")
        if simulated is not None:
            write_json(folder.dir / f"bdmc-T{args.ais_steps}-K{k}.json", {
                **simulated.summary(), "seconds": simulated.extras["seconds"], "sample_seed": args.seed,
                "model": config.model, "checkpoint_epoch": stamp["epoch"],
                "checkpoint_fingerprint": stamp["fingerprint"], "run": str(run),
            })
        write_json(folder.dir / f"{base}.json", summary)
    scope = f"the first {subset} of {total}" if subset else f"all {total}"
    how = f"AIS, T={args.ais_steps}, {k} chains" if args.method == "ais" else f"{args.method.upper()}, K={k}"
    share = summary["share_khat_over_0.7"]
    khat = f"k-hat > 0.7 for {share:.1%}" if share == share else "k-hat not fitted (fewer than 25 samples)"
    unit = datapoint_unit(config)
    print(
        f"log p(x) = {res.mean:.3f} nats/{unit} (Monte Carlo s.e. {res.mean_stderr:.3f}; "
        f"s.e. over data {res.data_stderr:.3f}) on {scope} {name} {unit}s, {how}, "
        f"{seconds:.0f} s; ELBO {res.elbo.mean().item():.3f}; {khat}"
    )
    if unit == "image":  # a sentence's scale is its perplexity, printed below
        print(f"on the {summary['scale']} scale: {summary['nats_per_image']:.3f} nats/image, "
              f"{summary['bits_per_dim']:.4f} bits/dim")
    if args.method == "ais":
        print(f"HMC acceptance: mean {res.extras['acceptance'].mean().item():.2f} "
              f"(min {res.extras['acceptance'].min().item():.2f} over the datapoints)")
    caveat = res.caveat()
    if caveat:
        print(f"caution: {caveat}")
    if simulated is not None:
        print(f"BDMC on {simulated.lower.log_px.numel()} datapoints simulated from the model: "
              f"{simulated.lower.mean:.3f} <= log p(x) <= {simulated.upper.mean:.3f} "
              f"(gap {simulated.gap:.3f} nats at T={args.ais_steps})")
    if "ppl_per_word" in summary:
        print(f"text: NLL {summary['nll_per_sentence']:.2f} nats/sentence, perplexity {summary['ppl_per_word']:.2f} "
              f"per word over {summary['num_tokens']:,} tokens (<eos> counted); ELBO-based: NLL "
              f"{summary['elbo_nll_per_sentence']:.2f}, perplexity {summary['elbo_ppl_per_word']:.2f}")
    print(f"wrote {run / f'{base}.json'}, .csv and khat PNG (checkpoint of epoch {stamp['epoch']})")


def _bdmc(model, batch, args, options):
    """BDMC on ``args.bdmc`` datapoints simulated with the shape (and conditions) of the held-out batch."""
    n = min(args.bdmc, batch[0].shape[0])
    start = time.perf_counter()
    try:
        res = bdmc(model.model, model.guide, *(t[:n] for t in batch), num_samples=args.num_samples or 16,
                   options=options, chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE, progress=args.progress,
                   workers=args.workers)
    except ContractError as err:
        raise CLIError(f"--bdmc: {err}") from None
    res.extras["seconds"] = time.perf_counter() - start
    return res
