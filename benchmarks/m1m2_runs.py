"""M1+M2: pyrovae's `m1m2` runs at each label count, test accuracy per epoch against Pyro's table.

Reads finished (or stopped) ``pyrovae train --model m1m2`` run folders (their ``config.json`` and
``metrics.csv``; ``heldout_accuracy`` is the accuracy on MNIST's 10,000 test digits, which are the
run's held-out set) and the M1 run they stand on, groups them by ``num_labels``, writes what a table
needs into one JSON, and plots the runs' test accuracy per epoch, one panel per label count, against
Pyro's tutorial table (0.932 / 0.944 / 0.949 / 0.958 with 100 / 600 / 1000 / 3000 labels). The 100-label
panel also shows ``m1m2_plain_torch.py``'s runs and Pyro's own ``ss_vae_M2.py`` as run here (0.641).
Runs whose folders are gone are read back from an earlier JSON of this script (``--earlier``).

    python benchmarks/m1m2_runs.py --runs /tmp/lib/m1m2-100-a200 /tmp/lib/m1m2-100-s1 /tmp/lib/m1m2-100-s2 \
        --variants /tmp/lib/m1m2-100-a1000 --at-epoch 50 \
        --json benchmarks/results/m1m2_library_100labels.json --figure docs/images/zoo/m1m2-100labels.png
    python benchmarks/m1m2_runs.py --runs /tmp/lib/m1m2-100-s0 /tmp/lib/m1m2-600-s0 /tmp/lib/m1m2-3000-s0 \
        --at-epoch 25 --at-epoch-for 100=73 --earlier benchmarks/results/m1m2_library_100labels.json \
        --json benchmarks/results/m1m2_library_100_600_3000labels.json --figure docs/images/zoo/m1m2-labels.png
    python benchmarks/m1m2_runs.py --runs /tmp/lib/m1m2wu-3000-s0 /tmp/lib/m1m2wu-3000-s1 /tmp/lib/m1m2wu-3000-s2 \
        /tmp/lib/m1m2wu-1000-s0 /tmp/lib/m1m2wu-600-s0 \
        --variants /tmp/lib/m1m2-1000-s0 /tmp/lib/m1m2fb-1000-s0 /tmp/lib/m1m2fb-1000-s1 /tmp/lib/m1m2fb-600-s0 \
        /tmp/lib/m1m2fb-600-s1 --at-epoch 25 \
        --earlier benchmarks/results/m1m2_library_100_600_3000labels.json \
        --json benchmarks/results/m1m2_library_kl_warmup_m1.json --figure docs/images/zoo/m1m2-kl-warmup.png
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
# docs/zoo.md: the tutorial's table (M2 alone) per label count; ss_vae_M2.py run on this machine, 100 labels
PYRO_TABLE, PYRO_SCRIPT = {100: 0.932, 600: 0.944, 1000: 0.949, 3000: 0.958}, 0.641


def read_m1(m1: Path) -> dict:
    """How an M1 run was trained and where it ended (None where its folder is gone)."""
    m1_config = json.loads((m1 / "config.json").read_text()) if (m1 / "config.json").exists() else None
    m1_metrics = []
    if (m1 / "metrics.csv").exists():
        with open(m1 / "metrics.csv") as f:
            m1_metrics = list(csv.DictReader(f))
    return {
        "m1_epochs": len(m1_metrics), "m1_heldout_elbo": float(m1_metrics[-1]["heldout_elbo"]) if m1_metrics else None,
        "m1_seed": m1_config["seed"] if m1_config else None,
        "m1_kl_anneal": m1_config.get("kl_anneal") if m1_config else None,
        "m1_free_bits": m1_config.get("free_bits") if m1_config else None,
    }


def read_run(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    accuracy = [float(r["heldout_accuracy"]) for r in rows]
    options = config["model_options"]
    return {
        "run": str(run), "seed": config["seed"], "lr": config["lr"], "batch_size": config["batch_size"],
        "model_options": {k: v for k, v in options.items() if k != "m1_options"},
        "m1_options": options.get("m1_options"), **read_m1(Path(options["m1"])),
        "epochs": len(rows), "seconds_per_epoch_median": statistics.median(float(r["seconds"]) for r in rows),
        "test_accuracy": accuracy, "test_accuracy_last": accuracy[-1],
        "test_accuracy_last5_mean": statistics.mean(accuracy[-5:]), "test_accuracy_max": max(accuracy),
        "heldout_elbo_enum_last": float(rows[-1]["heldout_elbo_enum"]),
    }


M1_COLOURS = {"plain": "C3", "warm-up": "C0", "free bits": "C2"}


def m1_kind(res: dict) -> str:
    """How a run's M1 was trained: plain, KL warm-up or free bits."""
    return "warm-up" if res.get("m1_kl_anneal") else "free bits" if res.get("m1_free_bits") else "plain"


