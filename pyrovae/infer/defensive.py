r"""Defensive importance sampling: a proposal whose tails are heavier than the guide's.

Importance sampling from :math:`q(z \mid x)` has weights of infinite variance when the posterior's
tails are heavier than :math:`q`'s, which is what a Pareto :math:`\hat k > 0.7` says. Hesterberg
(1995) mixes the proposal with a heavier one so that the weights stay bounded:

.. math::

    q_{\mathrm{def}}(z \mid x) = (1 - a - b)\, q(z \mid x) + a\, t(z \mid x) + b\, p(z),

with :math:`t` the guide with every Normal site replaced by a Student-t of ``df`` degrees of
freedom, the same location and its scale times ``widen`` (a widened, heavy-tailed guide), and
:math:`p(z)` the model's prior. The estimator
:math:`\frac1K \sum_k p(x, z_k) / q_{\mathrm{def}}(z_k \mid x)` with
:math:`z_k \sim q_{\mathrm{def}}` is unbiased for :math:`p(x)` like any importance sampler, and its
weights are bounded by :math:`p(x, z) / (a\, t(z \mid x))`, finite wherever the posterior's tails
are lighter than a Student-t's (Gaussian priors), and by :math:`p(x \mid z) / b` in any case. The
price: a share :math:`a + b` of the samples comes from wider proposals, so at the same :math:`K`
a good guide's estimate is a little noisier.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .importance import (
    PARTICLE_PLATE,
    WeightTerms,
    _per_datapoint,
    _site_frames,
    latent_sites,
    log_joint_and_guide,
    log_prior,
    replay_template,
    site_infer,
)


@dataclass(frozen=True)
class Defensive:
    """Settings of defensive importance sampling (``log_marginal_likelihood(method=Defensive(...))``).

    :param heavy_weight: :math:`a`, the share of the heavy-tailed, widened guide.
    :param prior_weight: :math:`b`, the share of the prior.
    :param df: degrees of freedom of the Student-t that replaces each Normal guide site.
    :param widen: factor on the guide's scales in the heavy-tailed component.

    Example:

    >>> import pyro, pyro.distributions as dist, torch, pyrovae
    >>> from pyrovae.infer import Defensive
    >>> def model(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # half as wide as the posterior: IS weights of infinite variance
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5 * 0.5**0.5))
    >>> x = torch.tensor([-1.0, 0.0, 2.0])
    >>> pyro.set_rng_seed(0)
    >>> res = pyrovae.log_marginal_likelihood(model, guide, x, method=Defensive(), num_samples=2000)
    >>> exact = dist.Normal(0.0, 2**0.5).log_prob(x)
    >>> bool((res.khat < 0.7).all()), bool(((res.log_px - exact).abs() < 3 * res.stderr).all())
    (True, True)
    """

    heavy_weight: float = 0.2
    prior_weight: float = 0.05
    df: float = 3.0
    widen: float = 1.5

    def __post_init__(self) -> None:
        a, b = self.heavy_weight, self.prior_weight
        if not (0 <= a < 1 and 0 <= b < 1 and a + b < 1):
            raise ValueError(f"defensive weights need 0 <= heavy_weight, prior_weight and their sum < 1; got {a}, {b}")
        if not self.df > 0 or not self.widen > 0:
            raise ValueError(f"defensive df and widen must be > 0, not {self.df!r}, {self.widen!r}")


def heavier(fn, df: float, widen: float):
    """``fn`` with Normal (and multivariate Normal) parts replaced by Student-t's of ``df`` degrees
    of freedom, scales times ``widen``; ``None`` where ``fn`` has no Normal part."""
    if isinstance(fn, dist.Independent):
        inner = heavier(fn.base_dist, df, widen)
        return None if inner is None else inner.to_event(fn.reinterpreted_batch_ndims)
    if isinstance(fn, torch.distributions.Normal):
        return dist.StudentT(torch.full_like(fn.loc, df), fn.loc, widen * fn.scale)
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return dist.MultivariateStudentT(torch.full_like(fn.loc[..., 0], df), fn.loc, widen * fn.scale_tril)
    return None


class HeavyTails(Messenger):
    """Replace the Normal latent sites of a guide by :func:`heavier` versions."""

    def __init__(self, df: float, widen: float):
        super().__init__()
        self.df, self.widen = df, widen

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        fn = heavier(msg["fn"], self.df, self.widen)
        if fn is not None:
            msg["fn"] = fn


def _guide_log_prob(trace, plate_name: str, particle_dim: int) -> torch.Tensor:
    trace.compute_log_prob()
    out = 0.0
    for name, site in latent_sites(trace):
        out = out + _per_datapoint(site["log_prob"], particle_dim, _site_frames(site)[plate_name].dim, name)
    return out


def _pick(values: list[torch.Tensor], component: torch.Tensor, data_dim: int, width: int) -> torch.Tensor:
    """Per (particle, datapoint), the value of the component drawn there."""
    like = values[0]
    shape = [1] * like.dim()
    shape[0], shape[width + data_dim] = component.shape
    c = component.reshape(shape)
    out = values[0]
    for j in range(1, len(values)):
        out = torch.where(c == j, values[j].to(out.dtype), out)
    return out


def defensive_log_weights(
    model, guide, x: torch.Tensor, *args, num_particles: int, options: Defensive, plate_name: str = "data",
    max_plate_nesting: int, **kwargs,
) -> torch.Tensor:
    r"""``(num_particles, N)``: :math:`\log p(x_i, z_{ik}) - \log q_{\mathrm{def}}(z_{ik} \mid x_i)`
    with :math:`z_{ik} \sim q_{\mathrm{def}}` (module docstring)."""
    particle_dim = -max_plate_nesting - 1
    width = max_plate_nesting + 1
    shares = torch.tensor([1 - options.heavy_weight - options.prior_weight, options.heavy_weight,
                           options.prior_weight], dtype=torch.float64)
    used = [j for j in range(3) if shares[j] > 0]
    heavy = HeavyTails(options.df, options.widen)
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
        draws = [poutine.trace(guide).get_trace(x, *args, **kwargs)]
        draws.append(poutine.trace(heavy(guide)).get_trace(x, *args, **kwargs) if 1 in used else None)
        draws.append(poutine.trace(model).get_trace(x, *args, **kwargs) if 2 in used else None)
    component = torch.multinomial(shares, num_particles * x.shape[0], replacement=True)
    component = component.reshape(num_particles, x.shape[0]).to(x.device)
    names = [name for name, _ in latent_sites(draws[0])]
    infer = {name: site_infer(site) for name, site in latent_sites(draws[0])}
    values = {}
    for name in names:
        data_dim = _site_frames(draws[0].nodes[name])[plate_name].dim
        values[name] = _pick([d.nodes[name]["value"] if d is not None else draws[0].nodes[name]["value"]
                              for d in draws], component, data_dim, width)
    template = replay_template(values, infer)
    terms: WeightTerms = log_joint_and_guide(model, poutine.replay(guide, trace=template), x, *args,
                                             num_particles=num_particles, plate_name=plate_name,
                                             max_plate_nesting=max_plate_nesting, **kwargs)
    parts = [shares[0].log().item() + terms.log_guide]
    if 1 in used:
        with pyro.plate(PARTICLE_PLATE, num_particles, dim=particle_dim):
            heavy_trace = poutine.trace(poutine.replay(heavy(guide), trace=template)).get_trace(x, *args, **kwargs)
        parts.append(shares[1].log().item() + _guide_log_prob(heavy_trace, plate_name, particle_dim))
    if 2 in used:
        parts.append(shares[2].log().item() + log_prior(terms, plate_name))
    return terms.log_joint - torch.logsumexp(torch.stack(parts), 0)
