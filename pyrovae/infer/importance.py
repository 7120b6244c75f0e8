r"""Per-datapoint importance sampling: log-weights and :math:`\log p(x)` with error bars.

For a model :math:`p(x, z)` and a guide :math:`q(z \mid x)` that factorise over the rows of
``x`` (the ``data`` plate), draw :math:`z_{ik} \sim q(z \mid x_i)` for :math:`k = 1..K` and set

.. math::

    \log w_{ik} = \log p(x_i, z_{ik}) - \log q(z_{ik} \mid x_i).

Then :math:`\hat p(x_i) = \frac1K \sum_k w_{ik}` is unbiased for :math:`p(x_i)`, and
:math:`E[\log \hat p(x_i)]` is the importance-weighted bound :math:`\mathcal{L}_K` of Burda,
Grosse & Salakhutdinov (2016), which increases with :math:`K` from the ELBO
(:math:`K = 1`) to :math:`\log p(x_i)`.

Pyro's ``vectorized_importance_weights`` sums every log-probability over the data plate and
gives one weight per trace. Here one trace holds a chunk of particles under a particle plate,
the model is replayed on the guide's trace, and each site's log-probability is summed over
every dimension *except* the particle dimension and the data-plate dimension, giving a
``(K, N)`` array of weights: one importance sampler per datapoint.

**Enumerated discrete latents.** A model site marked ``infer={"enumerate": "parallel"}`` that
the guide does not sample (a mixture's class :math:`c`) is summed out exactly inside each
weight, by Pyro's enumeration and its plated tensor contraction (the machinery of
``TraceEnum_ELBO``):

.. math::

    \log w_{ik} = \log \sum_c p(c)\, p(z_{ik} \mid c)\, p(x_i \mid z_{ik}, c) - \log q(z_{ik} \mid x_i).

**Contract** for ``model(x, *args, **kwargs)`` and ``guide(x, *args, **kwargs)``:

* ``x`` (the first positional argument) has one row per datapoint, and both functions put
  their per-datapoint sites inside ``pyro.plate(plate_name, x.shape[0])`` (no subsampling);
* every other *positional* tensor whose dim 0 equals ``x.shape[0]`` is per-datapoint too (e.g.
  ``y`` in ``model(x, y)``, a condition or a label) and is chunked with ``x``; keyword
  arguments and other positional values are passed whole to every chunk;
* every latent site of the model is sampled by the guide, inside that plate, or is a discrete
  model site enumerated in parallel and summed out; every observed site is inside the plate
  too (global latents would couple the datapoints);
* the guide enumerates nothing;
* ``poutine.scale`` factors (β, annealing) are ignored: they weight a training objective,
  they are not part of :math:`p(x)` (see :mod:`pyrovae.infer.handlers`).

A pair that breaks the contract gets a :class:`ContractError` naming the site and the fix.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_validation_enabled, scale_and_mask
from pyro.ops import packed
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.util import site_is_subsample

from .._text import first_line
from ..data import DataError, as_float_tensor
from .handlers import cuda_devices, restores_global_state
from .jit import TracedLoss
from .parallel import map_chunks

PARTICLE_PLATE = "num_particles_vectorized"  # the name Pyro's vectorised ELBOs use
# PSIS fits the largest min(K/5, 3 sqrt(K)) weights; ArviZ 1.x needs at least 5 of them
MIN_PSIS_SAMPLES = 25
DEFAULT_CHUNK_SIZE = 2**12
KHAT_TRUST_SHARE = 0.05  # above this share of k-hat > 0.7 the standard error is not believed
METHODS = ("is", "defensive", "ais")
MIN_JIT_PASSES = 16  # tracing and its check cost about three passes; compile only longer evaluations


class ContractError(ValueError):
    """The model/guide pair does not follow the per-datapoint contract (module docstring)."""


def _site_frames(site) -> dict[str, object]:
    return {f.name: f for f in site["cond_indep_stack"]}


def guess_max_plate_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The number of plate dimensions the pair uses, from one blocked trace of each (its random
    numbers drawn from a forked generator: checks leave the caller's stream alone)."""
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda_devices(args)):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    dims = [
        -f.dim
        for tr in (guide_trace, model_trace)
        for site in tr.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
        for f in site["cond_indep_stack"]
        if f.vectorized
    ]
    return max(dims, default=0)


def _check_site(site, role: str, plate_name: str, num_rows: int) -> int:
    """Contract checks for one site; returns the data plate's dim."""
    name = site["name"]
    how = site["infer"].get("enumerate")
    if how and role == "guide":
        raise ContractError(
            f"guide site {name!r} is enumerated; importance sampling needs a guide that samples "
            "its latents: drop infer={'enumerate': ...} there (a discrete latent the guide does "
            "not propose can be enumerated in the model instead, and is then summed out)"
        )
    if how and how != "parallel":
        raise ContractError(
            f"model site {name!r} is enumerated {how!r}; only parallel enumeration is summed out: "
            "use infer={'enumerate': 'parallel'}"
        )
    frame = _site_frames(site).get(plate_name)
    if frame is None:
        kind = "observed" if site["is_observed"] else "latent"
        raise ContractError(
            f"{kind} {role} site {name!r} is outside pyro.plate({plate_name!r}); per-datapoint "
            f"weights need every site to be per-datapoint: put it inside "
            f"`with pyro.plate({plate_name!r}, x.shape[0]):`"
        )
    full = frame.full_size if frame.full_size is not None else frame.size
    if frame.dim is None or frame.size != num_rows or full != frame.size:
        raise ContractError(
            f"pyro.plate({plate_name!r}) at site {name!r} has size {full}, subsample size "
            f"{frame.size}, dim {frame.dim}, but x has {num_rows} rows; use a vectorised "
            f"`pyro.plate({plate_name!r}, x.shape[0])` without subsampling"
        )
    return frame.dim


