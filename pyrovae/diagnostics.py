r"""What the latent code learned: KL per dimension, active units, mutual information, rate and
distortion, inference gaps and latent traversals, for any model/guide pair of the contract.

The pair follows the per-datapoint contract of :mod:`pyrovae.infer.importance`: ``model(x, *args)``
and ``guide(x, *args)`` put their latent sites inside ``pyro.plate("data", x.shape[0])``, and the
guide's distribution at each latent site is what tracing the guide shows. Nothing here needs the
model's class, except :func:`latent_traversals` (a picture needs a decoder). Every function

* draws its random numbers from a forked generator (``torch.random.fork_rng``): the caller's
  stream, and so the course of a training run that calls it, is left as it was; seed it with
  ``pyro.set_rng_seed`` before the call for reproducible numbers;
* runs the pair under :func:`pyrovae.unscaled`: a β weight or a warm-up factor is part of an
  objective, not of :math:`p(x, z)`;
* returns float64 tensors on the CPU, in nats, and raises :class:`~pyrovae.ContractError`
  with the fix for a pair it cannot handle.

For :math:`N` datapoints :math:`x_n` and a guide :math:`q(z \mid x)`:

=======================  ==============================================================================
diagnostic               definition
=======================  ==============================================================================
KL per dimension         :math:`\mathrm{KL}_j = \frac1N \sum_n \mathrm{KL}(q(z_j \mid x_n) \,\|\, p(z_j))`
                         (:func:`kl_per_dimension`)
active units             :math:`A_u = \mathrm{Cov}_x\big(E_{q(z \mid x)}[z_u]\big) > 0.01`, Burda et al.
                         (2016) (:func:`active_units`)
mutual information       :math:`I_q(x; z) = E_x E_{q(z \mid x)}[\log q(z \mid x) - \log q(z)]`,
                         :math:`q(z) = \frac1N \sum_n q(z \mid x_n)` (:func:`mutual_information`)
rate, distortion         :math:`R = E_x \mathrm{KL}(q(z \mid x) \,\|\, p(z))`,
                         :math:`D = -E_x E_q \log p(x \mid z)`, :math:`\mathrm{ELBO} = -(R + D)`,
                         Alemi et al. (2018) (:func:`rate_distortion`)
inference gaps           :math:`\log p(x) - \mathrm{ELBO}(q^*)` (approximation) and
                         :math:`\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q)` (amortisation), Cremer et al.
                         (2018) (:func:`inference_gaps`)
=======================  ==============================================================================

:class:`CollapseMonitor` is the trainer's end-of-epoch check (a warning at posterior collapse);
:func:`report` runs every diagnostic for ``pyrovae diagnose``. The math, with the bias of each
estimator, is in ``docs/diagnostics.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from ._text import first_line
from .infer.handlers import cuda_devices, inspect_pair, unscaled
from .infer.importance import (
    DEFAULT_CHUNK_SIZE,
    PARTICLE_PLATE,
    ContractError,
    _check_site,
    _per_datapoint,
    _rows,
    check_contract,
    is_point_mass,
    latent_sites,
    log_importance_weights,
    log_marginal_likelihood,
    per_datapoint_args,
)
from .infer.weighted import _elementwise, site_kl, site_kl_per_dim

ACTIVITY_THRESHOLD = 0.01  # Burda et al. (2016)
MI_CHUNK = 2**22  # most log-densities log q(z_k | x_m) held at once by mutual_information
MONITOR_ROWS = 1000  # held-out rows on which the trainer's collapse check runs


# ---------------------------------------------------------------------------------------------
# Tracing the pair: sites, their data-plate dimension, per-dimension views


@contextlib.contextmanager
def _isolated(tensors: Sequence, grad: bool = False) -> Iterator[None]:
    """Forked random numbers, no effect on outer handlers, gradients only when asked for."""
    with torch.random.fork_rng(devices=cuda_devices(tensors)), poutine.block(), torch.set_grad_enabled(grad):
        yield


def _latent_sites(trace, plate_name: str, num_rows: int) -> list[tuple[str, dict, int]]:
    """``(name, site, data_dim)`` of every latent site of a guide trace, the contract checked on
    each; a guide without any is refused."""
    sites = [(name, site, _check_site(site, "guide", plate_name, num_rows)) for name, site in latent_sites(trace)]
    if not sites:
        raise ContractError("the guide samples no latent site, so there is no latent code to diagnose (a "
                            "deterministic model has none)")
    return sites


def _guide_nesting(guide: Callable, x: torch.Tensor, args: tuple, kwargs: dict, plate_name: str) -> int:
    """The number of plate dimensions of the guide, from one plain trace (contract checked)."""
    sites = _latent_sites(poutine.trace(guide).get_trace(x, *args, **kwargs), plate_name, x.shape[0])
    return max(-f.dim for _, site, _ in sites for f in site["cond_indep_stack"] if f.vectorized)


def _particles(fn: Callable, num: int, nesting: int, *args, **kwargs):
    """The trace of ``fn`` with ``num`` vectorised particles left of its plates (dim 0)."""
    with pyro.plate(PARTICLE_PLATE, num, dim=-nesting - 1):
        return poutine.trace(fn).get_trace(*args, **kwargs)


def _by_dimension(t: torch.Tensor, site: dict, data_dim: int) -> torch.Tensor:
    r"""``t`` of shape ``batch + event`` (particles at dim 0) as ``(particles, N, D)``: every
    dimension but the particle and data-plate ones is a latent dimension."""
    fn = site["fn"]
    width = len(fn.batch_shape)
    t = t.expand(fn.batch_shape + fn.event_shape).movedim(width + data_dim, 1)
    return t.reshape(t.shape[0], t.shape[1], -1)


def _dimension_names(name: str, site: dict, data_dim: int) -> list[str]:
    """``z[0]``, ``z[1]``, ... for a site's latent dimensions (``z[i,j]`` beyond one)."""
    fn = site["fn"]
    shape = list(fn.batch_shape + fn.event_shape)
    del shape[len(fn.batch_shape) + data_dim]
    shape = shape[1:]  # the particle dim
    if not shape:
        return [name]
    return [f"{name}[{','.join(map(str, i))}]" for i in itertools.product(*map(range, shape))]


