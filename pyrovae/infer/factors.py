r"""Named training factors (β, KL warm-up) set per step by schedules, read by the model.

A model that weights a term by a number that changes during training reads it with
:func:`factor` instead of a Python float::

    def model(x):
        ...
        with poutine.scale(scale=pyrovae.factor("beta")):
            z = pyro.sample("z", prior)

    pyrovae.train(model, guide, data, schedules={"beta": pyrovae.linear(0.01, 1.0, steps=5000)})

:func:`factor` returns a 0-dim tensor held in a store (as ``pyro.param`` holds parameters).
Before every step the trainer sets each scheduled factor to ``schedule(step)`` *in place*,
and the compiled (``jit=True``) loss takes the factors as graph inputs, so it follows the
schedule. A Python float read by the model would be frozen into the compiled graph at its
first value; the trainer re-checks the graph against the eager loss at every epoch and falls
back to eager when such a number changed.

Schedules (Bowman et al. 2016 warm-up; Fu et al. 2019 cyclical annealing) are callables
``step -> value`` of the trainer's global step (0 for the first step).

Pyro refuses ``poutine.scale(scale=0)`` while validation is on, so the built-in schedules keep
their values at or above :data:`FLOOR` (``1e-6``: a KL weighted by a millionth is as good as
off): ``cyclical(0.0, 1.0, period)`` works as written in Fu et al.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Schedule = Callable[[int], float]
FLOOR = 1e-6  # the smallest value a built-in schedule gives (poutine.scale needs > 0)

_STORE: dict[str, torch.Tensor] = {}


def factor(name: str, init: float = 1.0) -> torch.Tensor:
    """The current value of factor ``name`` as a 0-dim tensor (created at ``init``).

    Example:

    >>> import pyrovae
    >>> beta = pyrovae.factor("beta", init=0.5)
    >>> beta
    tensor(0.5000)
    >>> pyrovae.set_factor("beta", 0.25)
    >>> beta, pyrovae.factor("beta")
    (tensor(0.2500), tensor(0.2500))
    >>> pyrovae.infer.clear_factors()
    """
    if name not in _STORE:
        _STORE[name] = torch.tensor(float(init))
    return _STORE[name]


def set_factor(name: str, value: float) -> None:
    """Set factor ``name`` in place (the compiled loss reads the same tensor).

    Example:

    >>> import pyrovae
    >>> pyrovae.set_factor("beta", 0.1)
    >>> pyrovae.infer.factors()
    {'beta': tensor(0.1000)}
    >>> pyrovae.infer.clear_factors()
    """
    t = factor(name, value)
    with torch.no_grad():
        t.fill_(float(value))


def factors() -> dict[str, torch.Tensor]:
    """All factors by name (sorted), as the compiled loss takes them.

    Example:

    >>> import pyrovae
    >>> pyrovae.set_factor("capacity", 5.0)
    >>> pyrovae.set_factor("beta", 1.0)
    >>> pyrovae.infer.factors()
    {'beta': tensor(1.), 'capacity': tensor(5.)}
    >>> pyrovae.infer.clear_factors()
    """
    return dict(sorted(_STORE.items()))


def clear_factors() -> None:
    """Forget every factor (a fresh start: the next :func:`factor` creates it at its ``init``).

    Example:

    >>> import pyrovae
    >>> pyrovae.set_factor("beta", 0.5)
    >>> pyrovae.infer.clear_factors()
    >>> pyrovae.infer.factors()
    {}
    """
    _STORE.clear()


def constant(value: float) -> Schedule:
    """``value`` at every step.

    Example:

    >>> from pyrovae.infer import constant
    >>> constant(0.5)(1000)
    0.5
    """
    return lambda step: float(value)


def linear(start: float, end: float, steps: int, delay: int = 0) -> Schedule:
    """``start`` for ``delay`` steps, then a straight line to ``end`` over ``steps`` steps, then
    ``end`` (KL warm-up, Bowman et al. 2016); never below :data:`FLOOR`.

    Example:

    >>> from pyrovae import linear
    >>> warm_up = linear(0.0, 1.0, steps=4)
    >>> [warm_up(t) for t in range(6)]
    [1e-06, 0.25, 0.5, 0.75, 1.0, 1.0]
    >>> [linear(0.5, 1.0, steps=2, delay=2)(t) for t in range(5)]
    [0.5, 0.5, 0.5, 0.75, 1.0]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, not {steps}")

    def schedule(step: int) -> float:
        t = min(max(step - delay, 0) / steps, 1.0)
        return max(start + (end - start) * t, FLOOR)

    return schedule


def cyclical(low: float, high: float, period: int, ramp: float = 0.5) -> Schedule:
    """Cyclical annealing (Fu et al. 2019): in every period of ``period`` steps, rise linearly
    from ``low`` to ``high`` over the first ``ramp`` share of it, then stay at ``high``; never
    below :data:`FLOOR`.

    Example:

    >>> from pyrovae import cyclical
    >>> schedule = cyclical(0.0, 1.0, period=4)
    >>> [schedule(t) for t in range(8)]
    [1e-06, 0.5, 1.0, 1.0, 1e-06, 0.5, 1.0, 1.0]
    """
    if period < 1 or not 0 < ramp <= 1:
        raise ValueError(f"need period >= 1 and 0 < ramp <= 1; got {period}, {ramp}")
    ramp_steps = max(1, math.ceil(ramp * period))

    def schedule(step: int) -> float:
        t = min((step % period) / ramp_steps, 1.0)
        return max(low + (high - low) * t, FLOOR)

    return schedule
