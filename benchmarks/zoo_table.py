"""Collect the zoo's MNIST runs into benchmarks/results/zoo.json and the tables of docs/zoo.md.

    python benchmarks/zoo_table.py runs/zoo/quadrant-nn-q1 runs/zoo/cvae-q1 ...   # after the runs' scripts

Each row: the run's model and options, epochs trained, data space, the last held-out ELBO (full
test split), every `evaluation-K*.json` (importance-sampled log p with both standard errors) and
model-specific files (clustering.json). Pictures named in --pictures are copied to docs/images/zoo/.
"""

import argparse
import csv
import json
import shutil
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "zoo.json"
IMAGES = Path(__file__).parents[1] / "docs" / "images" / "zoo"


def collect(run: Path) -> dict:
    config = json.loads((run / "config.json").read_text())
    with open(run / "metrics.csv") as f:
        history = list(csv.DictReader(f))
    last = history[-1]
    evaluations = []
    for path in sorted(run.glob("evaluation-K*.json")):
        s = json.loads(path.read_text())
        evaluations.append({k: s.get(k) for k in (
            "num_samples", "num_datapoints", "heldout_size", "mean_log_px", "mc_stderr", "data_stderr", "mean_elbo",
            "share_khat_over_0.7", "scale", "seconds", "sample_seed", "checkpoint_epoch")})
    row = {
        "run": run.name, "model": config["model"], "options": config["model_options"],
        "dataset": config["dataset"], "data_space": config["data_space"], "seed": config["seed"],
        "epochs": int(last["epoch"]), "batch_size": config["batch_size"], "lr": config["lr"],
        "seconds_per_epoch_median": sorted(float(r["seconds"]) for r in history)[len(history) // 2],
        "heldout_elbo_last": float(last["heldout_elbo"]),
        "heldout_elbo_best": max(float(r["heldout_elbo"]) for r in history),
        "evaluations": evaluations,
    }
    extra = {k: float(v) for k, v in last.items() if k.startswith("heldout_") and k != "heldout_elbo" and v}
    row.update(extra)
    if (run / "clustering.json").exists():
        row["clustering_accuracy"] = json.loads((run / "clustering.json").read_text())["accuracy"]
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| run | model | epochs | held-out ELBO (last / best, 10,000 test) | K | test points | "
             "−log p (IS) | MC s.e. | s.e. over data | k̂ > 0.7 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        for e in r["evaluations"] or [{}]:
            lines.append(
                f"| {r['run']} | {r['model']} | {r['epochs']} | "
                f"{r['heldout_elbo_last']:.2f} / {r['heldout_elbo_best']:.2f} | "
                f"{e.get('num_samples', '')} | {e.get('num_datapoints', '')} | "
                + (f"{-e['mean_log_px']:.2f} | {e['mc_stderr']:.3f} | {e['data_stderr']:.2f} | "
                   f"{e['share_khat_over_0.7']:.1%} |" if e else " | | | |")
            )
    return "\n".join(lines)


def main(args):
    rows = [collect(Path(r)) for r in args.runs]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    old.update({r["run"]: r for r in rows})
    RESULTS.write_text(json.dumps(old, indent=1) + "\n")
    IMAGES.mkdir(parents=True, exist_ok=True)
    for picture in args.pictures:
        run, name = picture.split(":")
        shutil.copy(Path(run) / name, IMAGES / f"{Path(run).name}-{name}")
    print(markdown(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--pictures", nargs="*", default=[], metavar="RUN:FILE")
    main(parser.parse_args())