def _row_chunks(x: torch.Tensor, args: tuple, rows: int) -> Iterator[tuple[torch.Tensor, tuple]]:
    n = x.shape[0]
    for start in range(0, n, rows):
        yield x[start : start + rows], per_datapoint_args(args, n, slice(start, start + rows))


def _check_samples(num_samples: int, what: str = "num_samples") -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"{what} must be a whole number >= 1, not {num_samples!r}")


def _refuse_enumerated(model: Callable, guide: Callable, x: torch.Tensor, args: tuple, kwargs: dict, what: str):
    enumerated = inspect_pair(model, guide, x[:16], *per_datapoint_args(args, x.shape[0], slice(0, 16)),
                              **kwargs).enumerated
    if enumerated:
        raise ContractError(
            f"{what} needs every latent site of the model sampled by the guide, but model site(s) {enumerated} "
            "are enumerated (summed out): the KL to their prior is not one number per datapoint. active_units "
            "and mutual_information need only the guide; log p(x) sums them out (log_marginal_likelihood)"
        )


def _pair_traces(model, guide, x, args, kwargs, num_particles: int, plate_name: str, chunk_size: int):
    """Model and guide traces of ``num_particles`` draws, over chunks of rows; with the max plate
    nesting. The model and guide are run without their ``poutine.scale`` weights."""
    model, guide = unscaled(model), unscaled(guide)
    rows = max(1, chunk_size // num_particles)
    nesting = check_contract(model, guide, x[:rows], *per_datapoint_args(args, x.shape[0], slice(0, rows)),
                             plate_name=plate_name, **kwargs)
    for xb, argsb in _row_chunks(x, args, rows):
        guide_trace = _particles(guide, num_particles, nesting, xb, *argsb, **kwargs)
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(xb, *argsb, **kwargs)
        yield model_trace, guide_trace, xb.shape[0], nesting


# ---------------------------------------------------------------------------------------------
# KL per dimension


@dataclass
class LatentKL:
    r"""KL of the guide to the prior per latent dimension: ``per_datapoint[n, j]`` is
    :math:`\mathrm{KL}(q(z_j \mid x_n) \,\|\, p(z_j))` and :attr:`mean` its average over the
    datapoints, the vector the β-VAE literature plots. ``closed_form``: every dimension's KL is
    torch's formula; otherwise :math:`\log q(z_j) - \log p(z_j)` averaged over ``num_samples``
    draws where there is none."""

    per_datapoint: torch.Tensor
    names: list[str]
    closed_form: bool
    num_samples: int

    @property
    def mean(self) -> torch.Tensor:
        return self.per_datapoint.mean(0)

    @property
    def total(self) -> float:
        """:math:`\\sum_j \\mathrm{KL}_j`, the rate of a factorised pair."""
        return self.mean.sum().item()

    def summary(self) -> dict[str, Any]:
        return {"kl_per_dim": dict(zip(self.names, self.mean.tolist())), "kl_total": self.total,
                "kl_closed_form": self.closed_form, "kl_samples": self.num_samples}


def _factorised(q, p, name: str) -> bool:
    """Whether the KL of this site splits by dimension, and has torch's closed form; refused otherwise."""
    base_q, base_p = _elementwise(q), _elementwise(p)
    if base_q is None or base_p is None:
        which = f"guide {type(q).__name__}" if base_q is None else f"prior {type(p).__name__}"
        raise ContractError(
            f"the KL per dimension needs a guide and a prior that factorise over dimensions, but site {name!r} has "
            f"a {which} whose dimensions are not independent (a mixture, flow or VampPrior prior; a "
            "full-covariance guide): its KL does not split by dimension. Use a factorised prior "
            "(Normal(...).to_event(1)); for any prior, rate_distortion gives the total KL (the rate) and "
            "active_units the per-dimension activity"
        )
    try:
        torch.distributions.kl_divergence(base_q, base_p)
    except NotImplementedError:
        return False
    return True


def kl_per_dimension(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 10,
    plate_name: str = "data",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    **kwargs,
) -> LatentKL:
    r""":math:`\mathrm{KL}(q(z_j \mid x_n) \,\|\, p(z_j))` for every datapoint and latent dimension.

    For a guide and a prior that are both products over dimensions (``Normal(...).to_event(1)``
    against ``Normal(0, 1)``, a learned diagonal Normal), the KL of the site is the sum of the
    dimensions' KLs, each in closed form where torch has one (Normal/Normal:
    :math:`\tfrac12(\sigma^2 + \mu^2 - 1 - \log \sigma^2)` against a standard Normal), else
    :math:`\log q(z_j) - \log p(z_j)` averaged over ``num_samples`` draws :math:`z \sim q`. With every
    dimension in closed form one draw is made (a prior that depends on another latent,
    :math:`p(z_2 \mid z_1)`, is then conditioned on one draw of :math:`z_1`: unbiased, averaged
    over the datapoints). Dimensions of a site are its event dimensions and any plates nested in
    the data plate; every site of the guide is listed, in order.

    A prior whose dimensions are not independent (mixture of Gaussians, VampPrior, flow) is
    refused with a :class:`~pyrovae.ContractError`: its KL has no per-dimension split; use
    :func:`rate_distortion` for its total KL. Enumerated model sites are refused likewise.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae import diagnostics
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(torch.stack([x[:, 0], torch.zeros(len(x))], -1), 1.0).to_event(1))
    >>> x = torch.tensor([[1.0, 5.0], [-1.0, 5.0], [2.0, 5.0]])
    >>> diagnostics.kl_per_dimension(model, guide, x).mean
    tensor([1., 0.], dtype=torch.float64)
    """
    _check_samples(num_samples)
    x = _rows(x, model)
    _refuse_enumerated(model, guide, x, args, kwargs, "the KL per dimension")
    with _isolated((x, *args)):
        closed = _all_closed_form(model, guide, x[:16], per_datapoint_args(args, x.shape[0], slice(0, 16)),
                                  kwargs, plate_name)
        samples = 1 if closed else num_samples
        parts, names = [], []
        for model_trace, guide_trace, n, _ in _pair_traces(model, guide, x, args, kwargs, samples, plate_name,
                                                           chunk_size):
            sites = _latent_sites(guide_trace, plate_name, n)
            per_site = [
                _by_dimension(site_kl_per_dim(q["fn"], model_trace.nodes[name]["fn"], q["value"], name), q, d).mean(0)
                for name, q, d in sites
            ]
            parts.append(torch.cat(per_site, -1).double().cpu())
            names = names or [nm for name, q, d in sites for nm in _dimension_names(name, q, d)]
    return LatentKL(torch.cat(parts), names, closed, samples)


def _all_closed_form(model, guide, x, args, kwargs, plate_name: str) -> bool:
    model, guide = unscaled(model), unscaled(guide)
    guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, *args, **kwargs)
    sites = _latent_sites(guide_trace, plate_name, x.shape[0])
    return all([_factorised(site["fn"], model_trace.nodes[name]["fn"], name) for name, site, _ in sites])


