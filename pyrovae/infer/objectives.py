r"""Training objectives: a registry of names, and the importance-weighted bound as a Pyro ELBO.

The trainer takes ``objective=`` as a name or as any object with
``differentiable_loss(model, guide, *args, **kwargs)`` -- every ``pyro.infer.ELBO``
(``Trace_ELBO``, ``TraceGraph_ELBO``, ``TraceEnum_ELBO``, ``RenyiELBO``, ...) and :class:`IWAE`.

==============  ==========================================================================
name            objective
==============  ==========================================================================
``elbo``        :math:`E_q[\log p(x, z) - \log q(z \mid x)]` by ``Trace_ELBO``
``meanfield``   the same bound by ``TraceMeanField_ELBO``: :math:`\mathrm{KL}(q \,\|\, p)` in
                closed form where Pyro has a formula (Monte Carlo otherwise)
``enum``        ``TraceEnum_ELBO``: model sites marked ``infer={"enumerate": "parallel"}``
                summed out exactly (a mixture's class, an unobserved label)
``iwae``        :math:`\mathcal{L}_K` of Burda et al. (2016), :class:`IWAE`
==============  ==========================================================================

``num_particles`` > 1 averages (ELBO) or importance-weights (IWAE) that many samples,
vectorised under one plate. :func:`register_objective` adds a name.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO
from pyro.poutine.util import site_is_subsample

from .handlers import cuda_devices
from .importance import ContractError, check_contract, log_importance_weights


class _TraceMeanField(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose loss ``torch.jit.trace`` can compile.

    Pyro's returns ``loss + (surrogate - surrogate.item())``; under a trace ``loss`` becomes a
    tensor and ``.item()`` a constant, so the compiled value is wrong (the gradient is not).
    The surrogate alone has the same value and gradient, as in Pyro's ``JitTraceMeanField_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._differentiable_loss_particle(model_trace, guide_trace)[1] / self.num_particles
        return loss


class _FromDifferentiableLoss(ELBO):
    """An ELBO defined by its ``differentiable_loss``: ``loss`` and ``loss_and_grads`` follow from it."""

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


class IWAE(_FromDifferentiableLoss):
    r"""The importance-weighted bound :math:`\mathcal{L}_K` as a training objective.

    .. math::

        \mathcal{L}_K(x) = E\Big[\log \frac1K \sum_{k=1}^K w_k\Big], \qquad
        w_k = \frac{p(x, z_k)}{q(z_k \mid x)}, \; z_k \sim q(z \mid x)

    (Burda et al. 2016). ``differentiable_loss`` returns :math:`-\sum_i \hat{\mathcal{L}}_K(x_i)`
    with the reparameterised gradient; it equals Pyro's ``RenyiELBO(alpha=0)`` in value and
    gradient (vectorised particles, same random numbers), without its per-particle Python
    work. Model sites enumerated in parallel are summed out inside each weight. A
    ``pyro.infer.ELBO``, so Pyro's own ``SVI(model, guide, optim, loss=IWAE(5))`` takes it.
    ``poutine.scale`` factors are kept (a weighted objective); evaluations drop them.

    Example:

    >>> import math, pyro, pyro.distributions as dist, torch, pyrovae
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))
    >>> x = torch.tensor([0.0, 1.0])
    >>> loss = pyrovae.IWAE(num_particles=5).differentiable_loss(model, guide, x)
    >>> exact = -dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).sum()
    >>> torch.allclose(loss, exact)
    True
    """

    def __init__(
        self, num_particles: int = 5, plate_name: str = "data", max_plate_nesting: int | None = None
    ) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, not {num_particles}")
        super().__init__(
            num_particles=num_particles, vectorize_particles=True,
            max_plate_nesting=max_plate_nesting if max_plate_nesting is not None else float("inf"),
        )
        self.plate_name = plate_name
        self._checked = False

    def _check(self, model, guide, args, kwargs) -> None:
        with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda_devices(args)):
            tr = poutine.trace(guide).get_trace(*args, **kwargs)
        for name, site in tr.nodes.items():
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site):
                if not getattr(site["fn"], "has_rsample", False):
                    raise ContractError(
                        f"the IWAE objective needs reparameterised guide sites, but {name!r} "
                        f"({type(site['fn']).__name__}) has no rsample; use objective 'elbo' "
                        "(score-function gradients), enumerate it in the model, or use a relaxed "
                        "distribution"
                    )
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting = check_contract(model, guide, *args, plate_name=self.plate_name, **kwargs)
        self._checked = True

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        if not self._checked:
            self._check(model, guide, args, kwargs)
        log_w = log_importance_weights(
            model, guide, *args, num_particles=self.num_particles, plate_name=self.plate_name,
            max_plate_nesting=self.max_plate_nesting, scaled=True, **kwargs,
        )
        return -(torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("IWAE draws all particles in one vectorised trace (log_importance_weights)")


def _pyro_elbo(cls: type) -> Callable[[int, int | None], ELBO]:
    def make(num_particles: int, max_plate_nesting: int | None) -> ELBO:
        return cls(
            num_particles=num_particles,
            vectorize_particles=num_particles > 1,
            max_plate_nesting=max_plate_nesting if max_plate_nesting is not None else float("inf"),
        )

    return make


def _iwae(num_particles: int, max_plate_nesting: int | None) -> IWAE:
    return IWAE(num_particles, max_plate_nesting=max_plate_nesting)


# name -> factory(num_particles, max_plate_nesting)
OBJECTIVES: dict[str, Callable[[int, int | None], object]] = {
    "elbo": _pyro_elbo(Trace_ELBO),
    "meanfield": _pyro_elbo(_TraceMeanField),
    "enum": _pyro_elbo(TraceEnum_ELBO),
    "iwae": _iwae,
}


def register_objective(name: str, factory: Callable[[int, int | None], object]) -> None:
    """Make ``objective=name`` (and ``--objective name``) build ``factory(num_particles, max_plate_nesting)``.

    Example:

    >>> import pyro, pyrovae
    >>> from pyrovae.infer import make_objective, register_objective
    >>> def renyi_half(num_particles, max_plate_nesting):
    ...     return pyro.infer.RenyiELBO(alpha=0.5, num_particles=num_particles)
    >>> register_objective("renyi-half", renyi_half)
    >>> type(make_objective("renyi-half", num_particles=3)).__name__
    'RenyiELBO'
    >>> del pyrovae.infer.OBJECTIVES["renyi-half"]
    """
    OBJECTIVES[name] = factory


def make_objective(spec, num_particles: int = 1, max_plate_nesting: int | None = None):
    """The objective for a registered name, or ``spec`` itself when it is an objective object
    (with ``differentiable_loss``, or ``loss_and_grads`` as Pyro's ``TraceGraph_ELBO``, ``RenyiELBO``).

    Example:

    >>> import pyrovae
    >>> from pyrovae.infer import make_objective
    >>> type(make_objective("elbo")).__name__, type(make_objective("enum")).__name__
    ('Trace_ELBO', 'TraceEnum_ELBO')
    >>> make_objective("iwae", num_particles=5).num_particles
    5
    >>> {"elbo", "meanfield", "enum", "iwae"} <= set(pyrovae.infer.OBJECTIVES)
    True
    """
    if isinstance(spec, type):
        raise ValueError(
            f"objective={spec.__name__} is a class; pass an instance, e.g. {spec.__name__}(max_plate_nesting=1)"
        )
    if hasattr(spec, "differentiable_loss") or hasattr(spec, "loss_and_grads"):
        return spec
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, not {num_particles}")
    if spec not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {spec!r}; choose one of {sorted(OBJECTIVES)} or pass a pyro.infer.ELBO "
            "object (anything with differentiable_loss or loss_and_grads)"
        )
    return OBJECTIVES[spec](num_particles, max_plate_nesting)


def sums_out_enumerated_sites(objective) -> bool:
    """Whether ``objective`` sums out model sites marked for parallel enumeration."""
    return isinstance(objective, (TraceEnum_ELBO, IWAE))


def objective_label(objective, name: str | None = None) -> str:
    """A short name for tables and logs: the registry name, else the class name, with ``K``."""
    label = name if isinstance(name, str) else type(objective).__name__
    k = getattr(objective, "num_particles", 1)
    return f"{label} (K={k})" if k and k > 1 else label
