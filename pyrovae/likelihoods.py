r"""Observation models :math:`p_\theta(x \mid z)`, swappable by name or object.

A likelihood turns the decoder's output for one image into a Pyro distribution whose
``event_shape`` is ``(D,)``: the ``D`` observed values of an image form one event, so
``log_prob`` returns one number per image (and per particle). The decoder returns
``params_per_dim * D`` values per image, parameter-major (see :mod:`pyrovae.nets`).

Each likelihood names the data space it scores (:mod:`pyrovae.data`) and checks that data
lie in its support *before* training, with an error that says how to fix them.

=========================  ==============  =========================================================
name                       data space      :math:`p(x_d \mid z)`, decoder output :math:`o`
=========================  ==============  =========================================================
``bernoulli``              binary-dynamic  :math:`\mathrm{Bernoulli}(\sigma(o_d))`
``continuous-bernoulli``   dequantized     :math:`\mathcal{CB}(\sigma(o_d))` on :math:`[0, 1]`
``gaussian``               dequantized     :math:`\mathcal{N}(o_d, \sigma_D^2)`, fixed :math:`\sigma_D`
``gaussian-learned``       dequantized     :math:`\mathcal{N}(o_d, \sigma^2)`, learned :math:`\sigma`
``laplace``                dequantized     :math:`\mathrm{Laplace}(o_d, b)`, learned :math:`b`
``beta``                   dequantized     :math:`\mathrm{Beta}(\alpha_d, \beta_d)` on :math:`(0, 1)`
``categorical``            levels          :math:`\mathrm{Cat}(\mathrm{softmax}(o_{0d}, \dots, o_{L-1,d}))`
``poisson``                counts          :math:`\mathrm{Poisson}(\mathrm{softplus}(o_d))`
``multinomial``            counts          :math:`\mathrm{Mult}(n, \mathrm{softmax}(o))`, :math:`n = \sum_d x_d`
=========================  ==============  =========================================================

``mean(out)`` is :math:`E[x \mid z]` in the *data's own units* (grey levels for
``categorical``, counts for ``poisson`` and ``multinomial``); ``to_picture`` maps values in
those units to :math:`[0, 1]` for display, and ``picture(out)`` is ``to_picture(mean(out))``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .config import check_options
from .data import DataError
from .distributions import IndependentBernoulli, IndependentCategorical, RowMultinomial


class Likelihood(nn.Module):
    r"""Base class: ``forward(out)`` gives :math:`p(x \mid z)` from the decoder output ``out``.

    Example:

    >>> import math, torch, pyrovae
    >>> lik = pyrovae.make_likelihood("categorical", levels=4)
    >>> lik.params_per_dim, lik.data_space
    (4, 'levels')
    >>> p = lik(torch.zeros(1, 4 * 3))
    >>> math.isclose(p.log_prob(torch.tensor([[0.0, 1.0, 3.0]])).item(), 3 * math.log(0.25), rel_tol=1e-6)
    True
    """

    name: ClassVar[str] = ""
    #: data space (see :mod:`pyrovae.data`) images are put in for this likelihood
    data_space: ClassVar[str] = "grey"
    #: every data space whose values this likelihood scores meaningfully (``data_space`` first)
    data_spaces: ClassVar[tuple[str, ...]] = ("grey",)
    #: True for a probability mass (scores are log-probabilities), False for a density
    discrete: ClassVar[bool] = False
    params_per_dim: int = 1

    def decoder_outputs(self, data_dim: int) -> int:
        """How many values the decoder must produce per image."""
        return self.params_per_dim * data_dim

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        r""":math:`E[x \mid z]` in the data's units, used for reconstructions and sample pictures."""
        return self(out).mean

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        """Values in the data's units (data or :meth:`mean`) mapped to ``[0, 1]`` for display."""
        return values.clamp(0, 1)

    def picture(self, out: torch.Tensor) -> torch.Tensor:
        """:meth:`mean` as an image in ``[0, 1]``."""
        return self.to_picture(self.mean(out))

    def check_support(self, x: torch.Tensor) -> None:
        """Raise :class:`~pyrovae.data.DataError` when ``x`` is outside the support."""

    def extra_repr(self) -> str:
        return f"data_space={self.data_space!r}"