# ---------------------------------------------------------------------------------------------
# Active units


@dataclass
class ActiveUnits:
    r"""``activity[u]`` is :math:`A_u = \mathrm{Cov}_x(E_q[z_u])`, the variance over the
    datapoints of the guide's mean of unit :math:`u`; a unit is active when it exceeds
    ``threshold`` (Burda et al. 2016)."""

    activity: torch.Tensor
    names: list[str]
    threshold: float

    @property
    def active(self) -> torch.Tensor:
        return self.activity > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())

    def summary(self) -> dict[str, Any]:
        return {"activity": dict(zip(self.names, self.activity.tolist())), "active_units": self.count,
                "latent_units": len(self.names), "activity_threshold": self.threshold,
                "active": [n for n, a in zip(self.names, self.active.tolist()) if a]}


def _continuous(site: dict) -> bool:
    fn = site["fn"]
    return not fn.support.is_discrete and getattr(fn, "has_rsample", False)


def _only_point_masses(guide: Callable, rows: tuple[torch.Tensor, ...]) -> bool:
    """Whether every latent site of the guide is a ``Delta`` (an autoencoder's code): no posterior,
    so nothing can collapse onto a prior."""
    with poutine.block(), torch.no_grad():
        latent = latent_sites(poutine.trace(guide).get_trace(*rows))
    return bool(latent) and all(is_point_mass(site["fn"]) for _, site in latent)


def _site_mean(fn, num_samples: int) -> torch.Tensor:
    """:math:`E_q[z]`: the distribution's mean, else the average of ``num_samples`` draws."""
    try:
        return fn.mean.expand(fn.batch_shape + fn.event_shape)
    except NotImplementedError:
        return fn.sample((num_samples,)).mean(0)


def active_units(
    guide: Callable,
    x: torch.Tensor,
    *args,
    threshold: float = ACTIVITY_THRESHOLD,
    num_samples: int = 100,
    plate_name: str = "data",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    **kwargs,
) -> ActiveUnits:
    r"""Active units of the guide (Burda, Grosse & Salakhutdinov 2016):

    .. math::

        A_u = \mathrm{Cov}_x\big(E_{q(z \mid x)}[z_u]\big) = \frac{1}{N - 1} \sum_n
        \big(\mu_u(x_n) - \bar\mu_u\big)^2, \qquad u \text{ active} \iff A_u > \text{threshold},

    the variance over the datapoints of the guide's mean: a unit whose mean does not move with
    :math:`x` tells the decoder nothing about it. Needs only the guide; its continuous,
    reparameterisable latent sites are measured (a discrete code has no mean to speak of). The mean
    is the distribution's own (``fn.mean``), else the average of ``num_samples`` draws (a flow guide).
    For a guide that depends on another latent, :math:`q(z_2 \mid z_1, x)`, the mean is given one
    draw of :math:`z_1`. Raises :class:`~pyrovae.ContractError` when there is no such site.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae import diagnostics
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(torch.stack([x[:, 0], torch.zeros(len(x))], -1), 1.0).to_event(1))
    >>> au = diagnostics.active_units(guide, torch.tensor([[1.0], [-1.0], [2.0]]))
    >>> au.count, au.activity
    (1, tensor([2.3333, 0.0000], dtype=torch.float64))
    """
    _check_samples(num_samples)
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a number >= 0 (Burda et al. use 0.01), not {threshold!r}")
    x = _rows(x, guide)
    if x.shape[0] < 2:
        raise ValueError("active units are a variance over datapoints: pass at least 2 rows of x")
    with _isolated((x, *args)):
        guide = unscaled(guide)
        nesting = _guide_nesting(guide, x[:16], per_datapoint_args(args, x.shape[0], slice(0, 16)), kwargs,
                                 plate_name)
        means, names = [], []
        for xb, argsb in _row_chunks(x, args, chunk_size):
            trace = _particles(guide, 1, nesting, xb, *argsb, **kwargs)
            sites = [(n, s, d) for n, s, d in _latent_sites(trace, plate_name, xb.shape[0]) if _continuous(s)]
            if not sites:
                raise ContractError("active units need continuous latent sites with rsample in the guide; it has "
                                    "none (only discrete or non-reparameterisable ones)")
            means.append(torch.cat([_by_dimension(_site_mean(s["fn"], num_samples), s, d)[0] for _, s, d in sites],
                                   -1).double().cpu())
            names = names or [nm for n, s, d in sites for nm in _dimension_names(n, s, d)]
    return ActiveUnits(torch.cat(means).var(0), names, float(threshold))


# ---------------------------------------------------------------------------------------------
# Mutual information and the rate/distortion split


@dataclass
class MutualInformation:
    r""":math:`I_q(x; z)` under the aggregate posterior of ``num_points`` datapoints, from
    ``num_samples`` draws per datapoint. ``stderr``: the Monte Carlo standard error, the terms
    treated as independent. It cannot exceed :math:`\log N` (``max_mi``): see
    :func:`mutual_information`."""

    mi: float
    stderr: float
    num_points: int
    num_samples: int

    @property
    def max_mi(self) -> float:
        return math.log(self.num_points)

    def summary(self) -> dict[str, Any]:
        return {"mutual_information": self.mi, "mi_stderr": self.stderr, "mi_max_log_n": self.max_mi,
                "mi_points": self.num_points, "mi_samples": self.num_samples}


