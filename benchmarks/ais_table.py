"""log p(x) of one trained run by every estimator: importance sampling at several K, defensive
importance sampling, AIS at several T, and the BDMC gap on data simulated from the model.

Each measurement is saved to the JSON as soon as it ends (rerun to add more); ``--table``
writes the Markdown table of every run in the JSON into docs/ais.md. Per-datapoint estimates
are kept, so rows measured on fewer images are compared on the images they share.

    PYROVAE_DATA=../shared/data python benchmarks/ais_table.py runs/ais/demo --label demo \\
        --images 100 --is 1000 5000 20000 --defensive 5000 --ais 100 1000 10000 --bdmc 100 1000
    python benchmarks/ais_table.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pyro
import torch
from train_speed import write_section

import pyrovae
from pyrovae.infer import AIS, bdmc
from pyrovae.io import write_json
from pyrovae.runs import heldout_batch, load_run

ROOT = Path(__file__).resolve().parents[1]
JSON = ROOT / "benchmarks" / "results" / "ais.json"
DOCS = ROOT / "docs" / "ais.md"


def _machine() -> str:
    """The CPU's model name and core count (Linux), else what platform knows."""
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        return f"{names[0]}, {len(names)} cores, 1 thread used"
    except (OSError, IndexError):
        return f"{platform.machine()}, 1 thread used"


def _save(label: str, meta: dict, row: dict, path: Path) -> None:
    """Add ``row`` to run ``label`` in the JSON (replacing the row of the same method, K and T),
    re-reading the file first, so that runs measured by several processes at once all stay."""
    data = json.loads(path.read_text()) if path.exists() else {}
    entry = {**data.get(label, {}), **meta}
    key = (row["method"], row.get("K"), row.get("T"))
    entry["rows"] = [r for r in entry.get("rows", []) if (r["method"], r.get("K"), r.get("T")) != key] + [row]
    data[label] = entry
    write_json(path, data)  # strict JSON, written to a temporary name and renamed


def _row(method: str, setting: dict, res, seconds: float, images: int) -> dict:
    s = res.summary()
    return {
        "method": method, **setting, "images": images, "mean_log_px": s["mean_log_px"], "mc_stderr": s["mc_stderr"],
        "data_stderr": s["data_stderr"], "share_khat_over_0.7": s["share_khat_over_0.7"],
        "seconds": seconds, "seconds_per_1000_images": seconds * 1000 / images,
        "mean_acceptance": s.get("mean_acceptance"), "convergence": s.get("convergence"),
        "log_px": [round(v, 5) for v in res.log_px.tolist()], "stderr": [round(v, 5) for v in res.stderr.tolist()],
    }


def measure(args) -> None:
    torch.set_num_threads(1)
    model, config, stamp = load_run(args.run)
    batch, _, name = heldout_batch(model, config, "cpu")
    meta = {
        "run": str(args.run), "data": name, "data_space": config.data_space, "model": config.model,
        "model_options": config.model_options, "epochs": stamp["epoch"], "train_seed": config.seed,
        "sample_seed": args.seed, "machine": _machine(), "load_average": os.getloadavg()[0],
    }

    def done(row: dict) -> None:
        _save(args.label, meta, row, JSON)
        print(f"{args.label} {row['method']} K={row.get('K')} T={row.get('T')} on {row['images']}: "
              f"{row['mean_log_px']:.3f} ± {row['mc_stderr']:.3f} ({row['seconds']:.0f} s)", flush=True)

    def run(method, images: int, **kw):
        x = tuple(t[:images] for t in batch)
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        res = pyrovae.log_marginal_likelihood(model.model, model.guide, *x, method=method, progress=True, **kw)
        return res, time.perf_counter() - start

    for k in args.is_samples:
        res, sec = run("is", args.images, num_samples=k)
        done(_row("is", {"K": k}, res, sec, args.images))
    for k in args.defensive:
        res, sec = run("defensive", args.images, num_samples=k)
        done(_row("defensive", {"K": k}, res, sec, args.images))
    for t, images in zip(args.ais, args.ais_images or [args.images] * len(args.ais)):
        res, sec = run(AIS(num_steps=t), images, num_samples=args.chains)
        done(_row("ais", {"K": args.chains, "T": t}, res, sec, images))
    for t in args.bdmc:
        x = tuple(tt[: args.bdmc_images] for tt in batch)
        pyro.set_rng_seed(args.seed)
        start = time.perf_counter()
        res = bdmc(model.model, model.guide, *x, options=AIS(num_steps=t), num_samples=args.chains, progress=True)
        sec = time.perf_counter() - start
        row = {"method": "bdmc", "K": args.chains, "T": t, "images": args.bdmc_images, **res.summary(),
               "seconds": sec, "seconds_per_1000_images": sec * 1000 / args.bdmc_images,
               "mean_log_px": res.lower.mean, "mc_stderr": res.lower.mean_stderr,
               "gap_stderr": (res.upper.log_px - res.lower.log_px).std().item() / args.bdmc_images**0.5}
        done(row)