def run_label(res: dict, defaults: bool = True) -> str:
    """A run's name in the figure and the JSON: seed, alpha, units (``defaults=False``: only where they
    differ from m1m2's defaults) and how its M1 was trained."""
    opts = res["model_options"]
    alpha, units = opts.get("aux_loss_multiplier", 200.0), opts.get("m1_units", "active")
    m1 = {"warm-up": f"M1 KL warm-up {res.get('m1_kl_anneal')}", "free bits": f"M1 free bits {res.get('m1_free_bits')}",
          "plain": "M1 plain"}[m1_kind(res)]
    parts = [f"seed {res['seed']}"]
    parts += [f"alpha {alpha:g}"] if defaults or alpha != 200 else []
    parts += [f"units {units}"] if defaults or units != "active" else []
    return ", ".join([*parts, m1])


def plot(groups: dict[int, dict[str, dict]], plain: dict[str, dict], out: Path) -> None:
    """One panel per label count: each run's test accuracy per epoch and Pyro's table for that count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = sorted(groups)
    fig, axes = plt.subplots(1, len(counts), figsize=(7.5 if len(counts) == 1 else 3.6 * len(counts), 4.2),
                             squeeze=False)
    for ax, n in zip(axes[0], counts):
        kinds = {m1_kind(res) for res in groups[n].values()}
        for label, res in groups[n].items():
            acc = res["test_accuracy"]
            if len(kinds) > 1:  # several M1s in one panel: one colour per M1, the defaults left out of the name
                style, label = {"color": M1_COLOURS[m1_kind(res)]}, run_label(res, defaults=False)
            else:
                style, label = {}, f"pyrovae m1m2, {label}"
            ax.plot(range(1, len(acc) + 1), acc, lw=1.4, label=label, **style)
        if n == 100 and len(counts) == 1:  # the 100-label figure: plain torch and Pyro's script beside
            for label, res in plain.items():
                acc = [h["test"] for h in res["hist"]]
                ax.plot(range(1, len(acc) + 1), acc, lw=0.9, ls="--", label=f"plain torch, {label}")
            ax.axhline(PYRO_SCRIPT, color="grey", lw=0.8, ls=":", label=f"Pyro's ss_vae_M2.py here, {PYRO_SCRIPT}")
        if n in PYRO_TABLE:
            ax.axhline(PYRO_TABLE[n], color="k", lw=0.8, ls=":", label=f"Pyro's tutorial table (M2), {PYRO_TABLE[n]}")
        ax.set(xlabel="epoch", ylabel="test accuracy (10,000 digits)", title=f"M1+M2, {n} labels",
               ylim=(0.6, 0.96) if len(counts) == 1 else (0.88, 0.99))
        ax.legend(fontsize=6 if len(counts) > 1 else 7, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def across_seeds(runs: dict[str, dict], at_epoch: int) -> dict:
    """The runs' test accuracy after ``at_epoch`` epochs: each, their mean and sd."""
    reached = [res for res in runs.values() if res["epochs"] >= at_epoch]
    at = [res["test_accuracy"][at_epoch - 1] for res in reached]
    window = [statistics.mean(res["test_accuracy"][at_epoch - 5:at_epoch]) for res in reached]
    return {"epoch": at_epoch, "runs": len(at), "test_accuracy": at, "mean": statistics.mean(at) if at else None,
            "sd": statistics.stdev(at) if len(at) > 1 else None,
            "mean_of_last5_means": statistics.mean(window) if window else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", type=Path, required=True,
                   help="m1m2 run folders: seeds of one setting, at one or more label counts")
    p.add_argument("--variants", nargs="*", type=Path, default=[], help="runs of other settings (not in the mean)")
    p.add_argument("--earlier", nargs="*", type=Path, default=[],
                   help="JSONs of this script whose runs (folders gone) join the figure's panels, not the new JSON")
    p.add_argument("--plain", nargs="*", default=["d", "e", "f"], help="m1m2_plain_torch_*.json letters to plot")
    p.add_argument("--at-epoch", type=int, default=50, help="compare the runs after this many epochs")
    p.add_argument("--at-epoch-for", nargs="*", default=[], metavar="LABELS=EPOCH[,EPOCH...]",
                   help="another epoch for one label count, e.g. 100=73 (its runs, earlier ones too); "
                        "600=50,75: also the mean after 75 epochs")
    p.add_argument("--json", type=Path, default=RESULTS / "m1m2_library_100labels.json")
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "zoo" / "m1m2-100labels.png")
    a = p.parse_args()
    groups: dict[int, dict[str, dict]] = {}  # every run, by label count: the figure
    seeds: dict[int, dict[str, dict]] = {}  # the runs of the one setting, earlier JSONs' too
    runs, variants = {}, {}
    for run in [*a.runs, *a.variants]:
        res = read_run(run)
        opts, label = res["model_options"], run_label(res)
        if run in a.runs:
            runs.setdefault(opts["num_labels"], {})[label] = res
            seeds.setdefault(opts["num_labels"], {})[label] = res
        else:
            variants[f"{opts['num_labels']} labels, {label}"] = res
        groups.setdefault(opts["num_labels"], {})[label] = res
    for earlier in a.earlier:  # earlier runs join the panels of the label counts run now
        old = json.loads(earlier.read_text())
        for key, res in {**old["runs"], **old.get("variants", {})}.items():
            n, label = res["model_options"]["num_labels"], run_label(res)
            if n in groups and groups[n].setdefault(label, res) is res and key in old["runs"]:  # a new run wins
                seeds.setdefault(n, {})[label] = res
    plain = {}
    for letter in a.plain:
        res = json.loads((RESULTS / f"m1m2_plain_torch_{letter}.json").read_text())
        units = "active" if res["args"].get("active_only") else "all"
        plain[f"{letter}: alpha {res['alpha']:g}, lr {res['args'].get('lr', 3e-4):g}, units {units}"] = res
    given = {int(k): [int(e) for e in v.split(",")] for k, v in (o.split("=") for o in a.at_epoch_for)}
    # a label count with its own epoch is compared over all its runs, earlier JSONs' too
    across = {n: across_seeds(seeds[n], given[n][0]) if n in given else across_seeds(runs[n], a.at_epoch)
              for n in sorted({*runs, *given})}
    later = {n: [across_seeds(seeds[n], e) for e in epochs[1:]] for n, epochs in given.items() if epochs[1:]}
    counts = ", ".join(str(n) for n in sorted(runs))
    result = {
        "what": f"pyrovae train --model m1m2 with {counts} labels (choose_labelled seed = the run's seed) on MNIST, "
                "dynamically binarised; test accuracy of arg max q(y | mean of q(z1 | x)) on the 10,000 test digits "
                "after every epoch (no validation split: the figures to quote are at a fixed epoch or the last one; "
                "the maximum is selected on the test set)",
        "machine": f"{platform.processor() or platform.machine()}, 2 cores shared, one thread per run, two runs side "
                   "by side",
        "pyro_table": PYRO_TABLE,
    }
    if len(runs) == 1:  # the layout of the 100-label JSON
        (n,) = runs
        result.update({f"at_epoch_{a.at_epoch}": across[n], "runs": runs[n]})
    else:
        result.update({"across_seeds": {str(n): across[n] for n in sorted(across)},
                       "runs": {f"{n} labels, {label}": res for n in sorted(runs) for label, res in runs[n].items()}})
    if later:
        result["across_seeds_later"] = {str(n): later[n] for n in sorted(later)}
    result["variants"] = variants
    a.json.write_text(json.dumps(result, indent=1))
    plot(groups, plain, a.figure)
    for n in sorted(across):
        for label, res in runs.get(n, {}).items():
            print(f"{n} labels, {label}: {res['epochs']} epochs, last {res['test_accuracy_last']:.4f}, last-5 mean "
                  f"{res['test_accuracy_last5_mean']:.4f}, max {res['test_accuracy_max']:.4f}, "
                  f"{res['seconds_per_epoch_median']:.0f} s/epoch")
        for c in [across[n], *later.get(n, [])]:
            if c["runs"]:
                sd = f" +/- {c['sd']:.4f} (sd)" if c["sd"] is not None else ""
                print(f"{n} labels after {c['epoch']} epochs, {c['runs']} runs: {c['mean']:.4f}{sd} (Pyro's table "
                      f"{PYRO_TABLE.get(n)}); mean of epochs {c['epoch'] - 4}-{c['epoch']}: "
                      f"{c['mean_of_last5_means']:.4f}")


if __name__ == "__main__":
    main()
