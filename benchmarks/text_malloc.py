"""A PTB training epoch with glibc's default allocator settings against the CLI's (reuse_freed_memory).

The text VAE's logits (batch x length x 10,002 words, ~64 MB at batch 64) are above glibc's mmap
threshold, so with the defaults every step maps fresh pages from the kernel and faults them in
zeroed. ``pyrovae train`` keeps freed memory in the heap instead (``pyrovae.
reuse_freed_memory``; ``PYROVAE_SYSTEM_MALLOC=1`` turns it off). Alternating runs of the same
command, one thread each, medians; wall, user and system seconds of the whole process.

    PYROVAE_DATA=../shared/data .venv/bin/python benchmarks/text_malloc.py --rounds 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(system_malloc: bool, train_size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("PYROVAE_SYSTEM_MALLOC", None)
        if system_malloc:
            env["PYROVAE_SYSTEM_MALLOC"] = "1"
        cmd = [sys.executable, "-m", "pyrovae", "train", "--dataset", "ptb", "--model", "text-vae",
               "--train-size", str(train_size), "--heldout-size", "100", "--epochs", "1", "--batch-size", "64",
               "--hidden", "200", "--model-opt", "embed_dim=200", "--latent-dim", "32", "--threads", "1",
               "--no-progress", "--out", str(Path(tmp) / "run")]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        with (Path(tmp) / "run" / "metrics.csv").open() as f:
            epoch = float(next(csv.DictReader(f))["seconds"])  # the training steps of the epoch alone
    return {"wall_s": wall, "epoch_s": epoch, "user_s": after.ru_utime - before.ru_utime,
            "sys_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "text_malloc.json"))
    args = p.parse_args()
    runs = {"glibc defaults (PYROVAE_SYSTEM_MALLOC=1)": [], "pyrovae train (freed memory kept)": []}
    for r in range(args.rounds):
        for name in runs:
            runs[name].append(run_once(name.startswith("glibc"), args.train_size))
            print(f"round {r}: {name}: {runs[name][-1]}", flush=True)
    summary = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for name, rs in runs.items()}
    base, ours = summary.values()
    command = f"python benchmarks/text_malloc.py --rounds {args.rounds} --train-size {args.train_size}"
    out = {"meta": {"command": command,
                    "data": f"PTB train with --train-size {args.train_size} (sentences); text-vae, "
                            "width 200, batch 64, 1 thread", "date": time.strftime("%Y-%m-%d %H:%M"),
                    "load": os.getloadavg()},
           "runs": runs, "median": summary, "epoch_ratio": ours["epoch_s"] / base["epoch_s"]}
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(json.dumps(out["median"], indent=1), "\nepoch ratio", out["epoch_ratio"])


if __name__ == "__main__":
    main()
