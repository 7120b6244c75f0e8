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
from pyro.infer.enum import get_importance_trace
from pyro.poutine.util import site_is_subsample

from .factors import factor
from .handlers import cuda_devices
from .importance import PARTICLE_PLATE, ContractError, check_contract, log_importance_weights


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
    """Make ``objective=name`` (and ``--objective name``) build ``factory(num_particles, max_plate_nesting)``."""
    OBJECTIVES[name] = factory


def make_objective(spec, num_particles: int = 1, max_plate_nesting: int | None = None):
    """The objective for a registered name, or ``spec`` itself when it is an objective object
    (with ``differentiable_loss``, or ``loss_and_grads`` as Pyro's ``TraceGraph_ELBO``, ``RenyiELBO``)."""
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


# ---------------------------------------------------------------------------------------------
# The capacity objective of Burgess et al. (2018) and Dupont (2018)

Capacity = float | str  # a number of nats, or the name of a factor set per step by a schedule


class CapacityELBO(_FromDifferentiableLoss):
    r"""The controlled-capacity objective of Burgess et al. (2018) and Dupont (2018, JointVAE).

    The latent sites are split into groups :math:`g` (e.g. ``{"z": ("z",), "c": ("c",)}``);
    for a batch of :math:`N` datapoints ``differentiable_loss`` returns

    .. math::

        -\sum_{i=1}^N E_q[\log p(x_i \mid z_i, c_i)]
        + \gamma N \sum_g \Big|\, \overline{\mathrm{KL}}_g - C_g \Big|, \qquad
        \overline{\mathrm{KL}}_g = \frac1N \sum_{i=1}^N \sum_{s \in g}
        \mathrm{KL}\big(q(s \mid x_i) \,\|\, p(s)\big),

    i.e. :math:`N` times Dupont's per-batch loss
    :math:`E[\log p(x \mid z, c)] - \gamma |\mathrm{KL}_z - C_z| - \gamma |\mathrm{KL}_c - C_c|`,
    whose reconstruction term and KLs are batch *means*. The absolute value is taken of the
    batch-mean KL (as Dupont does), not per datapoint, so the loss is not a sum of per-datapoint
    terms; multiplying by :math:`N` puts it on the footing of our other losses (sums over the
    batch: the reconstruction weighs as in ``Trace_ELBO``, and a step's size does not depend on
    how the batch is cut under Adam, which is scale-invariant).

    **KL per site** (each evaluated given the other latents sampled from the guide):
    ``torch.distributions.kl_divergence`` where one is registered (Normal/Normal in closed
    form); for a ``RelaxedOneHotCategorical`` guide and prior, the KL of the *underlying discrete*
    categoricals, :math:`\sum_k q_k \log(q_k / p_k)` (Dupont's choice: not the KL of the relaxed
    densities, so the objective is a surrogate, not a bound, see ``docs/zoo.md, JointVAE``);
    :math:`\log q(s) - \log p(s)` at the sample otherwise (Monte Carlo). Latent sites in no
    group enter with weight one, as in the ELBO.

    **Capacities** :math:`C_g` are numbers or names of factors (:func:`pyrovae.infer.factors.factor`,
    created at 0) that the trainer sets per *step* from ``schedules=``
    (``{"capacity.z": pyrovae.linear(0, 5, 25_000)}``); the compiled loss takes factors as graph
    inputs, so ``jit=True`` follows the ramp. ``gamma`` may be a factor name too.

    ``poutine.scale`` factors on observed sites are kept (as in every training objective); the
    KL terms are not scaled (γ and :math:`C` are their weights). All guide sites must be
    reparameterised and inside ``pyro.plate(plate_name)``; ``weighted = True`` makes the trainer
    record the true ELBO beside this objective.
    """

    weighted = True

    def __init__(
        self,
        groups: dict[str, tuple[str, ...]],
        gamma: Capacity = 30.0,
        capacities: dict[str, Capacity] | None = None,
        num_particles: int = 1,
        plate_name: str = "data",
        max_plate_nesting: int | None = None,
    ) -> None:
        capacities = dict(capacities or {})
        _check_groups(groups, capacities)
        _check_weight(gamma, "gamma", "the weight of |KL - C|, e.g. 30 (Dupont 2018)")
        for name, value in capacities.items():
            _check_weight(value, f"capacities[{name!r}]", "a number of nats or a factor name")
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, not {num_particles}")
        super().__init__(
            num_particles=num_particles, vectorize_particles=num_particles > 1,
            max_plate_nesting=max_plate_nesting if max_plate_nesting is not None else float("inf"),
        )
        self.groups = {g: tuple(sites) for g, sites in groups.items()}
        self.gamma, self.capacities, self.plate_name = gamma, capacities, plate_name

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def terms(self, model: Callable, guide: Callable, *args, **kwargs) -> dict[str, torch.Tensor]:
        r"""The loss's parts on one draw: ``reconstruction`` (:math:`\sum_i E_q \log p(x_i \mid \cdot)`,
        scaled observed sites), ``kl.<group>`` (:math:`\overline{\mathrm{KL}}_g`), ``kl_rest``
        (summed KL of the sites in no group), ``capacity.<group>``, ``gamma`` and ``n``."""
        # one trace: the particles, if more than one, are vectorised under one plate
        model_trace, guide_trace = next(iter(self._get_traces(model, guide, args, kwargs)))
        return self._terms(model_trace, guide_trace)

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        t = self.terms(model, guide, *args, **kwargs)
        loss = -t["reconstruction"] + t["kl_rest"]
        for group in self.groups:
            loss = loss + t["gamma"] * t["n"] * (t[f"kl.{group}"] - t[f"capacity.{group}"]).abs()
        return loss

    def _terms(self, model_trace, guide_trace) -> dict[str, torch.Tensor]:
        per_particle = self.num_particles  # the sums run over the particle plate too
        recon = sum(
            (site["log_prob_sum"] for site in model_trace.nodes.values()
             if site["type"] == "sample" and site["is_observed"]),
            torch.zeros(()),
        ) / per_particle
        site_of = {s: g for g, sites in self.groups.items() for s in sites}
        kls: dict[str, list[torch.Tensor]] = {g: [] for g in self.groups}
        rest = torch.zeros(())
        for name, q_site in _latent_sites(guide_trace):
            kl = self._site_kl(name, q_site, model_trace)
            if name in site_of:
                kls[site_of[name]].append(kl)
            else:
                rest = rest + kl.sum() / per_particle
        missing = sorted(set(site_of) - {n for n, _ in _latent_sites(guide_trace)})
        if missing:
            raise ContractError(
                f"CapacityELBO groups name site(s) {missing} that the guide does not sample; its latent "
                f"sites are {[n for n, _ in _latent_sites(guide_trace)]}"
            )
        first = next(iter(kls.values()), None)
        n = torch.tensor(float(first[0].shape[-1])) if first else torch.tensor(0.0)
        out = {"reconstruction": recon, "kl_rest": rest, "gamma": _resolve(self.gamma), "n": n}
        for group, parts in kls.items():
            out[f"kl.{group}"] = sum(parts).mean()  # mean over datapoints (and particles)
            out[f"capacity.{group}"] = _resolve(self.capacities.get(group, 0.0))
        return out

    def _site_kl(self, name: str, q_site, model_trace) -> torch.Tensor:
        """Per-datapoint KL of one latent site: shape ``(N,)``, or ``(particles, N)``."""
        if name not in model_trace.nodes or model_trace.nodes[name]["is_observed"]:
            raise ContractError(f"guide site {name!r} is not a latent site of the model")
        if not getattr(q_site["fn"], "has_rsample", False):
            raise ContractError(
                f"CapacityELBO needs reparameterised guide sites, but {name!r} ({type(q_site['fn']).__name__}) "
                "has no rsample; use a relaxed distribution (RelaxedOneHotCategorical) or objective 'elbo'"
            )
        kl = site_kl(q_site["fn"], model_trace.nodes[name]["fn"], q_site["value"])
        return _keep_data_dims(kl.expand(q_site["fn"].batch_shape), q_site, self.plate_name)