def _per_datapoint(log_prob: torch.Tensor, particle_dim: int, data_dim: int, name: str):
    """Sum ``log_prob`` over every dim but the particle and data dims -> (K or 1, N)."""
    width = -particle_dim
    if log_prob.dim() > width:
        raise ContractError(
            f"site {name!r} has batch dimensions {tuple(log_prob.shape)} beyond its plates; "
            "declare the dependent dimensions of its distribution with .to_event(...)"
        )
    lp = log_prob.reshape((1,) * (width - log_prob.dim()) + tuple(log_prob.shape))
    keep = {width + particle_dim, width + data_dim}  # positive indices
    other = [d for d in range(width) if d not in keep]
    if other:
        lp = lp.sum(other, keepdim=True)
    return lp.reshape(lp.shape[width + particle_dim], lp.shape[width + data_dim])


def _site_log_probs(model_trace, guide_trace, plate_name: str, num_rows: int):
    """Yield ``(name, sign, site, data_dim)`` for every scored site, checking the contract."""
    for role, trace, sign in (("model", model_trace, 1.0), ("guide", guide_trace, -1.0)):
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if not site["is_observed"]:
                other, other_role = (guide_trace, "guide") if role == "model" else (model_trace, "model")
                summed_out = role == "model" and site["infer"].get("enumerate") and name not in other
                if name not in other and not summed_out:
                    raise ContractError(
                        f"latent site {name!r} is sampled in the {role} but not in the {other_role}; "
                        "the guide must propose exactly the model's latent variables (a discrete "
                        "one may instead be enumerated in the model: infer={'enumerate': 'parallel'})"
                    )
            yield name, sign, site, _check_site(site, role, plate_name, num_rows)


def check_contract(model: Callable, guide: Callable, x: torch.Tensor, *args, plate_name: str = "data",
                   **kwargs) -> int:
    """Check the per-datapoint contract on one plain (unvectorised) run of the pair.

    Raises :class:`ContractError` naming the offending site; returns ``max_plate_nesting``.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae.infer import ContractError, check_contract
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.7))
    >>> check_contract(model, guide, torch.zeros(3))
    1
    >>> def global_guide(x):  # one z shared by all rows: no per-datapoint weights
    ...     pyro.sample("z", dist.Normal(0.0, 1.0))
    >>> try:
    ...     check_contract(model, global_guide, torch.zeros(3))
    ... except ContractError as err:
    ...     print(str(err).split(";")[0])
    latent guide site 'z' is outside pyro.plate('data')
    """
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=cuda_devices((x, *args))):
        try:
            guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, *args, **kwargs)
        except (ValueError, RuntimeError, TypeError) as err:  # Pyro's shape checks, torch's size errors
            first = first_line(err)
            raise ContractError(
                f"the model/guide pair fails a plain run on {x.shape[0]} rows of x: {first}. Positional "
                "tensors whose dim 0 is x's are cut into chunks with x; keyword arguments are passed "
                "whole, so pass per-datapoint tensors positionally"
            ) from None
        _refuse_point_masses(guide_trace)
        max_plate_nesting = guess_max_plate_nesting(model, guide, x, *args, **kwargs)
        for name, _, site, _ in _site_log_probs(model_trace, guide_trace, plate_name, x.shape[0]):
            if len(site["fn"].batch_shape) > max_plate_nesting:
                raise ContractError(
                    f"site {name!r} has batch shape {tuple(site['fn'].batch_shape)}, more dimensions "
                    f"than its plates; declare the dependent dimensions with .to_event(...)"
                )
    return max_plate_nesting


