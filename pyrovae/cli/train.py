"""``pyrovae train``: flags -> :class:`~pyrovae.config.RunConfig` -> a trained run folder."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import time
from pathlib import Path

import pyro
import torch

from ..config import DEFAULTS, RunConfig
from ..data import DATA_ENV, DATA_SPACES, DATASETS, as_tensors
from ..infer import OBJECTIVES, Trainer, TrainingError
from ..infer.distributed import World, close_distributed, from_main, init_distributed, together
from ..infer.weighted import parse_anneal, parse_capacity
from ..io import write_csv
from ..likelihoods import LIKELIHOODS
from ..models import MODELS, build_model, model_entry
from ..models.text import TEXT_OUTPUTS
from ..nets import ACTIVATIONS
from ..priors import PRIORS
from ..runs import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RunFolder,
    build_trainer,
    load_checkpoint,
    load_config,
    load_run_data,
    restore_module,
    save_checkpoint,
)
from ..text import TEXT_DATASETS
from .common import (
    CLIError,
    at_least,
    datapoint_unit,
    describe,
    device,
    int_list,
    non_negative_float,
    option,
    options_help,
    positive_float,
    positive_int,
    seed,
    spec_of,
)

# flags shared by the zoo's models: option name -> flag; given only when the user sets them,
# so that each model's own constructor defaults apply otherwise
MODEL_FLAGS = {
    "latent_dim": "--latent-dim", "hidden": "--hidden", "activation": "--activation", "arch": "--arch",
    "likelihood": "--likelihood", "prior": "--prior",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model and write a run folder",
        description="Train a model by SVI and write config.json, metrics.csv, checkpoint.pt and "
        "PNG pictures into a run folder. Bounds are reported in nats per datapoint "
        "(higher is better).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset", default=DEFAULTS.dataset, choices=["embedded", *DATASETS, *TEXT_DATASETS],
        help="'embedded' is the 10,000 MNIST digits shipped with pyrovae (offline); mnist and "
        "fashion-mnist are read through torchvision; ptb is Mikolov's Penn Treebank text (<data-dir>/PTB/, "
        "for --model text-vae, text-lm, text-bow)",
    )
    d.add_argument(
        "--data-dir", default=DEFAULTS.data_dir,
        help=f"folder with torchvision's layout (MNIST/raw/*.gz); default: ${DATA_ENV}, else ~/.cache/pyrovae",
    )
    d.add_argument(
        "--data-space", default=DEFAULTS.data_space, choices=DATA_SPACES,
        help="how 8-bit images become observations; default: the model's own (for a VAE its "
        "likelihood's: binary-dynamic for bernoulli, a fresh Bernoulli draw per pixel every epoch)",
    )
    d.add_argument("--levels", type=at_least(2), default=DEFAULTS.levels, help="grey levels for --data-space levels")
    d.add_argument(
        "--train-size", type=positive_int, default=DEFAULTS.train_size,
        help="use only the first N training images",
    )
    d.add_argument(
        "--heldout-size", type=positive_int, default=DEFAULTS.heldout_size,
        help="held-out images for the per-epoch ELBO: split off the embedded set (default 1000), "
        "or the first N of the test split (default all 10,000)",
    )
    _add_model_arguments(p.add_argument_group("model (defaults: the model's own, shown for vae)"))
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "--objective", default=DEFAULTS.objective, choices=sorted(OBJECTIVES),
        help="default: the model's own (elbo for vae; enum for models with an enumerated discrete latent). "
        "elbo: Trace_ELBO; meanfield: TraceMeanField_ELBO (closed-form KL); enum: TraceEnum_ELBO "
        "(enumerated discrete sites summed out); iwae: importance-weighted bound with --particles samples",
    )
    o.add_argument(
        "--particles", type=positive_int, default=DEFAULTS.particles,
        help="samples per datapoint (vectorised)",
    )
    k = p.add_argument_group(
        "KL weighting (models trained by the ELBO; metrics.csv records the true ELBO beside the objective)")
    k.add_argument("--beta", type=non_negative_float, default=DEFAULTS.beta,
                   help="weight of the KL, in nats per datapoint against the summed reconstruction (beta-VAE)")
    k.add_argument("--kl-anneal", type=spec_of(parse_anneal), default=DEFAULTS.kl_anneal, metavar="SPEC",
                   help="per-step factor on beta: linear:STEPS[:DELAY] (warm-up from 0) or cyclical:PERIOD[:RAMP]")
    k.add_argument("--capacity", type=spec_of(parse_capacity), default=DEFAULTS.capacity, metavar="C_MAX:STEPS",
                   help="capacity control gamma*|KL - C|, C ramped from 0 to C_MAX nats over STEPS steps")
    k.add_argument("--capacity-gamma", type=non_negative_float, default=DEFAULTS.capacity_gamma,
                   help="gamma of --capacity")
    k.add_argument("--free-bits", type=non_negative_float, default=DEFAULTS.free_bits, metavar="LAMBDA",
                   help="KL floor in nats per latent dimension (batch-mean KL), Kingma et al. 2016")
    o.add_argument("--epochs", type=positive_int, default=DEFAULTS.epochs, help="total epochs (also when resuming)")
    o.add_argument(
        "--max-minutes", type=positive_float, default=None,
        help="stop at the first epoch end after this much training time (resume later with --resume)",
    )
    o.add_argument(
        "--batch-size", type=positive_int, default=DEFAULTS.batch_size,
        help="minibatch size (under torchrun the global batch, shared out over the processes; the lr needs no "
        "change with their number)",
    )
    o.add_argument("--lr", type=positive_float, default=DEFAULTS.lr, help="Adam learning rate")
    o.add_argument(
        "--lr-decay", type=positive_float, default=DEFAULTS.lr_decay,
        help="multiply the learning rate by this after every epoch",
    )
    o.add_argument(
        "--clip-norm", type=positive_float, default=DEFAULTS.clip_norm,
        help="clip the gradient norm (off: None)",
    )
    o.add_argument("--no-jit", dest="jit", action="store_false", help="do not compile the loss with torch.jit.trace")
    r = p.add_argument_group("run")
    r.add_argument("--out", default=None, help="run folder (default: runs/<date>-<dataset>-<model>)")
    r.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder up to --epochs")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run folder's files")
    r.add_argument("--seed", type=seed, default=DEFAULTS.seed, help="seeds weights, data order, binarisation and noise")
    r.add_argument("--device", default=DEFAULTS.device, choices=["cpu", "cuda"], help="where to train")
    r.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=cmd_train, jit=DEFAULTS.jit)


def _add_model_arguments(m) -> None:
    vae = model_entry("vae").option_defaults()
    zoo = "; ".join(f"{name}: {entry.summary}" for name, entry in sorted(MODELS.items()))
    m.add_argument("--model", default=DEFAULTS.model, choices=sorted(MODELS), help=f"the model/guide pair ({zoo})")
    unset = argparse.SUPPRESS  # absent unless given: the model's constructor default applies
    m.add_argument("--latent-dim", type=positive_int, default=unset, help=f"dimension of z (vae: {vae['latent_dim']})")
    m.add_argument(
        "--hidden", type=int_list, default=unset,
        help=f"hidden widths of the encoder, comma-separated; the decoder mirrors them (vae: {vae['hidden']})",
    )
    m.add_argument(
        "--activation", choices=sorted(ACTIVATIONS), default=unset,
        help=f"nonlinearity of the hidden layers (vae: {vae['activation']})",
    )
    m.add_argument("--arch", choices=["mlp", "conv"], default=unset, help=f"network family (vae: {vae['arch']})")
    m.add_argument(
        "--likelihood", choices=sorted(LIKELIHOODS), default=unset, help=f"p(x|z) (vae: {vae['likelihood']})"
    )
    m.add_argument(
        "--likelihood-opt", action="append", default=[], metavar="KEY=VALUE", type=option,
        help="an option of the likelihood, repeatable; " + options_help(LIKELIHOODS),
    )
    m.add_argument("--prior", choices=sorted(PRIORS), default=unset, help=f"p(z) (vae: {vae['prior']})")
    m.add_argument(
        "--prior-opt", action="append", default=[], metavar="KEY=VALUE", type=option,
        help="an option of the prior, repeatable; " + options_help(PRIORS, skip=("latent_dim",)),
    )
    m.add_argument(
        "--model-opt", action="append", default=[], metavar="KEY=VALUE", type=option,
        help="any other option of the model's constructor, repeatable",
    )


def config_from_args(args) -> RunConfig:
    """The run configuration the flags describe (model options only where given)."""
    options = {name: getattr(args, name) for name in MODEL_FLAGS if hasattr(args, name)}
    if args.likelihood_opt:
        options["likelihood_options"] = dict(args.likelihood_opt)
    if args.prior_opt:
        options["prior_options"] = dict(args.prior_opt)
    options.update(dict(args.model_opt))
    settings = dict(
        dataset=args.dataset, data_dir=args.data_dir, data_space=args.data_space, levels=args.levels,
        train_size=args.train_size, heldout_size=args.heldout_size, model=args.model, model_options=options,
        objective=args.objective, particles=args.particles, beta=args.beta, kl_anneal=args.kl_anneal,
        capacity=args.capacity, capacity_gamma=args.capacity_gamma, free_bits=args.free_bits,
        epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, lr_decay=args.lr_decay, clip_norm=args.clip_norm, jit=args.jit, seed=args.seed,
        device=args.device, created=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    # a model's own training settings (M2: Pyro's lr, batch size, epochs) where no flag sets them
    given = getattr(args, "given", set())
    own = getattr(model_entry(args.model).cls, "training_defaults", {})
    settings.update({k: v for k, v in own.items() if k not in given})
    return RunConfig(**settings)


def _run_dir(args) -> Path:
    if args.resume:
        return Path(args.resume)
    if args.out:
        return Path(args.out)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{args.dataset}-{args.model}"


# flags that --resume takes: the rest of the run is its config.json's
RESUME_FLAGS = {"resume", "epochs", "max_minutes", "threads", "progress", "device"}


def cmd_train(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    run = _run_dir(args)
    if args.resume:
        ignored = sorted(set(getattr(args, "given", ())) - RESUME_FLAGS)
        if ignored:
            flags = ", ".join("--" + d.replace("_", "-") for d in ignored)
            raise CLIError(
                f"--resume continues {run} with its own config.json; {flags} would change it. Resume takes "
                "--epochs, --max-minutes, --device, --threads and --no-progress; for other settings start "
                "a new run with --out"
            )
    elif run.exists() and not run.is_dir():
        raise CLIError(f"--out {run} is a file, not a folder")
    config = None if args.resume else config_from_args(args)  # flag errors before any lock or folder
    # under torchrun: this process's place among the data-parallel processes (None: alone)
    world = init_distributed()
    try:
        _train(args, from_main(world, run), config, world)
    finally:
        if world is not None:
            close_distributed()


def _train(args, run: Path, config: RunConfig | None, world: World | None) -> None:
    main = world is None or world.main  # rank 0 prints and writes; the others train and read
    say = print if main else _silent
    # every look at the folder happens under its lock, after a killed writer's leftovers are undone
    with _open_folder(run, not args.resume, world) as folder:
        with together(world, "while setting up the run"):  # a failure on one process ends all
            if args.resume:
                if not (run / CHECKPOINT).exists():
                    raise CLIError(
                        f"{run} holds no checkpoint to resume (no epoch of it completed); start it again with "
                        f"--out {run} --overwrite"
                    )
                config = load_config(run)
                config.epochs = args.epochs
                if "device" in getattr(args, "given", ()):
                    config.device = args.device
                config.validate()
            else:
                _check_replaceable(run, args.overwrite)
            dev = device(config.device)
            train, heldout = load_run_data(config)
            pyro.clear_param_store()
            pyro.set_rng_seed(config.seed)
            model = build_model(config, train).to(dev)
            trainer = build_trainer(model, config)
            say(describe(train, heldout, config.data_space))
            if world is not None:
                say(f"data-parallel over {world.size} processes: --batch-size {config.batch_size} is the global "
                    f"batch ({config.batch_size // world.size}-{-(-config.batch_size // world.size)} rows each)")
            # Check data before anything is written, so a bad input leaves no run folder behind.
            first = as_tensors(model.prepare_data(train), torch.Generator().manual_seed(0), dev, "training data")
            model.check_data(*first, what="training data")
        if args.resume:  # outside the block above: setting up the trainer is a collective
            _resume(run, model, trainer, first, config, dev, say)
            if trainer.epoch >= config.epochs:
                say(f"{run} has trained {trainer.epoch} epochs already; --epochs {config.epochs} asks for no more")
                return

        def save(tr: Trainer, record: dict) -> None:
            # the run exists from its first completed epoch on: config, checkpoint, metrics, then commit
            if main:
                config.save(folder.dir / CONFIG)
                save_checkpoint(folder.dir, {"trainer": tr.state_dict(), "module": model.state_dict()})
                write_csv(folder.dir / METRICS, tr.history)
            folder.commit()

        start = time.perf_counter()
        try:
            trainer.fit(
                train, heldout, epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, device=dev,
                progress=args.progress, callback=save,
                max_seconds=args.max_minutes * 60 if args.max_minutes else None,
            )
        except TrainingError as err:
            if folder.committed or args.resume:
                kept = f"{run} keeps its checkpoint of epoch {trainer.epoch}"
                if args.resume:
                    kept += "; --resume keeps the run's settings, so start a new run (--out) with another --lr"
            else:
                kept = "no epoch completed, so " + (
                    f"{run} is unchanged" if run.exists() else "no run folder was written"
                )
            raise CLIError(f"{err}; {kept}") from None
        if not folder.committed:
            say("no epoch completed within --max-minutes" + ("" if args.resume else "; no run folder was written"))
            return
        if main:
            model.write_pictures(folder.dir, heldout, trainer.history, config.seed)
    last = trainer.history[-1] if trainer.history else {}
    say(
        f"done in {time.perf_counter() - start:.0f} s: held-out ELBO "
        f"{last.get('heldout_elbo', float('nan')):.2f} nats/{datapoint_unit(config)} after {trainer.epoch} epochs; "
        f"run folder {run}"
    )


RUN_FILES = ("config.json", "metrics.csv", "checkpoint.pt")


def _check_replaceable(run: Path, overwrite: bool) -> None:
    """A new run may replace a folder only if that holds a pyrovae run (with --overwrite) or
    only files pyrovae writes (a run that never completed an epoch): never a user's other files."""
    if not run.exists():
        return
    foreign = sorted(
        p.name for p in run.iterdir()
        if not (p.is_file() and (p.name in RUN_FILES or p.suffix == ".png" or p.name.startswith("evaluation-K")
                                 or p.name == "diagnostics.json" or p.name.endswith(".tmp")
                                 or p.name in TEXT_OUTPUTS
                                 or (p.name.startswith("samples-seed") and p.suffix == ".txt")))
    )
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise CLIError(
            f"--out {run} holds files pyrovae did not write ({shown}); a run replaces its whole folder, so "
            "choose another --out (e.g. a new folder inside it)"
        )
    if (run / CHECKPOINT).exists() and not overwrite:
        raise CLIError(f"{run} already holds a run; continue it with --resume {run}, or pass --overwrite")