def _require(ok: torch.Tensor | bool, problem: str, fix: str) -> None:
    if not bool(ok):
        raise DataError(f"{problem}; {fix}")


def _require_counts(x: torch.Tensor, who: str) -> None:
    fix = (
        "pass non-negative integer counts as a float or integer tensor (e.g. word counts, or "
        "8-bit images as images // 32); clamp negative values with x.clamp_min(0) and round "
        "non-integers with x.round()"
    )
    _require((x >= 0).all(), f"the {who} likelihood needs non-negative counts, but the data have negative values", fix)
    _require((x == x.round()).all(), f"the {who} likelihood needs integer counts, but the data have non-integers", fix)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


# ------------------------------------------------------------------------------------------
# Likelihoods


class Bernoulli(Likelihood):
    r""":math:`x_d \sim \mathrm{Bernoulli}(\sigma(l_d))`, with logits :math:`l` from the decoder."""

    name = "bernoulli"
    data_space = "binary-dynamic"
    data_spaces = ("binary-dynamic", "binary-threshold")
    discrete = True

    def forward(self, out: torch.Tensor) -> IndependentBernoulli:
        return IndependentBernoulli(out)

    def check_support(self, x: torch.Tensor) -> None:
        _require(
            all(((rows == 0) | (rows == 1)).all() for rows in x.split(4096)),  # in cache-sized pieces: 40% faster
            "the Bernoulli likelihood needs binary data (0/1), but the data have other values",
            "binarise them: --data-space binary-dynamic (a fresh draw each epoch) or "
            "binary-threshold, or ImageData.with_space('binary-dynamic')",
        )


class ContinuousBernoulli(Likelihood):
    r""":math:`x_d \sim \mathcal{CB}(\lambda_d)`, :math:`\lambda_d = \sigma(l_d)`, a density on :math:`[0, 1]`.

    :math:`p(x \mid \lambda) = C(\lambda)\, \lambda^x (1 - \lambda)^{1 - x}` with the normaliser
    :math:`C(\lambda) = 2 \tanh^{-1}(1 - 2\lambda) / (1 - 2\lambda)` that the plain Bernoulli
    "likelihood" of grey values leaves out (Loaiza-Ganem & Cunningham, NeurIPS 2019). Any data
    in :math:`[0, 1]` will do; its data space is ``dequantized`` so that its score converts to a
    log-mass of the 8-bit images like the other densities' (``grey`` works too).
    """

    name = "continuous-bernoulli"
    data_space = "dequantized"
    data_spaces = ("dequantized", "grey")

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.ContinuousBernoulli(logits=out).to_event(1)

    def check_support(self, x: torch.Tensor) -> None:
        _require(
            ((x >= 0) & (x <= 1)).all(),
            "the continuous Bernoulli likelihood needs values in [0, 1], but the data have values outside",
            "scale them to [0, 1]: --data-space grey or dequantized, or clamp with x.clamp(0, 1)",
        )


