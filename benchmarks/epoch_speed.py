"""Speed of whole training epochs, as a user times them: pyrovae's ``Trainer.fit`` against a
hand-written PyTorch VAE, and against Pyro's own examples/vae/vae.py loop.

**Against hand-written PyTorch.** One full MNIST epoch (60,000 training digits, dynamically
binarised afresh every epoch: ``torch.bernoulli`` of the grey values), the default 784-400-20
softplus VAE, Adam (lr 1e-3). pyrovae: ``Trainer(vae.model, vae.guide)`` (jit, the default) and
one ``fit`` call per epoch (``progress=False, verbose=False``: the bar's cost is not the
question). Hand-written: the VAE as people write it (``nn.Linear`` layers, the
reparameterisation trick, ``binary_cross_entropy_with_logits(reduction="sum")`` plus the
analytic KL, ``torch.optim.Adam``, ``x[perm[i:i + B]]`` batches, ``total += loss.item()``).

**Against Pyro's examples.** Pyro's examples/vae/vae.py as written there: 784-400-50 softplus
nets with a sigmoid decoder, ``Bernoulli(...).to_event(1)`` on the grey values, ``SVI`` +
``Trace_ELBO`` + ``pyro.optim.Adam``, a torch ``DataLoader`` over torchvision's MNIST with
``ToTensor`` (batch 256, shuffled, ``num_workers=1`` as in ``pyro.contrib.examples.util``),
``epoch_loss += svi.step(x)``; against pyrovae's ``fit`` of ``VAE(latent_dim=50)`` at batch 256
(what ``pyrovae train --dataset mnist --latent-dim 50 --batch-size 256`` runs).

Each configuration (threads, batch) builds its variants once, trains one warm-up epoch of each
(jit traces, allocator), then alternates one epoch per variant for ``--rounds`` rounds; we
report medians of the per-round ratios (robust to the load of a shared machine; the machine's
load is recorded). ``--steps-only`` adds the same number of steps over pre-cut batches
(``Trainer.step`` / the hand-written step), to separate the per-step gap from the work
``fit`` does around the steps; ``--profile`` prints cProfile's view of one ``fit`` epoch.

    python benchmarks/epoch_speed.py                       # 1 and 2 threads, batch 128 and 1024, Pyro's loop
    python benchmarks/epoch_speed.py --threads 1 --batch-sizes 128 --no-pyro --profile
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from torch import nn

import pyrovae
from pyrovae.infer import Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("PYROVAE_DATA", str(ROOT.parent / "shared" / "data"))


# ---------------------------------------------------------------- hand-written PyTorch


class HandVAE(nn.Module):
    """The VAE as people write it (PyTorch's examples/vae, softplus hidden layers)."""

    def __init__(self, hidden: int = 400, latent: int = 20) -> None:
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden), nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.fc3, self.fc4 = nn.Linear(latent, hidden), nn.Linear(hidden, 784)

    def forward(self, x):
        h = F.softplus(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        return self.fc4(F.softplus(self.fc3(z))), mu, logvar


def hand_written(grey: torch.Tensor, batch_size: int, fused: bool = False):
    """``(epoch, step)``; ``fused=True``: ``Adam(fused=True)``, the optimiser pyrovae uses."""
    torch.manual_seed(0)
    model = HandVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)

    def step(x):
        logits, mu, logvar = model(x)
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def epoch():
        x = torch.bernoulli(grey)  # dynamic binarisation, a fresh draw every epoch
        perm = torch.randperm(x.shape[0])
        total = 0.0
        for i in range(0, x.shape[0], batch_size):
            total += step(x[perm[i:i + batch_size]]).item()
        return total / x.shape[0]

    return epoch, step


# ---------------------------------------------------------------- pyrovae


