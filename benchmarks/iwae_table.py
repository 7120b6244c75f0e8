"""Table of test log p(x) for the runs of ``benchmarks/iwae_mnist.sh``, beside Burda et al.

Reads ``OUT/burda-{vae-k1,iwae-k5,iwae-k50}/`` (config.json, metrics.csv,
evaluation-K5000.json) and writes the ``iwae-table`` section of docs/benchmarks.md.

    python benchmarks/iwae_table.py --out benchmarks/out --machine "1x H100, 3 runs sharing it"
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from train_speed import write_section

ROOT = Path(__file__).resolve().parents[1]
# Burda, Grosse & Salakhutdinov (2016), Table 1, MNIST, two stochastic-layer-free (one layer) models,
# 3280 epochs, test log p(x) estimated with 5000 samples.
BURDA = {"vae-k1": ("VAE", 1, -86.76), "iwae-k5": ("IWAE", 5, -85.54), "iwae-k50": ("IWAE", 50, -84.78)}


def row(run: Path) -> dict:
    ev = json.loads((run / "evaluation-K5000.json").read_text())
    with open(run / "metrics.csv") as f:
        metrics = list(csv.DictReader(f))
    return {
        "epochs": len(metrics),
        "train_hours": sum(float(m["seconds"]) for m in metrics) / 3600,
        "log_px": ev["mean_log_px"],
        "mc_se": ev["mc_stderr"],
        "data_se": ev["data_stderr"],
        "elbo": ev["mean_elbo"],
        "khat07": ev["share_khat_over_0.7"],
        "n": ev["num_datapoints"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"), help="OUT_DIR of iwae_mnist.sh")
    p.add_argument("--machine", required=True, help="where the runs trained, for the table's caption")
    p.add_argument("--command", default="bash benchmarks/iwae_mnist.sh", help="the command that made the runs")
    p.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    lines = [
        "| model | K (train) | epochs | training time | test log p(x), K=5000 | s.e. (MC; data) "
        "| test ELBO | k̂ > 0.7 | Burda et al. (3280 epochs) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (model, k, burda) in BURDA.items():
        run = Path(args.out) / f"burda-{name}"
        if not (run / "evaluation-K5000.json").exists():
            raise SystemExit(f"{run}: no evaluation-K5000.json; run benchmarks/iwae_mnist.sh first")
        r = row(run)
        lines.append(
            f"| {model} | {k} | {r['epochs']} | {r['train_hours']:.2f} h | {r['log_px']:.2f} | "
            f"{r['mc_se']:.3f}; {r['data_se']:.2f} | {r['elbo']:.2f} | {r['khat07']:.0%} | {burda:.2f} |"
        )
    body = (
        f"Dynamically binarised MNIST (60,000 training images, a fresh binarisation every epoch); "
        f"test log p(x) on all {r['n']:,} test images binarised once (seed 7919), K = 5000 importance "
        f"samples (seed 0). Trained on {args.machine}. Command: `{args.command}`, then "
        f"`python benchmarks/iwae_table.py`.\n\n" + "\n".join(lines)
    )
    write_section(Path(args.docs), "iwae-table", body)
    print(body)


if __name__ == "__main__":
    main()
