"""A run: its configuration turned into data, model and trainer, and the folder it lives in.

The factories :func:`load_run_data`, :func:`~pyrovae.models.build_model` and
:func:`build_trainer` are what ``pyrovae train`` calls, so a Python user who starts from a
:class:`~pyrovae.config.RunConfig` gets the same data, model and defaults as the CLI.

**Transactions.** :class:`RunFolder` gives a folder one writer at a time (a lock file beside
it), builds a new or overwritten run in a hidden folder beside it and swaps it in at its first
checkpoint, so that a run that fails, or is killed, before its first epoch ends leaves the
previous folder untouched (or none), and leftovers of a killed writer are cleared by the next.

A run folder holds

* ``config.json`` -- the :class:`~pyrovae.config.RunConfig`, enough to rebuild the model and
  continue training;
* ``metrics.csv`` -- one row per epoch (bounds in nats per datapoint, higher is better);
* ``checkpoint.pt`` -- module parameters, trainer state (optimiser, schedule, step, RNG); a
  plain dict of tensors loaded with ``torch.load(weights_only=True)``;
* PNG pictures (the model's ``write_pictures``).

Every file is written atomically (:mod:`pyrovae.io`).
"""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

from ._text import first_line
from .config import ConfigError, RunConfig
from .data import ImageData, as_tensors, heldout_generator, load_dataset
from .infer import Trainer
from .infer.trainer import prepare
from .infer.weighted import kl_weighting
from .io import atomic_write, file_fingerprint, fingerprint, write_csv
from .models import build_model
from .text import TEXT_DATASETS, load_text

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.csv", "checkpoint.pt"


def load_run_data(config: RunConfig) -> tuple[ImageData, ImageData]:
    """The (train, held-out) images a config describes, in its data space (``None``: the
    model's). The embedded digits are split 1,000 (or ``heldout_size``) / the rest; MNIST and
    Fashion-MNIST use their test split (cut to ``heldout_size``).

    Example:

    >>> import pyrovae
    >>> config = pyrovae.RunConfig(heldout_size=200, train_size=500)
    >>> train, heldout = pyrovae.load_run_data(config)
    >>> len(train), len(heldout)
    (500, 200)
    """
    space, levels = config.data_space, config.levels
    if config.dataset in TEXT_DATASETS:  # sentences (pyrovae.text): the train and test splits
        train, heldout = load_text(config.dataset, "train", config.data_dir), load_text(config.dataset, "test",
                                                                                        config.data_dir)
        if config.heldout_size:
            heldout = heldout.subset(slice(0, config.heldout_size))
    elif config.dataset == "embedded":
        data = load_dataset("embedded").with_space(space, levels)
        train, heldout = data.split(config.heldout_size or 1000, seed=0)
    else:
        train = load_dataset(config.dataset, "train", config.data_dir).with_space(space, levels)
        heldout = load_dataset(config.dataset, "test", config.data_dir).with_space(space, levels)
        if config.heldout_size:
            heldout = heldout.subset(slice(0, config.heldout_size))
    if config.train_size:
        train = train.subset(slice(0, config.train_size))
    return train, heldout


def heldout_batch(model, config: RunConfig, dev) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None, str]:
    """The run's held-out tensors as the model observes them (``prepare_data(heldout=True)``),
    drawn once with the run's seed; with their labels and the data's name."""
    _, heldout = load_run_data(config)
    batch = as_tensors(prepare(model.prepare_data, heldout, heldout=True), heldout_generator(config.seed), dev,
                       "held-out data")
    return batch, heldout.labels, heldout.name


def build_trainer(model, config: RunConfig) -> Trainer:
    """The trainer a config describes, for a model built by :func:`~pyrovae.models.build_model`.

    Example:

    >>> import pyrovae
    >>> config = pyrovae.RunConfig(model_options={"latent_dim": 2, "hidden": [8]}, objective="iwae", particles=3,
    ...                            lr=0.01)
    >>> vae = pyrovae.build_model(config, pyrovae.load_embedded_mnist())
    >>> trainer = pyrovae.build_trainer(vae, config)
    >>> type(trainer).__name__, trainer.objective_name, trainer.lr
    ('Trainer', 'iwae (K=3)', 0.01)
    """
    prior = getattr(model, "prior", None)
    if config.objective == "meanfield" and prior is not None and not getattr(prior, "closed_form_kl", True):
        raise ConfigError(
            f"objective='meanfield' needs KL(q || p) in closed form, which Pyro has not for the "
            f"{prior.name!r} prior; use objective='elbo' (Monte Carlo KL) or 'iwae'"
        )
    try:
        return _trainer(model, config)
    except ValueError as err:  # an objective name or a value that config.json got wrong
        raise ConfigError(f"the configuration's training settings: {err}") from None


