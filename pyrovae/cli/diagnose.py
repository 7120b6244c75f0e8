"""``pyrovae diagnose``: what a run's latent code learned, written to its folder (``docs/diagnostics.md``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

from .. import diagnostics
from ..data import heldout_seed
from ..infer import ContractError
from ..io import write_json
from ..runs import checkpoint_fingerprint, heldout_batch
from .common import CLIError, at_least, non_negative_float, positive_int, seed, trained_run

TRAVERSAL_ROWS = 12  # most dimensions drawn in a traversal picture: the largest KL (or activity) first


def add_parser(sub) -> None:
    p = sub.add_parser(
        "diagnose",
        help="what the latent code learned: KL per dimension, active units, mutual information, inference gaps",
        description="Diagnose a run's latent code on its held-out data: the KL to the prior per latent "
        "dimension, active units (Burda et al. 2016), the mutual information I(x; z) under the aggregate "
        "posterior with the rate/distortion split (Alemi et al. 2018), and the approximation and amortisation "
        "gaps (Cremer et al. 2018). Writes RUN/diagnostics.json, RUN/kl-per-dimension.png and latent "
        "traversals (RUN/traversals-prior.png, RUN/traversals-x0.png) for VAE-like models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder written by `pyrovae train`")
    p.add_argument("--num-points", type=positive_int, default=2000,
                   help="the first N held-out points for the KL, active units, mutual information (at most log N) "
                   "and rate/distortion")
    p.add_argument("--gap-points", type=at_least(0), default=100,
                   help="the first M held-out points for the inference gaps (0: skip them)")
    p.add_argument("--gap-steps", type=positive_int, default=500, help="Adam steps optimising q* per datapoint")
    p.add_argument("--num-samples", type=at_least(2), default=1000,
                   help="importance samples K for log p(x) and the ELBOs of the inference gaps")
    p.add_argument("--threshold", type=non_negative_float, default=diagnostics.ACTIVITY_THRESHOLD,
                   help="a unit is active when Cov_x(E_q[z_u]) exceeds this")
    p.add_argument("--seed", type=seed, default=0, help="seed of the diagnostics' random draws")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> None:
    run = Path(args.run)
    with trained_run(args) as (folder, model, config, stamp):
        batch, _, name = heldout_batch(model, config, torch.device("cpu"))
        points = min(args.num_points, batch[0].shape[0])
        batch = tuple(t[:points] for t in batch)
        model.check_data(*batch, what="held-out data")
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        found = diagnostics.report(model.model, model.guide, *batch, gap_points=args.gap_points,
                                   gap_steps=args.gap_steps, num_samples=args.num_samples,
                                   threshold=args.threshold, progress=args.progress)
        summary = {
            **found.summary(), "seconds": time.perf_counter() - start, "data": name, "dataset": config.dataset,
            "data_space": config.data_space, "heldout_seed": heldout_seed(config.seed), "sample_seed": args.seed,
            "model": config.model, **model.report(), "checkpoint_epoch": stamp["epoch"],
            "checkpoint_fingerprint": stamp["fingerprint"], "run": str(run),
        }
        pictures = _pictures(folder.dir, model, found, batch[0], config.image_shape, summary["skipped"])
        if checkpoint_fingerprint(run) != stamp["fingerprint"]:
            raise CLIError(f"{run}'s checkpoint changed while it was diagnosed; diagnose it again")
        summary["pictures"] = pictures
        write_json(folder.dir / "diagnostics.json", summary)  # last: its pictures are in place
    print(_describe(summary, points, name))
    print(f"wrote {run / 'diagnostics.json'}" + (f" and {', '.join(pictures)}" if pictures else "")
          + f" (checkpoint of epoch {stamp['epoch']})")


def _pictures(run: Path, model, found: diagnostics.Report, x: torch.Tensor, image_shape, skipped: dict) -> list[str]:
    """kl-per-dimension.png and, for a model that decodes codes (decode_mean), the traversals."""
    written = []
    if found.activity is not None:
        diagnostics.plot_kl_per_dimension(run / "kl-per-dimension.png", found.activity, found.kl)
        written.append("kl-per-dimension.png")
    strength = found.kl.mean if found.kl is not None else found.activity.activity if found.activity else None
    latent_dim = getattr(model, "latent_dim", None)
    dims = None
    if strength is not None and latent_dim is not None and len(strength) == latent_dim:
        dims = strength.argsort(descending=True)[:TRAVERSAL_ROWS].tolist()
    for picture, around in (("traversals-prior.png", None), ("traversals-x0.png", x)):
        try:
            trav = diagnostics.latent_traversals(model, around, dims=dims)
        except ContractError as err:
            skipped["traversals"] = str(err)
            break
        labels = [f"z[{j}]" + (f" {strength[j]:.2f}" if dims is not None else "") for j in trav.dims]
        diagnostics.plot_traversals(run / picture, trav, image_shape, labels)
        written.append(picture)
    return written


def _describe(s: dict, points: int, name: str) -> str:
    lines = [f"diagnostics of {points} {name} held-out points:"]
    if "active_units" in s:
        lines.append(f"  active units {s['active_units']} of {s['latent_units']} (Cov_x E_q[z_u] > "
                     f"{s['activity_threshold']:g})")
    if "kl_total" in s:
        top = sorted(s["kl_per_dim"].items(), key=lambda kv: -kv[1])[:5]
        lines.append(f"  KL to the prior {s['kl_total']:.2f} nats; largest: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in top))
    if "mutual_information" in s:
        lines.append(f"  mutual information I(x; z) {s['mutual_information']:.2f} nats (at most log N = "
                     f"{s['mi_max_log_n']:.2f})")
    if "rate" in s:
        extra = f", marginal KL(q(z) || p(z)) {s['marginal_kl']:.2f}" if "marginal_kl" in s else ""
        lines.append(f"  rate {s['rate']:.2f}, distortion {s['distortion']:.2f}, ELBO {s['elbo']:.2f} nats{extra}")
    if "approximation_gap" in s:
        lines.append(f"  on {s['gap_points']} points, K={s['gap_num_samples']}: log p(x) {s['log_px']:.2f}, "
                     f"ELBO(q*) {s['elbo_qstar']:.2f}, ELBO(q) {s['elbo_q']:.2f}: approximation gap "
                     f"{s['approximation_gap']:.2f}, amortisation gap {s['amortisation_gap']:.2f} nats")
    for what, why in s["skipped"].items():
        lines.append(f"  {what}: skipped ({why.split('; ')[0]})")
    return "\n".join(lines)
