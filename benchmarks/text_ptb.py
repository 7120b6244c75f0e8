"""The Penn Treebank table of docs/text.md: a sentence VAE against the LSTM language model.

For the runs of benchmarks/text_ptb.sh (runs/text/ptb-lm and runs/text/ptb-vae, the same code, data,
widths, optimiser, batch size and epochs), on Mikolov's PTB test split:

* the language model's log p(x), exact, on all 3,761 test sentences;
* the VAE's ELBO on all 3,761 (one draw z ~ q(z|x) per sentence: an unbiased estimate of the bound);
  the KL (closed form), active units (Burda et al. 2016) and I(x; z) (on 1,000 sentences, at most
  log 1000 = 6.91 nats) of pyrovae.diagnostics;
* on a random subset of the test sentences (``--subset``, drawn with ``--subset-seed``): the VAE's
  log p(x) by importance sampling with K samples, and the language model's exact log p(x) on the
  same sentences, with the paired difference and its standard error.

Per-word perplexity counts every token with <eos> (Mikolov et al. 2010; Bowman et al. 2016).
Writes benchmarks/results/text_ptb.json and prints the Markdown table.

    OMP_NUM_THREADS=1 PYROVAE_DATA=../shared/data .venv/bin/python benchmarks/text_ptb.py --subset 100 -K 500
    OMP_NUM_THREADS=1 ... benchmarks/text_ptb.py --subset 3761 -K 500 --workers 2   # the whole test split
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import platform
import time
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae import diagnostics, reuse_freed_memory
from pyrovae.io import write_json
from pyrovae.models.text import text_scores
from pyrovae.runs import load_run, load_run_data

OUT = Path("benchmarks/results/text_ptb.json")


def _cpu() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def training(run: Path) -> dict:
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    seconds = [float(r["seconds"]) for r in rows]
    return {"epochs": len(rows), "seconds_per_epoch": seconds, "train_seconds": sum(seconds),
            "last_heldout_elbo": float(rows[-1]["heldout_elbo"]),
            "heldout_kl_per_epoch": [float(r["heldout_kl"]) for r in rows if r.get("heldout_kl")]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm", default="runs/text/ptb-lm")
    p.add_argument("--vae", default="runs/text/ptb-vae")
    p.add_argument("-K", "--num-samples", type=int, default=500)
    p.add_argument("--subset", type=int, default=100, help="test sentences scored by importance sampling")
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of the importance samples")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=None, help="processes for importance sampling (default: automatic)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    reuse_freed_memory()  # as the CLI does: the logits of a pass are above glibc's mmap threshold
    lm, lm_config, lm_stamp = load_run(args.lm)
    vae, vae_config, vae_stamp = load_run(args.vae)
    _, test = load_run_data(vae_config)
    for m in (lm, vae):
        m.prepare_data(test)
        m.eval()
    x = test.tokens
    sub = test.sample(args.subset, args.subset_seed) if args.subset < len(test) else test
    xs = sub.tokens
    out: dict = {"data": f"Penn Treebank (Mikolov), test split: {len(test)} sentences, {test.num_tokens} tokens "
                         "with <eos>", "tokens_counted": "words and <eos>",
                 "machine": f"{_cpu()} ({os.cpu_count()} cores), {args.threads} torch thread(s)"
                            + (f", importance sampling in {args.workers} worker processes" if args.workers else ""),
                 "torch": torch.__version__, "pyro": pyro.__version__}
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - start
        print(f"{name}: {timings[name]:.0f} s", flush=True)
        return value

    pyro.set_rng_seed(args.seed)
    lm_full = timed("lm exact, full test", lambda: pyrovae.log_marginal_likelihood(
        lm.model, lm.guide, x, num_samples=1, chunk_size=128, progress=True))
    pyro.set_rng_seed(args.seed)
    vae_elbo = timed("vae ELBO (1 draw), full test", lambda: pyrovae.log_marginal_likelihood(
        vae.model, vae.guide, x, num_samples=1, chunk_size=128, progress=True))
    with torch.no_grad():
        kl = vae.heldout_metrics(x)["heldout_kl"]
        au = diagnostics.active_units(vae.guide, x).summary()
        mi_points = test.sample(min(1000, len(test)), args.subset_seed).tokens
        mi = diagnostics.mutual_information(vae.guide, mi_points, num_samples=1).summary()
    pyro.set_rng_seed(args.seed)
    vae_is = timed(f"vae IS K={args.num_samples}, {len(xs)} sentences", lambda: pyrovae.log_marginal_likelihood(
        vae.model, vae.guide, xs, num_samples=args.num_samples, chunk_size=vae.evaluation_chunk_size,
        progress=True, workers=args.workers))
    lm_sub = pyrovae.log_marginal_likelihood(lm.model, lm.guide, xs, num_samples=1, chunk_size=128)
    diff = vae_is.log_px - lm_sub.log_px  # paired: the same sentences
    lm_full_scores = {k: v for k, v in text_scores(lm_full, x).items() if not k.startswith("elbo")}
    for k in ("nll_mc_stderr", "ppl_mc_stderr"):
        lm_full_scores[k] = 0.0  # exact: no latent, every weight is log p(x)
    out["lm"] = {"run": args.lm, "config": lm_config.to_dict(), "checkpoint_epoch": lm_stamp["epoch"],
                 "training": training(Path(args.lm)), "full_test_exact": lm_full_scores,
                 "subset_exact": {k: v for k, v in text_scores(lm_sub, xs).items() if not k.startswith("elbo")}}
    full_elbo = text_scores(vae_elbo, x)
    out["vae"] = {
        "run": args.vae, "config": vae_config.to_dict(), "checkpoint_epoch": vae_stamp["epoch"],
        "training": training(Path(args.vae)),
        "full_test_elbo": {"num_sentences": full_elbo["num_sentences"], "num_tokens": full_elbo["num_tokens"],
                           "elbo_nll_per_sentence": full_elbo["elbo_nll_per_sentence"],
                           "elbo_ppl_per_word": full_elbo["elbo_ppl_per_word"],
                           "elbo_data_stderr": full_elbo["nll_data_stderr"], "draws_per_sentence": 1},
        "kl_per_sentence": kl, **au, **mi,
        "subset_is": {**text_scores(vae_is, xs), **vae_is.summary(), "num_samples": args.num_samples,
                      "subset_seed": args.subset_seed, "sample_seed": args.seed},
    }
    out["subset"] = {"sentences": len(xs), "seed": args.subset_seed, "num_tokens": sub.num_tokens,
                     "vae_minus_lm_log_px_per_sentence": diff.mean().item(),
                     "stderr_paired": (diff.std() / math.sqrt(len(diff))).item() if len(diff) > 1 else float("nan"),
                     "vae_is_mc_stderr": vae_is.mean_stderr}
    out["seconds"] = timings
    write_json(Path(args.out), out)
    s, lmf, sub_lm = out["vae"]["subset_is"], out["lm"]["full_test_exact"], out["lm"]["subset_exact"]
    e = out["vae"]["full_test_elbo"]
    print("\n| model | sentences | NLL/sentence | PPL/word | how | KL | AU | MI |\n|---|---|---|---|---|---|---|---|")
    print(f"| LSTM LM | all {lmf['num_sentences']} | {lmf['nll_per_sentence']:.2f} ± {lmf['nll_data_stderr']:.2f} | "
          f"{lmf['ppl_per_word']:.1f} | exact | – | – | – |")
    print(f"| VAE | all {e['num_sentences']} | ≤ {e['elbo_nll_per_sentence']:.2f} ± {e['elbo_data_stderr']:.2f} | "
          f"≤ {e['elbo_ppl_per_word']:.1f} | ELBO | {kl:.2f} | {au['active_units']}/{au['latent_units']} | "
          f"{mi['mutual_information']:.2f} |")
    print(f"| LSTM LM | subset {len(xs)} | {sub_lm['nll_per_sentence']:.2f} | {sub_lm['ppl_per_word']:.1f} | exact |")
    print(f"| VAE | subset {len(xs)} | {s['nll_per_sentence']:.2f} (MC ± {s['nll_mc_stderr']:.2f}) | "
          f"{s['ppl_per_word']:.1f} | IS K={args.num_samples} | ELBO-based {s['elbo_nll_per_sentence']:.2f} |")
    print(f"paired log p(x) VAE - LM: {out['subset']['vae_minus_lm_log_px_per_sentence']:.2f} ± "
          f"{out['subset']['stderr_paired']:.2f} nats/sentence; wrote {args.out}")


if __name__ == "__main__":
    main()