def mutual_information(
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 1,
    plate_name: str = "data",
    **kwargs,
) -> MutualInformation:
    r"""The mutual information between the datapoints and their codes under the guide,

    .. math::

        I_q(x; z) = \frac1N \sum_{n=1}^N E_{q(z \mid x_n)}\big[\log q(z \mid x_n) - \log q(z)\big],
        \qquad q(z) = \frac1N \sum_{m=1}^N q(z \mid x_m),

    the "index-code" information of Hoffman & Johnson (2016), estimated as in He et al. (2019) with
    ``num_samples`` draws :math:`z \sim q(z \mid x_n)` per datapoint and the aggregate posterior
    :math:`q(z)` evaluated exactly as the mixture of the :math:`N` guides (an :math:`N \times NS`
    array of log-densities, computed in blocks).

    **Bias.** With :math:`x` uniform over these :math:`N` points the estimate is unbiased (Monte
    Carlo noise only) and :math:`I_q \le \log N`. As an estimate of the information under the
    data distribution it is biased *low*: it is the InfoNCE bound (Poole et al. 2019), which
    saturates at :math:`\log N`; report :math:`N` with it (:attr:`MutualInformation.max_mi`) and
    compare models on the same points. It needs only the guide. :math:`q(z \mid x_m)` is evaluated
    at the draws of every other datapoint by broadcasting them along a dimension left of the
    plates, as vectorised particles are; a guide whose later sites depend on earlier latents
    (:math:`q(z_2 \mid z_1, x)`) is rerun on each block (slower), which is detected on the first one.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae import diagnostics
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(10.0 * x, 0.1).to_event(1))
    >>> mi = diagnostics.mutual_information(guide, torch.arange(4.0).unsqueeze(-1), num_samples=5)
    >>> round(mi.mi, 3), round(mi.max_mi, 3)
    (1.386, 1.386)
    """
    _check_samples(num_samples)
    x = _rows(x, guide)
    n = x.shape[0]
    with _isolated((x, *args)):
        guide = unscaled(guide)
        nesting = _guide_nesting(guide, x, args, kwargs, plate_name)
        once = _particles(guide, 1, nesting, x, *args, **kwargs)  # q(. | x_m) of every row
        drawn = once if num_samples == 1 else _particles(guide, num_samples, nesting, x, *args, **kwargs)
        sites = _latent_sites(drawn, plate_name, n)
        values = {name: _as_rows(site["value"], site, d) for name, site, d in sites}  # k = s * N + n
        total, width = num_samples * n, sum(_by_dimension(s["value"], s, d).shape[-1] for _, s, d in sites)
        block = max(1, MI_CHUNK // (n * width))
        owner = torch.arange(total) % n
        terms, flat = [], None
        for start in range(0, total, block):
            part = {name: v[start : start + block] for name, v in values.items()}
            log_q = _cross_rerun(guide, x, args, kwargs, part, nesting, plate_name) if not flat else None
            if flat is None:
                flat = torch.allclose(_cross_flat(once, part, nesting, plate_name, n), log_q, rtol=1e-4, atol=1e-4)
            if log_q is None:
                log_q = _cross_flat(once, part, nesting, plate_name, n)
            log_q = log_q.double()
            own = log_q[torch.arange(len(log_q)), owner[start : start + block]]
            terms.append((own - (torch.logsumexp(log_q, 1) - math.log(n))).cpu())
    t = torch.cat(terms)
    stderr = (t.std() / math.sqrt(len(t))).item() if len(t) > 1 else float("nan")
    return MutualInformation(t.mean().item(), stderr, n, num_samples)


def _as_rows(value: torch.Tensor, site: dict, data_dim: int) -> torch.Tensor:
    """A site's draws ``(S, ..., N, ...)`` as ``(S * N, ..., 1, ...)``: one row per draw, with a
    size-1 data-plate dimension, so that they broadcast against the guide at every datapoint."""
    fn = site["fn"]
    at = len(fn.batch_shape) + data_dim
    v = value.expand(fn.batch_shape + fn.event_shape).movedim(at, 1)
    return v.reshape(v.shape[0] * v.shape[1], *v.shape[2:]).unsqueeze(at)


def _cross_flat(once, part: dict, nesting: int, plate_name: str, num_rows: int) -> torch.Tensor:
    """``(K, N)`` log q(z_k | x_m) from the guide's distributions at every row (one trace),
    evaluated at the broadcast draws: right for a guide whose sites depend on x only."""
    out = 0.0
    for name, site, data_dim in _latent_sites(once, plate_name, num_rows):
        lp = scale_and_mask(site["fn"].log_prob(part[name]), mask=site["mask"])
        out = out + _per_datapoint(lp, -nesting - 1, data_dim, name)
    return out


def _cross_rerun(guide, x, args, kwargs, part: dict, nesting: int, plate_name: str) -> torch.Tensor:
    """log q(z_k | x_m) by rerunning the guide with its sites conditioned on the broadcast draws."""
    k = len(next(iter(part.values())))
    try:
        trace = _particles(poutine.condition(guide, data=part), k, nesting, x, *args, **kwargs)
        out = 0.0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or name not in part:
                continue
            data_dim = _check_site(site, "guide", plate_name, x.shape[0])
            lp = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
            out = out + _per_datapoint(lp, -nesting - 1, data_dim, name)
        return out
    except (RuntimeError, ValueError) as err:
        raise ContractError(
            f"mutual_information evaluates q(z | x_m) at the draws of every datapoint by broadcasting them along a "
            f"dimension left of the plates, as vectorised particles are, and the guide fails on that: "
            f"{first_line(err)}. Write the guide so that it broadcasts (as for num_particles > 1 with "
            f"vectorize_particles=True)"
        ) from None


@dataclass
class RateDistortion:
    r"""Per datapoint: ``rate`` :math:`\mathrm{KL}(q(z \mid x_n) \,\|\, p(z))` and ``distortion``
    :math:`-E_q \log p(x_n \mid z)` (Alemi et al. 2018), in nats; their sum is minus the ELBO."""

    rate: torch.Tensor
    distortion: torch.Tensor
    closed_form: bool
    num_samples: int

    @property
    def elbo(self) -> torch.Tensor:
        return -(self.rate + self.distortion)

    def summary(self) -> dict[str, Any]:
        n = len(self.rate)
        se = (lambda t: (t.std() / math.sqrt(n)).item()) if n > 1 else (lambda t: float("nan"))
        return {"rate": self.rate.mean().item(), "rate_data_stderr": se(self.rate),
                "distortion": self.distortion.mean().item(), "distortion_data_stderr": se(self.distortion),
                "elbo": self.elbo.mean().item(), "rate_closed_form": self.closed_form,
                "rate_distortion_samples": self.num_samples}


def rate_distortion(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int = 10,
    plate_name: str = "data",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    **kwargs,
) -> RateDistortion:
    r"""The ELBO split into rate and distortion (Alemi et al. 2018, *Fixing a broken ELBO*):

    .. math::

        R(x_n) = \mathrm{KL}\big(q(z \mid x_n) \,\|\, p(z)\big), \qquad
        D(x_n) = -E_{q(z \mid x_n)} \log p(x_n \mid z), \qquad \mathrm{ELBO}(x_n) = -(R + D).

    The KL of each latent site is torch's closed form where it has one, else
    :math:`\log q(z) - \log p(z)` at the draws (a mixture, VampPrior or flow prior); both terms are
    averaged over ``num_samples`` draws. With Hoffman & Johnson's (2016) *ELBO surgery*,
    :math:`E_x R = I_q(x; z) + \mathrm{KL}(q(z) \,\|\, p(z))`: the rate is the information the code
    carries (:func:`mutual_information`) plus the mismatch of the aggregate posterior and the prior.
    Enumerated model sites are refused (their KL has no per-datapoint value here).

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae import diagnostics
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5).to_event(1))
    >>> rd = diagnostics.rate_distortion(model, guide, torch.tensor([[0.0, 1.0], [2.0, -1.0]]))
    >>> rd.rate.shape, bool(torch.allclose(rd.elbo, -(rd.rate + rd.distortion)))
    (torch.Size([2]), True)
    """
    _check_samples(num_samples)
    x = _rows(x, model)
    _refuse_enumerated(model, guide, x, args, kwargs, "the rate/distortion split")
    rates, distortions, closed = [], [], True
    with _isolated((x, *args)):
        for model_trace, guide_trace, n, nesting in _pair_traces(model, guide, x, args, kwargs, num_samples,
                                                                 plate_name, chunk_size):
            particle_dim = -nesting - 1
            rate = 0.0
            for name, q_site, data_dim in _latent_sites(guide_trace, plate_name, n):
                q, p = q_site["fn"], model_trace.nodes[name]["fn"]
                closed = closed and _has_closed_form(q, p)
                kl = site_kl(q, p, q_site["value"]).expand(q.batch_shape)
                rate = rate + _per_datapoint(kl, particle_dim, data_dim, name)
            distortion = 0.0
            for name, site, data_dim in _observed_sites_of(model_trace, plate_name, n):
                lp = scale_and_mask(site["fn"].log_prob(site["value"]), mask=site["mask"])
                distortion = distortion - _per_datapoint(lp, particle_dim, data_dim, name)
            rates.append(torch.as_tensor(rate).mean(0).double().cpu())
            distortions.append(torch.as_tensor(distortion).mean(0).double().cpu())
    return RateDistortion(torch.cat(rates), torch.cat(distortions), closed, num_samples)


def _observed_sites_of(model_trace, plate_name: str, num_rows: int):
    return [(name, site, _check_site(site, "model", plate_name, num_rows)) for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)]