def pyrovae_fit(train: pyrovae.ImageData, batch_size: int, latent: int = 20):
    """A trainer and ``run(epochs, callback)``: one ``fit`` call over all epochs, as users train."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = pyrovae.VAE(latent_dim=latent, hidden=(400,), name=f"fit{latent}-{batch_size}")
    trainer = Trainer(vae.model, vae.guide)

    def run(epochs, callback=None):
        trainer.fit(train, epochs=trainer.epoch + epochs, batch_size=batch_size, seed=0, progress=False,
                    verbose=False, callback=callback)

    return run, trainer


# ---------------------------------------------------------------- Pyro's examples/vae/vae.py


class PyroEncoder(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, hidden_dim), nn.Linear(hidden_dim, z_dim), nn.Linear(
            hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, 784)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class PyroDecoder(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden_dim), nn.Linear(hidden_dim, 784)
        self.softplus, self.sigmoid = nn.Softplus(), nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))


class PyroExampleVAE(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400):
        super().__init__()
        self.encoder, self.decoder, self.z_dim = PyroEncoder(z_dim, hidden_dim), PyroDecoder(z_dim, hidden_dim), z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def pyro_example(batch_size: int = 256):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    class MNIST(datasets.MNIST):
        """torchvision's MNIST (PIL image per item, then the transform) over the digits pyrovae read
        from the .gz files: torchvision itself wants them unpacked, and the shared folder is not ours."""

        def __init__(self, transform):
            train = pyrovae.load_dataset("mnist", "train", DATA_DIR)
            self.data, self.targets = train.images.reshape(-1, 28, 28), train.labels
            self.transform, self.target_transform = transform, None

    pyro.clear_param_store()
    torch.manual_seed(0)
    train_set = MNIST(transform=transforms.ToTensor())
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=1)
    vae = PyroExampleVAE()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1.0e-3}), loss=Trace_ELBO())

    def epoch():
        epoch_loss = 0.0
        for x, _ in loader:
            epoch_loss += svi.step(x)
        return epoch_loss / len(loader.dataset)

    return epoch


# ---------------------------------------------------------------- measuring


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(variants: dict, rounds: int) -> dict:
    """One warm-up call of each, then ``rounds`` rounds alternating one call per variant;
    medians of seconds and of the per-round ratio to the first variant."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    ref = next(iter(variants))
    return {
        name: {
            "median_s": statistics.median(t),
            "ratio": statistics.median(a / b for a, b in zip(t, times[ref])),
            "seconds_per_round": t,
        }
        for name, t in times.items()
    }


def alternate_with_fit(run_fit, others: dict, rounds: int) -> dict:
    """One ``fit`` of ``rounds + 1`` epochs whose callback runs one epoch of each other variant
    after every epoch: the epochs alternate, and pyrovae's epoch is timed as a user's long run
    sees it (from one epoch end to the next, the redraw of the data included). The first epoch
    of each (jit tracing, fit's data checks, allocator) is the warm-up."""
    fit_times, times, last = [], {name: [] for name in others}, [None]

    def callback(trainer, record):
        if last[0] is not None:
            fit_times.append(time.perf_counter() - last[0])
        for name, fn in others.items():
            times[name].append(timed(fn))
        last[0] = time.perf_counter()

    run_fit(rounds + 1, callback)
    times = {name: t[1:] for name, t in times.items()}
    ref = next(iter(others))
    out = {name: {"median_s": statistics.median(t), "ratio": statistics.median(a / b for a, b in zip(t, times[ref])),
                  "seconds_per_round": t} for name, t in times.items()}
    out["pyrovae Trainer.fit (jit)"] = {
        "median_s": statistics.median(fit_times),
        "ratio": statistics.median(a / b for a, b in zip(fit_times, times[ref])),
        "ratio_to": {name: statistics.median(a / b for a, b in zip(fit_times, t)) for name, t in times.items()},
        "seconds_per_round": fit_times,
    }
    return out


def steps_only(trainer: Trainer, hand_step, binary: torch.Tensor, batch_size: int) -> dict:
    """The steps of one epoch over batches cut beforehand: ``Trainer.step`` against the
    hand-written step (what ``fit`` adds around its steps is the rest of the epoch's gap)."""
    batches = list(binary[torch.randperm(binary.shape[0], generator=torch.Generator().manual_seed(1))]
                   .split(batch_size))

    def run(step):
        def go():
            for b in batches:
                step(b)
        return go

    return alternate({"hand-written steps": run(hand_step), "Trainer.step": run(trainer.step)}, 3)