def _resume(run: Path, model, trainer: Trainer, first, config: RunConfig, dev, say=print) -> None:
    state = load_checkpoint(run, dev)
    restore_module(model, state, run)
    try:
        trainer.load_state_dict(state["trainer"], *(t[: config.batch_size] for t in first))
    except (KeyError, ValueError) as err:
        raise CLIError(f"{run / CHECKPOINT} does not fit this run's trainer ({err})") from None
    say(f"resuming {run} after epoch {trainer.epoch}")


def _silent(*args, **kwargs) -> None:
    """``print`` on every process but rank 0 of a data-parallel run."""


class _Follower:
    """The run folder as a process other than rank 0 sees it: rank 0 holds the lock and writes;
    this one reads (a resumed checkpoint) and follows rank 0's commits."""

    def __init__(self, path: Path) -> None:
        self.dir, self.committed = path, False

    def commit(self) -> None:
        self.committed = True


@contextlib.contextmanager
def _open_folder(run: Path, fresh: bool, world: World | None):
    """The :class:`RunFolder` of rank 0 (or of the only process); the others wait until rank 0
    holds it (its lock, a killed writer's leftovers undone) before they read anything in it."""
    if world is None:
        with RunFolder(run, fresh=fresh) as folder:
            yield folder
        return
    with contextlib.ExitStack() as stack:
        with together(world, f"while opening {run}"):
            folder = stack.enter_context(RunFolder(run, fresh=fresh)) if world.main else _Follower(run)
        yield folder