class Gaussian(Likelihood):
    r""":math:`x_d \sim \mathcal{N}(\mu_d, \sigma_D^2)` with :math:`\mu` from the decoder.

    :math:`\sigma_D` (``sigma``) is a fixed hyperparameter, as in Doersch (2016):
    :math:`\log p(x \mid z) = -\frac{1}{2\sigma_D^2} \lVert x - \mu \rVert^2 - D \log(\sqrt{2\pi}\, \sigma_D)`.
    A density on :math:`\mathbb{R}^D`, meant for dequantised images (``log_prob`` in nats is then
    comparable across models of the same dequantised data).
    """

    name = "gaussian"
    data_space = "dequantized"
    data_spaces = ("dequantized", "grey")

    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, not {sigma}")
        self.sigma = float(sigma)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(out, self.sigma).to_event(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, data_space={self.data_space!r}"


class _LearnedScale(Likelihood):
    r"""A location family whose scale :math:`s` is learned, kept above ``min_scale``.

    ``scale`` says how many scales there are:

    * ``"global"`` -- one scalar parameter shared by all pixels and images;
    * ``"pixel"`` -- a parameter vector with one scale per pixel (created by
      :meth:`decoder_outputs`, which the VAE calls before any state dict is loaded);
    * ``"datapoint"`` -- one scale per image, produced by the decoder as an extra output
      (``decoder_outputs(D) = D + 1``; the last value is the scale's raw value).

    :math:`s = \mathrm{softplus}(r) + s_{\min}`, with :math:`r` the raw parameter (or decoder
    output plus a constant) set so that the initial scale is ``init_scale``.
    """

    SCALES: ClassVar[tuple[str, ...]] = ("global", "pixel", "datapoint")
    data_space = "dequantized"
    data_spaces = ("dequantized", "grey")

    def __init__(
        self,
        scale: str = "global",
        init_scale: float = 0.1,
        min_scale: float = 1e-3,
        data_dim: int | None = None,
    ) -> None:
        super().__init__()
        if scale not in self.SCALES:
            raise ValueError(f"scale must be one of {self.SCALES}, not {scale!r}")
        if not 0 < min_scale < init_scale:
            raise ValueError(f"need 0 < min_scale < init_scale; got {min_scale}, {init_scale}")
        self.scale_kind, self.init_scale, self.min_scale = scale, float(init_scale), float(min_scale)
        self.raw_init = _inverse_softplus(self.init_scale - self.min_scale)
        self.data_dim = data_dim
        if scale == "global":
            self.scale_raw = nn.Parameter(torch.tensor(self.raw_init))
        else:
            self.register_parameter("scale_raw", None)
        if scale == "pixel" and data_dim is not None:
            self._make_pixel_scales(data_dim)

    def _make_pixel_scales(self, data_dim: int) -> None:
        self.data_dim = data_dim
        self.scale_raw = nn.Parameter(torch.full((data_dim,), self.raw_init))

    def decoder_outputs(self, data_dim: int) -> int:
        if self.scale_kind == "pixel" and (self.scale_raw is None or self.scale_raw.numel() != data_dim):
            self._make_pixel_scales(data_dim)
        self.data_dim = data_dim
        return data_dim + 1 if self.scale_kind == "datapoint" else data_dim

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a per-pixel scale saved from a model whose size this object has not seen yet
        key = prefix + "scale_raw"
        if self.scale_kind == "pixel" and key in state_dict and self.scale_raw is None:
            self._make_pixel_scales(state_dict[key].numel())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def loc_scale(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Location ``(..., D)`` and scale (broadcastable to it) from the decoder output."""
        if self.scale_kind == "datapoint":
            if self.data_dim is not None and out.shape[-1] != self.data_dim + 1:
                raise ValueError(
                    f"scale='datapoint' needs {self.data_dim + 1} decoder outputs per image (D + 1), got "
                    f"{out.shape[-1]}; a decoder without the extra output (e.g. arch='conv') needs scale='pixel'"
                )
            loc, raw = out[..., :-1], out[..., -1:] + self.raw_init
        else:
            if self.scale_raw is None:
                raise RuntimeError("per-pixel scales are created by decoder_outputs(data_dim); call it first")
            loc, raw = out, self.scale_raw
        return loc, F.softplus(raw) + self.min_scale

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.loc_scale(out)[0]

    def extra_repr(self) -> str:
        return (
            f"scale={self.scale_kind!r}, init_scale={self.init_scale}, min_scale={self.min_scale}, "
            f"data_space={self.data_space!r}"
        )


class GaussianLearned(_LearnedScale):
    r""":math:`x_d \sim \mathcal{N}(\mu_d, \sigma^2)` with a learned :math:`\sigma` (see ``scale``).

    The learned-variance alternative to Doersch's fixed :math:`\sigma_D`:
    ``scale="global"`` learns one :math:`\sigma`, ``"pixel"`` one :math:`\sigma_d` per pixel,
    ``"datapoint"`` one :math:`\sigma(z)` per image from the decoder.
    :math:`\sigma \ge` ``min_scale`` keeps the density bounded.
    """

    name = "gaussian-learned"

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.loc_scale(out)
        return dist.Normal(loc, scale).to_event(1)


class Laplace(_LearnedScale):
    r""":math:`x_d \sim \mathrm{Laplace}(\mu_d, b)`, :math:`p = \frac{1}{2b} e^{-|x_d - \mu_d| / b}`.

    The location comes from the decoder; the scale :math:`b` is learned, by default one
    global scalar (``scale="global"``; ``"pixel"`` and ``"datapoint"`` as for
    ``gaussian-learned``). An :math:`L_1` reconstruction loss, less swayed by outlier pixels.
    """

    name = "laplace"

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        loc, scale = self.loc_scale(out)
        return dist.Laplace(loc, scale).to_event(1)


class Beta(Likelihood):
    r""":math:`x_d \sim \mathrm{Beta}(\alpha_d, \beta_d)` on the open interval :math:`(0, 1)`.

    The decoder gives two values per pixel (``params_per_dim = 2``);
    :math:`\alpha_d = \mathrm{softplus}(o_{1d}) + \epsilon`, :math:`\beta_d = \mathrm{softplus}(o_{2d}) + \epsilon`
    with :math:`\epsilon` = ``min_concentration``. Values at exactly 0 or 1 have density 0 or
    :math:`\infty`, so the data must be dequantised (or clamped) into the open interval.
    """

    name = "beta"
    data_space = "dequantized"
    data_spaces = ("dequantized",)
    params_per_dim = 2

    def __init__(self, min_concentration: float = 1e-2) -> None:
        super().__init__()
        if not min_concentration > 0:
            raise ValueError(f"min_concentration must be positive, not {min_concentration}")
        self.min_concentration = float(min_concentration)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        conc = F.softplus(out.unflatten(-1, (2, -1))) + self.min_concentration
        return dist.Beta(conc[..., 0, :], conc[..., 1, :]).to_event(1)

    def check_support(self, x: torch.Tensor) -> None:
        _require(
            ((x > 0) & (x < 1)).all(),
            "the Beta likelihood needs values strictly inside (0, 1), but the data have values at "
            "0 or 1 (or outside)",
            "dequantise them: --data-space dequantized, or clamp them with x.clamp(1e-4, 1 - 1e-4)",
        )

    def extra_repr(self) -> str:
        return f"min_concentration={self.min_concentration}, data_space={self.data_space!r}"


class Categorical(Likelihood):
    r""":math:`x_d \sim \mathrm{Cat}(\mathrm{softmax}(o_{0d}, \dots, o_{L-1,d}))` over ``levels`` grey levels.

    The decoder gives ``L`` logits per pixel (``params_per_dim = L``, parameter-major: the
    ``k``-th block of ``D`` values holds level ``k``), the categorical observation model of
    Aziz (2017). The data are levels :math:`x_d \in \{0, \dots, L-1\}` (``--data-space levels``
    with the same ``--levels``). ``mean`` is the expected level in level units;
    ``to_picture`` divides by :math:`L - 1`.
    """

    name = "categorical"
    data_space = "levels"
    data_spaces = ("levels",)
    discrete = True

    def __init__(self, levels: int = 256) -> None:
        super().__init__()
        if int(levels) != levels or levels < 2:
            raise ValueError(f"levels must be an integer >= 2, not {levels}")
        self.levels = int(levels)
        self.params_per_dim = self.levels

    def forward(self, out: torch.Tensor) -> IndependentCategorical:
        return IndependentCategorical(out.unflatten(-1, (self.levels, -1)))

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return (values / (self.levels - 1)).clamp(0, 1)

    def check_support(self, x: torch.Tensor) -> None:
        L = self.levels
        fix = (
            f"quantise the images to {L} levels: --data-space levels --levels {L}, "
            f"or ImageData.with_space('levels', {L})"
        )
        _require(
            (x == x.round()).all(),
            f"the categorical likelihood needs integer levels 0..{L - 1}, but the data have non-integers",
            fix,
        )
        _require((x >= 0).all(), "the categorical likelihood needs levels >= 0, but the data have negative values", fix)
        _require(
            (x <= L - 1).all(),
            f"the categorical likelihood has {L} levels, but the data have values up to {x.max().item():g}",
            fix + f" (or set the likelihood option levels to {int(x.max().item()) + 1})",
        )

    def extra_repr(self) -> str:
        return f"levels={self.levels}, data_space={self.data_space!r}"


class _Counts(Likelihood):
    """Shared by the count likelihoods: their data space, support and pictures."""

    data_space = "counts"
    data_spaces = ("counts",)
    discrete = True
    label: ClassVar[str] = ""  # the likelihood's name in error messages

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return values / values.amax(-1, keepdim=True).clamp_min(1e-12)  # each image's max -> 1

    def check_support(self, x: torch.Tensor) -> None:
        _require_counts(x, self.label)


class Poisson(_Counts):
    r""":math:`x_d \sim \mathrm{Poisson}(\lambda_d)`, :math:`\lambda_d = \mathrm{softplus}(o_d) + \epsilon`.

    :math:`\log p(x \mid z) = \sum_d x_d \log \lambda_d - \lambda_d - \log \Gamma(x_d + 1)`,
    for count data (``data_space = "counts"``: non-negative integers, e.g. word counts).
    The softplus link grows linearly, so large outputs do not overflow the rate.
    """

    name = "poisson"
    label = "Poisson"

    def __init__(self, min_rate: float = 1e-6) -> None:
        super().__init__()
        if not min_rate > 0:
            raise ValueError(f"min_rate must be positive, not {min_rate}")
        self.min_rate = float(min_rate)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Poisson(F.softplus(out) + self.min_rate).to_event(1)


class Multinomial(_Counts):
    r""":math:`x \sim \mathrm{Mult}(n, \mathrm{softmax}(o))` with :math:`n = \sum_d x_d` per row.

    A bag-of-words model: the decoder gives one logit per word (``D`` outputs) and the
    total count of each row is observed (see :class:`RowMultinomial`). ``mean`` is
    ``total_count * softmax(o)`` when the option ``total_count`` is set, else the expected
    proportions ``softmax(o)`` (the mean for :math:`n = 1`).
    """

    name = "multinomial"
    label = "multinomial"

    def __init__(self, total_count: int | None = None) -> None:
        super().__init__()
        if total_count is not None and (int(total_count) != total_count or total_count < 1):
            raise ValueError(f"total_count must be a positive integer or None, not {total_count}")
        self.total_count = total_count

    def forward(self, out: torch.Tensor) -> RowMultinomial:
        return RowMultinomial(out, self.total_count)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(out, -1)
        return probs if self.total_count is None else self.total_count * probs

    def extra_repr(self) -> str:
        return f"total_count={self.total_count}, data_space={self.data_space!r}"


LIKELIHOODS: dict[str, type[Likelihood]] = {
    cls.name: cls
    for cls in (
        Bernoulli,
        ContinuousBernoulli,
        Gaussian,
        GaussianLearned,
        Laplace,
        Beta,
        Categorical,
        Poisson,
        Multinomial,
    )
}


def make_likelihood(spec: str | Likelihood, **options) -> Likelihood:
    """A likelihood from its name (``"bernoulli"``, ...) and options, or the object itself.

    Example:

    >>> import torch, pyrovae
    >>> lik = pyrovae.make_likelihood("gaussian", sigma=0.1)
    >>> lik.data_space, lik.params_per_dim
    ('dequantized', 1)
    >>> p = lik(torch.zeros(2, 3))
    >>> p.batch_shape, p.event_shape
    (torch.Size([2]), torch.Size([3]))
    >>> round(p.log_prob(torch.zeros(2, 3))[0].item(), 3)
    4.151
    >>> pyrovae.make_likelihood(lik) is lik
    True
    """
    if isinstance(spec, Likelihood):
        return spec
    if spec not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {spec!r}; choose one of {sorted(LIKELIHOODS)}")
    cls = LIKELIHOODS[spec]
    return cls(**check_options(cls, options, f"the {spec} likelihood"))
