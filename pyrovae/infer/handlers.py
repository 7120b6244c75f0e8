r"""Effect handlers the evaluators use: the model without training weights, and a look at a pair.

**Scaled sites.** A β-VAE or a KL warm-up multiplies some log-probabilities by a factor
(``poutine.scale``). That changes the *objective*, not the model: :math:`p(x)` is still
:math:`\int p(z) p(x \mid z)\,dz`. Every evaluation in pyrovae (importance sampling, the
held-out ELBO) therefore runs the pair under :func:`unscaled`, which sets each site's scale
back to 1 -- keeping only the factor a subsampled ``pyro.plate`` contributes, which is part of
the estimator, not a weight.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.infer.util import is_validation_enabled
from pyro.poutine import runtime
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


class _UnscaleMessenger(Messenger):
    def _pyro_sample(self, msg) -> None:
        # Runs after the model's own scale and plate handlers, which are entered after it.
        msg["scale"] = _subsample_scale(msg)


def unscaled(fn: Callable) -> Callable:
    """``fn`` with every ``poutine.scale`` undone (see the module docstring).

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro import poutine
    >>> from pyrovae import unscaled
    >>> def model():
    ...     with poutine.scale(scale=0.1):
    ...         pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
    >>> poutine.trace(model).get_trace().nodes["x"]["scale"]
    0.1
    >>> poutine.trace(unscaled(model)).get_trace().nodes["x"]["scale"]
    1.0
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with _UnscaleMessenger():
            return fn(*args, **kwargs)

    return wrapped


@dataclass
class PairSummary:
    """What one plain run of a pair shows: enumerated model sites, weighted sites."""

    enumerated: list[str] = field(default_factory=list)  # model sites summed out, not in the guide
    guide_enumerated: list[str] = field(default_factory=list)
    scaled: list[str] = field(default_factory=list)  # sites whose scale is not 1


def inspect_pair(model: Callable, guide: Callable, *args, **kwargs) -> PairSummary:
    """Trace the guide and the model replayed on it once, blocked and without gradients."""
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda_devices(args)):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    summary = PairSummary()
    for role, trace in (("model", model_trace), ("guide", guide_trace)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["infer"].get("enumerate"):
                if role == "guide":
                    summary.guide_enumerated.append(name)
                elif name not in guide_trace.nodes:
                    summary.enumerated.append(name)
            scale = site["scale"]
            if not _is_one(scale, site):
                summary.scaled.append(f"{role}:{name}")
    return summary


def _subsample_scale(msg) -> float:
    """The factor that subsampled plates give a site: full size / subsample size."""
    scale = 1.0
    for frame in msg["cond_indep_stack"]:
        full = getattr(frame, "full_size", None)
        if full is not None and frame.size and full != frame.size:
            scale = scale * full / frame.size
    return scale


def _is_one(scale, site) -> bool:
    value = scale.detach() if torch.is_tensor(scale) else torch.tensor(float(scale))
    return bool(torch.all(value == _subsample_scale(site)))


def cuda_devices(args) -> list[int]:
    """The CUDA devices of the tensors in ``args``, for ``torch.random.fork_rng``."""
    return sorted({a.device.index or 0 for a in args if torch.is_tensor(a) and a.is_cuda})


def restores_global_state(fn: Callable) -> Callable:
    """``fn`` that, when interrupted (Ctrl-C, SIGTERM), leaves the process-wide state it touches as
    it found it: Pyro's handler stack and plate dimensions, torch's grad mode and Pyro's validation
    flag. An interrupt is raised between any two bytecodes, also inside a context manager's
    ``__enter__`` after it changed that state and before its ``with`` block began, so the
    ``__exit__`` that would undo it never runs; the next call in the same process (a notebook's
    next cell) then fails with a misleading ``duplicate plate`` or "does not require grad" error."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        stack = runtime._PYRO_STACK
        dims = getattr(runtime._DIM_ALLOCATOR, "_stack", None)
        depth, allocated = len(stack), list(dims) if dims is not None else None
        grad, validation = torch.is_grad_enabled(), is_validation_enabled()
        try:
            return fn(*args, **kwargs)
        except BaseException:
            del stack[depth:]
            if dims is not None:
                dims[:] = allocated
            torch.set_grad_enabled(grad)
            pyro.enable_validation(validation)
            raise

    return wrapped