def latent_sites(trace) -> list[tuple[str, dict]]:
    """``(name, site)`` of every latent sample site of ``trace`` (not observed, not a plate's subsample)."""
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def is_point_mass(fn) -> bool:
    """Whether ``fn`` is a ``Delta`` (through ``.to_event``, ``.expand`` and transforms)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, pyro.distributions.Delta)


def _refuse_point_masses(guide_trace) -> None:
    """A ``Delta`` guide site (an autoencoder's code, a MAP estimate) is no proposal: its "density"
    is 1 at one point, so importance weights would be p(x, z) at that point, not an estimate of p(x)."""
    for name, site in latent_sites(guide_trace):
        if is_point_mass(site["fn"]):
            raise ContractError(
                f"guide site {name!r} is a point mass (Delta): importance sampling needs a proposal with a density, "
                "so log p(x) is not estimable with this guide (an autoencoder defines no p(x); score its "
                "reconstructions instead, or give the site a Normal guide)"
            )


def per_datapoint_args(args: tuple, num_rows: int, index: slice) -> tuple:
    """``args`` with every tensor whose dim 0 is ``num_rows`` cut to the rows ``index``."""
    return tuple(a[index] if torch.is_tensor(a) and a.dim() and a.shape[0] == num_rows else a for a in args)


def log_importance_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_particles: int = 1,
    plate_name: str = "data",
    max_plate_nesting: int | None = None,
    scaled: bool = False,
    **kwargs,
) -> torch.Tensor:
    r"""``(num_particles, N)`` tensor of :math:`\log p(x_i, z_{ik}) - \log q(z_{ik} \mid x_i)`.

    One vectorised trace: the guide runs once under a particle plate (so an amortised
    encoder sees ``x`` once), the model is replayed on it, with its enumerated sites summed
    out. Differentiable when the guide's sites are reparameterised; see the module docstring
    for the contract. Without ``max_plate_nesting`` the contract is first checked on a plain
    run (:func:`check_contract`). ``scaled=True`` keeps the sites' ``poutine.scale`` factors
    (a weighted training objective); by default they are dropped, as :math:`p(x)` has none.

    Example:

    >>> import math, pyro, pyro.distributions as dist, torch, pyrovae
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # the exact posterior: every weight is p(x)
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)))
    >>> x = torch.tensor([0.0, 1.0])
    >>> log_w = pyrovae.log_importance_weights(model, guide, x, num_particles=4)
    >>> log_w.shape
    torch.Size([4, 2])
    >>> torch.allclose(log_w, dist.Normal(0.0, math.sqrt(2.0)).log_prob(x).expand(4, 2), atol=1e-5)
    True
    """
    if max_plate_nesting is None:
        max_plate_nesting = check_contract(model, guide, x, *args, plate_name=plate_name, **kwargs)
    terms = log_joint_and_guide(model, guide, x, *args, num_particles=num_particles, plate_name=plate_name,
                                max_plate_nesting=max_plate_nesting, scaled=scaled, **kwargs)
    return terms.log_joint - terms.log_guide


@dataclass
class WeightTerms:
    """The two halves of an importance weight, ``(num_particles, N)`` each, and the traces."""

    log_joint: torch.Tensor  # log p(x_i, z_ik), enumerated sites summed out
    log_guide: torch.Tensor  # log q(z_ik | x_i)
    model_trace: object
    guide_trace: object
    particle_dim: int


def log_joint_and_guide(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_particles: int = 1,
    plate_name: str = "data",
    max_plate_nesting: int,
    scaled: bool = False,
    **kwargs,
) -> WeightTerms:
    r""":math:`\log p(x_i, z_{ik})` and :math:`\log q(z_{ik} \mid x_i)` of one vectorised trace
    (see :func:`log_importance_weights`); ``guide`` may be replayed on given values
    (``poutine.replay``), which is how annealed importance sampling moves its chains."""
    particle_dim = -max_plate_nesting - 1
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        # replay outside enum, as in TraceEnum_ELBO: enum must see every site before replay
        # marks it done, to record which enumerated dims its log-probability carries
        enum_model = poutine.enum(model, first_available_dim=particle_dim - 1)
        model_trace = poutine.trace(poutine.replay(enum_model, trace=guide_trace)).get_trace(x, *args, **kwargs)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    enumerated = _has_enumerated_sites(model_trace)
    log_p = x.new_zeros((num_particles, x.shape[0]))
    log_q = x.new_zeros((num_particles, x.shape[0]))
    for name, sign, site, data_dim in _site_log_probs(model_trace, guide_trace, plate_name, x.shape[0]):
        if enumerated and sign > 0:
            continue  # the model's sites are contracted together below
        lp = site["log_prob"] if scaled else scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
        if sign > 0:
            log_p = log_p + _per_datapoint(lp, particle_dim, data_dim, name)
        else:
            log_q = log_q + _per_datapoint(lp, particle_dim, data_dim, name)
    if enumerated:
        log_p = log_p + _summed_out_log_joint(model_trace, plate_name, particle_dim, scaled)
    return WeightTerms(log_p, log_q, model_trace, guide_trace, particle_dim)


def _has_enumerated_sites(model_trace) -> bool:
    return any(site["type"] == "sample" and site["infer"].get("_enumerate_dim") is not None
               for site in model_trace.nodes.values())


def replay_template(values: dict[str, torch.Tensor], infer: dict[str, dict]):
    """A trace holding ``values`` as latent sample sites, for ``poutine.replay(guide, trace=...)``:
    the guide then scores these values instead of drawing its own (how AIS moves its chains and
    defensive sampling scores the mixture's draws)."""
    trace = poutine.Trace()
    for name, value in values.items():
        trace.add_node(name, name=name, type="sample", is_observed=False, value=value, infer=dict(infer[name]))
    return trace


def site_infer(site) -> dict:
    """A site's ``infer`` settings without the keys Pyro's handlers add (``_enumerate_dim``, ...)."""
    return {k: v for k, v in site["infer"].items() if not k.startswith("_")}


def log_prior(terms: WeightTerms, plate_name: str = "data") -> torch.Tensor:
    r"""``(num_particles, N)``: :math:`\log p(z_{ik})`, the model's latent sites at the guide's values
    (enumerated ones summed out)."""
    if _has_enumerated_sites(terms.model_trace):
        return _summed_out_log_joint(terms.model_trace, plate_name, terms.particle_dim, False, observed=False)
    return terms.log_joint - observed_log_prob(terms, plate_name)


def observed_log_prob(terms: WeightTerms, plate_name: str = "data") -> torch.Tensor:
    r"""``(num_particles, N)``: :math:`\log p(x_i \mid z_{ik})`, the observed sites of the model trace
    (of a model without enumerated sites)."""
    out = 0.0
    for name, site in terms.model_trace.nodes.items():
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site):
            data_dim = _site_frames(site)[plate_name].dim
            lp = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])
            out = out + _per_datapoint(lp, terms.particle_dim, data_dim, name)
    return out


