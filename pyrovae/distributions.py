r"""Distributions the likelihoods need and ``torch.distributions`` lacks or computes slowly.

All have ``event_shape == (D,)``: the ``D`` values of one observation form one event, and any
batch shape (particles, datapoints) in front.

* :class:`IndependentBernoulli` -- ``Bernoulli(logits).to_event(1)`` with a fast log-probability;
* :class:`IndependentCategorical` -- ``D`` categoricals over ``L`` levels, logits ``(..., L, D)``;
* :class:`RowMultinomial` -- a multinomial whose total count is each row's own sum.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints


class IndependentBernoulli(dist.TorchDistribution):
    r"""``Bernoulli(logits).to_event(1)`` with a fast log-probability (:func:`bernoulli_log_prob`)."""

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IndependentBernoulli, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(IndependentBernoulli, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        p = torch.sigmoid(self.logits)
        return p * (1 - p)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(torch.sigmoid(self.logits).expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return bernoulli_log_prob(self.logits, value)


def bernoulli_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_d \log \mathrm{Bernoulli}(x_d \mid \sigma(l_d))` over the last dim, fast on CPUs.

    .. math::

        \sum_d x_d l_d - \operatorname{softplus}(l_d)
        = \tfrac12 \sum_d \big((2 x_d - 1)\, l_d - |l_d|\big) + \log \prod_d \sigma(|l_d|)

    The product runs over groups of at most 64 values: each factor lies in :math:`[1/2, 1)`,
    so a group's product stays a normal float32 and one ``log`` per group replaces one per
    value. ``binary_cross_entropy_with_logits`` costs ~12 ns per value on our CPU (its
    softplus is not vectorised), this ~1 ns, and with many importance samples this term is
    half of the work (docs/benchmarks.md). Without autograd, one buffer is reused in place.

    With autograd (training), the gradient :math:`x_d - \sigma(l_d)` is written by hand
    (:class:`_BernoulliLogProb`): one pass instead of autograd's dozen through the product
    above, 3.9 -> 1.7 ms per step of forward and backward at batch 128 on our CPU, where the
    product's backward made the traced training step slower than a hand-written one. It is
    first-order only (no ``create_graph`` double backward); data that need a gradient, or that
    broadcast the logits, take the plain autograd path.
    """
    if torch.is_grad_enabled() and logits.requires_grad and not value.requires_grad \
            and value.dtype == logits.dtype and torch.broadcast_shapes(logits.shape, value.shape) == logits.shape:
        return _BernoulliLogProb.apply(logits, value)
    d = logits.shape[-1]
    group = max(g for g in range(1, min(d, 64) + 1) if d % g == 0)
    if torch.is_grad_enabled() and (logits.requires_grad or value.requires_grad):
        log_sigmoid_abs = logits.abs().sigmoid().unflatten(-1, (d // group, group)).prod(-1).log().sum(-1)
        return (logits * value).sum(-1) - logits.clamp_min(0).sum(-1) + log_sigmoid_abs
    buf = logits.abs()
    abs_sum = buf.sum(-1)
    log_sigmoid_abs = buf.sigmoid_().unflatten(-1, (d // group, group)).prod(-1).log_().sum(-1)
    # x l - (l + |l|) / 2 = ((2x - 1) l - |l|) / 2 for any x: one product with the data, no sum of l
    sign = value.to(logits.dtype) * 2 - 1
    if sign.shape[:-1].numel() == 1:  # one row for every particle (K >= chunk): a matrix-vector product
        signed = (logits.reshape(-1, d) @ sign.reshape(d)).reshape(logits.shape[:-1])
    elif torch.broadcast_shapes(logits.shape, sign.shape) == logits.shape:
        signed = torch.mul(logits, sign, out=buf).sum(-1)
    else:
        signed = (logits * sign).sum(-1)
    return (signed - abs_sum) / 2 + log_sigmoid_abs


class _BernoulliLogProb(torch.autograd.Function):
    """:func:`bernoulli_log_prob` computed without autograd, with its gradient in logits by hand."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, value)
        with torch.no_grad():
            return bernoulli_log_prob(logits, value)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, value = ctx.saved_tensors
        # d/dl [x l - softplus(l)] = x - sigmoid(l), times the incoming gradient, in one buffer
        return torch.sigmoid(logits).neg_().add_(value).mul_(grad.unsqueeze(-1)), None


class IndependentCategorical(dist.TorchDistribution):
    r"""``Categorical(logits[..., :, d]).to_event(1)`` over ``L`` levels for each of ``D`` values.

    ``logits`` has shape ``(..., L, D)`` (parameter-major, as the decoder returns it), and

    .. math:: \log p(x) = \sum_d \Big( l_{x_d, d} - \log \sum_{k=0}^{L-1} e^{l_{k d}} \Big).

    The log-normaliser is taken over ``logits`` before broadcasting against the data, and
    the data index the logits by ``gather``: no ``(..., D, L)`` copy of the data is made.
    """

    arg_constraints = {"logits": constraints.real}

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits
        self.levels = logits.shape[-2]
        super().__init__(logits.shape[:-2], logits.shape[-1:], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.levels - 1), 1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(IndependentCategorical, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.logits.shape[-2:])
        new.levels = self.levels
        super(IndependentCategorical, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        """``(..., L, D)`` level probabilities."""
        return torch.softmax(self.logits, -2)

    @property
    def mean(self) -> torch.Tensor:
        """Expected level :math:`\\sum_k k\\, p_{kd}`, in level units ``0 .. L-1``."""
        k = torch.arange(self.levels, dtype=self.logits.dtype, device=self.logits.device)
        return (self.probs * k[:, None]).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        k = torch.arange(self.levels, dtype=self.logits.dtype, device=self.logits.device)[:, None]
        p = self.probs
        m = (p * k).sum(-2)
        return (p * k**2).sum(-2) - m**2

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            cat = torch.distributions.Categorical(logits=self.logits.transpose(-1, -2))
            return cat.sample(sample_shape).expand(shape).to(self.logits.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        log_norm = self.logits.logsumexp(-2)  # (..., D), before broadcasting against the data
        batch = torch.broadcast_shapes(self.batch_shape, value.shape[:-1])
        logits = self.logits.expand(batch + self.logits.shape[-2:])
        index = value.long().unsqueeze(-2).expand(batch + (1, value.shape[-1]))
        picked = logits.gather(-2, index).squeeze(-2)
        return (picked - log_norm).sum(-1)


class RowMultinomial(dist.TorchDistribution):
    r"""A multinomial over ``D`` categories whose total count is each row's own sum.

    .. math::

        \log p(x) = \log \Gamma(n + 1) - \sum_d \log \Gamma(x_d + 1)
                    + \sum_d x_d \log \operatorname{softmax}(l)_d, \qquad n = \sum_d x_d

    Pyro's ``Multinomial`` needs one ``total_count`` for all rows; here ``log_prob`` reads
    :math:`n` from the value, so rows (documents, images) may have different totals.
    Sampling and ``mean`` need ``total_count`` (a number or a tensor of the batch shape).
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(
        self,
        logits: torch.Tensor,
        total_count: int | torch.Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.logits = logits
        self.total_count = total_count
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(RowMultinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        n = self.total_count
        new.total_count = n.expand(batch_shape) if torch.is_tensor(n) and n.dim() else n
        super(RowMultinomial, new).__init__(batch_shape, self.event_shape, False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)

    def _total(self) -> torch.Tensor:
        if self.total_count is None:
            raise NotImplementedError("RowMultinomial needs total_count to sample or give a mean")
        n = torch.as_tensor(self.total_count, dtype=self.logits.dtype, device=self.logits.device)
        return n.expand(self.batch_shape)

    @property
    def mean(self) -> torch.Tensor:
        return self._total()[..., None] * self.probs

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        n = self._total().expand(shape[:-1]).reshape(-1)
        probs = self.probs.expand(shape).reshape(-1, shape[-1])
        with torch.no_grad():
            rows = [
                torch.distributions.Multinomial(int(k), probs=p).sample() if k > 0 else torch.zeros_like(p)
                for k, p in zip(n.tolist(), probs)
            ]
        return torch.stack(rows).reshape(shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        n = value.sum(-1)
        norm = torch.lgamma(n + 1) - torch.lgamma(value + 1).sum(-1)
        return norm + (value * self.logits.log_softmax(-1)).sum(-1)
