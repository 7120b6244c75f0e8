"""Speed of ``log_marginal_likelihood`` at K = 5000 against the machine's matmul throughput.

Model: the IWAE paper's MNIST architecture (q: 784-200-200->50, p: 50-200-200->784, tanh,
Bernoulli likelihood), untrained weights (seed 0; the work does not depend on the values),
evaluated on embedded MNIST digits binarised once (seed 0). Per (sample, image) pair the
decoder costs 2 (50·200 + 200·200 + 200·784) = 413,600 multiply-adds ×2 FLOPs; the encoder
runs once per image and particle chunk. "Achieved GFLOP/s" counts these matmul FLOPs only and
is compared with float32 matmul throughput measured in the same process, in the same rounds:
the better of a decoder-shaped product ([4096, 200] x [200, 784]) and a square 2048 one, measured
before and after every timed run; a run's share of matmul is its GFLOP/s over the mean of the two,
and the table gives the median share over rounds (the reference moves by up to 2x within minutes on
this shared machine, so a median of evaluations against a median of references would mix rounds).

Variants, alternated round by round (median over rounds): the Bernoulli log-probability as
one ``binary_cross_entropy_with_logits`` (what pyrovae used before) and the library's
current one, each at several chunk sizes (most (sample, image) pairs per pass) and numbers of
worker processes (``workers``: chunks in forked single-thread processes; 1 = in this process
on ``--threads`` threads), the weight pass eager or compiled by ``torch.jit`` (``--passes``;
``log_marginal_likelihood(jit=...)``), and with glibc's allocator settings (``system``) or the CLI's
(``heap``: ``pyrovae.reuse_freed_memory``, freed memory kept in the heap), in this process and
its workers. A process cannot go back to glibc's dynamic mmap threshold once it is changed, so
each round runs in a fresh process per mode, the modes alternating.

    python benchmarks/eval_speed.py --threads 1     # writes JSON + the table in docs/
    python benchmarks/eval_speed.py --threads 2 --workers 1 2 --log-probs library \
        --json benchmarks/results/eval_speed_2threads.json --section eval-speed-2threads
    python benchmarks/eval_speed.py --threads 2 --workers 1 2 --log-probs library --malloc system heap \
        --chunk-sizes 4096 16384 65536 --json benchmarks/results/eval_speed_malloc.json --section eval-speed-malloc
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
from train_speed import write_section

import pyrovae
from pyrovae.distributions import IndependentBernoulli

ROOT = Path(__file__).resolve().parents[1]
DECODER_FLOPS = 2 * (50 * 200 + 200 * 200 + 200 * 784)
ENCODER_FLOPS = 2 * (784 * 200 + 200 * 200 + 200 * 100)


def bce_log_prob(self, value):
    logits, value = torch.broadcast_tensors(self.logits, value)
    return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)


LOG_PROBS = {"fused BCE (before)": bce_log_prob, "library": IndependentBernoulli.log_prob}


def matmul_gflops(repeats: int = 5) -> float:
    shapes = [((4096, 200), (200, 784)), ((2048, 2048), (2048, 2048))]
    best = 0.0
    for (m, k), (_, n) in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        best = max(best, 2 * m * k * n / statistics.median(times) / 1e9)
    return best


def useful_flops(num_images: int, num_samples: int, chunk_size: int) -> float:
    from pyrovae.infer.importance import _chunk_sizes

    rows, particles = _chunk_sizes(num_images, num_samples, chunk_size)
    particle_chunks = -(-num_samples // particles)
    return num_images * (num_samples * DECODER_FLOPS + particle_chunks * ENCODER_FLOPS)


def time_eval(vae, x, num_samples, chunk_size, log_prob, workers=1, compiled="eager") -> float:
    IndependentBernoulli.log_prob = log_prob
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    pyrovae.log_marginal_likelihood(
        vae.model, vae.guide, x, num_samples=num_samples, chunk_size=chunk_size, progress=False,
        khat_warn_share=1.0, workers=workers, jit=compiled == "jit",
    )
    return time.perf_counter() - start


def one_round(args) -> dict:
    """The matmul reference and every variant once, in this process: {"peak": GFLOP/s, "times": [s, ...]}."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = pyrovae.VAE(latent_dim=50, hidden=(200, 200), activation="tanh")
    x = pyrovae.load_embedded_mnist().observations(torch.Generator().manual_seed(0))[: args.images]
    library = IndependentBernoulli.log_prob
    time_eval(vae, x[:2], 200, args.chunk_sizes[0], library)  # warm-up
    times, peaks = [], [matmul_gflops()]
    for name, chunk, w, c in variants_of(args):  # each variant between two matmul measurements
        times.append(time_eval(vae, x, args.num_samples, chunk, LOG_PROBS[name], w, c))
        peaks.append(matmul_gflops())
    IndependentBernoulli.log_prob = library
    usage = [resource.getrusage(who).ru_maxrss / 2**20 for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    around = [(a + b) / 2 for a, b in zip(peaks, peaks[1:])]
    return {"peak": statistics.median(peaks), "peaks_around": around, "times": times, "peak_rss_gib": usage}


def variants_of(args) -> list[tuple[str, int, int, str]]:
    return [(name, c, w, j) for name in args.log_probs for c in args.chunk_sizes for w in args.workers
            for j in args.passes]


def round_in_child(args, malloc: str) -> dict:
    argv = [sys.executable, __file__, "--child-round", "--malloc", malloc, "--threads", str(args.threads),
            "--images", str(args.images), "--num-samples", str(args.num_samples),
            "--chunk-sizes", *map(str, args.chunk_sizes), "--workers", *map(str, args.workers),
            "--log-probs", *args.log_probs, "--passes", *args.passes]
    env = {k: v for k, v in os.environ.items() if k != "PYROVAE_SYSTEM_MALLOC"}
    if malloc == "system":  # glibc's defaults in the workers too (they keep freed memory otherwise)
        env["PYROVAE_SYSTEM_MALLOC"] = "1"
    done = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100, help="images per timed run (scaled to 1,000)")
    p.add_argument("--num-samples", type=int, default=5000)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[2**10, 2**12, 2**14, 2**16])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="worker processes (1 = in process)")
    p.add_argument("--log-probs", nargs="+", choices=list(LOG_PROBS), default=list(LOG_PROBS))
    p.add_argument("--passes", nargs="+", choices=["eager", "jit"], default=["eager"],
                   help="the weight pass eager or compiled (log_marginal_likelihood's jit=)")
    p.add_argument("--malloc", nargs="+", choices=["system", "heap"], default=["system"],
                   help="glibc's allocator settings, or freed memory kept in the heap (pyrovae.reuse_freed_memory)")
    p.add_argument("--child-round", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--section", default="eval-speed", help="marked section of --docs to rewrite")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "eval_speed.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    if args.child_round:
        if args.malloc == ["heap"] and not pyrovae.reuse_freed_memory():
            raise SystemExit("reuse_freed_memory did not take (not glibc, or PYROVAE_SYSTEM_MALLOC is set)")
        print(json.dumps(one_round(args)))
        return
    modes = args.malloc
    variants = [(m, *v) for m in modes for v in variants_of(args)]
    times = {v: [] for v in variants}
    around = {v: [] for v in variants}
    peaks, rss = [], [0.0, 0.0]
    for r in range(args.rounds):
        for m in modes:
            res = round_in_child(args, m)
            peaks.append(res["peak"])
            rss = [max(a, b) for a, b in zip(rss, res["peak_rss_gib"])]
            for v, t, ref in zip(variants_of(args), res["times"], res["peaks_around"]):
                times[(m, *v)].append(t)
                around[(m, *v)].append(ref)
                print(f"round {r}: malloc {m}, {v[0]}, chunk {v[1]}, workers {v[2]}, {v[3]}: {t:.2f} s", flush=True)
    peak = statistics.median(peaks)
    results = []
    for (m, name, chunk, w, c), t in times.items():
        sec = statistics.median(t)
        flops = useful_flops(args.images, args.num_samples, chunk)
        refs = around[(m, name, chunk, w, c)]
        shares = [flops / run / 1e9 / ref for run, ref in zip(t, refs)]
        results.append({
            "malloc": m, "log_prob": name, "chunk_size": chunk, "workers": w, "pass": c, "seconds_per_run": t,
            "matmul_gflops_around_each_run": refs, "share_of_matmul_per_round": shares,
            "seconds_per_1000_images": sec * 1000 / args.images,
            "gflops": flops / sec / 1e9, "share_of_matmul": statistics.median(shares),
        })
    meta = {
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "torch": torch.__version__, "pyro": pyro.__version__, "images": args.images,
        "num_samples": args.num_samples, "rounds": args.rounds, "matmul_gflops": peak,
        "matmul_gflops_per_round": peaks, "peak_rss_gib": rss[0], "peak_rss_worker_gib": rss[1],
        "command": f"python benchmarks/eval_speed.py --threads {args.threads} --images {args.images} "
        f"--num-samples {args.num_samples} "
        f"--chunk-sizes {' '.join(map(str, args.chunk_sizes))} --rounds {args.rounds} "
        f"--workers {' '.join(map(str, args.workers))} --log-probs {' '.join(repr(n) for n in args.log_probs)} "
        f"--malloc {' '.join(modes)} --passes {' '.join(args.passes)}",
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "| malloc | Bernoulli log-prob | chunk size | workers | pass | s per 1,000 images | GFLOP/s "
        "| share of matmul |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['malloc']} | {r['log_prob']} | {r['chunk_size']} | {r['workers']} | {r['pass']} | "
            f"{r['seconds_per_1000_images']:.1f} | "
            f"{r['gflops']:.1f} | {r['share_of_matmul']:.0%} |"
        )
    body = (
        f"Measured {meta['date']} on this CPU, {args.threads} torch thread(s), torch {meta['torch']}; "
        f"K = {args.num_samples} importance samples for each of {args.images} embedded MNIST digits "
        f"(scaled to 1,000), IWAE architecture, untrained weights; {args.rounds} alternating rounds, "
        f"median. float32 matmul throughput on {args.threads} thread(s) in the same rounds: {peak:.1f} GFLOP/s "
        f"(median; {min(peaks):.0f}-{max(peaks):.0f}); the share of matmul is the median over rounds of each run's "
        f"GFLOP/s over the matmul throughput measured just before and after it. "
        f"Peak resident memory of the process: {meta['peak_rss_gib']:.2f} GiB"
        + (f", of the largest child process (a worker, most of its pages shared with this one by fork) "
           f"{meta['peak_rss_worker_gib']:.2f} GiB" if max(args.workers) > 1 else "")
        + f". Command: `{meta['command']}`; raw numbers in "
        f"`{Path(args.json).relative_to(ROOT) if Path(args.json).is_relative_to(ROOT) else args.json}`.\n\n"
        + "\n".join(lines)
    )
    write_section(Path(args.docs), args.section, body, raw=args.json)
    print(body)


if __name__ == "__main__":
    main()
