"""A run: its configuration turned into data, model and trainer, and the folder it lives in.

The factories :func:`load_run_data`, :func:`~pyrovae.models.build_model` and
:func:`build_trainer` are what ``pyrovae train`` calls, so a Python user who starts from a
:class:`~pyrovae.config.RunConfig` gets the same data, model and defaults as the CLI.

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

from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, RunConfig
from .data import ImageData, load_dataset
from .infer import Trainer
from .io import atomic_write
from .models import build_model

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.csv", "checkpoint.pt"


def load_run_data(config: RunConfig) -> tuple[ImageData, ImageData]:
    """The (train, held-out) images a config describes, in its data space (``None``: the
    model's). The embedded digits are split 1,000 (or ``heldout_size``) / the rest; MNIST and
    Fashion-MNIST use their test split (cut to ``heldout_size``)."""
    space, levels = config.data_space, config.levels
    if config.dataset == "embedded":
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


def build_trainer(model, config: RunConfig) -> Trainer:
    """The trainer a config describes, for a model built by :func:`~pyrovae.models.build_model`."""
    prior = getattr(model, "prior", None)
    if config.objective == "meanfield" and prior is not None and not getattr(prior, "closed_form_kl", True):
        raise ConfigError(
            f"objective='meanfield' needs KL(q || p) in closed form, which Pyro has not for the "
            f"{prior.name!r} prior; use objective='elbo' (Monte Carlo KL) or 'iwae'"
        )
    return Trainer(
        model.model,
        model.guide,
        objective=config.objective,
        num_particles=config.particles,
        lr=config.lr,
        lr_decay=config.lr_decay,
        clip_norm=config.clip_norm,
        jit=config.jit,
    )


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """``checkpoint.pt`` read with ``weights_only=True`` (tensors and containers, no code)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a pyrovae run folder?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, or not a plain-tensor checkpoint
        first = next((ln for ln in str(err).splitlines() if ln.strip()), "")
        raise ConfigError(f"{path} cannot be read as a pyrovae checkpoint ({type(err).__name__}: {first})") from None


def restore_module(module, state: dict[str, Any], run_dir: str | Path) -> None:
    """Load a checkpoint's module parameters, or say that it belongs to another model."""
    try:
        module.load_state_dict(state["module"])
    except (KeyError, RuntimeError) as err:
        first = next((ln for ln in str(err).splitlines() if ln.strip()), "")
        raise ConfigError(
            f"{Path(run_dir) / CHECKPOINT} does not fit the model that {CONFIG} describes ({first}); "
            "was one of the two replaced?"
        ) from None


def load_config(run_dir: str | Path) -> RunConfig:
    return RunConfig.load(Path(run_dir) / CONFIG)


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Any, RunConfig]:
    """The trained model of a run folder (parameters from its checkpoint) and its config."""
    config = load_config(run_dir)
    model = build_model(config)
    restore_module(model, load_checkpoint(run_dir, map_location), run_dir)
    return model.to(map_location), config