def _has_closed_form(q, p) -> bool:
    try:
        torch.distributions.kl_divergence(q, p)
    except NotImplementedError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Inference gaps (Cremer et al. 2018)


@dataclass
class InferenceGaps:
    r"""Per datapoint: ``log_px`` (importance sampling with :math:`q^*` as the proposal),
    ``log_px_q`` (the same with the encoder's :math:`q`, for reference), ``elbo_q`` (the
    encoder's ELBO) and ``elbo_qstar`` (the ELBO of :math:`q^*`, optimised for that datapoint
    alone); ``curve`` holds (step, mean ELBO estimate) of the optimisation."""

    log_px: torch.Tensor
    log_px_q: torch.Tensor
    elbo_q: torch.Tensor
    elbo_qstar: torch.Tensor
    steps: int
    lr: float
    num_particles: int
    num_samples: int
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def approximation_gap(self) -> torch.Tensor:
        """:math:`\\log p(x) - \\mathrm{ELBO}(q^*)` per datapoint."""
        return self.log_px - self.elbo_qstar

    @property
    def amortisation_gap(self) -> torch.Tensor:
        """:math:`\\mathrm{ELBO}(q^*) - \\mathrm{ELBO}(q)` per datapoint."""
        return self.elbo_qstar - self.elbo_q

    def summary(self) -> dict[str, Any]:
        n = len(self.log_px)

        def mean_se(t: torch.Tensor) -> tuple[float, float]:
            return t.mean().item(), (t.std() / math.sqrt(n)).item() if n > 1 else float("nan")

        out: dict[str, Any] = {"gap_points": n, "gap_steps": self.steps, "gap_lr": self.lr,
                               "gap_particles": self.num_particles, "gap_num_samples": self.num_samples}
        for key, t in (("log_px", self.log_px), ("elbo_q", self.elbo_q), ("elbo_qstar", self.elbo_qstar),
                       ("approximation_gap", self.approximation_gap), ("amortisation_gap", self.amortisation_gap),
                       ("log_px_q", self.log_px_q)):
            out[key], out[f"{key}_data_stderr"] = mean_se(t)
        out["inference_gap"] = out["log_px"] - out["elbo_q"]
        return out


@dataclass
class _FreeNormal:
    """One latent site of q*: free per-datapoint loc and log-scale, inside the site's plates."""

    name: str
    frames: list
    loc: torch.Tensor
    log_scale: torch.Tensor
    event_dims: int
    data_at: int  # the data-plate dimension of loc and log_scale, counted from the left


def _free_normals(guide: Callable, x: torch.Tensor, args: tuple, kwargs: dict, plate_name: str) -> list[_FreeNormal]:
    """The guide's latent sites as free Normals initialised at its output; non-Normal sites refused."""
    trace = poutine.trace(unscaled(guide)).get_trace(x, *args, **kwargs)
    sites = []
    for name, site, data_dim in _latent_sites(trace, plate_name, x.shape[0]):
        fn = site["fn"]
        base = _elementwise(fn)
        if not isinstance(base, torch.distributions.Normal):
            raise ContractError(
                f"inference_gaps optimises q* per datapoint in the guide's family, which it can do for (diagonal) "
                f"Normal guide sites, Normal(loc, scale).to_event(...); site {name!r} is a {type(fn).__name__}"
                f"{'' if base is None else f' of {type(base).__name__}'}. Give the pair a Normal guide, or use "
                "log_marginal_likelihood and the ELBO alone"
            )
        shape = fn.batch_shape + fn.event_shape
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        loc = base.loc.detach().expand(shape).clone().requires_grad_()
        log_scale = base.scale.detach().log().expand(shape).clone().requires_grad_()
        sites.append(_FreeNormal(name, frames, loc, log_scale, len(fn.event_shape), len(fn.batch_shape) + data_dim))
    return sites