def profile_fit(epoch_fn, top: int = 25) -> str:
    prof = cProfile.Profile()
    prof.enable()
    epoch_fn()
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return " ".join(map(str, os.getloadavg()))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-pyro", dest="pyro", action="store_false", help="skip Pyro's examples loop")
    p.add_argument("--steps-only", action="store_true", help="also time the steps alone over pre-cut batches")
    p.add_argument("--profile", action="store_true", help="print cProfile of one fit epoch per configuration")
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "epoch_speed.json"))
    p.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()

    train = pyrovae.load_dataset("mnist", "train", DATA_DIR)  # binary-dynamic under the VAE's Bernoulli
    grey = train.with_space("grey").observations()
    meta = {
        "machine": "2-core AMD EPYC (shared with other sessions)",
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "data": "MNIST train, 60,000 digits; hand-written and pyrovae: dynamically binarised every epoch; "
                "Pyro's loop: grey values through torchvision's ToTensor",
        "rounds": args.rounds,
        "seed": 0,
        "load": [load()],
        "command": "python benchmarks/epoch_speed.py " + " ".join(
            [f"--threads {' '.join(map(str, args.threads))}", f"--batch-sizes {' '.join(map(str, args.batch_sizes))}",
             f"--rounds {args.rounds}"] + ([] if args.pyro else ["--no-pyro"])),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "complete": False,
    }
    # the first batch size on every thread count, then Pyro's loop, then the other batch sizes: on
    # a busy machine the most asked-for figures come first, and each is saved as it is measured
    first, *rest = args.batch_sizes
    jobs = [("hand-written", first, t) for t in args.threads]
    jobs += [("pyro-example", 256, t) for t in reversed(args.threads)] if args.pyro else []
    jobs += [("hand-written", b, t) for b in rest for t in args.threads]
    results = []
    for comparison, batch, threads in jobs:
        torch.set_num_threads(threads)
        if comparison == "hand-written":
            hand_epoch, hand_step = hand_written(grey, batch)
            run_fit, trainer = pyrovae_fit(train, batch)
            fused_epoch, _ = hand_written(grey, batch, fused=True)
            res = alternate_with_fit(run_fit, {"hand-written PyTorch": hand_epoch,
                                               "hand-written PyTorch, Adam(fused=True)": fused_epoch}, args.rounds)
            row = {"threads": threads, "batch": batch, "comparison": comparison, "results": res}
            if args.steps_only:
                row["steps_only"] = steps_only(trainer, hand_step, torch.bernoulli(grey), batch)
            if args.profile:
                print(profile_fit(functools.partial(run_fit, 1)))
        else:
            run_fit, _ = pyrovae_fit(train, batch, latent=50)
            res = alternate_with_fit(run_fit, {"Pyro examples/vae/vae.py loop": pyro_example(batch)}, args.rounds)
            row = {"threads": threads, "batch": batch, "comparison": comparison, "results": res}
        results.append(row)
        meta["load"].append(load())
        meta["complete"] = len(results) == len(jobs)
        print(json.dumps({k: v for k, v in row.items() if k != "results"}
                         | {"ratio_to": res["pyrovae Trainer.fit (jit)"]["ratio_to"],
                            "median_s": {n: r["median_s"] for n, r in res.items()}}), flush=True)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        if args.docs:
            from train_speed import write_section

            write_section(Path(args.docs), "epoch-speed", table(meta, results), raw=args.json)
    print(f"wrote {args.json}")


def table(meta: dict, results: list) -> str:
    lines = [
        f"Measured {meta['date']} UTC on a {meta['machine']}, torch {meta['torch']}, Pyro {meta['pyro']}; "
        f"{meta['rounds']} alternating rounds of one epoch each after a warm-up epoch, medians. Machine load "
        f"before and after: `{meta['load'][0].split('load average:')[-1].strip()}` / "
        f"`{meta['load'][-1].split('load average:')[-1].strip()}` (1, 5, 15 min). Command: `{meta['command']}`; "
        "raw numbers in `benchmarks/results/epoch_speed.json`."
        + ("" if meta["complete"] else " (Partial: the run was stopped before every configuration was measured.)"),
        "",
        "| threads | batch | reference | reference s/epoch | pyrovae s/epoch | pyrovae / reference |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in results:
        mine = row["results"]["pyrovae Trainer.fit (jit)"]
        for ref, ratio in mine["ratio_to"].items():
            lines.append(f"| {row['threads']} | {row['batch']} | {ref} | {row['results'][ref]['median_s']:.2f} | "
                         f"{mine['median_s']:.2f} | {ratio:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
