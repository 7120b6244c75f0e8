r"""Objectives that weight the KL term: β-VAE, KL warm-up, capacity control and free bits.

Each writes the per-datapoint ELBO as a reconstruction term minus a KL term,

.. math::

    \mathrm{ELBO}(x) = E_{q(z \mid x)}[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x) \,\|\, p(z)),

and changes only how the KL enters the loss of a minibatch of :math:`N` datapoints:

=====================  =========================================================================
objective              loss (to minimise)
=====================  =========================================================================
ELBO                   :math:`-\sum_i E_q \log p(x_i \mid z_i) + \sum_i \mathrm{KL}_i`
β-VAE                  :math:`-\sum_i E_q \log p(x_i \mid z_i) + \beta \sum_i \mathrm{KL}_i`
                       (Higgins et al. 2017); a β set per step is KL warm-up (Bowman et al.
                       2016) or cyclical annealing (Fu et al. 2019)
free bits              :math:`-\sum_i E_q \log p(x_i \mid z_i) + \beta N \sum_j
                       \max(\lambda, \overline{\mathrm{KL}}_j)`, :math:`\overline{\mathrm{KL}}_j`
                       the batch-mean KL of latent dimension :math:`j` (Kingma et al. 2016)
capacity               :math:`-\sum_i E_q \log p(x_i \mid z_i) + \gamma N \sum_g
                       |\overline{\mathrm{KL}}_g - C_g|` (Burgess et al. 2018; Dupont 2018)
=====================  =========================================================================

**Sums, not means.** Every loss here is a *sum* over the datapoints of the batch and over the
pixels of each datapoint (as Pyro's ``Trace_ELBO``): ``log p(x | z)`` of a 784-pixel image is one
number summed over its pixels, and the KL is summed over latent dimensions. β therefore
means what Higgins et al. mean -- the weight of a KL in nats per datapoint against a
reconstruction in nats per datapoint -- and does not change with the batch size or the
image size. Libraries that average the reconstruction over pixels (``F.mse_loss`` with its
default ``reduction="mean"``) but sum the KL over dimensions put an implicit β of
``1/num_pixels`` on the KL's other side: their β = 4 is not this β = 4. A per-dimension
free-bits floor λ and a capacity :math:`C` are in nats per datapoint too, as in the papers;
the batch means :math:`\overline{\mathrm{KL}}` are multiplied by :math:`N` only to put the
loss on the same footing as the sums.

**The KL** of a latent site is ``torch.distributions.kl_divergence`` where one is registered
(Normal against Normal: closed form, as ``TraceMeanField_ELBO``), the discrete KL under a
relaxed one-hot categorical (:func:`discrete_kl`), else :math:`\log q(z) - \log p(z)` at the
sampled :math:`z` (Monte Carlo). Guide sites must be reparameterised.

Every objective here sets ``weighted = True`` when it is not the ELBO, so the trainer records
the true ELBO beside it (``train_elbo`` beside ``train_bound`` in ``metrics.csv``); evaluation is
always of the unweighted model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.infer.enum import get_importance_trace

from .factors import Schedule, constant, cyclical, factor, linear
from .importance import PARTICLE_PLATE, ContractError, latent_sites
from .objectives import _FromDifferentiableLoss

Weight = float | str  # a number, or the name of a factor set per step by a schedule


class _KLObjective(_FromDifferentiableLoss):
    """Reconstruction and per-site KL of one (vectorised) draw from the guide."""

    def __init__(self, num_particles: int, plate_name: str, max_plate_nesting: int | None) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, not {num_particles}")
        super().__init__(
            num_particles=num_particles, vectorize_particles=num_particles > 1,
            max_plate_nesting=max_plate_nesting if max_plate_nesting is not None else float("inf"),
        )
        self.plate_name = plate_name

    def _get_trace(self, model, guide, args, kwargs):
        return get_importance_trace("flat", self.max_plate_nesting, model, guide, args, kwargs)

    def _draw(self, model, guide, args, kwargs):
        # one trace: the particles, if more than one, are vectorised under one plate
        return next(iter(self._get_traces(model, guide, args, kwargs)))

    def _reconstruction(self, model_trace) -> torch.Tensor:
        r""":math:`\sum_i E_q \log p(x_i \mid \cdot)`: observed sites, with their ``poutine.scale``."""
        total = sum((site["log_prob_sum"] for site in model_trace.nodes.values()
                     if site["type"] == "sample" and site["is_observed"]), torch.zeros(()))
        return total / self.num_particles

    def _site_kl(self, name: str, q_site, model_trace, per_dim: bool = False) -> torch.Tensor:
        """KL of one latent site, all its batch dimensions kept; ``per_dim``: event dimensions too."""
        if name not in model_trace.nodes or model_trace.nodes[name]["is_observed"]:
            raise ContractError(f"guide site {name!r} is not a latent site of the model")
        if not getattr(q_site["fn"], "has_rsample", False):
            raise ContractError(
                f"{type(self).__name__} needs reparameterised guide sites, but {name!r} "
                f"({type(q_site['fn']).__name__}) has no rsample; use a relaxed distribution "
                "(RelaxedOneHotCategorical) or objective 'elbo'"
            )
        q, p = q_site["fn"], model_trace.nodes[name]["fn"]
        if per_dim:
            return site_kl_per_dim(q, p, q_site["value"], name)
        return site_kl(q, p, q_site["value"]).expand(q.batch_shape)

    def _per_datapoint(self, kl: torch.Tensor, site, event_dims: int = 0) -> torch.Tensor:
        """``kl`` summed over every batch dimension but the particle and data-plate ones, the
        last ``event_dims`` dimensions kept and flattened into one."""
        frames = {f.name: f for f in site["cond_indep_stack"]}
        if self.plate_name not in frames:
            raise ContractError(
                f"latent site {site['name']!r} is outside pyro.plate({self.plate_name!r}); "
                f"{type(self).__name__} averages KLs over the datapoints of that plate: put the site inside it "
                f"(or pass plate_name=)"
            )
        batch_dims = kl.dim() - event_dims
        keep = {batch_dims + frames[self.plate_name].dim}
        if PARTICLE_PLATE in frames:
            keep.add(batch_dims + frames[PARTICLE_PLATE].dim)
        drop = tuple(d for d in range(batch_dims) if d not in keep)
        kl = kl.sum(drop) if drop else kl
        return kl.flatten(-event_dims) if event_dims else kl


class BetaELBO(_KLObjective):
    r"""The β-VAE objective (Higgins et al. 2017), with KL warm-up and free bits, for any pair.

    For a batch of :math:`N` datapoints ``differentiable_loss`` returns

    .. math::

        -\sum_{i=1}^N E_q[\log p(x_i \mid z_i)] + \beta \sum_{i=1}^N \mathrm{KL}\big(q(z \mid x_i) \,\|\, p(z)\big),

    and with ``free_bits`` :math:`\lambda` (Kingma et al. 2016, a floor in nats per latent dimension)

    .. math::

        -\sum_{i=1}^N E_q[\log p(x_i \mid z_i)] + \beta N \sum_j \max\big(\lambda, \overline{\mathrm{KL}}_j\big),
        \qquad \overline{\mathrm{KL}}_j = \frac1N \sum_{i=1}^N \mathrm{KL}\big(q(z_j \mid x_i) \,\|\, p(z_j)\big):

    a dimension whose batch-mean KL is below λ gets no KL gradient, so the encoder may use it
    up to λ nats for free. Free bits need a KL that factorises by dimension: guide and prior
    independent across dimensions (``Normal(...).to_event(1)``, closed form), or at least both
    elementwise, when the per-dimension KL is :math:`\log q(z_j) - \log p(z_j)` at the sample.

    ``beta`` is a number or the name of a factor (:func:`pyrovae.factor`) set per step by a
    schedule -- KL warm-up is ``BetaELBO(beta="beta")`` with ``schedules={"beta":
    pyrovae.linear(0, 1, 10_000)}``. β = 1 without free bits is the ELBO with the KL in closed
    form (``TraceMeanField_ELBO``). Each site's KL is multiplied by its ``poutine.scale`` (a
    subsampled plate's factor), as in the ELBO. Latent sites may be outside the data plate
    unless ``free_bits`` is set. See the module docstring for the sum-over-datapoints convention.

    Example:

    >>> import pyro, pyro.distributions as dist, torch, pyrovae
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(torch.ones(x.shape[0], 2), 0.5).to_event(1))
    >>> x = torch.zeros(3)
    >>> objective = pyrovae.BetaELBO(beta=4.0)
    >>> pyro.set_rng_seed(0)
    >>> terms = objective.terms(model, guide, x)
    >>> round(terms["kl"].item(), 3), terms["beta"]
    (4.909, tensor(4.))
    >>> pyro.set_rng_seed(0)
    >>> loss = objective.differentiable_loss(model, guide, x)
    >>> torch.allclose(loss, -terms["reconstruction"] + 4.0 * terms["kl"])
    True
    """

    def __init__(
        self,
        beta: Weight = 1.0,
        free_bits: float | None = None,
        num_particles: int = 1,
        plate_name: str = "data",
        max_plate_nesting: int | None = None,
    ) -> None:
        _check_weight(beta, "beta", "the weight of the KL, e.g. 4 (Higgins et al. 2017)")
        if free_bits is not None:
            _check_weight(free_bits, "free_bits", "a floor in nats per latent dimension, e.g. 0.5")
            if isinstance(free_bits, str):
                raise ValueError(f"BetaELBO free_bits must be a number of nats, not {free_bits!r}")
        super().__init__(num_particles, plate_name, max_plate_nesting)
        self.beta, self.free_bits = beta, free_bits

    @property
    def weighted(self) -> bool:
        return self.free_bits is not None or isinstance(self.beta, str) or float(self.beta) != 1.0

    def terms(self, model: Callable, guide: Callable, *args, **kwargs) -> dict[str, torch.Tensor]:
        r"""The loss's parts on one draw: ``reconstruction``, ``kl`` (:math:`\sum_i \mathrm{KL}_i`,
        scaled), ``beta``, and with free bits ``kl_per_dim`` (:math:`\overline{\mathrm{KL}}_j`) and ``n``."""
        model_trace, guide_trace = self._draw(model, guide, args, kwargs)
        out = {"reconstruction": self._reconstruction(model_trace), "beta": _resolve(self.beta, 1.0)}
        kl, per_dim, n = torch.zeros(()), [], None
        for name, q_site in latent_sites(guide_trace):
            if self.free_bits is None:
                kl = kl + (self._site_kl(name, q_site, model_trace) * q_site["scale"]).sum() / self.num_particles
                continue
            event_dims = len(q_site["fn"].event_shape)
            site = self._per_datapoint(self._site_kl(name, q_site, model_trace, per_dim=True), q_site, event_dims)
            n = torch.tensor(float(site.shape[-2])) * _mean_scale(q_site["scale"])
            per_dim.append(site.reshape(-1, site.shape[-1]).mean(0))
            kl = kl + site.sum() / self.num_particles * _mean_scale(q_site["scale"])
        out["kl"] = kl
        if self.free_bits is not None:
            out["kl_per_dim"] = torch.cat(per_dim) if per_dim else torch.zeros(0)
            out["n"] = n if n is not None else torch.zeros(())
        return out

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        t = self.terms(model, guide, *args, **kwargs)
        if self.free_bits is None:
            return -t["reconstruction"] + t["beta"] * t["kl"]
        floored = t["kl_per_dim"].clamp(min=float(self.free_bits)).sum()
        return -t["reconstruction"] + t["beta"] * t["n"] * floored


# ---------------------------------------------------------------------------------------------
# The capacity objective of Burgess et al. (2018) and Dupont (2018)

ALL_LATENTS = "z"  # the one group of CapacityELBO(groups=None): every latent site


class CapacityELBO(_KLObjective):
    r"""The controlled-capacity objective of Burgess et al. (2018) and Dupont (2018, JointVAE).

    The latent sites are split into groups :math:`g` (e.g. ``{"z": ("z",), "c": ("c",)}``;
    ``groups=None``: one group ``"z"`` of every latent site, Burgess et al.'s single capacity); for
    a batch of :math:`N` datapoints ``differentiable_loss`` returns

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

    Example:

    >>> import pyro, pyro.distributions as dist, torch, pyrovae
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ...         pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(torch.ones(x.shape[0], 2), 0.5).to_event(1))
    >>> x = torch.zeros(3)
    >>> objective = pyrovae.CapacityELBO(gamma=10.0, capacities={"z": 1.0})
    >>> pyro.set_rng_seed(0)
    >>> terms = objective.terms(model, guide, x)
    >>> round(terms["kl.z"].item(), 3), terms["capacity.z"]
    (1.636, tensor(1.))
    >>> pyro.set_rng_seed(0)
    >>> loss = objective.differentiable_loss(model, guide, x)
    >>> torch.allclose(loss, -terms["reconstruction"] + 10.0 * 3 * (terms["kl.z"] - 1.0).abs())
    True
    """

    weighted = True

    def __init__(
        self,
        groups: dict[str, tuple[str, ...]] | None = None,
        gamma: Weight = 30.0,
        capacities: dict[str, Weight] | None = None,
        num_particles: int = 1,
        plate_name: str = "data",
        max_plate_nesting: int | None = None,
    ) -> None:
        capacities = dict(capacities or {})
        if groups is not None:
            _check_groups(groups, capacities)
        elif set(capacities) - {ALL_LATENTS}:
            raise ValueError(f"without groups there is one group, {ALL_LATENTS!r}; capacities names "
                             f"{sorted(set(capacities) - {ALL_LATENTS})}")
        _check_weight(gamma, "gamma", "the weight of |KL - C|, e.g. 30 (Dupont 2018)")
        for name, value in capacities.items():
            _check_weight(value, f"capacities[{name!r}]", "a number of nats or a factor name")
        super().__init__(num_particles, plate_name, max_plate_nesting)
        self.groups = None if groups is None else {g: tuple(sites) for g, sites in groups.items()}
        self.gamma, self.capacities = gamma, capacities

    def terms(self, model: Callable, guide: Callable, *args, **kwargs) -> dict[str, torch.Tensor]:
        r"""The loss's parts on one draw: ``reconstruction`` (:math:`\sum_i E_q \log p(x_i \mid \cdot)`,
        scaled observed sites), ``kl.<group>`` (:math:`\overline{\mathrm{KL}}_g`), ``kl_rest``
        (summed KL of the sites in no group), ``capacity.<group>``, ``gamma`` and ``n``."""
        return self._terms(*self._draw(model, guide, args, kwargs))

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        t = self.terms(model, guide, *args, **kwargs)
        loss = -t["reconstruction"] + t["kl_rest"]
        for group in (k.removeprefix("kl.") for k in t if k.startswith("kl.")):
            loss = loss + t["gamma"] * t["n"] * (t[f"kl.{group}"] - t[f"capacity.{group}"]).abs()
        return loss

    def _terms(self, model_trace, guide_trace) -> dict[str, torch.Tensor]:
        latents = latent_sites(guide_trace)
        if self.groups is None:
            groups = {ALL_LATENTS: tuple(name for name, _ in latents)}
        else:
            groups = self.groups
            missing = sorted({s for sites in groups.values() for s in sites} - {n for n, _ in latents})
            if missing:
                raise ContractError(
                    f"CapacityELBO groups name site(s) {missing} that the guide does not sample; its latent "
                    f"sites are {[n for n, _ in latents]}"
                )
        site_of = {s: g for g, sites in groups.items() for s in sites}
        kls: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
        rest = torch.zeros(())
        for name, q_site in latents:
            kl = self._site_kl(name, q_site, model_trace)
            if name in site_of:
                kls[site_of[name]].append(self._per_datapoint(kl, q_site))
            else:
                rest = rest + kl.sum() / self.num_particles
        first = next((parts for parts in kls.values() if parts), None)
        n = torch.tensor(float(first[0].shape[-1])) if first else torch.tensor(0.0)
        out = {"reconstruction": self._reconstruction(model_trace), "kl_rest": rest,
               "gamma": _resolve(self.gamma), "n": n}
        for group, parts in kls.items():
            out[f"kl.{group}"] = sum(parts).mean() if parts else torch.zeros(())  # mean over datapoints, particles
            out[f"capacity.{group}"] = _resolve(self.capacities.get(group, 0.0))
        return out


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


def site_kl_per_dim(q, p, value: torch.Tensor, name: str = "z") -> torch.Tensor:
    r"""KL per latent dimension, of shape ``q.batch_shape + q.event_shape``: for a guide and a prior
    that are both elementwise distributions made events by ``.to_event`` (e.g. a diagonal Normal
    against ``Normal(0, 1)``), the closed-form KL of each dimension where torch has one, else
    :math:`\log q(v_j) - \log p(v_j)` at ``value``. Anything else is refused: its KL does not
    split by dimension (a full-covariance Normal, a mixture or flow prior)."""
    base_q, base_p = _elementwise(q), _elementwise(p)
    if base_q is None or base_p is None:
        which = type(q).__name__ if base_q is None else type(p).__name__
        raise ContractError(
            f"free bits need a KL that splits by latent dimension, but site {name!r} has a {which} whose "
            "dimensions are not independent (a mixture, flow or VampPrior prior; a full-covariance guide); "
            "use a factorised guide and prior (Normal(...).to_event(1)) or drop free bits"
        )
    try:
        kl = torch.distributions.kl_divergence(base_q, base_p)
    except NotImplementedError:
        kl = base_q.log_prob(value) - base_p.log_prob(value)
    return kl.expand(q.batch_shape + q.event_shape)


def _elementwise(fn):
    """The elementwise distribution (event shape ``()``) under ``.to_event`` and ``.expand``, or ``None``."""
    while True:
        if isinstance(fn, torch.distributions.Independent) or type(fn).__name__ == "ExpandedDistribution":
            fn = fn.base_dist
        elif fn.event_shape == ():
            return fn
        else:
            return None


def kl_weighting(
    beta: float = 1.0,
    kl_anneal: Schedule | None = None,
    capacity: tuple[float, int] | None = None,
    gamma: float = 30.0,
    free_bits: float | None = None,
    num_particles: int = 1,
    plate_name: str = "data",
    max_plate_nesting: int | None = None,
) -> tuple[_KLObjective, dict[str, Schedule]]:
    """The objective and per-step schedules for a run's KL settings (the ``--beta``, ``--kl-anneal``,
    ``--capacity`` and ``--free-bits`` flags): :class:`BetaELBO` with β times ``kl_anneal(step)``
    when annealed, or :class:`CapacityELBO` over all latents with :math:`C` ramped linearly from 0
    to ``capacity = (C_max, steps)``. Capacity replaces β, so the two are not combined.

    Example:

    >>> from pyrovae import linear
    >>> from pyrovae.infer import kl_weighting
    >>> objective, schedules = kl_weighting(beta=2.0, kl_anneal=linear(0.0, 1.0, steps=100))
    >>> type(objective).__name__, sorted(schedules)
    ('BetaELBO', ['beta'])
    >>> objective, schedules = kl_weighting(capacity=(25.0, 1000), gamma=30.0)
    >>> type(objective).__name__, schedules["capacity"](500)
    ('CapacityELBO', 12.5)
    """
    if capacity is not None:
        if beta != 1.0 or kl_anneal is not None or free_bits is not None:
            raise ValueError("capacity control replaces the KL weight: give capacity= alone, not with beta=, "
                             "kl_anneal= or free_bits=")
        c_max, steps = capacity
        _check_weight(c_max, "capacity", "C_max in nats per datapoint")
        objective = CapacityELBO(None, gamma=gamma, capacities={ALL_LATENTS: CAPACITY_FACTOR},
                                 num_particles=num_particles, plate_name=plate_name,
                                 max_plate_nesting=max_plate_nesting)
        return objective, {CAPACITY_FACTOR: linear(0.0, float(c_max), int(steps))}
    _check_weight(beta, "beta", "the weight of the KL, e.g. 4")
    objective = BetaELBO(BETA_FACTOR if kl_anneal is not None else beta, free_bits, num_particles, plate_name,
                         max_plate_nesting)
    if kl_anneal is None:
        return objective, {}
    return objective, {BETA_FACTOR: lambda step: beta * kl_anneal(step)}


def parse_anneal(spec: str) -> Schedule:
    """``linear:STEPS[:DELAY]`` (warm-up from 0 to 1, Bowman et al. 2016) or
    ``cyclical:PERIOD[:RAMP]`` (Fu et al. 2019; RAMP the rising share of each period, 0.5)."""
    kind, *numbers = spec.split(":")
    form = (f"KL annealing {spec!r} is not linear:STEPS[:DELAY] or cyclical:PERIOD[:RAMP] (steps are optimiser "
            "steps, e.g. linear:10000)")
    try:
        if kind == "linear" and 1 <= len(numbers) <= 2:
            return linear(0.0, 1.0, int(numbers[0]), int(numbers[1]) if len(numbers) > 1 else 0)
        if kind == "cyclical" and 1 <= len(numbers) <= 2:
            return cyclical(0.0, 1.0, int(numbers[0]), float(numbers[1]) if len(numbers) > 1 else 0.5)
        if kind == "constant" and not numbers:
            return constant(1.0)
    except ValueError as err:
        reason = str(err) if "must" in str(err) or "need" in str(err) else "its numbers do not parse"
        raise ValueError(f"{form}: {reason}") from None
    raise ValueError(form)


def parse_capacity(spec: str) -> tuple[float, int]:
    """``C_MAX:STEPS``: capacity ramped from 0 to C_MAX nats over STEPS optimiser steps."""
    try:
        c_max, steps = spec.split(":")
        c_max_value, steps_value = float(c_max), int(steps)
        if not (math.isfinite(c_max_value) and c_max_value >= 0 and steps_value >= 1):
            raise ValueError
    except ValueError:
        raise ValueError(f"capacity {spec!r} is not C_MAX:STEPS (nats >= 0, optimiser steps >= 1), "
                         "e.g. 25:100000 (Burgess et al. 2018)") from None
    return c_max_value, steps_value


BETA_FACTOR = "beta"
CAPACITY_FACTOR = "capacity"


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


def _resolve(value: Weight, init: float = 0.0) -> torch.Tensor:
    """A number as a tensor, a name as its factor (a graph input of the compiled loss)."""
    return factor(value, init) if isinstance(value, str) else torch.tensor(float(value))


def _mean_scale(scale) -> torch.Tensor | float:
    return scale.mean() if torch.is_tensor(scale) else scale


def _check_weight(value, what: str, takes: str) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be >= 0 ({takes}), not {value!r}")


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
