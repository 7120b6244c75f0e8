r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC) of :math:`\log p(x)`.

Importance sampling from the guide needs a proposal whose tails cover the posterior; a VAE's
guide rarely has them, and its error bar is then too small (Pareto :math:`\hat k > 0.7`). AIS
(Neal 2001; Wu et al. 2017 for decoder-based models) moves each sample towards the posterior
through a sequence of targets, per datapoint, on the geometric path from :math:`q(z \mid x)`
to :math:`p(x, z)`:

.. math::

    f_t(z) = q(z \mid x)^{1 - \beta_t}\, p(x, z)^{\beta_t}, \qquad
    0 = \beta_0 < \beta_1 < \dots < \beta_T = 1.

A chain starts at :math:`z_0 \sim q(z \mid x)`, and :math:`z_t` follows from :math:`z_{t-1}` by
Hamiltonian Monte Carlo that leaves :math:`f_t` invariant. With
:math:`\log w(z) = \log p(x, z) - \log q(z \mid x)` its weight is

.. math::

    \log W = \sum_{t=1}^{T} \log \frac{f_t(z_{t-1})}{f_{t-1}(z_{t-1})}
           = \sum_{t=1}^{T} (\beta_t - \beta_{t-1}) \log w(z_{t-1}),

and :math:`E[W] = p(x)` for any :math:`T`, so :math:`\log \frac1C \sum_c W_c` over :math:`C`
chains is a stochastic lower bound on :math:`\log p(x)` that tightens as :math:`T` grows.

**Step sizes.** HMC's step size is adapted per datapoint, towards an acceptance rate
``target_accept``, on a short *pilot* run with its own random numbers; the main run uses the
pilot's step sizes at the same point of the schedule, frozen. Adapting on the main chains
themselves, as is common, makes each transition depend on the chains' past and voids the
unbiasedness argument; a pilot does not.

**Which latents move.** The guide's continuous sites move, in unconstrained space
(:func:`torch.distributions.biject_to` of their support, with the Jacobian in the target). A
discrete site *the guide samples* keeps the value drawn from the guide: a kernel that moves
:math:`z` given a fixed discrete code still leaves the joint :math:`f_t` invariant, so the
estimate stays unbiased (the code just does not mix). Discrete sites the model enumerates are
summed out inside :math:`\log w`, as in importance sampling.

**BDMC** (Grosse, Ghahramani & Adams 2015). On data simulated from the model,
:math:`(x, z^*) \sim p(x, z)`, :math:`z^*` is an exact posterior sample, so AIS can run in
reverse from :math:`z^*` (:math:`\beta` from 1 to 0). Its weight has :math:`E[W_{rev}] = 1/p(x)`,
so :math:`-\log \frac1C \sum_c W_{rev, c}` is a stochastic *upper* bound. The forward and reverse
runs sandwich :math:`\log p(x)`; the gap says how far AIS with this :math:`T` can be from the
truth on data like the model's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to, constraints

from .handlers import cuda_devices, restores_global_state
from .importance import (
    PARTICLE_PLATE,
    ContractError,
    MarginalLikelihood,
    _per_datapoint,
    _rows,
    _site_frames,
    check_contract,
    latent_sites,
    log_joint_and_guide,
    per_datapoint_args,
    replay_template,
    site_infer,
    weight_summaries,
)
from .parallel import map_chunks

SCHEDULES = ("sigmoid", "linear")