def _summed_out_log_joint(model_trace, plate_name: str, particle_dim: int, scaled: bool,
                          observed: bool = True) -> torch.Tensor:
    r"""``(K, N)``: :math:`\log \sum_c p(x_i, z_{ik}, c)` over the model's enumerated sites ``c``,
    by Pyro's plated sum-product contraction (products over nested plates, sums over values).

    With ``scaled``, the sites that depend on an enumerated value share one ``poutine.scale``
    factor, applied outside the sum as ``TraceEnum_ELBO`` does; the others keep their own.
    ``observed=False`` leaves the observed sites out: :math:`\log \sum_c p(z_{ik}, c)`."""
    model_trace.pack_tensors()
    symbol = model_trace.plate_to_symbol
    sites = [s for s in model_trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)
             and (observed or not s["is_observed"])]
    sum_dims = {s["infer"]["_enumerate_symbol"] for s in sites if s["infer"].get("_enumerate_symbol") is not None}
    summed: OrderedDict = OrderedDict()  # sites whose log-probability carries an enumerated dim
    apart: OrderedDict = OrderedDict()
    sizes: dict[str, int] = {}  # every dim's size, also where packing dropped a size-1 dim
    scales = []  # of the summed sites: a number, or a factor's tensor (a graph input under jit)
    data_dim = None
    for site in sites:
        p = site["packed"]
        unscaled_lp = packed.scale_and_mask(p["unscaled_log_prob"], mask=p["mask"])
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        ordinal = frozenset(symbol[f.name] for f in frames)
        if sum_dims.intersection(unscaled_lp._pyro_dims):
            summed.setdefault(ordinal, []).append(unscaled_lp)
            scales.append(site["scale"] if scaled else 1.0)
        else:
            apart.setdefault(ordinal, []).append(p["log_prob"] if scaled else unscaled_lp)
        sizes.update({symbol[f.name]: f.size for f in frames})
        sizes.update(zip(unscaled_lp._pyro_dims, unscaled_lp.shape))
        data_dim = next(f.dim for f in frames if f.name == plate_name)
    if len({float(v) for v in scales}) > 1:
        raise ContractError(
            "the sites that depend on an enumerated value have different poutine.scale factors "
            f"{sorted({float(v) for v in scales})}; as in TraceEnum_ELBO, they must share one"
        )
    target = frozenset(symbol[name] for name in (plate_name, PARTICLE_PLATE))
    ring = LogRing(dim_to_size=sizes)

    def contract(tree, dims):
        joint = contract_to_tensor(tree, dims, target_ordinal=target, ring=ring)
        return packed.unpack(joint, model_trace.symbol_to_dim)

    joint = scales[0] * contract(summed, sum_dims)
    if apart:
        joint = joint + contract(apart, set())
    return _per_datapoint(joint, particle_dim, data_dim, "the model's joint")


# --------------------------------------------------------------------------------------------
# log p(x) with error bars


def psis_khat(log_weights: np.ndarray, backend: str | None = None) -> np.ndarray:
    r"""Pareto :math:`\hat k` per row of ``log_weights`` (samples on the last axis), via ArviZ.

    ``backend``: ``"arviz_stats"`` (ArviZ 1.x, ``arviz_stats.base.array_stats.psislw``),
    ``"arviz"`` (ArviZ 0.x, ``az.psislw``) or ``None`` for the first one installed. The 1.x
    array function takes *log-likelihood* values, as in PSIS-LOO where the importance
    log-weights are :math:`-\log p(y_i \mid \theta)`, so it is given ``-log_weights``.
    Rows whose weights are all equal (a perfect proposal) get :math:`\hat k = -\infty`.

    Example:

    >>> import numpy as np
    >>> from pyrovae.infer import psis_khat
    >>> rng = np.random.default_rng(0)
    >>> light = rng.normal(size=(2, 1000))  # Gaussian log-weights: lognormal weights, light tails
    >>> heavy = np.log1p(rng.pareto(1.0, size=(2, 1000)))  # Pareto weights of tail index 1: k = 1
    >>> bool((psis_khat(light) < 0.7).all()), bool((psis_khat(heavy) > 0.7).all())
    (True, True)
    """
    lw = np.ascontiguousarray(log_weights, dtype=np.float64)
    flat = lw.reshape(-1, lw.shape[-1])
    # Equal weights (a perfect proposal) have no tail to fit: k-hat is -inf. "Equal" up to a few
    # float32 rounding steps, as weights computed in float32 are (e.g. 1e-5 apart at |log w| = 550).
    spread = flat.max(-1) - flat.min(-1) > 1e-6 * np.maximum(1.0, np.abs(flat).max(-1))
    khat = np.full(len(flat), -np.inf)
    if spread.any():
        # weights with a few distinct values (e.g. from a discrete latent) make the tail fit
        # divide by zero inside ArviZ; its k-hat is still defined, the warnings are noise
        with np.errstate(divide="ignore", invalid="ignore"):
            try:
                khat[spread] = _psis_khat(flat[spread], backend)
            except ValueError:  # ArviZ: "All tail values are the same" in some row -- a flat tail
                khat[spread] = [_flat_tail_khat(row, backend) for row in flat[spread]]
    return khat.reshape(lw.shape[:-1])


def _flat_tail_khat(row: np.ndarray, backend: str | None) -> float:
    """k-hat of one row, ``-inf`` where ArviZ finds its tail flat (no tail to fit)."""
    try:
        return float(_psis_khat(row[None], backend)[0])
    except ValueError:
        return -np.inf


