"""The model zoo: a registry of models and the small protocol a registered model follows.

A registered model is an ``nn.Module`` with Pyro ``model``/``guide`` methods and the pieces run
folders and the command line use (:class:`PyroModel`). Adding one to the zoo is adding a
module that calls :func:`register_model`; ``pyrovae train --model NAME``, ``evaluate``,
``sample`` and ``compare`` then work on it without changes to the CLI.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..config import ConfigError, RunConfig, check_options
from ..data import ImageData


@runtime_checkable
class PyroModel(Protocol):
    """What the zoo's models provide beyond ``model(*batch)`` and ``guide(*batch)``."""

    data_space: str  # the data space its data are observed in by default

    def model(self, *batch) -> Any: ...

    def guide(self, *batch) -> Any: ...

    def prepare_data(self, data: Any, heldout: bool = False) -> Any:
        """The data source the pair observes: from an ``ImageData`` (its space; labels if it
        needs them), and from a tensor (the dtype the model computes in; anything else as is).
        ``heldout=True`` for data that are scored rather than trained on (e.g. without the few
        labels a semi-supervised model trains with)."""

    def check_data(self, *tensors: torch.Tensor, what: str = "data") -> None:
        """Raise :class:`~pyrovae.data.DataError` with the fix when the tensors do not fit."""

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """Write the run folder's PNGs; return their names."""

    def generate(self, num_samples: int, sample: bool = False) -> torch.Tensor: ...

    def to_picture(self, values: torch.Tensor) -> torch.Tensor: ...

    def report(self) -> dict[str, Any]:
        """Descriptive fields for evaluation summaries (likelihood, prior, ...)."""


# Optional members, used where present:
#   default_objective   an OBJECTIVES name ("enum") or a method returning an objective object,
#                       used when the run names no objective (RunConfig.objective is None);
#   training_schedules  a method returning {factor name: schedule}, with the model's own objective;
#   heldout_metrics     a method (*heldout batch) -> {name: number}, recorded in metrics.csv per epoch.
PROTOCOL = ("model", "guide", "data_space", "prepare_data", "check_data", "write_pictures", "generate",
            "to_picture", "report")


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its class, and which constructor arguments come from the data."""

    name: str
    cls: type
    summary: str
    data_args: tuple[str, ...] = ("data_dim", "image_shape")
    configure: Callable[[dict[str, Any], str | None, int], dict[str, Any]] | None = None

    def _options(self) -> list[inspect.Parameter]:
        params = inspect.signature(self.cls.__init__).parameters.values()
        return [p for p in params if p.name not in ("self", "name", *self.data_args)
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def option_defaults(self) -> dict[str, Any]:
        """The model's options and their defaults, read from its constructor (``inspect.Parameter.empty``
        for an option without one, which a run must give)."""
        return {p.name: p.default for p in self._options()}

    def resolve(self, options: dict[str, Any], data_space: str | None = None, levels: int = 256) -> dict[str, Any]:
        """Every option with its value: the given ones, then what the data imply, then defaults."""
        defaults = self.option_defaults()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ConfigError(
                f"model {self.name!r} has no option(s) {unknown}; its options: {sorted(defaults)}"
            )
        missing = sorted(k for k, v in defaults.items() if v is inspect.Parameter.empty and k not in options)
        if missing:
            raise ConfigError(f"model {self.name!r} needs the option(s) {missing} (e.g. --model-opt {missing[0]}=...)")
        options = check_options(self.cls, options, f"model {self.name!r}", skip=("name", *self.data_args))
        resolved = {**defaults, **options}
        if self.configure is not None:
            try:
                resolved = self.configure(resolved, data_space, levels)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"model {self.name!r}: {err}") from None
        return {k: _plain(v) for k, v in resolved.items()}

    def build(self, options: dict[str, Any], data_dim: int, image_shape) -> Any:
        data = {"data_dim": data_dim, "image_shape": tuple(image_shape)}
        try:
            return self.cls(**{k: data[k] for k in self.data_args}, **options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model {self.name!r}: {err}") from None


MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    cls: type,
    summary: str,
    *,
    data_args: tuple[str, ...] = ("data_dim", "image_shape"),
    configure: Callable[[dict[str, Any], str | None, int], dict[str, Any]] | None = None,
) -> ModelEntry:
    """Add ``cls`` to the zoo as ``name`` (``pyrovae train --model name``); ``cls`` must provide
    the :class:`PyroModel` members and take ``data_args`` in its constructor.

    Example:

    >>> import pyrovae
    >>> from pyrovae.models import MODELS, register_model
    >>> class Small(pyrovae.VAE):
    ...     def __init__(self, data_dim=784, image_shape=(28, 28), latent_dim=2):
    ...         super().__init__(data_dim=data_dim, latent_dim=latent_dim, hidden=[16], image_shape=image_shape)
    >>> entry = register_model("small-vae", Small, "a VAE with one hidden layer of 16 units")
    >>> model = pyrovae.build_model(pyrovae.RunConfig(model="small-vae"), pyrovae.load_embedded_mnist())
    >>> type(model).__name__, model.latent_dim
    ('Small', 2)
    >>> del MODELS["small-vae"]
    """
    missing = [m for m in PROTOCOL if not hasattr(cls, m)]
    taken = inspect.signature(cls.__init__).parameters
    missing += [f"__init__({a}=...)" for a in data_args if a not in taken]
    if missing:
        raise TypeError(f"{cls.__name__} cannot join the zoo as {name!r}: it lacks {missing} (see PyroModel)")
    entry = ModelEntry(name, cls, summary, data_args, configure)
    MODELS[name] = entry
    return entry


def model_entry(name: str) -> ModelEntry:
    """The registered :class:`ModelEntry` of ``name``, or a :class:`~pyrovae.ConfigError` listing the names.

    Example:

    >>> from pyrovae.models import MODELS, model_entry
    >>> entry = model_entry("mixture")
    >>> entry.cls.__name__, entry.option_defaults()["components"]
    ('MixtureVAE', 10)
    >>> "vae" in MODELS and MODELS["vae"].cls.__name__
    'VAE'
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def build_model(config: RunConfig, data: ImageData | None = None) -> Any:
    """The model a run configuration describes, sized by ``data`` when given (and recorded in
    ``config``: ``data_dim``, ``image_shape``, the resolved ``model_options`` and ``data_space``).

    Example:

    >>> import pyrovae
    >>> config = pyrovae.RunConfig(model="vae", model_options={"latent_dim": 2, "hidden": [8]})
    >>> vae = pyrovae.build_model(config, pyrovae.load_embedded_mnist().subset(slice(0, 10)))
    >>> type(vae).__name__, vae.latent_dim, config.data_dim, config.image_shape
    ('VAE', 2, 784, [28, 28])
    """
    entry = model_entry(config.model)
    if data is not None:
        config.data_dim, config.image_shape = data.data_dim, list(data.image_shape)
    if config.data_dim is None:
        raise ConfigError("the configuration has no data_dim: build the model with its data")
    config.model_options = entry.resolve(config.model_options, config.data_space, config.levels)
    model = entry.build(config.model_options, config.data_dim, config.image_shape or [config.data_dim])
    if data is not None:  # record the space and levels the model observes the images in
        observed = model.prepare_data(data.with_space(config.data_space, config.levels))
        config.levels = getattr(observed, "levels", config.levels)
        config.data_space = getattr(observed, "space", None) or config.data_space
    config.data_space = config.data_space or model.data_space
    return model


def _plain(value):
    """JSON-friendly option values (tuples become lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