class _StickingNormal(dist.Normal):
    r"""A Normal whose log-density does not differentiate through its parameters: under
    reparameterisation the ELBO's gradient is then the path derivative alone, "sticking the landing"
    (Roeder, Wu & Duvenaud 2017), whose variance vanishes as q reaches the posterior."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return dist.Normal(self.loc.detach(), self.scale.detach(), validate_args=False).log_prob(value)


def _free_guide(sites: list[_FreeNormal], plate_name: str) -> Callable:
    """q*: a guide called as ``guide(x, *args, rows)`` that samples each site of the datapoints
    ``rows`` (indices, the last positional argument: chunked with ``x`` by the importance sampler)
    from its free Normal."""

    def guide(*args, **kwargs) -> None:
        rows = args[-1]
        for s in sites:
            with contextlib.ExitStack() as stack:
                for f in s.frames:
                    stack.enter_context(pyro.plate(f.name, len(rows) if f.name == plate_name else f.size, dim=f.dim))
                loc, log_scale = s.loc.index_select(s.data_at, rows), s.log_scale.index_select(s.data_at, rows)
                pyro.sample(s.name, _StickingNormal(loc, log_scale.exp()).to_event(s.event_dims))

    return guide


def _ignoring_rows(model: Callable) -> Callable:
    """``model`` called as ``model(x, *args, rows)``: the row indices q* needs are dropped."""

    def wrapped(*args, **kwargs):
        return model(*args[:-1], **kwargs)

    return wrapped


def inference_gaps(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    steps: int = 500,
    lr: float = 0.01,
    num_particles: int = 10,
    num_samples: int = 1000,
    plate_name: str = "data",
    progress: bool = False,
    **kwargs,
) -> InferenceGaps:
    r"""The approximation and amortisation gaps of Cremer, Li & Duvenaud (2018) on the rows of ``x``.

    For each datapoint, :math:`q^*` is the best member of the guide's family *for that datapoint
    alone*: for a Normal guide, free per-datapoint locations and log-scales of every latent site,
    initialised at the encoder's output and optimised by Adam (``steps`` steps, learning rate
    ``lr`` decayed to 0 on a cosine, ``eps=1e-3``, ``num_particles`` reparameterised draws per
    step, the path-derivative gradient of Roeder et al. 2017) with the model (the decoder) frozen.
    Then

    .. math::

        \log p(x) - \mathrm{ELBO}(q) = \underbrace{\log p(x) - \mathrm{ELBO}(q^*)}_{\text{approximation gap}}
        + \underbrace{\mathrm{ELBO}(q^*) - \mathrm{ELBO}(q)}_{\text{amortisation gap}}.

    :math:`\log p(x)` is estimated by importance sampling (:func:`pyrovae.log_marginal_likelihood`,
    ``num_samples`` samples) with :math:`q^*` as the proposal, the best member of the family for
    each datapoint (the encoder's own estimate is ``log_px_q``: a poor encoder is a poor proposal,
    whose heavy-tailed weights can also overshoot). That is :math:`\mathcal{L}_K(q^*)`, a lower
    bound on :math:`\log p(x)` in expectation, so the approximation gap is a lower bound too, tight
    as :math:`K` grows. Each ELBO is the mean of its ``num_samples`` log-weights. The optimised
    ELBO is below the optimum of the family: with too few steps the approximation gap is
    overstated and the amortisation gap understated (read ``curve``). Each row gets its own
    parameters and the whole batch is one optimisation: pass a few hundred rows at most. Guide
    sites that are not Normal are refused with a :class:`~pyrovae.ContractError`; enumerated model
    sites are summed out.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae import diagnostics
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
    >>> x = torch.tensor([[2.0], [-2.0]])  # the guide ignores x: its gap is amortisation (exactly 1.15)
    >>> gaps = diagnostics.inference_gaps(model, guide, x, steps=30, lr=0.3, num_samples=200)
    >>> bool((gaps.amortisation_gap > 0.5).all()), bool((gaps.approximation_gap.abs() < 0.1).all())
    (True, True)
    """
    _check_samples(steps, "steps")
    _check_samples(num_particles, "num_particles")
    _check_samples(num_samples, "num_samples")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, not {lr!r}")
    x = _rows(x, model)
    from tqdm.auto import tqdm

    with _isolated((x, *args)):
        nesting = check_contract(model, guide, x, *args, plate_name=plate_name, **kwargs)
        sites = _free_normals(guide, x, args, kwargs, plate_name)
        qstar, bare = _free_guide(sites, plate_name), _ignoring_rows(unscaled(model))
        rows = torch.arange(x.shape[0], device=x.device)
        params = [t for s in sites for t in (s.loc, s.log_scale)]
        # eps: Adam's steps do not shrink with the gradient, so at an optimum (where the path
        # derivative is 0 up to rounding, ~1e-6) the default 1e-8 would let rounding move q*
        optimizer = torch.optim.Adam(params, lr=lr, eps=1e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        curve, every = [], max(1, steps // 50)
        for step in tqdm(range(1, steps + 1), disable=not progress, desc="q* per datapoint", unit="step"):
            with torch.enable_grad():
                log_w = log_importance_weights(bare, qstar, x, *args, rows, num_particles=num_particles,
                                               plate_name=plate_name, max_plate_nesting=nesting, **kwargs)
                elbo = log_w.mean(0)  # per datapoint; rows are independent, so their sum is optimised
                grads = torch.autograd.grad(-elbo.sum(), params)  # the model's parameters get no .grad
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
            schedule.step()
            if step % every == 0 or step == steps:
                curve.append((step, elbo.mean().item()))
        for p in params:
            p.requires_grad_(False)
        common = dict(num_samples=num_samples, plate_name=plate_name, max_plate_nesting=nesting, progress=progress)
        res_q = log_marginal_likelihood(model, guide, x, *args, **common, **kwargs)
        res_star = log_marginal_likelihood(_ignoring_rows(model), qstar, x, *args, rows, **common, **kwargs)
    return InferenceGaps(res_star.log_px, res_q.log_px, res_q.elbo, res_star.elbo, steps, float(lr), num_particles,
                         num_samples, curve)


# ---------------------------------------------------------------------------------------------
# Latent traversals (a picture: needs the model object)


@dataclass
class Traversals:
    """``images[i, k]``: the decoder's mean with dimension ``dims[i]`` set to ``center[dims[i]] +
    offsets[k]`` and every other dimension at ``center``, in picture units ([0, 1])."""

    images: torch.Tensor
    dims: list[int]
    offsets: torch.Tensor
    center: torch.Tensor
    around: str


def latent_traversals(
    vae: Any,
    x: torch.Tensor | None = None,
    *,
    dims: Sequence[int] | None = None,
    num_steps: int = 9,
    span: float = 2.5,
) -> Traversals:
    r"""Decoded images along each latent dimension: :math:`z = c + t\, e_j`, :math:`t` in
    ``num_steps`` values from :math:`-`\ ``span`` to ``span``, where the centre :math:`c` is the
    guide's mean for the datapoint ``x`` (one row), or :math:`0` (the prior's centre) without it.

    ``vae`` is a :class:`pyrovae.VAE` or any object with ``latent_dim``, ``decode_mean(z)``
    (:math:`E[x \mid z]` for a batch of codes), ``encode(x)`` returning the guide's mean first (only
    with ``x``) and optionally ``to_picture(values)``: the model's own decoding path, the one
    ``generate`` uses. Raises :class:`~pyrovae.ContractError` naming what is missing.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae import diagnostics
    >>> vae = pyrovae.VAE(data_dim=4, latent_dim=3, hidden=[8], image_shape=(2, 2))
    >>> trav = diagnostics.latent_traversals(vae, dims=[0, 2], num_steps=5)
    >>> trav.images.shape, trav.dims, trav.offsets.tolist()
    (torch.Size([2, 5, 4]), [0, 2], [-2.5, -1.25, 0.0, 1.25, 2.5])
    """
    _check_samples(num_steps, "num_steps")
    missing = [m for m in ("latent_dim", "decode_mean", *(("encode",) if x is not None else ())) if not hasattr(vae, m)]
    if missing:
        raise ContractError(
            f"latent traversals decode codes with the model object, which needs {missing} (as pyrovae.VAE has: "
            f"latent_dim, decode_mean(z), encode(x) -> (mean, scale)); {type(vae).__name__} lacks them"
        )
    d = int(vae.latent_dim)
    dims = list(range(d)) if dims is None else [int(j) for j in dims]
    if any(not 0 <= j < d for j in dims):
        raise ValueError(f"dims must be latent dimensions 0..{d - 1}, not {dims}")
    picture = getattr(vae, "to_picture", lambda v: v)
    try:
        with torch.no_grad():
            center = torch.zeros(d) if x is None else vae.encode(x[:1])[0][0].detach().cpu()
            offsets = torch.linspace(-span, span, num_steps)
            device = next(vae.parameters()).device if hasattr(vae, "parameters") else torch.device("cpu")
            rows = []
            for j in dims:
                z = center.expand(num_steps, d).clone()
                z[:, j] += offsets
                rows.append(picture(vae.decode_mean(z.to(device))).detach().cpu())
    except (TypeError, ValueError, RuntimeError, IndexError) as err:
        raise ContractError(f"latent traversals need decode_mean(z) for a batch of {d}-dimensional codes and "
                            f"encode(x)[0] of shape (1, {d}): {first_line(err)}") from None
    around = "the prior's centre (z = 0)" if x is None else "a datapoint's code (the guide's mean)"
    return Traversals(torch.stack(rows), dims, offsets, center, around)


# ---------------------------------------------------------------------------------------------
# The trainer's collapse check


class PosteriorCollapseWarning(UserWarning):
    """No latent unit is active, or one that was active has died (:class:`CollapseMonitor`)."""


_FIXES = ("try KL warm-up (--kl-anneal linear:STEPS, in Python kl_anneal=) or free bits (--free-bits 0.5, "
          "free_bits=), which keep the KL from pushing q(z|x) onto the prior early in training; a less "
          "expressive decoder or a smaller learning rate also help")


class CollapseMonitor:
    """Active units at each epoch end, with a :class:`PosteriorCollapseWarning` when none is active
    (posterior collapse) or when units that were active at an earlier epoch are no longer.

    ``check`` measures :func:`active_units` of the guide on up to :data:`MONITOR_ROWS` held-out
    rows (one guide pass, with its own random numbers) and returns ``{"active_units": count}`` for
    the epoch's metrics, or ``{}`` for a guide without continuous reparameterised latent sites
    inside the data plate. Each collapse, and each unit's death, is reported once.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae.diagnostics import CollapseMonitor
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(torch.stack([x[:, 0], torch.zeros(len(x))], -1), 1.0).to_event(1))
    >>> CollapseMonitor().check(guide, (torch.tensor([[1.0], [-1.0], [2.0]]),), epoch=1)
    {'active_units': 1}
    """

    def __init__(self, threshold: float = ACTIVITY_THRESHOLD, rows: int = MONITOR_ROWS) -> None:
        self.threshold, self.rows = threshold, rows
        self.ever_active: torch.Tensor | None = None
        self.reported: set[str] = set()
        self.collapsed = False
        self.codes_only: bool | None = None  # every latent site a Delta: nothing to collapse onto a prior

    def check(self, guide: Callable, batch: tuple[torch.Tensor, ...], epoch: int, seed: int = 0) -> dict[str, int]:
        rows = tuple(t[: self.rows] for t in batch)
        with torch.random.fork_rng(devices=cuda_devices(rows)):
            torch.manual_seed(seed)
            try:
                au = active_units(guide, *rows, threshold=self.threshold)
            except ContractError:
                return {}
            if self.codes_only is None:
                self.codes_only = _only_point_masses(guide, rows)
        if self.codes_only:  # an autoencoder: its units may be inactive by design (sparsity)
            return {"active_units": au.count}
        active = au.active
        if self.ever_active is None or len(self.ever_active) != len(active):
            self.ever_active = torch.zeros_like(active)
        died = [n for n, was, now in zip(au.names, self.ever_active.tolist(), active.tolist()) if was and not now]
        new = [n for n in died if n not in self.reported]
        where = f"(Cov_x E_q[z_u] <= {self.threshold:g} on {len(rows[0])} held-out rows)"
        if au.count == 0 and not self.collapsed:
            warnings.warn(
                f"epoch {epoch}: posterior collapse: none of the {len(au.names)} latent units is active {where}: "
                f"the guide's mean no longer depends on x, so q(z|x) carries no information about x and the "
                f"decoder ignores z. If that is not intended, {_FIXES}",
                PosteriorCollapseWarning, stacklevel=4,
            )
        elif au.count and new:
            warnings.warn(
                f"epoch {epoch}: latent unit(s) {', '.join(new)} were active at an earlier epoch and are inactive "
                f"now {where}: they no longer carry information about x (partial posterior collapse); "
                f"{au.count} of {len(au.names)} units are active. If that is not intended, {_FIXES}",
                PosteriorCollapseWarning, stacklevel=4,
            )
        self.collapsed = au.count == 0
        self.reported = (self.reported | set(died)) - {n for n, a in zip(au.names, active.tolist()) if a}
        self.ever_active = self.ever_active | active
        return {"active_units": au.count}


# ---------------------------------------------------------------------------------------------
# Everything at once (``pyrovae diagnose``), and the pictures


@dataclass
class Report:
    """The diagnostics of one pair on one set of points; a diagnostic that does not apply to the
    pair is ``None`` and its reason is in ``skipped``."""

    num_points: int
    kl: LatentKL | None = None
    activity: ActiveUnits | None = None
    mi: MutualInformation | None = None
    rate_distortion: RateDistortion | None = None
    gaps: InferenceGaps | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_points": self.num_points, "skipped": dict(self.skipped)}
        for part in (self.kl, self.activity, self.mi, self.rate_distortion, self.gaps):
            if part is not None:
                out.update(part.summary())
        if self.mi is not None and self.rate_distortion is not None:
            # ELBO surgery (Hoffman & Johnson 2016): E[rate] = I_q(x; z) + KL(q(z) || p(z))
            out["marginal_kl"] = out["rate"] - out["mutual_information"]
        return out


def report(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    gap_points: int = 100,
    gap_steps: int = 500,
    num_samples: int = 1000,
    threshold: float = ACTIVITY_THRESHOLD,
    progress: bool = False,
    **kwargs,
) -> Report:
    """Every diagnostic of this module on the rows of ``x`` (the inference gaps on the first
    ``gap_points`` of them, with ``num_samples`` importance samples and ``gap_steps`` Adam steps;
    ``gap_points=0`` skips them). A diagnostic that does not apply to the pair (a
    :class:`~pyrovae.ContractError`: a non-factorised prior, a non-Normal guide) is skipped with
    its reason in ``Report.skipped``.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae import diagnostics
    >>> vae = pyrovae.VAE(data_dim=4, latent_dim=2, hidden=[8], image_shape=(2, 2))
    >>> x = torch.bernoulli(torch.full((20, 4), 0.5), generator=torch.Generator().manual_seed(0))
    >>> rep = diagnostics.report(vae.model, vae.guide, x, gap_points=0)
    >>> {"active_units", "rate", "distortion", "mutual_information", "marginal_kl"} <= set(rep.summary())
    True
    >>> rep.skipped
    {'gaps': 'gap_points=0'}
    """
    x = _rows(x, model)
    out = Report(x.shape[0])
    jobs: dict[str, Callable[[], Any]] = {
        "kl": lambda: kl_per_dimension(model, guide, x, *args, **kwargs),
        "activity": lambda: active_units(guide, x, *args, threshold=threshold, **kwargs),
        "mi": lambda: mutual_information(guide, x, *args, **kwargs),
        "rate_distortion": lambda: rate_distortion(model, guide, x, *args, **kwargs),
    }
    if gap_points:
        m = min(gap_points, x.shape[0])
        jobs["gaps"] = lambda: inference_gaps(
            model, guide, x[:m], *per_datapoint_args(args, x.shape[0], slice(0, m)), steps=gap_steps,
            num_samples=num_samples, progress=progress, **kwargs)
    else:
        out.skipped["gaps"] = "gap_points=0"
    for name, job in jobs.items():
        try:
            setattr(out, name, job())
        except ContractError as err:
            out.skipped[name] = str(err)
    return out


def plot_kl_per_dimension(path: str | Path, activity: ActiveUnits, kl: LatentKL | None = None) -> None:
    """Bars of the KL per dimension (when given) and of the activity :math:`A_u` (log scale) with
    the active-unit threshold; active units dark, inactive ones light."""
    from matplotlib.figure import Figure

    from .plots import save_figure

    names, active = activity.names, activity.active.numpy()
    colours = ["tab:blue" if a else "0.75" for a in active]
    panels = 2 if kl is not None else 1
    fig = Figure(figsize=(max(6.0, 0.32 * len(names) + 2), 3.6 * panels))
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    ax_a = axes[-1]
    title = f"{activity.count} of {len(names)} units active"
    if kl is not None:
        by_name = dict(zip(kl.names, kl.mean.tolist()))
        axes[0].bar(range(len(names)), [by_name.get(n, 0.0) for n in names], color=colours)
        axes[0].set_ylabel("KL(q(z_j|x) || p(z_j)), nats")
        title = f"KL per dimension, mean over {len(kl.per_datapoint)} points (total {kl.total:.2f} nats); {title}"
    axes[0].set_title(title, fontsize=10)
    floor = max(activity.threshold / 100, 1e-8)
    ax_a.bar(range(len(names)), activity.activity.clamp_min(floor).numpy(), color=colours)
    ax_a.axhline(activity.threshold, color="tab:red", ls="--", lw=1, label=f"threshold {activity.threshold:g}")
    ax_a.set_yscale("log")
    ax_a.set_ylabel("A_u = Cov_x(E_q[z_u])")
    ax_a.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax_a.legend(fontsize=8)
    save_figure(fig, path)


def plot_traversals(path: str | Path, traversals: Traversals, image_shape: Sequence[int],
                    labels: Sequence[str] | None = None) -> None:
    """One row per traversed dimension (``labels`` beside it), one column per offset."""
    from .plots import plot_rows

    rows = labels or [f"z[{j}]" for j in traversals.dims]
    plot_rows(path, list(traversals.images), rows, image_shape,
              f"decoder mean along each dimension around {traversals.around}",
              col_labels=[f"{v:+.1f}" for v in traversals.offsets.tolist()])