def _psis_khat(lw: np.ndarray, backend: str | None) -> np.ndarray:
    if backend in (None, "arviz_stats"):
        try:
            from arviz_stats.base import array_stats
        except ImportError:
            if backend is not None:
                raise
        else:
            _, khat = array_stats.psislw(-lw, r_eff=1, axis=-1)
            return np.asarray(khat, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ 0.x announces its refactor on import
        import arviz as az

        _, khat = az.psislw(lw.copy(), reff=1.0)
    return np.asarray(khat, dtype=np.float64)


@dataclass
class MarginalLikelihood:
    r"""Per-datapoint importance-sampling estimates of :math:`\log p(x_i)`.

    * ``log_px`` -- :math:`\log \hat p(x_i) = \operatorname{logmeanexp}_k \log w_{ik}`
    * ``stderr`` -- delta-method Monte Carlo standard error of ``log_px``:
      :math:`\sqrt{(\overline{w^2}/\bar w^2 - 1)/(K - 1)}`
      (NaN for :math:`K = 1`)
    * ``ess`` -- effective sample size :math:`(\sum_k w_{ik})^2 / \sum_k w_{ik}^2`
    * ``elbo`` -- :math:`\frac1K \sum_k \log w_{ik}`, the ELBO estimated from the same samples
    * ``khat`` -- Pareto :math:`\hat k` of the weights (PSIS, Vehtari et al. 2024); above 0.7
      the weights' variance is probably infinite and ``stderr`` cannot be trusted (NaN for
      :math:`K < 25`, too few samples to fit a tail).
    * ``method`` -- ``"is"`` (importance sampling from the guide), ``"defensive"`` (from a
      defensive mixture, :mod:`pyrovae.infer.defensive`), ``"ais"`` (annealed importance
      sampling, :mod:`pyrovae.infer.ais`; ``num_samples`` counts its chains) or
      ``"ais-reverse"`` (BDMC's upper bounds).
    * ``extras`` -- ``convergence`` (IS: :math:`K' \mapsto \log \hat p(x_i)` from the first
      :math:`K' = K/16, K/4` samples), ``acceptance`` and ``step_size`` per datapoint (AIS).

    Example:

    >>> import pyro, pyro.distributions as dist, torch, pyrovae
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # too narrow: the weights are heavy-tailed
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.2))
    >>> pyro.set_rng_seed(0)
    >>> res = pyrovae.log_marginal_likelihood(model, guide, torch.linspace(-2, 2, 20), num_samples=1024,
    ...                                       khat_warn_share=1.0)
    >>> res.stderr_trustworthy, sorted(res.convergence())  # the check to look at instead: K/16, K/4, K
    (False, [64, 256, 1024])
    >>> res.caveat().startswith("k-hat > 0.7")
    True
    """

    log_px: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    khat: torch.Tensor
    elbo: torch.Tensor
    num_samples: int
    method: str = "is"
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.log_px)

    @property
    def mean(self) -> float:
        """Mean of :math:`\\log \\hat p(x_i)` over the datapoints, in nats."""
        return self.log_px.mean().item()

    @property
    def mean_stderr(self) -> float:
        """Monte Carlo standard error of :attr:`mean` (these datapoints held fixed)."""
        return (self.stderr.pow(2).sum().sqrt() / len(self)).item()

    @property
    def data_stderr(self) -> float:
        """Standard error of :attr:`mean` as an estimate over the data distribution."""
        n = len(self)
        return (self.log_px.std() / math.sqrt(n)).item() if n > 1 else float("nan")

    @property
    def stderr_trustworthy(self) -> bool | None:
        r"""Whether :attr:`mean_stderr` can be believed: at most 5% of the datapoints have
        :math:`\hat k > 0.7`; ``None`` where :math:`\hat k` is unknown (fewer than 25 samples)."""
        if torch.isnan(self.khat).any():
            return None
        return (self.khat > 0.7).double().mean().item() <= KHAT_TRUST_SHARE

    def convergence(self) -> dict[int, float]:
        r"""Mean :math:`\log \hat p(x)` from the first K/16, K/4 and all K samples (IS only)."""
        found = self.extras.get("convergence") or {}
        return {**{k: v.mean().item() for k, v in sorted(found.items())}, self.num_samples: self.mean}

    def caveat(self) -> str | None:
        """What to say beside :attr:`mean` when its standard error cannot be trusted, else ``None``."""
        if self.stderr_trustworthy is not False:
            return None
        share = (self.khat > 0.7).double().mean().item()
        trend = ", ".join(f"K={k}: {v:.3f}" for k, v in self.convergence().items())
        return (
            f"k-hat > 0.7 for {share:.0%} of datapoints: the weights' variance is probably infinite, so the "
            f"standard error understates the error and log p(x) is likely underestimated. Convergence check: "
            f"{trend}. Prefer annealed importance sampling (method='ais', `pyrovae evaluate --method ais`) "
            "or defensive sampling (method='defensive')"
        )

    def summary(self) -> dict[str, float]:
        k = self.khat
        fitted = not torch.isnan(k).any().item()
        trend = self.convergence()
        return {
            "method": self.method,
            "stderr_trustworthy": self.stderr_trustworthy,
            **({"convergence": {str(n): v for n, v in trend.items()}} if len(trend) > 1 else {}),
            **({"num_steps": self.extras["num_steps"], "num_leapfrog": self.extras["num_leapfrog"],
                "mean_acceptance": self.extras["acceptance"].mean().item()} if "acceptance" in self.extras else {}),
            "num_datapoints": len(self),
            "num_samples": self.num_samples,
            "mean_log_px": self.mean,
            "mean_elbo": self.elbo.mean().item(),
            "mc_stderr": self.mean_stderr,
            "data_stderr": self.data_stderr,
            "median_ess": self.ess.median().item(),
            # NaN (null in JSON) where k-hat was not fitted (fewer than 25 samples, e.g. AIS's chains)
            "share_khat_over_0.5": (k > 0.5).double().mean().item() if fitted else math.nan,
            "share_khat_over_0.7": (k > 0.7).double().mean().item() if fitted else math.nan,
            "max_khat": k.max().item(),
        }