def training_objective(model, config: RunConfig):
    """The run's objective: ``config.objective`` by name, else the model's ``default_objective``
    (a name such as ``"enum"``, or a method that builds the model's own objective object), else ``elbo``."""
    objective = config.objective or getattr(model, "default_objective", None) or "elbo"
    return objective() if callable(objective) else objective


def _trainer(model, config: RunConfig) -> Trainer:
    if config.weights_kl():
        objective, schedules = _kl_objective(model, config)
    else:
        objective = training_objective(model, config)
        schedules = model.training_schedules() if hasattr(model, "training_schedules") and not config.objective \
            else None
    return Trainer(
        model.model,
        model.guide,
        objective=objective,
        schedules=schedules,
        # refused, with the fix, for a model's own objective object; a KL objective has them built in
        num_particles=1 if config.weights_kl() else config.particles,
        lr=config.lr,
        lr_decay=config.lr_decay,
        clip_norm=config.clip_norm,
        jit=config.jit,
    )


def _kl_objective(model, config: RunConfig):
    """The β / annealing / capacity / free-bits objective of the run, for models trained by the ELBO."""
    own = getattr(model, "default_objective", None)
    if own is not None and not config.objective:
        raise ConfigError(
            f"model {config.model!r} trains with its own objective ({own if isinstance(own, str) else 'built in'}); "
            "beta=, kl_anneal=, capacity= and free_bits= weight the KL of models trained by the ELBO (e.g. vae)"
        )
    if config.objective not in (None, "elbo", "meanfield"):
        raise ConfigError(
            f"beta=, kl_anneal=, capacity= and free_bits= weight the ELBO's KL; objective={config.objective!r} is "
            "not the ELBO: leave objective= unset, or use objective='elbo'"
        )
    return kl_weighting(**config.kl_settings(), num_particles=config.particles)


class RunBusyError(RuntimeError):
    """Another process is writing the run folder."""


class RunFolder:
    """One writer for a run folder; a new run is built aside and swapped in at :meth:`commit`.

    ``fresh=True`` (a new run, or ``--overwrite``): files go to a hidden staging folder next to
    ``path`` until :meth:`commit`, which replaces ``path`` with it in one step (the old folder is
    moved away first and deleted after); leaving the ``with`` block without a commit deletes the
    staging folder and leaves ``path`` as it was. ``fresh=False`` (resume, evaluate): files go to
    ``path`` itself. Either way the lock ``.<name>.lock`` beside the folder keeps out a second
    writer, and on entry the leftovers of a killed writer (staging folders, half-written
    temporary files) are removed.
    """

    def __init__(self, path: str | Path, *, fresh: bool) -> None:
        path = Path(path)
        # a link to a folder: the transaction is on the folder it names, the link stays
        self.path, self.fresh = (path.resolve() if path.is_symlink() else path), fresh
        self.staging: Path | None = None
        self.committed = False
        self._lock = None

    @property
    def dir(self) -> Path:
        """Where files go now: the staging folder until the first commit, then the run folder."""
        return self.staging if self.staging is not None and not self.committed else self.path

    def __enter__(self) -> RunFolder:
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        self._lock = _try_lock(parent / f".{self.path.name}.lock", self.path)
        self._recover()
        if self.fresh:
            self.staging = parent / f".{self.path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.staging.mkdir()
        return self

    def commit(self) -> None:
        """Make the staged run *the* run (once; later calls do nothing)."""
        if self.committed or self.staging is None:
            self.committed = True
            return
        old = self.path.parent / f".{self.path.name}.old-{os.getpid()}"
        if self.path.exists():
            os.replace(self.path, old)
        os.replace(self.staging, self.path)
        self.committed = True
        shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        try:
            if self.staging is not None and not self.committed:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            _unlock(self._lock)

    def _recover(self) -> None:
        parent, name = self.path.parent, glob.escape(self.path.name)
        for old in parent.glob(f".{name}.old-*"):  # a writer killed between the two renames
            if not self.path.exists():
                os.replace(old, self.path)
            else:
                shutil.rmtree(old, ignore_errors=True)
        for staged in parent.glob(f".{name}.new-*"):
            shutil.rmtree(staged, ignore_errors=True)
        if self.path.is_dir():
            for tmp in self.path.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            _repair_metrics(self.path)