def site_kl(q, p, value: torch.Tensor) -> torch.Tensor:
    r""":math:`\mathrm{KL}(q \,\|\, p)` as :class:`CapacityELBO` uses it, of batch shape ``q.batch_shape``:
    closed form where torch has it; for relaxed one-hot categoricals the KL of the discrete
    categoricals underneath (:func:`discrete_kl`); else :math:`\log q(v) - \log p(v)` at ``value``."""
    relaxed_q, relaxed_p = _relaxed(q), _relaxed(p)
    if relaxed_q is not None and relaxed_p is not None:
        (rq, nq), (rp, np_) = relaxed_q, relaxed_p
        if nq != np_:
            raise ContractError("guide and prior of a relaxed site must declare the same event dimensions")
        kl = discrete_kl(rq, rp)
        return kl.sum(tuple(range(-nq, 0))) if nq else kl
    try:
        return torch.distributions.kl_divergence(q, p)
    except NotImplementedError:
        return q.log_prob(value) - p.log_prob(value)


def discrete_kl(q, p) -> torch.Tensor:
    r""":math:`\sum_k q_k \log(q_k / p_k)` for the categoricals under two ``RelaxedOneHotCategorical``
    (Dupont 2018); :math:`\sum_k q_k \log(q_k K)` against a uniform prior. Not the KL of the relaxed
    densities: see ``docs/zoo.md, JointVAE``."""
    log_q = torch.log_softmax(q.logits, -1)
    log_p = torch.log_softmax(p.logits, -1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def _relaxed(fn) -> tuple[torch.distributions.RelaxedOneHotCategorical, int] | None:
    """The relaxed one-hot categorical inside ``fn`` (through ``.to_event`` and ``.expand``) and
    the number of batch dimensions ``to_event`` made event dimensions, or ``None``."""
    ndims = 0
    while True:
        if isinstance(fn, torch.distributions.RelaxedOneHotCategorical):
            return fn, ndims
        if isinstance(fn, torch.distributions.Independent):
            ndims += fn.reinterpreted_batch_ndims
            fn = fn.base_dist
        elif hasattr(fn, "base_dist") and type(fn).__name__ == "ExpandedDistribution":
            fn = fn.base_dist
        else:
            return None


def _latent_sites(trace):
    return [(name, site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]


def _keep_data_dims(kl: torch.Tensor, site, plate_name: str) -> torch.Tensor:
    """``kl`` summed over every batch dimension but the particle and data-plate ones."""
    frames = {f.name: f for f in site["cond_indep_stack"]}
    if plate_name not in frames:
        raise ContractError(
            f"latent site {site['name']!r} is outside pyro.plate({plate_name!r}); CapacityELBO averages KLs "
            "over the datapoints of that plate: put the site inside it"
        )
    keep = {kl.dim() + frames[plate_name].dim}
    if PARTICLE_PLATE in frames:
        keep.add(kl.dim() + frames[PARTICLE_PLATE].dim)
    drop = tuple(d for d in range(kl.dim()) if d not in keep)
    return kl.sum(drop) if drop else kl


def _resolve(value: Capacity) -> torch.Tensor:
    """A number as a tensor, a name as its factor (a graph input of the compiled loss)."""
    return factor(value, 0.0) if isinstance(value, str) else torch.tensor(float(value))


def _check_weight(value, what: str, takes: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"CapacityELBO {what} must be >= 0 ({takes}), not {value!r}")


def _check_groups(groups, capacities) -> None:
    if not isinstance(groups, dict) or not groups:
        raise ValueError('CapacityELBO needs groups={name: (site, ...)}, e.g. {"z": ("z",), "c": ("c",)}')
    seen: dict[str, str] = {}
    for group, sites in groups.items():
        if isinstance(sites, str) or not sites:
            raise ValueError(f"CapacityELBO groups[{group!r}] must be a non-empty tuple of site names, not {sites!r}")
        for s in sites:
            if s in seen:
                raise ValueError(f"site {s!r} is in groups {seen[s]!r} and {group!r}; put each site in one group")
            seen[s] = group
    unknown = sorted(set(capacities) - set(groups))
    if unknown:
        raise ValueError(f"capacities for unknown group(s) {unknown}; the groups are {sorted(groups)}")