def weight_summaries(lw: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-datapoint estimates from ``(K, N)`` float64 log-weights: ``log_px`` (log mean weight),
    ``stderr`` (delta method), ``ess``, ``khat`` (NaN for K < 25) and ``elbo`` (mean log weight)."""
    num_samples = lw.shape[0]
    lse = torch.logsumexp(lw, 0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, 0))
    nan = torch.full_like(ess, float("nan"))
    # delta method: Var(log p^) ~ Var(w) / (K mean(w)^2) = (K/ESS - 1) / (K - 1)
    se = ((num_samples / ess - 1).clamp_min(0) / (num_samples - 1)).sqrt() if num_samples > 1 else nan
    khat = torch.from_numpy(psis_khat(lw.T.numpy())) if num_samples >= MIN_PSIS_SAMPLES else nan
    return {"log_px": lse - math.log(num_samples), "stderr": se, "ess": ess, "khat": khat, "elbo": lw.mean(0)}


def convergence_sizes(num_samples: int) -> list[int]:
    """The smaller K (K/16 and K/4) at which an evaluation also reports its estimate: where the
    standard error cannot be trusted (k-hat > 0.7), the trend from K/16 to K is the check."""
    return [k for k in (num_samples // 16, num_samples // 4) if k >= 1] if num_samples >= 64 else []


def _rows(x, model: Callable) -> torch.Tensor:
    """``x`` as a tensor with rows: a numpy array is converted; a model that is a method of an
    object with ``prepare_data`` (a :class:`~pyrovae.VAE`) converts dtypes as in training."""
    owner_prepare = getattr(getattr(model, "__self__", None), "prepare_data", None)
    if isinstance(x, np.ndarray):
        x = as_float_tensor(x, torch.get_default_dtype()) if owner_prepare is None else owner_prepare(x)
    elif torch.is_tensor(x) and owner_prepare is not None:
        x = owner_prepare(x)
    if not torch.is_tensor(x):
        raise DataError(
            f"x must be a torch.Tensor with one row per datapoint, not a {type(x).__name__}; "
            "convert it with torch.as_tensor(x)"
        )
    if x.dim() == 0 or x.shape[0] == 0:
        raise DataError(f"x has no rows (shape {tuple(x.shape)}); pass at least one datapoint")
    return x


def _chunk_sizes(num_rows: int, num_samples: int, chunk_size: int) -> tuple[int, int]:
    """``(rows, particles)`` of a pass: at most ``chunk_size`` pairs, the particles in passes as
    even as possible (K = 5000 at 2**12 is 2 x 2500, not 4096 + 904: one graph under jit)."""
    rows = max(1, min(num_rows, chunk_size // num_samples))
    particles = max(1, min(num_samples, chunk_size // rows))
    passes = -(-num_samples // particles)
    return rows, -(-num_samples // passes)


class CompiledWeights:
    r""":func:`log_importance_weights` compiled by ``torch.jit.trace``: one graph per particle count
    and input shapes, with the parameters as graph inputs (:class:`~pyrovae.infer.jit.TracedLoss`).

    The graph replays a pass's tensor operations without Pyro's Python work (handlers, trace
    bookkeeping, shape checks): 1.03-1.3x faster per pass of the IWAE model on our CPU, the most
    for small passes (docs/benchmarks.md). The first call runs eagerly and records which parameters the pair
    reads; each graph's first call is checked against the eager pass on the same random numbers.
    Each graph is checked again on the first chunk of other rows. A trace freezes Python control
    flow at the values it saw, so where the pair's own code turns a tensor into a Python value
    while tracing (``if x.sum() > 0``, ``.item()``: torch warns, and the trace is refused), where
    tracing fails, or where a check finds the graph off the eager pass (a branch through
    ``np.asarray(x)``, which torch does not warn about, that goes the other way on the checked
    rows), it warns once and every later pass runs eagerly with the same estimate. A branch that
    agrees on the checked chunks, or Python state that changes later, is beyond these checks:
    pass ``jit=False`` for such a pair. Positional arguments that are not tensors are
    held fixed at their first value, as a chunked evaluation passes them whole.
    """

    FALLBACK = "Evaluating without jit (the same estimate, slower); pass jit=False to skip compiling."

    def __init__(self, model: Callable, guide: Callable, *, plate_name: str, max_plate_nesting: int,
                 **kwargs) -> None:
        self.model, self.guide, self.kwargs = model, guide, kwargs
        self.options = {"plate_name": plate_name, "max_plate_nesting": max_plate_nesting}
        self.params: list[torch.Tensor] | None = None
        self.graphs: dict[tuple, TracedLoss] = {}
        self.rows_traced: dict[tuple, int] = {}  # where each graph's rows start in memory

    @property
    def failed(self) -> bool:
        """Whether a graph gave up: every later pass then runs eagerly."""
        return any(graph.failed for graph in self.graphs.values())

    def eager(self, x: torch.Tensor, *args, num_particles: int) -> torch.Tensor:
        return log_importance_weights(self.model, self.guide, x, *args, num_particles=num_particles,
                                      **self.options, **self.kwargs)

    def __call__(self, x: torch.Tensor, *args, num_particles: int) -> torch.Tensor:
        if self.failed:
            return self.eager(x, *args, num_particles=num_particles)
        if self.params is None:
            with poutine.trace(param_only=True) as capture:
                out = self.eager(x, *args, num_particles=num_particles)
            store = pyro.get_param_store()
            self.params = [store.get_param(name).unconstrained() for name in capture.trace.nodes]
            return out
        where = tuple(i for i, a in enumerate(args) if torch.is_tensor(a))
        key = (num_particles, where)
        if key not in self.graphs:
            fixed = list(args)

            def weights(x, *tensors):
                full = list(fixed)
                for i, t in zip(where, tensors):
                    full[i] = t
                return self.eager(x, *full, num_particles=num_particles)

            self.graphs[key] = TracedLoss(weights, self.params, verify_calls=1, fallback=self.FALLBACK,
                                          refuse_user_conversions=True)
        graph = self.graphs[key]
        if self.rows_traced.setdefault(key, x.data_ptr()) not in (x.data_ptr(), -1):
            # the first check ran on the rows the graph was traced on; a Python branch on the
            # data shows only on other rows, so check once more on the first other chunk
            self.rows_traced[key] = -1
            graph.recheck()
        return graph(x, *(args[i] for i in where))


@restores_global_state
def log_marginal_likelihood(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_samples: int | None = None,
    method: str | object = "is",
    num_steps: int | None = None,
    chunk_size: int | None = None,
    plate_name: str = "data",
    max_plate_nesting: int | None = None,
    progress: bool | None = None,
    khat_warn_share: float = 0.05,
    workers: int | None = None,
    jit: bool | None = None,
    **kwargs,
) -> MarginalLikelihood:
    r"""Importance-sampling estimate of :math:`\log p(x_i)` for every row of ``x``.

    :math:`\log \hat p(x_i) = \log \frac1K \sum_{k=1}^K p(x_i, z_{ik}) / q(z_{ik} \mid x_i)`
    with :math:`z_{ik} \sim q(z \mid x_i)` and :math:`K` = ``num_samples``; a lower bound on
    :math:`\log p(x_i)` in expectation (Jensen) that tightens as :math:`K` grows (Burda et al.
    2016), exact for any :math:`K` when the guide is the true posterior.

    :param model, guide: any Pyro pair that follows the contract in this module's docstring.
    :param x: data, one row per datapoint; split into chunks along dim 0.
    :param args: further positional arguments of the pair; tensors whose dim 0 equals
        ``x.shape[0]`` (conditions, labels) are chunked with ``x``, the rest passed whole.
    :param kwargs: keyword arguments of the pair, passed whole to every chunk.
    :param num_samples: :math:`K`, importance samples per datapoint (default 5000), or for AIS
        the number of chains :math:`C` per datapoint (default 16).
    :param method: ``"is"`` (from the guide), ``"defensive"`` (from a mixture of the guide, a
        heavy-tailed guide and the prior; a :class:`~pyrovae.infer.defensive.Defensive` sets its
        shares) or ``"ais"`` (annealed importance sampling; an :class:`~pyrovae.infer.ais.AIS`
        sets its schedule and HMC kernel).
    :param num_steps: :math:`T`, AIS's number of intermediate distributions (default 1000).
    :param chunk_size: most (particle, datapoint) pairs evaluated in one trace; bounds memory.
        Default ``2**12``: a pass's tensors then stay in the CPU's caches, which was the
        fastest on our benchmark (docs/benchmarks.md); raise it on a GPU.
    :param progress: show a progress bar (default: when the work is large).
    :param khat_warn_share: warn when more than this share of datapoints has :math:`\hat k > 0.7`.
    :param workers: processes that evaluate chunks of rows side by side, one torch thread each
        (:mod:`~pyrovae.infer.parallel`); default: one per torch thread when, at the first
        chunk's pace, the rest would take more than a second and the data are on the CPU. The
        estimate does not depend on it.
    :param jit: compile the weight pass with ``torch.jit.trace`` (:class:`CompiledWeights`;
        method ``"is"`` only); default: when the evaluation makes at least 16 passes, ``x`` is
        on the CPU and not float64 (a trace records constants derived from shapes, e.g.
        :math:`d \log 2\pi` of a multivariate normal, in float32: ~1e-7 nats off in a float64
        model) and the model's owner does not set ``evaluation_jit = False``. The graph draws the
        eager pass's random numbers and is checked against it (on the rows it was traced on and
        on the first chunk of other rows), so the estimate agrees with the eager one to float
        rounding.
    :returns: :class:`MarginalLikelihood` with ``log_px``, ``stderr``, ``ess``, ``khat``
        (float64, on the CPU).

    Example:

    >>> import pyro, pyro.distributions as dist, torch, pyrovae
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # the exact posterior N(x/2, 1/2): every weight equals p(x)
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> x = torch.tensor([0.0, 1.0])
    >>> res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=10)
    >>> torch.allclose(res.log_px, dist.Normal(0.0, 2**0.5).log_prob(x).double(), atol=1e-5)
    True
    >>> res.method, res.stderr_trustworthy  # k-hat is fitted from 25 samples on
    ('is', None)
    >>> ais = pyrovae.log_marginal_likelihood(model, guide, x, method="ais", num_steps=5, num_samples=4)
    >>> torch.allclose(ais.log_px, res.log_px, atol=1e-5), ais.method
    (True, 'ais')
    """
    x = _rows(x, model)
    method, options = _method(method, num_steps)
    if num_samples is None:
        num_samples = 16 if method == "ais" else 5000
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a whole number >= 1, not {num_samples!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a whole number >= 1 or None, not {chunk_size!r}")
    if jit is not None and not isinstance(jit, bool):
        raise ValueError(f"jit must be True, False or None (automatic), not {jit!r}")
    if jit and method != "is":
        raise ValueError(f"jit=True compiles the weight pass of method='is'; method={method!r} runs eagerly: "
                         "pass jit=None or False")
    if method == "ais":
        from .ais import annealed_log_marginal_likelihood

        return annealed_log_marginal_likelihood(
            model, guide, x, *args, options=options, num_samples=num_samples,
            chunk_size=chunk_size or DEFAULT_CHUNK_SIZE, plate_name=plate_name,
            max_plate_nesting=max_plate_nesting, progress=progress, workers=workers, **kwargs,
        )
    num_rows = x.shape[0]
    rows, particles = _chunk_sizes(num_rows, num_samples, chunk_size or DEFAULT_CHUNK_SIZE)
    if max_plate_nesting is None:
        first = per_datapoint_args(args, num_rows, slice(0, rows))
        max_plate_nesting = check_contract(model, guide, x[:rows], *first, plate_name=plate_name, **kwargs)
    num_passes = -(-num_rows // rows) * -(-num_samples // particles)
    if method == "defensive":
        from .defensive import defensive_log_weights

        weights = partial(defensive_log_weights, model, guide, options=options, plate_name=plate_name,
                          max_plate_nesting=max_plate_nesting, **kwargs)
    elif jit or (jit is None and _compiles(model, x, num_passes)):
        weights = CompiledWeights(model, guide, plate_name=plate_name, max_plate_nesting=max_plate_nesting, **kwargs)
    else:
        weights = partial(log_importance_weights, model, guide, plate_name=plate_name,
                          max_plate_nesting=max_plate_nesting, **kwargs)
    show = progress if progress is not None else num_rows * num_samples >= 5_000_000
    from tqdm.auto import tqdm

    num_chunks = -(-num_rows // rows)
    how = "defensive IS" if method == "defensive" else "IS"
    bar = tqdm(total=num_rows, disable=not show, desc=f"log p(x) by {how}, K={num_samples}", unit="x")

    def chunk(j: int, bar) -> dict[str, torch.Tensor]:
        start = j * rows
        # Pyro's distribution checks (e.g. that observations are in the support) ran on
        # the first chunk; on every chunk they would cost ~10% of the time.
        validate = start == 0 and is_validation_enabled()
        xb = x[start : start + rows]
        args_b = per_datapoint_args(args, num_rows, slice(start, start + rows))
        parts = []
        for k in range(0, num_samples, particles):
            with pyro.validation_enabled(validate and k == 0):
                lw = weights(xb, *args_b, num_particles=min(particles, num_samples - k))
            parts.append(lw.double().cpu())
        lw = torch.cat(parts, 0)  # (K, rows), float64
        out = weight_summaries(lw)
        for k in convergence_sizes(num_samples):  # the same weights' estimate with fewer samples
            out[f"log_px_K{k}"] = torch.logsumexp(lw[:k], 0) - math.log(k)
        if bar is not None:
            bar.update(len(xb))
        return out

    with torch.no_grad(), poutine.block():
        parts = map_chunks(chunk, num_chunks, workers=workers, tensors=(x, *args), bar=bar,
                           units=lambda j: min(rows, num_rows - j * rows))
    bar.close()
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    convergence = {k: cat.pop(f"log_px_K{k}") for k in convergence_sizes(num_samples)}
    res = MarginalLikelihood(
        **cat, num_samples=num_samples, method=method,
        extras={"data_dim": x[0].numel(), "convergence": convergence,
                **({"defensive": vars(options)} if options is not None else {})},
    )
    share = (res.khat > 0.7).double().mean().item()
    if share > khat_warn_share:
        warnings.warn(
            f"Pareto k-hat > 0.7 for {share:.0%} of datapoints: their importance weights have "
            "a tail so heavy that the variance is probably infinite, so log p(x) there is "
            "likely underestimated and its standard error is unreliable. More samples help "
            "slowly; annealed importance sampling (method='ais') or a guide closer to the "
            "posterior (e.g. trained with the IWAE objective) helps more.",
            stacklevel=3,
        )
    return res


def _compiles(model: Callable, x: torch.Tensor, num_passes: int) -> bool:
    """``jit=None``: compile the pass of a long evaluation of float32 data on the CPU, unless the model's
    owner (a :class:`~pyrovae.models.m2.M2`, a text model) says ``evaluation_jit = False``."""
    owner_says = getattr(getattr(model, "__self__", None), "evaluation_jit", True)
    # CPU only: the compiled pass has not been measured or tested on a GPU yet (jit=True works there)
    return owner_says and num_passes >= MIN_JIT_PASSES and x.dtype != torch.float64 and x.device.type == "cpu"


def _method(method, num_steps: int | None):
    """``(name, options)`` of a ``method`` argument: a name or an options object."""
    from .ais import AIS
    from .defensive import Defensive

    if isinstance(method, AIS):
        if num_steps is not None and num_steps != method.num_steps:
            raise ValueError(f"num_steps={num_steps} contradicts AIS(num_steps={method.num_steps}); pass one")
        return "ais", method
    if isinstance(method, Defensive):
        return "defensive", method
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or an AIS/Defensive options object, not {method!r}")
    if num_steps is not None and method != "ais":
        raise ValueError(f"num_steps is AIS's number of steps; method {method!r} takes none")
    if method == "ais":
        return "ais", AIS() if num_steps is None else AIS(num_steps=num_steps)
    return method, Defensive() if method == "defensive" else None
