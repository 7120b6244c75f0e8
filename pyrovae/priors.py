r"""Priors :math:`p(z)` over the latent code, swappable by name or object.

A prior is an ``nn.Module`` whose ``forward()`` returns an *unbatched* distribution over
:math:`z \in \mathbb{R}^d` (``event_shape == (d,)``); the model's ``pyro.plate`` broadcasts it
over the data (and over particles when they are vectorised). Learned priors keep their
parameters in the module, and the model registers them with ``pyro.module``.

==================  ======================================================================  ==============
name                :math:`p(z)`                                                            closed-form KL
==================  ======================================================================  ==============
``normal``          :math:`\mathcal{N}(0, I)`                                               yes
``learned-normal``  :math:`\mathcal{N}(\mu, \operatorname{diag}\sigma^2)`, learned          yes
``mog``             :math:`\sum_k \pi_k \mathcal{N}(\mu_k, \operatorname{diag}\sigma_k^2)`  no
``vamp``            :math:`\frac1K \sum_k q_\phi(z \mid u_k)` (VampPrior)                   no
``flow``            a normalizing flow of :math:`\mathcal{N}(0, I)`                         no
==================  ======================================================================  ==============

``closed_form_kl`` says whether Pyro's ``kl_divergence(Normal(..).to_event(1), prior())`` has a
formula; ``TraceMeanField_ELBO`` uses it where it exists and a Monte Carlo estimate otherwise.
"""

from __future__ import annotations

import math
from functools import partial
from typing import ClassVar

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
import torch.nn.functional as F
from pyro.distributions.transforms.spline import ConditionalSpline, ConditionedSpline
from pyro.nn import DenseNN
from torch import nn

from .config import check_options
from .nets import ConvEncoder, MLPEncoder


class Prior(nn.Module):
    """Base class. ``closed_form_kl`` says whether KL(q(z|x) || p(z)) has a formula in Pyro.

    Example:

    >>> import pyrovae
    >>> [(name, pyrovae.make_prior(name, latent_dim=2).closed_form_kl) for name in ("normal", "learned-normal", "mog")]
    [('normal', True), ('learned-normal', True), ('mog', False)]
    """

    name: ClassVar[str] = ""
    closed_form_kl: ClassVar[bool] = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self) -> dist.TorchDistribution:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}"


class StandardNormal(Prior):
    r""":math:`p(z) = \mathcal{N}(0, I_d)`."""

    name = "normal"
    closed_form_kl = True

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormal(Prior):
    r""":math:`p(z) = \mathcal{N}(\mu, \operatorname{diag} \sigma^2)` with learned :math:`\mu` and :math:`\log \sigma`.

    The KL from the guide has the closed form
    :math:`\frac12 \sum_j \big( s_j^2/\sigma_j^2 + (m_j - \mu_j)^2/\sigma_j^2 - 1 + \log(\sigma_j^2/s_j^2) \big)`
    for :math:`q = \mathcal{N}(m, \operatorname{diag} s^2)` (Pyro's ``Independent``/``Independent`` rule).
    Starts at :math:`\mathcal{N}(0, I)`.
    """

    name = "learned-normal"
    closed_form_kl = True

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1)


class MixtureOfGaussians(Prior):
    r"""A learned mixture of diagonal Gaussians (MoG prior).

    .. math:: p(z) = \sum_{k=1}^K \pi_k \, \mathcal{N}(z; \mu_k, \operatorname{diag} \sigma_k^2)

    :math:`\pi = \operatorname{softmax}(w)`; :math:`w`, :math:`\mu_k` and :math:`\log \sigma_k`
    are learned. Initially :math:`\pi` is uniform, :math:`\mu_k \sim \mathcal{N}(0, \text{init\_spread}^2 I)`
    and :math:`\sigma_k = 1`. Built as ``MixtureSameFamily``, whose ``log_prob`` is a
    ``logsumexp`` over components; it has no KL formula, so ``TraceMeanField_ELBO`` falls back
    to a Monte Carlo estimate.
    """

    name = "mog"

    def __init__(self, latent_dim: int, components: int = 10, init_spread: float = 1.0) -> None:
        super().__init__(latent_dim)
        if components < 1:
            raise ValueError(f"components must be >= 1, not {components}")
        if not init_spread > 0:
            raise ValueError(f"init_spread must be positive, not {init_spread}")
        self.components = components
        self.logits = nn.Parameter(torch.zeros(components))
        self.locs = nn.Parameter(torch.randn(components, latent_dim) * init_spread)
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))

    def forward(self) -> dist.TorchDistribution:
        return dist.MixtureSameFamily(
            dist.Categorical(logits=self.logits),
            dist.Normal(self.locs, self.log_scales.exp()).to_event(1),
        )

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, components={self.components}"


