"""One typed description of a run: data, model, optimisation. Written as ``config.json``.

:class:`RunConfig` is what ``pyrovae train`` builds from its flags and what Python users build
directly; :func:`pyrovae.runs.build_model` and :func:`pyrovae.runs.build_trainer` turn it into
objects, so both get the same defaults. The model's own options live in ``model_options`` (a
dict passed to the registered model's constructor), not as a mirror of each model's arguments.
Data dimensions are read from the data when the run starts, not assumed.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._version import __version__

# keys that pyrovae 0.1 kept at the top of config.json and now live in model_options
_V01_MODEL_KEYS = (
    "latent_dim", "hidden", "activation", "arch", "likelihood", "prior", "likelihood_options", "prior_options",
)


class ConfigError(ValueError):
    """A run configuration that cannot be used as written."""


def check_options(cls: type, options: dict[str, Any], what: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` for ``cls(**options)``, checked against its constructor: names it takes, and
    values of its defaults' types (an integer where the default is one, a finite number where it
    is a float, a tuple of numbers where it is a tuple). Raises :class:`ConfigError` naming the
    option and what it takes."""
    params = {
        n: p for n, p in inspect.signature(cls.__init__).parameters.items()
        if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    checked = {}
    for key, value in options.items():
        if key not in params:
            known = ", ".join(f"{n}={p.default!r}" if p.default is not p.empty else n for n, p in params.items())
            raise ConfigError(f"{what} has no option {key!r}; its options: {known or 'none'}")
        param = params[key]
        default = param.default
        if value is None and default is not None and "None" not in str(param.annotation):
            raise ConfigError(f"{what} option {key} takes a value, not none")
        if default is None or default is param.empty:  # the annotation says what it takes
            default = _example(str(param.annotation))
        elif isinstance(default, tuple) and default and ("Sequence" in str(param.annotation)
                                                         or "..." in str(param.annotation)):
            default = default[:1]  # any length, e.g. hidden widths
        checked[key] = _coerce(value, default, f"{what} option {key}")
    return checked


def _example(annotation: str) -> Any:
    """A value of the type an annotation such as ``"tuple[int, ...] | None"`` names (or ``None``)."""
    for text, example in (("tuple[int", (0,)), ("tuple[float", (0.0,)), ("int", 0), ("float", 0.0)):
        if annotation.startswith(text) or f"| {text}" in annotation:
            return example
    return None


def _coerce(value: Any, default: Any, name: str) -> Any:
    if default is inspect.Parameter.empty or default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    if isinstance(default, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{name} must be a finite number, not {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        free = len(default) == 1  # an example from an annotation: any length
        if isinstance(value, (tuple, list)) and (free or len(value) == len(default)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
        ):
            kind = type(default[0])
            if kind is int and not all(float(v).is_integer() for v in value):
                raise ConfigError(f"{name} must be comma-separated integers, not {value!r}")
            return tuple(kind(v) for v in value) if free else tuple(type(d)(v) for d, v in zip(default, value))
        if free:
            kind = "integers (like 64,64)" if isinstance(default[0], int) else "numbers (like 0.5,0.5)"
            raise ConfigError(f"{name} must be comma-separated {kind}, not {value!r}")
        raise ConfigError(
            f"{name} must be {len(default)} comma-separated numbers (like {','.join(map(str, default))}), not {value!r}"
        )
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{name} must be a word (one of the documented choices), not {value!r}")
    return value


@dataclass
class RunConfig:
    """Everything needed to rebuild a run's model and continue its training.

    Data: ``dataset`` (``embedded``, ``mnist``, ``fashion-mnist``), ``data_dir``,
    ``data_space`` (``None``: the model's own), ``levels``, ``train_size``, ``heldout_size``.
    Model: ``model`` (a name in :data:`pyrovae.models.MODELS`) and ``model_options``.
    Optimisation: ``objective`` (``None``: the model's own, ``elbo`` for a VAE), ``particles``;
    the KL's weighting (:func:`pyrovae.infer.weighted.kl_weighting`): ``beta``, ``kl_anneal``
    (``linear:STEPS[:DELAY]`` or ``cyclical:PERIOD[:RAMP]``), ``capacity`` (``C_MAX:STEPS``) with
    ``capacity_gamma``, ``free_bits`` (nats per dimension); ``epochs``, ``batch_size``, ``lr``, ``lr_decay``,
    ``clip_norm``, ``jit``, ``seed``, ``device``. ``data_dim`` and ``image_shape`` are filled in
    from the data.

    Example:

    >>> import pyrovae
    >>> config = pyrovae.RunConfig(epochs=2, beta=4.0, model_options={"latent_dim": 2})
    >>> config.weights_kl(), config.kl_settings()["beta"]
    (True, 4.0)
    >>> pyrovae.RunConfig.from_dict(config.to_dict()) == config
    True
    >>> try:
    ...     pyrovae.RunConfig(batch_size=0).validate()
    ... except pyrovae.ConfigError as err:
    ...     print(err)
    batch_size=0 is out of range
    """

    dataset: str = "embedded"
    data_dir: str | None = None
    data_space: str | None = None
    levels: int = 256
    train_size: int | None = None
    heldout_size: int | None = None
    model: str = "vae"
    model_options: dict[str, Any] = field(default_factory=dict)
    objective: str | None = None
    particles: int = 1
    beta: float = 1.0
    kl_anneal: str | None = None
    capacity: str | None = None
    capacity_gamma: float = 30.0
    free_bits: float | None = None
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 1.0
    clip_norm: float | None = None
    jit: bool = True
    seed: int = 0
    device: str = "cpu"
    data_dim: int | None = None
    image_shape: list[int] | None = None
    pyrovae_version: str = __version__
    created: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming every value of the wrong type or out of range (also
        after edits, e.g. of a hand-edited ``config.json``)."""
        wrong = [f"{f.name} ({getattr(self, f.name)!r})" for f in dataclasses.fields(self)
                 if not _of_type(getattr(self, f.name), f.type)]
        if wrong:
            raise ConfigError("the run configuration's " + ", ".join(wrong) + " has the wrong type (a hand-edited "
                              "config.json?)")
        checks = {
            "epochs": self.epochs >= 0, "batch_size": self.batch_size >= 1, "particles": self.particles >= 1,
            "lr": 0 < self.lr < math.inf, "lr_decay": 0 < self.lr_decay < math.inf, "levels": self.levels >= 2,
            "clip_norm": self.clip_norm is None or 0 < self.clip_norm < math.inf,
            "seed": 0 <= self.seed < 2**32, "device": self.device in ("cpu", "cuda"),
            "train_size": self.train_size is None or self.train_size >= 1,
            "heldout_size": self.heldout_size is None or self.heldout_size >= 1,
            "beta": 0 <= self.beta < math.inf, "capacity_gamma": 0 <= self.capacity_gamma < math.inf,
            "free_bits": self.free_bits is None or 0 <= self.free_bits < math.inf,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(", ".join(f"{k}={getattr(self, k)!r}" for k in bad) + " is out of range")
        if self.weights_kl():
            from .infer.weighted import kl_weighting  # here: pyrovae.infer imports this module

            try:
                kl_weighting(**self.kl_settings())  # parses the specs, refuses a capacity with a β
            except ValueError as err:
                raise ConfigError(str(err)) from None

    def weights_kl(self) -> bool:
        """Whether the run trains a weighted KL (β, annealing, capacity or free bits)."""
        return self.beta != 1.0 or any(v is not None for v in (self.kl_anneal, self.capacity, self.free_bits))

    def kl_settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~pyrovae.infer.weighted.kl_weighting` (specs parsed)."""
        from .infer.weighted import parse_anneal, parse_capacity

        return dict(
            beta=self.beta, gamma=self.capacity_gamma, free_bits=self.free_bits,
            kl_anneal=parse_anneal(self.kl_anneal) if self.kl_anneal is not None else None,
            capacity=parse_capacity(self.capacity) if self.capacity is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """From :meth:`to_dict` output, or a pyrovae 0.1 ``config.json`` (flat model keys)."""
        if not isinstance(values, dict):
            raise ConfigError(f"a run configuration is a JSON object of settings, not {type(values).__name__}")
        values = dict(values)
        if "model_options" not in values:  # pyrovae 0.1: the VAE's arguments at the top level
            values["model_options"] = {k: values.pop(k) for k in _V01_MODEL_KEYS if k in values}
            values.setdefault("model", "vae")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; known: {sorted(names)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` (in this version's format, so it records this version)."""
        from .io import write_json

        self.pyrovae_version = __version__
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: is {path.parent} a pyrovae run folder?")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON ({err})") from None
        return cls.from_dict(values)


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "None": type(None),
          "dict[str, Any]": dict, "list[int]": (list, tuple)}


def _of_type(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits a field annotation such as ``"int | None"`` (bools are not numbers)."""
    kinds = [_TYPES[a.strip()] for a in annotation.split("|")]
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, tuple(k for kind in kinds for k in (kind if isinstance(kind, tuple) else (kind,))))


DEFAULTS = RunConfig()
