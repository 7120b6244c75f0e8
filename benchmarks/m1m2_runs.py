"""M1+M2 with 100 labels: pyrovae's `m1m2` runs beside the plain-torch runs, test accuracy per epoch.

Reads finished (or stopped) ``pyrovae train --model m1m2`` run folders (their ``config.json`` and
``metrics.csv``; ``heldout_accuracy`` is the accuracy on MNIST's 10,000 test digits, which are the
run's held-out set) and the M1 run they stand on, writes what a table needs into one JSON, and plots
the runs' test accuracy per epoch beside ``m1m2_plain_torch.py``'s runs and two anchors: Pyro's
tutorial table (0.932 with 100 labels) and Pyro's own ``ss_vae_M2.py`` as run here (0.641).

    python benchmarks/m1m2_runs.py --runs /tmp/lib/m1m2-100-a200 /tmp/lib/m1m2-100-s1 /tmp/lib/m1m2-100-s2 \
        --variants /tmp/lib/m1m2-100-a1000 --at-epoch 50 \
        --json benchmarks/results/m1m2_library_100labels.json --figure docs/images/zoo/m1m2-100labels.png
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PYRO_TABLE, PYRO_SCRIPT = 0.932, 0.641  # docs/zoo.md: the tutorial's table; ss_vae_M2.py run on this machine


def read_run(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    accuracy = [float(r["heldout_accuracy"]) for r in rows]
    options = config["model_options"]
    m1 = Path(options["m1"])
    m1_config = json.loads((m1 / "config.json").read_text()) if (m1 / "config.json").exists() else None
    m1_metrics = []
    if (m1 / "metrics.csv").exists():
        with open(m1 / "metrics.csv") as f:
            m1_metrics = list(csv.DictReader(f))
    return {
        "run": str(run), "seed": config["seed"], "lr": config["lr"], "batch_size": config["batch_size"],
        "model_options": {k: v for k, v in options.items() if k != "m1_options"},
        "m1_options": options.get("m1_options"),
        "m1_epochs": len(m1_metrics), "m1_heldout_elbo": float(m1_metrics[-1]["heldout_elbo"]) if m1_metrics else None,
        "m1_seed": m1_config["seed"] if m1_config else None,
        "epochs": len(rows), "seconds_per_epoch_median": statistics.median(float(r["seconds"]) for r in rows),
        "test_accuracy": accuracy, "test_accuracy_last": accuracy[-1],
        "test_accuracy_last5_mean": statistics.mean(accuracy[-5:]), "test_accuracy_max": max(accuracy),
        "heldout_elbo_enum_last": float(rows[-1]["heldout_elbo_enum"]),
    }


def plot(runs: dict[str, dict], plain: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, res in runs.items():
        acc = res["test_accuracy"]
        ax.plot(range(1, len(acc) + 1), acc, lw=1.6, label=f"pyrovae m1m2, {label}")
    for label, res in plain.items():
        acc = [h["test"] for h in res["hist"]]
        ax.plot(range(1, len(acc) + 1), acc, lw=0.9, ls="--", label=f"plain torch, {label}")
    ax.axhline(PYRO_TABLE, color="k", lw=0.8, ls=":", label=f"Pyro's tutorial table (M2), {PYRO_TABLE}")
    ax.axhline(PYRO_SCRIPT, color="grey", lw=0.8, ls=":", label=f"Pyro's ss_vae_M2.py here, {PYRO_SCRIPT}")
    ax.set(xlabel="epoch", ylabel="test accuracy (10,000 digits)", ylim=(0.6, 0.96),
           title="M1+M2, 100 labels (seed 0): test accuracy per epoch")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="m1m2 run folders: seeds of one setting")
    p.add_argument("--variants", nargs="*", type=Path, default=[], help="runs of other settings (not in the mean)")
    p.add_argument("--plain", nargs="*", default=["d", "e", "f"], help="m1m2_plain_torch_*.json letters to plot")
    p.add_argument("--at-epoch", type=int, default=50, help="compare the runs after this many epochs")
    p.add_argument("--json", type=Path, default=RESULTS / "m1m2_library_100labels.json")
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "zoo" / "m1m2-100labels.png")
    a = p.parse_args()
    runs, variants = {}, {}
    for run in [*a.runs, *a.variants]:
        res = read_run(run)
        opts = res["model_options"]
        alpha, units = opts.get("aux_loss_multiplier", 200.0), opts.get("m1_units", "active")
        (runs if run in a.runs else variants)[f"seed {res['seed']}, alpha {alpha:g}, units {units}"] = res
    plain = {}
    for letter in a.plain:
        res = json.loads((RESULTS / f"m1m2_plain_torch_{letter}.json").read_text())
        units = "active" if res["args"].get("active_only") else "all"
        plain[f"{letter}: alpha {res['alpha']:g}, lr {res['args'].get('lr', 3e-4):g}, units {units}"] = res
    at = [res["test_accuracy"][a.at_epoch - 1] for res in runs.values() if res["epochs"] >= a.at_epoch]
    window = [statistics.mean(res["test_accuracy"][a.at_epoch - 5:a.at_epoch]) for res in runs.values()
              if res["epochs"] >= a.at_epoch]
    across = {"epoch": a.at_epoch, "runs": len(at), "test_accuracy": at, "mean": statistics.mean(at),
              "sd": statistics.stdev(at) if len(at) > 1 else None,
              "mean_of_last5_means": statistics.mean(window)}
    a.json.write_text(json.dumps({
        "what": "pyrovae train --model m1m2 with 100 labels (choose_labelled seed 0) on MNIST, dynamically "
                "binarised; test accuracy of arg max q(y | mean of q(z1 | x)) on the 10,000 test digits after "
                "every epoch (no validation split: the last epoch and the mean of the last 5 are the figures to "
                "quote; the maximum is selected on the test set)",
        "machine": f"{platform.processor() or platform.machine()}, 2 cores shared, one thread per run, two runs side "
                   "by side",
        f"at_epoch_{a.at_epoch}": across,
        "runs": runs,
        "variants": variants,
    }, indent=1))
    plot({**runs, **variants}, plain, a.figure)
    for label, res in {**runs, **variants}.items():
        print(f"{label}: {res['epochs']} epochs, last {res['test_accuracy_last']:.4f}, last-5 mean "
              f"{res['test_accuracy_last5_mean']:.4f}, max {res['test_accuracy_max']:.4f}, "
              f"{res['seconds_per_epoch_median']:.0f} s/epoch")
    sd = f" +/- {across['sd']:.4f} (sd)" if across["sd"] is not None else ""
    print(f"after {a.at_epoch} epochs, {across['runs']} runs: {across['mean']:.4f}{sd}; mean of epochs "
          f"{a.at_epoch - 4}-{a.at_epoch}: {across['mean_of_last5_means']:.4f}")


if __name__ == "__main__":
    main()