class VampPrior(Prior):
    r"""The VampPrior (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018).

    .. math:: p_\lambda(z) = \frac1K \sum_{k=1}^K q_\phi(z \mid u_k)

    a uniform mixture of the guide's posteriors at ``K`` learned *pseudo-inputs*
    :math:`u_k \in \mathbb{R}^D`, passed through the model's own encoder (attached by
    :meth:`attach_encoder`, which :class:`~pyrovae.models.VAE` calls). The encoder is held by
    reference, not as a submodule, so its parameters appear once, under the encoder.

    As in the paper, :math:`u_k = \mathrm{hardtanh}(w_k)` clipped to ``input_range``
    (default ``(0, 1)``, the range of binary and grey images; ``None``: unclipped), with
    :math:`w_k` learned and initialised uniformly in the middle half of the range.
    ``data_dim`` is :math:`D`; :meth:`attach_encoder` re-sizes the pseudo-inputs to the
    encoder's input size when it differs (the VAE attaches it before any state dict is loaded).
    """

    name = "vamp"

    def __init__(
        self,
        latent_dim: int,
        pseudo_inputs: int = 500,
        data_dim: int = 784,
        input_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        super().__init__(latent_dim)
        if pseudo_inputs < 1:
            raise ValueError(f"pseudo_inputs must be >= 1, not {pseudo_inputs}")
        if input_range is not None and not input_range[0] < input_range[1]:
            raise ValueError(f"input_range must be (low, high) with low < high, not {input_range}")
        self.num_pseudo = pseudo_inputs
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self._encoder: list[nn.Module] = []  # a plain list: not registered as a submodule
        self.register_buffer("mix_logits", torch.zeros(pseudo_inputs), persistent=False)
        self._make_pseudo_inputs(data_dim)

    def _make_pseudo_inputs(self, data_dim: int) -> None:
        self.data_dim = data_dim
        lo, hi = self.input_range or (0.0, 1.0)
        u = lo + (hi - lo) * (0.25 + 0.5 * torch.rand(self.num_pseudo, data_dim))
        self.pseudo_raw = nn.Parameter(u)

    def attach_encoder(self, encoder: nn.Module, data_dim: int | None = None) -> None:
        """Use ``encoder`` (``x -> (loc, scale)`` of :math:`q(z \\mid x)`) for the components.

        ``data_dim`` (else read from pyrovae's MLP and conv encoders) re-sizes the pseudo-inputs.
        """
        data_dim = data_dim if data_dim is not None else _encoder_input_dim(encoder)
        if data_dim is not None and data_dim != self.data_dim:
            self._make_pseudo_inputs(data_dim)
        self._encoder = [encoder]

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The ``(K, D)`` pseudo-inputs :math:`u_k` (clipped to ``input_range``)."""
        if self.input_range is None:
            return self.pseudo_raw
        return F.hardtanh(self.pseudo_raw, *self.input_range)

    def forward(self) -> dist.TorchDistribution:
        if not self._encoder:
            raise RuntimeError("the VampPrior needs the model's encoder: call attach_encoder(encoder) first")
        loc, scale = self._encoder[0](self.pseudo_inputs)
        return dist.MixtureSameFamily(
            dist.Categorical(logits=self.mix_logits), dist.Normal(loc, scale).to_event(1)
        )

    def extra_repr(self) -> str:
        return (
            f"latent_dim={self.latent_dim}, pseudo_inputs={self.num_pseudo}, data_dim={self.data_dim}, "
            f"input_range={self.input_range}"
        )


def _encoder_input_dim(encoder: nn.Module) -> int | None:
    if isinstance(encoder, MLPEncoder):
        return encoder.body[0][0].in_features
    if isinstance(encoder, ConvEncoder):
        return math.prod(encoder.image_shape)
    return None


class FlowPrior(Prior):
    r"""A normalizing-flow prior (Rezende & Mohamed, "Variational Inference with Normalizing Flows", 2015).

    :math:`z = f_K \circ \dots \circ f_1(\epsilon)` with :math:`\epsilon \sim \mathcal{N}(0, I)`, so that

    .. math::

        \log p(z) = \log \mathcal{N}(f^{-1}(z); 0, I)
                    + \log \Big| \det \frac{\partial f^{-1}(z)}{\partial z} \Big|

    Each :math:`f_k` is a spline coupling layer (Durkan et al., "Neural Spline Flows", NeurIPS
    2019), with Pyro's monotonic rational-linear splines (Dolatabadi et al., AISTATS 2020): the
    first :math:`\lfloor d/2 \rfloor` coordinates go through a learned element-wise spline, the
    others through a spline whose knots a small network computes from the first ones. The
    coordinates are reversed between layers. Both directions cost one network pass, so scoring
    :math:`z` under vectorised particles is cheap. Outside :math:`[-\text{bound}, \text{bound}]`
    the splines are the identity (written so that ``torch.jit.trace`` can compile the loss).
    For :math:`d = 1` each layer is an element-wise spline.

    Every layer starts as (nearly) the identity (uniform knots, unit slopes), so the prior starts
    as :math:`\mathcal{N}(0, I)` and learns to move away from it, as a learned prior should
    (Chen et al., "Variational Lossy Autoencoder", ICLR 2017).
    """

    name = "flow"

    def __init__(
        self,
        latent_dim: int,
        num_flows: int = 2,
        count_bins: int = 8,
        bound: float = 3.0,
        hidden_dims: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(latent_dim)
        if num_flows < 1 or count_bins < 1 or not bound > 0:
            raise ValueError(
                f"need num_flows >= 1, count_bins >= 1 and bound > 0; got {num_flows}, {count_bins}, {bound}"
            )
        if hidden_dims is not None and (not hidden_dims or min(hidden_dims) < 1):
            raise ValueError(f"hidden_dims must be positive widths, not {hidden_dims}")
        self.num_flows, self.count_bins = num_flows, count_bins
        hidden = list(hidden_dims) if hidden_dims is not None else [max(10 * latent_dim, 32)] * 2
        self.flows = nn.ModuleList(
            [_identity_spline_layer(latent_dim, hidden, count_bins, bound) for _ in range(num_flows)]
        )
        d = latent_dim
        self.register_buffer("loc", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.register_buffer("reverse", torch.arange(d - 1, -1, -1), persistent=False)

    def forward(self) -> dist.TorchDistribution:
        transforms: list[T.Transform] = []
        for i, flow in enumerate(self.flows):
            if i > 0 and self.latent_dim > 1:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow)
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, transforms)

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, num_flows={self.num_flows}, count_bins={self.count_bins}"


# softplus(x) + 1e-3 = 1, Pyro's knot slope for a raw value x: unit slopes at every knot
_UNIT_SLOPE = math.log(math.expm1(1 - 1e-3))


def _traceable_spline_op(self, x: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Pyro's spline, identity outside ``[-bound, bound]`` by ``torch.where`` on clamped inputs.

    Pyro writes the identity part with boolean-mask assignment, whose shape ``torch.jit.trace``
    freezes at the tracing batch; clamping first leaves nothing for that mask to select, so a
    traced loss (``Trainer(jit=True)``) stays valid for any batch. Same values and gradients.
    """
    inside = (x >= -self.bound) & (x <= self.bound)
    y, log_det = ConditionedSpline.spline_op(self, x.clamp(-self.bound, self.bound), **kwargs)
    return torch.where(inside, y, x), torch.where(inside, log_det, torch.zeros_like(log_det))


class _Spline(T.Spline):
    spline_op = _traceable_spline_op


class _ConditionedSpline(ConditionedSpline):
    spline_op = _traceable_spline_op


class _ConditionalSpline(ConditionalSpline):
    def condition(self, context: torch.Tensor) -> _ConditionedSpline:
        return _ConditionedSpline(partial(self._params, context), bound=self.bound, order=self.order)


def _identity_spline_layer(d: int, hidden: list[int], bins: int, bound: float) -> T.TransformModule:
    """A spline coupling layer (element-wise spline for ``d = 1``) that starts as the identity."""
    if d == 1:
        layer = spline = _Spline(1, count_bins=bins, bound=bound)
    else:
        split, rest = d // 2, d - d // 2
        # widths, heights, knot slopes, lambdas of the rational-linear spline on the rest
        hypernet = DenseNN(split, hidden, param_dims=[rest * bins, rest * bins, rest * (bins - 1), rest * bins])
        layer = T.SplineCoupling(d, split, hypernet, bins, bound)
        layer.lower_spline = spline = _Spline(split, bins, bound)
        layer.upper_spline = _ConditionalSpline(hypernet, rest, bins, bound)
        last = hypernet.layers[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            last.bias[2 * rest * bins : 2 * rest * bins + rest * (bins - 1)] = _UNIT_SLOPE
    with torch.no_grad():
        for p in spline.parameters():
            p.zero_()
        spline.unnormalized_derivatives.fill_(_UNIT_SLOPE)
    return layer


PRIORS: dict[str, type[Prior]] = {
    cls.name: cls for cls in (StandardNormal, LearnedNormal, MixtureOfGaussians, VampPrior, FlowPrior)
}


def make_prior(spec: str | Prior, latent_dim: int, **options) -> Prior:
    """A prior from its name (``"normal"``, ...) and options, or the object itself.

    Example:

    >>> import math, torch, pyrovae
    >>> prior = pyrovae.make_prior("mog", latent_dim=2, components=3)
    >>> prior.closed_form_kl, prior().event_shape
    (False, torch.Size([2]))
    >>> normal = pyrovae.make_prior("normal", latent_dim=2)
    >>> math.isclose(normal().log_prob(torch.zeros(2)).item(), -math.log(2 * math.pi), rel_tol=1e-6)
    True
    """
    if isinstance(spec, Prior):
        if spec.latent_dim != latent_dim:
            raise ValueError(f"prior has latent_dim={spec.latent_dim}, model has {latent_dim}")
        return spec
    if spec not in PRIORS:
        raise ValueError(f"unknown prior {spec!r}; choose one of {sorted(PRIORS)}")
    cls = PRIORS[spec]
    return cls(latent_dim, **check_options(cls, options, f"the {spec} prior", skip=("latent_dim",)))