@dataclass(frozen=True)
class AIS:
    """Settings of annealed importance sampling (``log_marginal_likelihood(method=AIS(...))``).

    :param num_steps: :math:`T`, the number of intermediate distributions.
    :param num_leapfrog: leapfrog steps per HMC transition.
    :param target_accept: the acceptance rate the pilot adapts each datapoint's step size to.
    :param schedule: ``"sigmoid"`` (Grosse et al. 2015: dense near both ends) or ``"linear"``.
    :param initial_step_size: the pilot's first step size.
    :param pilot_steps: length of the pilot's schedule (at most ``num_steps``).
    :param pilot_chains: chains per datapoint in the pilot.

    Example:

    >>> import pyro, pyro.distributions as dist, torch, pyrovae
    >>> from pyrovae.infer import AIS
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # too narrow and off-centre: IS from it is poor, AIS walks to the posterior
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2 + 0.3, 0.3))
    >>> x = torch.tensor([-1.0, 0.0, 2.0])
    >>> pyro.set_rng_seed(0)
    >>> res = pyrovae.log_marginal_likelihood(model, guide, x, method=AIS(num_steps=100), num_samples=16)
    >>> exact = dist.Normal(0.0, 2**0.5).log_prob(x)  # within 3 standard errors over the chains
    >>> bool(((res.log_px - exact).abs() < 3 * res.stderr).all()), bool((res.extras["acceptance"] > 0.5).all())
    (True, True)
    """

    num_steps: int = 1000
    num_leapfrog: int = 5
    target_accept: float = 0.65
    schedule: str = "sigmoid"
    initial_step_size: float = 0.05
    pilot_steps: int = 100
    pilot_chains: int = 4

    def __post_init__(self) -> None:
        for name in ("num_steps", "num_leapfrog", "pilot_steps", "pilot_chains"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AIS {name} must be a whole number >= 1, not {value!r}")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"AIS target_accept must lie in (0, 1), not {self.target_accept!r}")
        if not self.initial_step_size > 0:
            raise ValueError(f"AIS initial_step_size must be > 0, not {self.initial_step_size!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"AIS schedule must be one of {SCHEDULES}, not {self.schedule!r}")


def annealing_schedule(num_steps: int, kind: str = "sigmoid", sharpness: float = 4.0) -> torch.Tensor:
    r""":math:`\beta_0 = 0 < \dots < \beta_T = 1` (float64). ``"sigmoid"``: :math:`\tilde\beta_t =
    \sigma(\delta (2t/T - 1))` rescaled to run from 0 to 1 (Grosse et al. 2015, :math:`\delta` =
    ``sharpness``); ``"linear"``: :math:`t/T`.

    Example:

    >>> from pyrovae.infer import annealing_schedule
    >>> annealing_schedule(4, "linear").tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise ValueError(f"schedule must be one of {SCHEDULES}, not {kind!r}")
    s = torch.sigmoid(sharpness * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


@dataclass
class _Site:
    transform: object | None  # None: the identity (a real-valued site)
    data_dim: int


class _Chains:
    """``C`` chains per datapoint of a chunk of rows: the energies and the HMC kernel."""

    def __init__(self, model, guide, x, args, kwargs, plate_name, max_plate_nesting, num_chains, values, infer):
        self.model, self.guide, self.x, self.args, self.kwargs = model, guide, x, args, kwargs
        self.plate_name, self.max_plate_nesting, self.num_chains = plate_name, max_plate_nesting, num_chains
        self.batch_width = max_plate_nesting + 1
        self.sites: dict[str, _Site] = {}
        self.fixed: dict[str, torch.Tensor] = {}
        self.u: dict[str, torch.Tensor] = {}
        self.infer = infer
        for name, (value, fn, frames) in values.items():
            if fn.support.is_discrete:
                self.fixed[name] = value
                continue
            transform = None if _is_real(fn.support) else biject_to(fn.support)
            self.sites[name] = _Site(transform, frames[plate_name].dim)
            self.u[name] = value if transform is None else transform.inv(value)
        if not self.sites:
            raise ContractError(
                "the guide has no continuous latent site, so there is nothing for AIS to anneal; "
                "use importance sampling (method='is')"
            )

    def _per_chain(self, t: torch.Tensor, name: str, data_dim: int) -> torch.Tensor:
        """Sum an elementwise quantity of a site over its event dims, then to ``(C, N)``."""
        extra = t.dim() - self.batch_width
        if extra > 0:
            t = t.sum(list(range(-extra, 0)))
        return _per_datapoint(t, -self.batch_width, data_dim, name)

    def along(self, per_chain: torch.Tensor, name: str) -> torch.Tensor:
        """A ``(C or 1, N)`` tensor shaped to broadcast against site ``name``'s values."""
        u = self.u[name]
        shape = [1] * u.dim()
        shape[0] = per_chain.shape[0]
        shape[self.batch_width + self.sites[name].data_dim] = per_chain.shape[1]
        return per_chain.reshape(shape)

    def energy(self, u: dict[str, torch.Tensor], beta: float, need_grad: bool = True):
        r"""``(log w, log f_beta (with the Jacobian), gradients of log f_beta)`` at ``u``."""
        with torch.enable_grad():
            leaves = {n: v.detach().requires_grad_(need_grad) for n, v in u.items()}
            values = dict(self.fixed)
            log_jac = 0.0
            for name, leaf in leaves.items():
                t = self.sites[name].transform
                if t is None:
                    values[name] = leaf
                else:
                    values[name] = z = t(leaf)
                    log_jac = log_jac + self._per_chain(t.log_abs_det_jacobian(leaf, z), name,
                                                        self.sites[name].data_dim)
            guide = poutine.replay(self.guide, trace=replay_template(values, self.infer))
            terms = log_joint_and_guide(self.model, guide, self.x, *self.args, num_particles=self.num_chains,
                                        plate_name=self.plate_name, max_plate_nesting=self.max_plate_nesting,
                                        **self.kwargs)
            log_w = terms.log_joint - terms.log_guide
            log_f = terms.log_guide + log_jac + beta * log_w
            if not need_grad:
                return log_w.detach(), log_f.detach(), None
            finite = torch.isfinite(log_f)
            grads = torch.autograd.grad(torch.where(finite, log_f, 0.0).sum(), list(leaves.values()),
                                        allow_unused=True)
        grads = {n: torch.zeros_like(u[n]) if g is None else g for n, g in zip(leaves, grads)}
        return log_w.detach(), log_f.detach(), grads

    def kinetic(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self._per_chain(0.5 * v.pow(2), n, self.sites[n].data_dim) for n, v in p.items())

    def transition(self, beta: float, step_size: torch.Tensor, num_leapfrog: int):
        """One HMC transition of every chain at :math:`f_\\beta` (step sizes ``(N,)``); returns the
        new :math:`\\log w` and the acceptance probabilities, ``(C, N)`` each."""
        u0 = self.u
        log_w0, log_f0, g = self.energy(u0, beta)
        eps = {n: self.along(step_size[None], n) for n in u0}
        p = {n: torch.randn_like(v) for n, v in u0.items()}
        h0 = log_f0 - self.kinetic(p)
        p = {n: p[n] + 0.5 * eps[n] * g[n] for n in p}
        u = u0
        for step in range(num_leapfrog):
            u = {n: u[n] + eps[n] * p[n] for n in u}
            log_w, log_f, g = self.energy(u, beta)
            half = 0.5 if step == num_leapfrog - 1 else 1.0
            p = {n: p[n] + half * eps[n] * g[n] for n in p}
        log_ratio = torch.nan_to_num(log_f - self.kinetic(p) - h0, nan=-math.inf)
        accept_prob = log_ratio.clamp(max=0).exp()
        accept = torch.rand_like(accept_prob) < accept_prob
        self.u = {n: torch.where(self.along(accept, n), u[n], u0[n]) for n in u0}
        return torch.where(accept, log_w, log_w0), accept_prob


def _anneal(chains: _Chains, betas: torch.Tensor, step_size_at: Callable[[int], torch.Tensor], options: AIS,
            adapt: torch.Tensor | None = None, bar=None):
    """Run the chains along ``betas``; returns ``log W`` ``(C, N)``, the initial ``log w`` and the
    mean acceptance per datapoint. With ``adapt`` (log step sizes ``(N,)``, updated in place and
    recorded per step), the step sizes follow the acceptance rates (the pilot)."""
    log_w, _, _ = chains.energy(chains.u, 0.0, need_grad=False)
    first = log_w
    log_weight = torch.zeros_like(log_w)
    accepted = torch.zeros(log_w.shape[1], dtype=log_w.dtype, device=log_w.device)
    steps = len(betas) - 1
    record = []
    for t in range(1, steps + 1):
        log_weight = log_weight + float(betas[t] - betas[t - 1]) * log_w
        if t < steps:
            eps = adapt.exp() if adapt is not None else step_size_at(t)
            log_w, accept_prob = chains.transition(float(betas[t]), eps.to(log_w.dtype), options.num_leapfrog)
            rate = accept_prob.mean(0)
            accepted = accepted + rate
            if adapt is not None:
                # constant gain: the target moves along the schedule, the step size follows it
                adapt += 0.5 * (rate.to(adapt.dtype) - options.target_accept)
                record.append(adapt.clone())
        if bar is not None:
            bar.update(1)
    acceptance = accepted / max(steps - 1, 1)
    return log_weight, first, acceptance, record


def _chains_from_guide(model, guide, x, args, kwargs, plate_name, max_plate_nesting, num_chains):
    with torch.no_grad():
        terms = log_joint_and_guide(model, guide, x, *args, num_particles=num_chains, plate_name=plate_name,
                                    max_plate_nesting=max_plate_nesting, **kwargs)
    sites = latent_sites(terms.guide_trace)
    values = {name: (site["value"].detach(), site["fn"], _site_frames(site)) for name, site in sites}
    infer = {name: site_infer(site) for name, site in sites}
    return _Chains(model, guide, x, args, kwargs, plate_name, max_plate_nesting, num_chains, values, infer)


def _forward(model, guide, x, args, kwargs, plate_name, max_plate_nesting, options: AIS, num_chains: int,
             betas: torch.Tensor, bar):
    """The pilot, then forward AIS of one chunk of rows: ``(chains at their last state, pilot step
    sizes, the chunk's per-datapoint summaries)``."""
    pilot = _pilot_step_sizes(model, guide, x, args, kwargs, plate_name, max_plate_nesting, options, bar)
    chains = _chains_from_guide(model, guide, x, args, kwargs, plate_name, max_plate_nesting, num_chains)
    log_weight, first, acceptance, _ = _anneal(chains, betas, _step_size_lookup(pilot, options.num_steps),
                                               options, bar=bar)
    return chains, pilot, _summarise(log_weight, first, acceptance, pilot.exp().mean(0))


def _pilot_step_sizes(model, guide, x, args, kwargs, plate_name, max_plate_nesting, options: AIS, bar=None):
    """Per-datapoint step sizes along a pilot schedule, ``(pilot_steps + 1, N)`` (log scale), from
    a pilot run whose random numbers are forked off the caller's stream."""
    steps = min(options.pilot_steps, options.num_steps)
    betas = annealing_schedule(steps, options.schedule)
    with torch.random.fork_rng(devices=cuda_devices((x, *args))):
        chains = _chains_from_guide(model, guide, x, args, kwargs, plate_name, max_plate_nesting,
                                    options.pilot_chains)
        log_eps = torch.full((x.shape[0],), math.log(options.initial_step_size), dtype=torch.float64,
                             device=x.device)
        _, _, _, record = _anneal(chains, betas, None, options, adapt=log_eps, bar=bar)
    record = [record[0]] + record if record else [log_eps]
    record = record + [record[-1]] * (steps + 1 - len(record))
    return torch.stack(record)  # row s: the step size for the transition at pilot step s


def _step_size_lookup(pilot: torch.Tensor, num_steps: int, reverse: bool = False):
    pilot_steps = pilot.shape[0] - 1

    def at(t: int) -> torch.Tensor:
        position = (num_steps - t) if reverse else t  # where in the forward schedule this step is
        return pilot[round(position * pilot_steps / num_steps)].exp()

    return at


def _summarise(log_weight: torch.Tensor, first: torch.Tensor, acceptance: torch.Tensor, step_size: torch.Tensor,
               upper: bool = False) -> dict[str, torch.Tensor]:
    out = weight_summaries(log_weight.double().cpu())
    if upper:  # reverse AIS estimates 1/p(x): its upper bound on log p(x) is -log mean W_rev
        out["log_px"] = -out["log_px"]
    out["elbo"] = first.double().mean(0).cpu()
    out["acceptance"] = acceptance.double().cpu()
    out["step_size"] = step_size.double().cpu()
    return out


def annealed_log_marginal_likelihood(
    model: Callable, guide: Callable, x: torch.Tensor, *args, options: AIS, num_samples: int,
    chunk_size: int, plate_name: str = "data", max_plate_nesting: int | None = None,
    progress: bool | None = None, workers: int | None = None, **kwargs,
) -> MarginalLikelihood:
    """AIS estimate of :math:`\\log p(x_i)` per row of ``x`` with ``num_samples`` chains each; called
    by :func:`~pyrovae.infer.log_marginal_likelihood` with ``method="ais"`` (which has checked ``x``)."""
    num_rows = x.shape[0]
    rows = max(1, min(num_rows, chunk_size // num_samples))
    if max_plate_nesting is None:
        first = per_datapoint_args(args, num_rows, slice(0, rows))
        max_plate_nesting = check_contract(model, guide, x[:rows], *first, plate_name=plate_name, **kwargs)
    betas = annealing_schedule(options.num_steps, options.schedule)
    pilot_steps = min(options.pilot_steps, options.num_steps)
    from tqdm.auto import tqdm

    show = progress if progress is not None else num_rows * num_samples * options.num_steps >= 2_000_000
    bar = tqdm(total=-(-num_rows // rows) * (options.num_steps + pilot_steps), disable=not show,
               desc=f"log p(x) by AIS, T={options.num_steps}, C={num_samples}", unit="step")
    num_chunks = -(-num_rows // rows)

    def chunk(j: int, bar) -> dict[str, torch.Tensor]:
        index = slice(j * rows, min((j + 1) * rows, num_rows))
        args_b = per_datapoint_args(args, num_rows, index)
        return _forward(model, guide, x[index], args_b, kwargs, plate_name, max_plate_nesting, options,
                        num_samples, betas, bar)[2]

    with poutine.block(), torch.no_grad(), pyro.validation_enabled(False):
        parts = map_chunks(chunk, num_chunks, workers=workers, tensors=(x, *args), bar=bar,
                           units=lambda j: options.num_steps + pilot_steps)
    bar.close()
    return _result(parts, num_samples, x, options, "ais")


def _result(parts: list[dict], num_samples: int, x: torch.Tensor, options: AIS, method: str) -> MarginalLikelihood:
    cat = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    extras = {"data_dim": x[0].numel(), "acceptance": cat.pop("acceptance"), "step_size": cat.pop("step_size"),
              "num_steps": options.num_steps, "num_leapfrog": options.num_leapfrog, "schedule": options.schedule}
    return MarginalLikelihood(**cat, num_samples=num_samples, method=method, extras=extras)


# --------------------------------------------------------------------------------------------
# bidirectional Monte Carlo


@dataclass
class BDMC:
    """Forward and reverse AIS on data simulated from the model (:func:`bdmc`).

    ``lower`` and ``upper`` hold per-datapoint stochastic lower and upper bounds on
    :math:`\\log p(x_i)` of the simulated ``x``; :attr:`gap` is their mean difference.
    """

    x: torch.Tensor
    lower: MarginalLikelihood
    upper: MarginalLikelihood
    extras: dict = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """Mean of upper minus lower bound, nats per datapoint."""
        return (self.upper.log_px - self.lower.log_px).mean().item()

    def summary(self) -> dict[str, float]:
        return {
            "num_datapoints": len(self.lower),
            "num_chains": self.lower.num_samples,
            "num_steps": self.lower.extras["num_steps"],
            "mean_lower": self.lower.mean,
            "mean_upper": self.upper.mean,
            "gap": self.gap,
            "mean_acceptance_forward": self.lower.extras["acceptance"].mean().item(),
            "mean_acceptance_reverse": self.upper.extras["acceptance"].mean().item(),
        }


def simulate(model: Callable, x: torch.Tensor, *args, max_plate_nesting: int, plate_name: str = "data", **kwargs):
    """Draw :math:`(x, z) \\sim p(x, z)` with ``x``'s shape: the model runs with its observed site
    sampled (``poutine.uncondition``), under a particle plate of size 1 so that every site's value
    has the chains' layout. Returns ``(x_sim, trace)``; refuses a model with other than one
    observed site of ``x``'s size."""
    with poutine.block(), torch.no_grad(), pyro.plate(PARTICLE_PLATE, 1, dim=-max_plate_nesting - 1):
        plain = poutine.trace(model).get_trace(x, *args, **kwargs)
        trace = poutine.trace(poutine.uncondition(model)).get_trace(x, *args, **kwargs)
    observed = [(n, trace.nodes[n]) for n, s in plain.nodes.items()
                if s["type"] == "sample" and not site_is_subsample(s) and s["is_observed"]]
    if len(observed) != 1 or observed[0][1]["value"].numel() != x.numel():
        shapes = {n: tuple(s["value"].shape) for n, s in observed}
        raise ContractError(
            "BDMC simulates x from the model, so the model needs exactly one observed site holding x "
            f"(shape {tuple(x.shape)}); it has {shapes or 'none'}. Run BDMC on a model whose "
            "likelihood observes x itself"
        )
    return observed[0][1]["value"].detach().reshape(x.shape).to(x.dtype), trace


@restores_global_state
def bdmc(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    *args,
    num_steps: int = 1000,
    num_samples: int = 16,
    options: AIS | None = None,
    chunk_size: int = 2**12,
    plate_name: str = "data",
    progress: bool | None = None,
    workers: int | None = None,
    **kwargs,
) -> BDMC:
    r"""Bidirectional Monte Carlo: AIS forward and in reverse on data simulated from the model.

    ``x`` gives the shape (and any positional ``args`` the conditions) of the simulated data:
    one :math:`(x_i, z_i^*) \sim p(x, z)` per row. Forward AIS from :math:`q(z \mid x_i)` gives a
    stochastic lower bound on :math:`\log p(x_i)`; reverse AIS from the exact posterior sample
    :math:`z_i^*` an upper bound (Grosse et al. 2015). Their gap bounds AIS's error at this
    :math:`T` on data like the model's own. Random numbers come from Pyro's global stream
    (``pyro.set_rng_seed``).

    :param num_steps: :math:`T` of both runs (unless ``options`` is given).
    :param num_samples: chains per datapoint and direction.
    :param workers: processes for chunks of rows, as in :func:`~pyrovae.infer.log_marginal_likelihood`.
    :returns: :class:`BDMC` with ``x`` (the simulated data), ``lower``, ``upper`` and ``gap``.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae.infer import bdmc
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2 + 0.3, 0.3))
    >>> pyro.set_rng_seed(0)
    >>> res = bdmc(model, guide, torch.zeros(40), num_steps=30, num_samples=8)  # shape of the simulated x
    >>> exact = dist.Normal(0.0, 2**0.5).log_prob(res.x).mean().item()
    >>> # the bounds hold in expectation; at this T both sit within a few s.e. (0.03) of the exact value
    >>> abs(res.lower.mean - exact) < 0.15, abs(res.upper.mean - exact) < 0.15, res.gap < 0.2
    (True, True, True)
    """
    options = options or AIS(num_steps=num_steps)
    x = _rows(x, model)
    num_rows = x.shape[0]
    max_plate_nesting = check_contract(model, guide, x, *args, plate_name=plate_name, **kwargs)
    x_sim, trace = simulate(model, x, *args, max_plate_nesting=max_plate_nesting, plate_name=plate_name, **kwargs)
    rows = max(1, min(num_rows, chunk_size // num_samples))
    betas = annealing_schedule(options.num_steps, options.schedule)
    from tqdm.auto import tqdm

    pilot_steps = min(options.pilot_steps, options.num_steps)
    show = progress if progress is not None else num_rows * num_samples * options.num_steps >= 1_000_000
    bar = tqdm(total=-(-num_rows // rows) * (2 * options.num_steps + pilot_steps), disable=not show,
               desc=f"BDMC, T={options.num_steps}, C={num_samples}", unit="step")
    num_chunks = -(-num_rows // rows)

    def chunk(j: int, bar) -> tuple[dict, dict]:
        index = slice(j * rows, min((j + 1) * rows, num_rows))
        args_b = per_datapoint_args(args, num_rows, index)
        chains, pilot, forward = _forward(model, guide, x_sim[index], args_b, kwargs, plate_name,
                                          max_plate_nesting, options, num_samples, betas, bar)
        # the reverse chains start at the simulated z*, an exact draw from p(z | x)
        start_values = {n: _chain_values(trace, n, index, num_samples, plate_name, chains)
                        for n in (*chains.u, *chains.fixed)}
        chains.u = {n: start_values[n] if chains.sites[n].transform is None
                    else chains.sites[n].transform.inv(start_values[n]) for n in chains.u}
        chains.fixed = {n: start_values[n] for n in chains.fixed}
        log_weight, first, acceptance, _ = _anneal(
            chains, betas.flip(0), _step_size_lookup(pilot, options.num_steps, reverse=True), options, bar=bar,
        )
        return forward, _summarise(log_weight, first, acceptance, pilot.exp().mean(0), upper=True)

    with poutine.block(), torch.no_grad(), pyro.validation_enabled(False):
        parts = map_chunks(chunk, num_chunks, workers=workers, tensors=(x_sim, *args), bar=bar,
                           units=lambda j: 2 * options.num_steps + pilot_steps)
    bar.close()
    forward, reverse = [p[0] for p in parts], [p[1] for p in parts]
    return BDMC(x_sim, _result(forward, num_samples, x, options, "ais"),
                _result(reverse, num_samples, x, options, "ais-reverse"))


def _chain_values(trace, name: str, index: slice, num_chains: int, plate_name: str, chains: _Chains) -> torch.Tensor:
    """Site ``name``'s simulated value for the rows ``index``, repeated for every chain."""
    site = trace.nodes.get(name)
    if site is None or site["type"] != "sample":
        raise ContractError(f"the guide proposes {name!r} but the model samples no such site")
    value = site["value"].detach()
    axis = chains.batch_width + _site_frames(site)[plate_name].dim
    value = value.narrow(axis, index.start, index.stop - index.start)
    like = chains.u.get(name, chains.fixed.get(name))
    value = value.expand((num_chains,) + tuple(value.shape[1:])).clone()
    if name in chains.u and chains.sites[name].transform is None and value.shape != like.shape:
        raise ContractError(f"the model's {name!r} has shape {tuple(value.shape)} per chain, the guide's "
                            f"{tuple(like.shape)}")
    return value
