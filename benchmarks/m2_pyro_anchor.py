"""Pyro's own ``examples/vae/ss_vae_M2.py`` beside pyrovae's M2 trained the same way, per epoch.

Pyro's script is not in this repository: it was run offline on this machine (provenance, edits
and command in the JSON; docs/zoo.md), and this script turns its per-epoch log lines

    {i} epoch: avg losses {...} validation accuracy {v} test accuracy {t}

into ``benchmarks/results/pyro_ss_vae_m2_labels100_seed0.json`` (``--log``), then plots its test
accuracy beside ``m2_pyro_protocol.py``'s runs of pyrovae's M2 (given as JSON files) and the
classifier trained on the labels alone (``m2_classifier_inputs.py``):

    python benchmarks/m2_pyro_anchor.py --log /tmp/pyro_m2/ss_vae_sup100.log
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LINE = re.compile(r"(\d+) epoch: avg losses (.*) validation accuracy ([\d.]+) test accuracy ([\d.]+)")
PROVENANCE = {
    "source": "pyro-ppl/pyro examples/vae/ss_vae_M2.py at 9fb2e53e40bf0179899f2ac0e12f708623e1097f (the Pyro 1.5.1 "
              "release bump, the newest version of the file the code index held; it behaves as 1.8.6's but for the "
              "edits below), examples/vae/utils/{custom_mlp,mnist_cached,vae_plots}.py at "
              "277594f78fe16523e580e034222b35ce611c9afc",
    "edits": ["the version assert relaxed from '1.5.1' to '1.9'",
              "dist.Bernoulli(loc, validate_args=False), as in Pyro >= 1.6 (grey values under a Bernoulli; torch "
              "validates the support by default now)",
              "a stub visdom module (not installed; --visualize not used)",
              "MNIST's gz files copied from ../shared/data/MNIST/raw into the script's data folder (no download)"],
    "environment": "pyro 1.9.2, torch 2.14.1+cu130, one thread (OMP_NUM_THREADS=1), 2-core AMD EPYC shared with "
                   "other sessions",
    "command": "python ss_vae_M2.py --seed 0 -n 100 --aux-loss -alm 46 -enum parallel -sup 100 -zd 50 -hl 500 "
               "-lr 0.00042 -b1 0.95 -bs 100 -log ss_vae_sup100.log",
    "batch_note": "-bs 100, not the example run's 200: the script asserts that the batch size divides sup_num",
    "data": "MNIST: 50,000 training digits (100 labelled), 10,000 validation, the 10,000 test digits; grey values",
}


def parse_log(path: Path, epochs_planned: int = 100) -> dict:
    epochs, final = [], None
    for line in path.read_text().splitlines():
        if m := LINE.match(line):
            epochs.append({"epoch": int(m[1]) + 1, "losses": [float(v) for v in m[2].split()],
                           "valid_accuracy": float(m[3]), "test_accuracy": float(m[4])})
        elif "best validation accuracy" in line:
            final = line.strip()
    best = max(epochs, key=lambda e: (e["valid_accuracy"], -e["epoch"]))  # the script keeps the first best
    return {**PROVENANCE, "epochs_planned": epochs_planned, "epochs_run": len(epochs), "finished": final is not None,
            "final_line": final, "parsed": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "best_valid": {k: best[k] for k in ("epoch", "valid_accuracy", "test_accuracy")}, "history": epochs}


def plot(pyro_run: dict, ours: dict[str, dict], classifier: float | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    h = pyro_run["history"]
    ax.plot([e["epoch"] for e in h], [e["test_accuracy"] for e in h], "k-", label="Pyro's ss_vae_M2.py, run here")
    for name, run in ours.items():
        ax.plot([e["epoch"] for e in run["history"]], [e["test_accuracy"] for e in run["history"]], label=name)
    ax.axhline(0.9319, color="k", ls="--", lw=1, label="Pyro's tutorial table (0.932)")
    if classifier is not None:
        ax.axhline(classifier, color="grey", ls=":", lw=1,
                   label=f"classifier on the 100 labels alone, grey (seeds 0-2: {classifier:.3f})")
    ax.set(xlabel="epoch", ylabel="test accuracy", ylim=(0, 1), title="M2 with 100 labels, MNIST, seed 0")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log", type=Path, help="Pyro's log file (-log of ss_vae_M2.py); else the saved JSON is plotted")
    p.add_argument("--json", type=Path, default=RESULTS / "pyro_ss_vae_m2_labels100_seed0.json")
    p.add_argument("--ours", type=Path, nargs="*", default=[
        RESULTS / "m2_pyro_protocol_pyro_grey_pyro_b0.9_50_labels100_seed0.json",
        RESULTS / "m2_pyro_protocol_pyro_grey_pyro_alpha460_b0.95_40_labels100_seed0.json"])
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "images" / "zoo" / "m2-100labels-pyro-vs-pyrovae.png")
    args = p.parse_args()
    if args.log:
        run = parse_log(args.log)
        args.json.write_text(json.dumps(run, indent=1))
    run = json.loads(args.json.read_text())
    ours = {}
    for path in args.ours:
        r = json.loads(path.read_text())
        alpha = re.search(r"_alpha(\d+)_", path.name)
        ours[f"pyrovae M2, Pyro's protocol, alpha {alpha[1] if alpha else 46}, beta1 {r['beta1']}"] = r
    classifier = json.loads((RESULTS / "m2_classifier_inputs_100.json").read_text())
    mean = _classifier_mean(classifier)
    plot(run, ours, mean, args.plot)
    print(json.dumps({k: run[k] for k in ("epochs_run", "finished", "best_valid")}))


def _classifier_mean(res: dict) -> float | None:
    """Mean test accuracy (seeds 0-2) of the classifier on grey inputs, as Pyro's run sees them."""
    return res.get("summary", {}).get("100 labels, grey", {}).get("mean")


if __name__ == "__main__":
    main()