def run_exists(path: str | Path) -> bool:
    """Whether ``path`` is a run folder, or one a killed writer left moved aside (restored on entry)."""
    path = Path(path)
    return path.is_dir() or any(path.parent.glob(f".{glob.escape(path.name)}.old-*"))


def _repair_metrics(run: Path) -> None:
    """``metrics.csv`` is a view of the checkpoint's history, written just after it: a writer
    killed between the two leaves it an epoch behind, and the next writer rewrites it."""
    checkpoint, metrics = run / CHECKPOINT, run / METRICS
    if not checkpoint.exists():
        return
    try:
        history = load_checkpoint(run)["trainer"]["history"]
    except (ConfigError, KeyError, TypeError):
        return  # the command that reads the checkpoint reports it
    rows = metrics.read_text().strip().splitlines()[1:] if metrics.exists() else []
    if len(rows) != len(history):
        write_csv(metrics, history)


def _try_lock(path: Path, run: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RunBusyError(
            f"{run} is being written by another pyrovae process (train, evaluate or sample); "
            "wait for it to finish, or use another folder"
        ) from None
    return f


def _unlock(f) -> None:
    if f is None:
        return
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``checkpoint.pt`` read with ``weights_only=True`` (tensors and containers, no code)."""
    return read_checkpoint(run_dir, map_location)[0]


def read_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, str]:
    """The checkpoint and a fingerprint of its bytes (the first 16 hex digits of their SHA-256),
    read once, so that what is scored is what is stamped."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a pyrovae run folder?")
    data = path.read_bytes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols of foreign files
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, or not a plain-tensor checkpoint
        code = "GLOBAL" in str(err) or "Unsupported global" in str(err)
        why = ("it holds code or objects other than tensors and plain containers, and pyrovae never unpickles "
               "those" if code else f"it is truncated, corrupt or not a checkpoint ({type(err).__name__})")
        raise ConfigError(f"{path} cannot be read as a pyrovae checkpoint: {why}") from None
    if not isinstance(state, dict) or "module" not in state or "trainer" not in state:
        raise ConfigError(f"{path} is not a pyrovae checkpoint (no 'module' and 'trainer' entries)")
    return state, fingerprint(data)


def checkpoint_fingerprint(run_dir: str | Path) -> str | None:
    """The fingerprint of the run's ``checkpoint.pt`` now (``None`` without one)."""
    path = Path(run_dir) / CHECKPOINT
    return file_fingerprint(path) if path.exists() else None


def restore_module(module, state: dict[str, Any], run_dir: str | Path) -> None:
    """Load a checkpoint's module parameters, or say that it belongs to another model."""
    try:
        module.load_state_dict(state["module"])
    except (KeyError, RuntimeError) as err:
        first = first_line(err)
        raise ConfigError(
            f"{Path(run_dir) / CHECKPOINT} does not fit the model that {CONFIG} describes ({first}); "
            "was one of the two replaced?"
        ) from None


def load_config(run_dir: str | Path) -> RunConfig:
    return RunConfig.load(Path(run_dir) / CONFIG)


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, RunConfig]:
    """The trained model of a run folder (parameters from its checkpoint) and its config.

    Example:

    >>> import tempfile, torch, pyrovae
    >>> from pyrovae.runs import save_checkpoint
    >>> config = pyrovae.RunConfig(model_options={"latent_dim": 2, "hidden": [8]})
    >>> vae = pyrovae.build_model(config, pyrovae.load_embedded_mnist())
    >>> trainer = pyrovae.build_trainer(vae, config)
    >>> trainer.setup(torch.zeros(2, 784))
    >>> tmp = tempfile.TemporaryDirectory()
    >>> config.save(f"{tmp.name}/config.json")
    >>> save_checkpoint(tmp.name, {"trainer": trainer.state_dict(), "module": vae.state_dict()})
    >>> loaded, loaded_config = pyrovae.load_model(tmp.name)
    >>> z = torch.zeros(1, 2)
    >>> loaded_config == config, torch.equal(loaded.decode_mean(z), vae.decode_mean(z))
    (True, True)
    >>> tmp.cleanup()
    """
    model, config, _ = load_run(run_dir, map_location)
    return model, config


def load_run(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, RunConfig, dict]:
    """Model, config and what the checkpoint says of itself: ``{"epoch", "fingerprint"}``."""
    config = load_config(run_dir)
    model = build_model(config)
    state, fingerprint = read_checkpoint(run_dir, map_location)
    restore_module(model, state, run_dir)
    return model.to(map_location), config, {"epoch": int(state["trainer"].get("epoch", 0)), "fingerprint": fingerprint}