def _fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def table(path: Path = JSON) -> str:
    data = json.loads(path.read_text())
    parts = []
    for label, e in data.items():
        rows = e["rows"]
        ais = [r for r in rows if r["method"] == "ais"]
        best = max(ais, key=lambda r: (r["T"], r["images"])) if ais else None
        lines = [
            f"**{label}**: `{e['model']}` {e['model_options'].get('hidden')}→{e['model_options'].get('latent_dim')}, "
            f"{e['epochs']} epochs (seed {e['train_seed']}), held-out {e['data']} ({e['data_space']}); sample seed "
            f"{e['sample_seed']}; {e['machine']} (load average {e['load_average']:.1f} at the start).",
            "",
            "| method | K (chains) | T | images | mean log p(x) | MC s.e. | k̂ > 0.7 | Δ to AIS T=" +
            (f"{best['T']}" if best else "–") + " (same images) | s per 1,000 images |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            if r["method"] == "bdmc":
                continue
            delta = ""
            if best is not None and r is not best:
                n = min(r["images"], best["images"])
                delta = _fmt(sum(a - b for a, b in zip(r["log_px"][:n], best["log_px"][:n])) / n)
            share = r["share_khat_over_0.7"]
            fitted = share is not None and share == share and r["K"] >= 25  # 16 AIS chains: no tail to fit
            khat = f"{share:.0%}" if fitted else "–"
            name = {"is": "IS from q", "defensive": "defensive IS", "ais": "AIS"}[r["method"]]
            lines.append(f"| {name} | {r['K']:,} | {r.get('T') or ''} | {r['images']} | {r['mean_log_px']:.3f} | "
                         f"{r['mc_stderr']:.3f} | {khat} | {delta} | {r['seconds_per_1000_images']:,.0f} |")
        bd = [r for r in rows if r["method"] == "bdmc"]
        if bd:
            lines += ["", "BDMC on datapoints simulated from the model (forward AIS ≤ log p(x) ≤ reverse AIS):", "",
                      "| T | chains | images | lower | upper | gap | s.e. of gap | acceptance fwd / rev "
                      "| s per 1,000 images |",
                      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for r in sorted(bd, key=lambda r: r["T"]):
                lines.append(f"| {r['T']:,} | {r['K']} | {r['images']} | {r['mean_lower']:.3f} | "
                             f"{r['mean_upper']:.3f} | "
                             f"{r['gap']:.3f} | {r['gap_stderr']:.3f} | {r['mean_acceptance_forward']:.2f} / "
                             f"{r['mean_acceptance_reverse']:.2f} | {r['seconds_per_1000_images']:,.0f} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot(path: Path = JSON, out: Path = ROOT / "docs" / "images" / "ais" / "estimators.png") -> Path:
    """Mean log p(x) against cost per estimator, on the images every row shares, one panel per run."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 4), squeeze=False)
    for ax, (label, e) in zip(axes[0], data.items()):
        # the rows on at least 20 images, compared on the images they share
        rows = [r for r in e["rows"] if r["method"] != "bdmc" and r["images"] >= 20]
        n = min(r["images"] for r in rows)
        for method, marker in (("is", "o"), ("defensive", "s"), ("ais", "^")):
            rs = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seconds_per_1000_images"])
            if not rs:
                continue
            means = [sum(r["log_px"][:n]) / n for r in rs]
            se = [(sum(v * v for v in r["stderr"][:n]) ** 0.5) / n for r in rs]
            ax.errorbar([r["seconds_per_1000_images"] for r in rs], means, yerr=se, marker=marker, capsize=3,
                        label={"is": "IS (K)", "defensive": "defensive IS (K)", "ais": "AIS (T)"}[method])
            for r, m in zip(rs, means):
                ax.annotate(f"{r['T'] if method == 'ais' else r['K']:,}", (r["seconds_per_1000_images"], m),
                            textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("seconds per 1,000 images (1 thread)")
        ax.set_ylabel(f"mean log p(x) on the first {n} images")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?")
    p.add_argument("--label")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--is", dest="is_samples", type=int, nargs="*", default=[])
    p.add_argument("--defensive", type=int, nargs="*", default=[])
    p.add_argument("--ais", type=int, nargs="*", default=[])
    p.add_argument("--ais-images", type=int, nargs="*", default=None, help="images per --ais T (default --images)")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--bdmc", type=int, nargs="*", default=[])
    p.add_argument("--bdmc-images", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="write the table of the JSON into docs/ais.md")
    args = p.parse_args()
    if args.run:
        measure(args)
    if args.table:
        picture = plot()
        write_section(DOCS, "ais-table", table() + f"\n\n![estimators](images/ais/{picture.name})")
        print(f"wrote {DOCS} and {picture}")


if __name__ == "__main__":
    main()
