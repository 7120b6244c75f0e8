"""Run folders: config, per-epoch metrics, checkpoints and pictures, written atomically.

A run folder holds

* ``config.json`` -- everything needed to rebuild the model and continue training;
* ``metrics.csv`` -- one row per epoch (bounds in nats per datapoint, higher is better);
* ``checkpoint.pt`` -- parameters, optimiser and schedule state, epoch, history and RNG
  state; a plain dict of tensors loaded with ``torch.load(weights_only=True)``;
* PNG pictures (see :mod:`pyrovae.plots`).

Every file is written to a temporary name in the same folder and renamed into place, so an
interrupted run never leaves half a file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .models import VAE

_UMASK = os.umask(0)
os.umask(_UMASK)

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.csv", "checkpoint.pt"

# VAE constructor arguments stored in a run's config
MODEL_KEYS = (
    "data_dim", "latent_dim", "hidden", "activation", "arch", "likelihood", "prior",
    "image_shape", "likelihood_options", "prior_options",
)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def save_checkpoint(run_dir: str | Path, trainer_state: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / CHECKPOINT, lambda f: torch.save(trainer_state, f))


def load_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a pyrovae run folder?")
    return torch.load(path, map_location=map_location, weights_only=True)


def load_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a pyrovae run folder?")
    return json.loads(path.read_text())


def vae_from_config(config: dict[str, Any]) -> VAE:
    """A fresh VAE with the architecture a run's config records."""
    kwargs = {k: config[k] for k in MODEL_KEYS if k in config}
    return VAE(**kwargs)


def load_vae(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[VAE, dict]:
    """The trained VAE of a run folder (parameters from its checkpoint) and its config."""
    config = load_config(run_dir)
    vae = vae_from_config(config)
    state = load_checkpoint(run_dir, map_location)
    vae.load_state_dict(state["module"])
    return vae.to(map_location), config
