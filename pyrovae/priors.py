r"""Priors :math:`p(z)` over the latent code, swappable by name or object.

A prior is an ``nn.Module`` whose ``forward()`` returns an *unbatched* distribution over
:math:`z \in \mathbb{R}^d` (``event_shape == (d,)``); the model's ``pyro.plate`` broadcasts it
over the data (and over particles when they are vectorised). Learned priors keep their
parameters in the module, and the model registers them with ``pyro.module``.
"""

from __future__ import annotations

from typing import ClassVar

import pyro.distributions as dist
import torch
from torch import nn


class Prior(nn.Module):
    """Base class. ``closed_form_kl`` says whether KL(q(z|x) || p(z)) has a formula in Pyro."""

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


PRIORS: dict[str, type[Prior]] = {cls.name: cls for cls in (StandardNormal,)}


def make_prior(spec: str | Prior, latent_dim: int, **options) -> Prior:
    """A prior from its name (``"normal"``, ...) and options, or the object itself."""
    if isinstance(spec, Prior):
        if spec.latent_dim != latent_dim:
            raise ValueError(f"prior has latent_dim={spec.latent_dim}, model has {latent_dim}")
        return spec
    if spec not in PRIORS:
        raise ValueError(f"unknown prior {spec!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[spec](latent_dim, **options)
