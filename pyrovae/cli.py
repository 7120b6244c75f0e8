"""The ``pyrovae`` command: train, sample, evaluate and compare VAEs from run folders.

Run ``pyrovae COMMAND --help`` for every flag of a command.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import sys
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from . import __version__
from .data import DATA_ENV, DATA_SPACES, DATASETS, DataError, ImageData, heldout_generator, load_dataset
from .importance import ContractError
from .infer import OBJECTIVES, Trainer, TrainingError
from .likelihoods import LIKELIHOODS
from .nets import ACTIVATIONS
from .priors import PRIORS
from .runs import (
    CONFIG,
    METRICS,
    load_checkpoint,
    load_config,
    load_vae,
    save_checkpoint,
    vae_from_config,
    write_csv,
    write_json,
)


class CLIError(Exception):
    """A user error, printed without a traceback."""


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a number when it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def _options_help(registry: dict[str, type], skip: tuple[str, ...] = ()) -> str:
    """'name: key=default, ...' for each class in a registry, from its constructor."""
    parts = []
    for name, cls in sorted(registry.items()):
        params = [
            f"{p.name}={p.default}"
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in ("self", *skip) and p.default is not inspect.Parameter.empty
        ]
        if params:
            parts.append(f"{name}: {', '.join(params)}")
    return "options (default): " + "; ".join(parts) if parts else "no options"


def _add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE and write a run folder",
        description="Train a VAE by SVI and write config.json, metrics.csv, checkpoint.pt and "
        "PNG pictures into a run folder. Bounds are reported in nats per datapoint "
        "(higher is better).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset", default="embedded", choices=["embedded", *DATASETS],
        help="'embedded' is the 10,000 MNIST digits shipped with pyrovae (offline); mnist and "
        "fashion-mnist are read through torchvision",
    )
    d.add_argument(
        "--data-dir", default=None,
        help=f"folder with torchvision's layout (MNIST/raw/*.gz); default: ${DATA_ENV}, "
        "else ~/.cache/pyrovae",
    )
    d.add_argument(
        "--data-space", default=None, choices=DATA_SPACES,
        help="how 8-bit images become observations; default: the likelihood's own "
        "(binary-dynamic for bernoulli: a fresh Bernoulli draw per pixel every epoch)",
    )
    d.add_argument("--levels", type=int, default=256, help="grey levels for --data-space levels")
    d.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    d.add_argument(
        "--heldout-size", type=int, default=None,
        help="held-out images for the per-epoch ELBO: split off the embedded set (default 1000), "
        "or the first N of the test split (default all 10,000)",
    )
    m = p.add_argument_group("model")
    m.add_argument("--latent-dim", type=int, default=20, help="dimension of z")
    m.add_argument(
        "--hidden", type=_int_list, default=[400],
        help="hidden widths of the encoder, comma-separated (the decoder mirrors them)",
    )
    m.add_argument(
        "--activation", default="softplus", choices=sorted(ACTIVATIONS), help="nonlinearity of the hidden layers"
    )
    m.add_argument("--arch", default="mlp", choices=["mlp", "conv"], help="network family")
    m.add_argument("--likelihood", default="bernoulli", choices=sorted(LIKELIHOODS), help="p(x|z)")
    m.add_argument(
        "--likelihood-opt", action="append", default=[], metavar="KEY=VALUE", type=_option,
        help="an option of the likelihood, repeatable; " + _options_help(LIKELIHOODS),
    )
    m.add_argument("--prior", default="normal", choices=sorted(PRIORS), help="p(z)")
    m.add_argument(
        "--prior-opt", action="append", default=[], metavar="KEY=VALUE", type=_option,
        help="an option of the prior, repeatable; " + _options_help(PRIORS, skip=("latent_dim",)),
    )
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--objective", default="elbo", choices=OBJECTIVES,
        help="elbo: Trace_ELBO; meanfield: TraceMeanField_ELBO (closed-form KL); "
        "iwae: importance-weighted bound with --particles samples",
    )
    o.add_argument("--particles", type=int, default=1, help="samples per datapoint (vectorised)")
    o.add_argument("--epochs", type=int, default=20, help="total epochs (also when resuming)")
    o.add_argument(
        "--max-minutes", type=float, default=None,
        help="stop at the first epoch end after this much training time (resume later with --resume)",
    )
    o.add_argument("--batch-size", type=int, default=128, help="minibatch size")
    o.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    o.add_argument("--lr-decay", type=float, default=1.0, help="multiply the learning rate by this after every epoch")
    o.add_argument("--clip-norm", type=float, default=None, help="clip the gradient norm (off by default)")
    o.add_argument("--no-jit", dest="jit", action="store_false", help="do not compile the loss with torch.jit.trace")
    r = p.add_argument_group("run")
    r.add_argument("--out", default=None, help="run folder (default: runs/<date>-<dataset>-<objective>)")
    r.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder up to --epochs")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run folder's files")
    r.add_argument("--seed", type=int, default=0, help="seeds weights, data order, binarisation and noise")
    r.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to train")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _add_sample_parser(sub) -> None:
    p = sub.add_parser(
        "sample", help="draw images from a trained run's model",
        description="Decode z ~ p(z) with a run's trained decoder and save the grid of E[x|z] as PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", help="run folder written by `pyrovae train`")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the prior draws")
    p.add_argument("--out", default=None, help="PNG path (default: RUN/samples-seed<seed>.png)")
    p.add_argument("--save-tensor", default=None, metavar="PATH", help="also save the samples as a .pt tensor")
    p.set_defaults(func=cmd_sample)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyrovae",
        description="Variational autoencoders as Pyro model/guide pairs. "
        "Commands write into run folders; `pyrovae COMMAND --help` explains each flag.",
    )
    parser.add_argument("--version", action="version", version=f"pyrovae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_parser(sub)
    _add_sample_parser(sub)
    from . import cli_eval  # evaluate and compare live beside, to keep this file short

    cli_eval.add_parsers(sub)
    return parser


# ------------------------------------------------------------------------------ data


def load_run_data(config: dict[str, Any]) -> tuple[ImageData, ImageData]:
    """The (train, held-out) data a config describes, in its data space."""
    space, levels = config["data_space"], config.get("levels", 256)
    if config["dataset"] == "embedded":
        data = load_dataset("embedded", space=space).with_space(space, levels)
        train, heldout = data.split(config.get("heldout_size") or 1000, seed=0)
    else:
        train = load_dataset(config["dataset"], "train", config.get("data_dir"), space)
        heldout = load_dataset(config["dataset"], "test", config.get("data_dir"), space)
        train, heldout = train.with_space(space, levels), heldout.with_space(space, levels)
        if config.get("heldout_size"):
            heldout = heldout.subset(slice(0, config["heldout_size"]))
    if config.get("train_size"):
        train = train.subset(slice(0, config["train_size"]))
    return train, heldout


def _describe(train: ImageData, heldout: ImageData) -> str:
    origin = (
        "the first 10,000 MNIST training digits shipped with pyrovae"
        if train.name.startswith("mnist-embedded") else train.name
    )
    return (
        f"data: {origin}; {len(train):,} training / {len(heldout):,} held-out images, "
        f"data space {train.space}"
    )


# ------------------------------------------------------------------------------ train


def _new_config(args) -> dict[str, Any]:
    from .likelihoods import make_likelihood
    from .priors import make_prior

    likelihood_options = dict(args.likelihood_opt)
    if args.likelihood == "categorical":  # its levels are the data's levels
        likelihood_options.setdefault("levels", args.levels)
    try:
        likelihood = make_likelihood(args.likelihood, **likelihood_options)
        prior_options = dict(args.prior_opt)
        space = args.data_space or likelihood.data_space
        if args.prior == "vamp" and space in ("levels", "counts"):  # pseudo-inputs live where data do
            prior_options.setdefault("input_range", (0.0, float(args.levels - 1 if space == "levels" else 255)))
        prior = make_prior(args.prior, args.latent_dim, **prior_options)
    except (TypeError, ValueError) as err:
        raise CLIError(f"--likelihood/--prior options: {err}") from None
    if args.objective == "meanfield" and not prior.closed_form_kl:
        raise CLIError(
            f"--objective meanfield needs KL(q || p) in closed form, which Pyro has not for the "
            f"{args.prior!r} prior; use --objective elbo (Monte Carlo KL) or iwae"
        )
    return {
        "pyrovae_version": __version__,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "data_space": args.data_space or likelihood.data_space,
        "levels": args.levels,
        "train_size": args.train_size,
        "heldout_size": args.heldout_size,
        "data_dim": 784,
        "image_shape": [28, 28],
        "latent_dim": args.latent_dim,
        "hidden": args.hidden,
        "activation": args.activation,
        "arch": args.arch,
        "likelihood": args.likelihood,
        "likelihood_options": likelihood_options,
        "prior": args.prior,
        "prior_options": prior_options,
        "objective": args.objective,
        "particles": args.particles,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "clip_norm": args.clip_norm,
        "jit": args.jit,
        "seed": args.seed,
        "device": args.device,
    }


def _run_dir(args) -> Path:
    if args.resume:
        return Path(args.resume)
    if args.out:
        return Path(args.out)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{args.dataset}-{args.objective}"


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(name)


def make_trainer(vae, config: dict[str, Any]) -> Trainer:
    return Trainer(
        vae.model,
        vae.guide,
        objective=config["objective"],
        num_particles=config["particles"],
        lr=config["lr"],
        lr_decay=config["lr_decay"],
        clip_norm=config["clip_norm"],
        jit=config["jit"],
        max_plate_nesting=1,
        check_data=vae.check_data,
    )


def cmd_train(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    run = _run_dir(args)
    if args.resume:
        config = load_config(run)
        config["epochs"] = args.epochs
    else:
        if (run / CONFIG).exists() and not args.overwrite:
            raise CLIError(
                f"{run} already holds a run; continue it with --resume {run}, or pass --overwrite"
            )
        config = _new_config(args)
    device = _device(config["device"])
    train, heldout = load_run_data(config)
    print(_describe(train, heldout))
    pyro.clear_param_store()
    pyro.set_rng_seed(config["seed"])
    vae = vae_from_config(config).to(device)
    trainer = make_trainer(vae, config)
    # Check data before anything is written, so a bad input leaves no run folder behind.
    first = train.observations(torch.Generator().manual_seed(0), device=device)
    vae.check_data(first, "training data")
    if args.resume:
        state = load_checkpoint(run, device)
        vae.load_state_dict(state["module"])
        trainer.load_state_dict(state["trainer"], first[: config["batch_size"]])
        print(f"resuming {run} after epoch {trainer.epoch}")
    write_json(run / CONFIG, config)

    def save(tr: Trainer, record: dict) -> None:
        save_checkpoint(run, {"trainer": tr.state_dict(), "module": vae.state_dict()})
        write_csv(run / METRICS, tr.history)

    start = time.perf_counter()
    try:
        trainer.fit(
            train, heldout, epochs=config["epochs"], batch_size=config["batch_size"],
            seed=config["seed"], device=device, progress=args.progress, callback=save,
            max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        )
    except TrainingError as err:
        raise CLIError(str(err)) from None
    write_pictures(run, vae, trainer.history, heldout, config)
    last = trainer.history[-1] if trainer.history else {}
    print(
        f"done in {time.perf_counter() - start:.0f} s: held-out ELBO "
        f"{last.get('heldout_elbo', float('nan')):.2f} nats/image after {trainer.epoch} epochs; "
        f"run folder {run}"
    )


def write_pictures(run: Path, vae, history, heldout: ImageData, config: dict) -> None:
    """reconstructions.png, samples.png, curves.png, latent.png and (2-D z) manifold.png."""
    from . import plots

    shape = config["image_shape"]
    device = next(vae.parameters()).device
    x = heldout.observations(heldout_generator(config["seed"]), device=device)
    picture = vae.likelihood.to_picture  # data units (levels, counts) -> [0, 1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        plots.plot_reconstructions(
            run / "reconstructions.png", picture(x[:64]), picture(vae.reconstruct(x[:64])), shape
        )
        plots.plot_samples(run / "samples.png", picture(vae.generate(64)), shape, "E[x | z], z ~ p(z)")
    plots.plot_curves(run / "curves.png", history, config["objective"])
    n = min(len(x), 5000)
    labels = heldout.labels[:n] if heldout.labels is not None else None
    plots.plot_latent(run / "latent.png", vae.encode(x[:n])[0], labels)
    if config["latent_dim"] == 2:
        plots.plot_manifold(run / "manifold.png", lambda z: picture(vae.decode_mean(z)), shape)


# ------------------------------------------------------------------------------ sample


def cmd_sample(args) -> None:
    from . import plots

    vae, config = load_vae(args.run)
    torch.manual_seed(args.seed)
    images = vae.generate(args.num)
    out = Path(args.out) if args.out else Path(args.run) / f"samples-seed{args.seed}.png"
    plots.plot_samples(
        out, vae.likelihood.to_picture(images), config["image_shape"], f"{args.num} samples, seed {args.seed}"
    )
    if args.save_tensor:
        from .runs import atomic_write

        atomic_write(args.save_tensor, lambda f: torch.save(images, f))
    print(f"wrote {out}")


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CLIError, DataError, ContractError, FileNotFoundError) as err:
        print(f"pyrovae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last completed epoch's checkpoint is intact", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

