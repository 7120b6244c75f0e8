"""The loss compiled by ``torch.jit.trace``, checked against the eager loss, eager when it must.

A trace records the tensor operations of one run and replays them, which removes Pyro's
per-step Python cost (docs/benchmarks.md). What a trace cannot follow -- Python control flow
on data, a Python number that changes later -- is caught by comparing the compiled loss with
the eager one on the same random numbers: on the first two calls of each input shape and on
the first call of every epoch (:meth:`TracedLoss.recheck`). Any failure to trace, to run or
to agree makes it warn, naming the cause, and stay eager from then on; it never stops
training. The same class compiles the importance-weight pass of
:func:`~pyrovae.infer.log_marginal_likelihood` (:class:`~pyrovae.infer.importance.CompiledWeights`),
where it also refuses a trace in which the model's own code turns a tensor into a Python value.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from pyro import poutine

from .._text import first_line
from .factors import factors
from .handlers import cuda_devices


class TracedLoss:
    """``fn(*tensors)`` compiled per input shape, with parameters and factors as graph inputs.

    The parameters and the named factors (:mod:`pyrovae.infer.factors`) are passed as explicit
    inputs so that the graph reads the live tensors (updated in place by the optimiser and the
    schedules) instead of baking their first values in as constants. ``verify_calls``: how many
    first calls of each input shape are checked against eager; ``fallback``: what the warning
    says happens instead; ``refuse_user_conversions``: stay eager when the model's code (anything
    but torch, Pyro and pyrovae's inference code) turns a tensor into a Python value while
    tracing (a branch on the data, which a check of the first calls may miss).
    """

    VERIFY_CALLS = 2

    def __init__(self, fn: Callable, params: list[torch.Tensor], verify_calls: int = VERIFY_CALLS,
                 fallback: str = "Training without jit.", refuse_user_conversions: bool = False) -> None:
        self.fn, self.params = fn, params
        self.verify_calls, self.fallback = verify_calls, fallback
        self.refuse_user_conversions = refuse_user_conversions
        self.graphs: dict[tuple, Callable | None] = {}
        self.checks: dict[tuple, int] = {}
        self.failed = False
        self.reason: str | None = None

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.fn(*tensors)
        named = factors()
        key = (tuple(named), *((t.shape, t.dtype, t.device) for t in tensors))
        if key not in self.graphs:
            self.graphs[key] = self._trace(tensors, list(named.values()))
            self.checks[key] = 0
        graph = self.graphs[key]
        inputs = (*self.params, *named.values(), *tensors)
        if graph is not None and self.checks[key] < self.verify_calls:
            self.checks[key] += 1
            self._verify(graph, inputs, tensors)
        out = None if graph is None or self.failed else self._run(graph, inputs)
        return self.fn(*tensors) if out is None else out

    def recheck(self) -> None:
        """Compare each graph with the eager loss again on its next call (e.g. every epoch,
        after a callback may have changed a Python number the model reads)."""
        for key in self.checks:
            self.checks[key] = min(self.checks[key], self.verify_calls - 1)

    def _run(self, graph, inputs) -> torch.Tensor | None:
        try:
            return graph(*inputs)
        except Exception as err:  # e.g. a shape the trace froze
            self._give_up(f"the jit-traced loss failed ({_cause(err)}). {self.fallback}")
            return None

    def _give_up(self, message: str) -> None:
        warnings.warn(message, stacklevel=5)
        self.failed, self.reason = True, message

    def _trace(self, tensors, factor_tensors) -> Callable | None:
        skip = len(self.params) + len(factor_tensors)

        def flat(*inputs):
            return self.fn(*inputs[skip:])

        # Tracing runs the loss once; fork the generator so that compiling (e.g. after a
        # resume) does not shift the random numbers training sees.
        with warnings.catch_warnings(record=True) as caught, pyro.validation_enabled(False), poutine.block(), \
                torch.random.fork_rng(devices=cuda_devices(tensors)):
            warnings.simplefilter("always")  # recorded, not shown: Pyro's tracer warnings, jit's notice
            try:
                graph = torch.jit.trace(flat, (*self.params, *factor_tensors, *tensors), check_trace=False)
            except Exception as err:  # a pair tracing cannot follow: stay eager
                graph, failure = None, f"jit tracing failed ({_cause(err)})"
        where = _user_conversion(caught) if graph is not None and self.refuse_user_conversions else None
        if where is not None:
            graph, failure = None, (f"{where} converts a tensor to a Python or NumPy value (control flow on the "
                                    "data?), which a jit trace would freeze at its first value")
        if graph is None:  # outside the block above, which records warnings, so that the user sees this one
            self._give_up(f"{failure}. {self.fallback}")
        return graph

    def _verify(self, graph, inputs, tensors) -> None:
        """Give up on ``graph`` unless it matches the eager loss on the same random numbers."""
        with torch.random.fork_rng(devices=cuda_devices(tensors)):
            state = rng_state(tensors[0])
            # eager with gradients on (TraceEnum_ELBO refuses a loss without them); an error
            # here is the pair's own: let it through
            with poutine.block():
                eager = self.fn(*tensors)
            set_rng_state(tensors[0], state)
            # the graph without: the executor's first, profiling runs then plan the graph as
            # plain ops under autograd; profiled with gradients it builds autodiff subgraphs,
            # 1.5x slower per IWAE step on our CPU (docs/benchmarks.md)
            with torch.no_grad():
                compiled = self._run(graph, inputs)
        if compiled is None:
            return
        eager, compiled = eager.detach(), compiled.detach()
        if compiled.shape != eager.shape or not torch.allclose(eager, compiled, rtol=1e-4, atol=1e-3):
            self._give_up(
                "the jit-traced loss differs from the eager one on the same random numbers "
                f"({_value(compiled)} vs {_value(eager)}): the model or guide has Python control "
                "flow on data, or reads a Python number that changed since tracing (e.g. a β set "
                "in a callback; read it with pyrovae.factor('beta') to make it a graph input). "
                f"{self.fallback}"
            )


# Code whose tensor-to-Python conversions under a trace are of shapes only (a graph is specialised
# to its input shapes anyway): torch, Pyro, and pyrovae's inference code and distributions. Models,
# including pyrovae's own (a text model cuts its batch to the longest sentence), are not on the list.
_SHAPE_ONLY = tuple(Path(m.__file__).resolve().parent for m in (torch, pyro)) + (
    Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "distributions.py")


def _user_conversion(caught) -> str | None:
    """``file:line`` of the first tracer warning about a tensor turned into a Python or NumPy value
    (``bool``, ``float``, ``.item()``, ``np.asarray``) raised outside the code listed in
    ``_SHAPE_ONLY`` (compared by path, so that ``site-packages/pyro`` does not cover ``pyrovae``);
    else ``None``."""
    for w in caught:
        message = str(w.message)
        if issubclass(w.category, torch.jit.TracerWarning) and ("to a Python" in message or "NumPy" in message):
            if not any(Path(w.filename).resolve().is_relative_to(d) for d in _SHAPE_ONLY):
                return f"{w.filename}:{w.lineno}"
    return None


def _cause(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err)}"


def _value(t: torch.Tensor) -> str:
    return f"{t.item():.6g}" if t.numel() == 1 else f"shape {tuple(t.shape)}"


def rng_state(x: torch.Tensor) -> torch.Tensor:
    """The state of the generator that draws ``x``'s device's random numbers."""
    return torch.cuda.get_rng_state(x.device) if x.is_cuda else torch.get_rng_state()


def set_rng_state(x: torch.Tensor, state: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.set_rng_state(state, x.device)
    else:
        torch.set_rng_state(state)
