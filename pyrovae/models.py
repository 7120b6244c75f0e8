r"""The variational autoencoder as a Pyro model/guide pair (Kingma & Welling 2014).

Generative model (``VAE.model``), for each of the :math:`N` images in the ``data`` plate:

.. math::

    z_i \sim p(z), \qquad x_i \mid z_i \sim p_\theta(x \mid z_i) = \text{likelihood}(\text{decoder}_\theta(z_i))

Guide (``VAE.guide``), the amortised mean-field posterior of Doersch (2016) and Aziz (2017):

.. math::

    q_\phi(z_i \mid x_i) = \mathcal{N}\big(\mu_\phi(x_i), \operatorname{diag} \sigma^2_\phi(x_i)\big)

SVI maximises :math:`\mathrm{ELBO} = E_q[\log p(x \mid z)] - \mathrm{KL}(q(z \mid x) \,\|\, p(z))`
(see ``docs/math.md``). The prior and the likelihood are objects (:mod:`pyrovae.priors`,
:mod:`pyrovae.likelihoods`); swapping them changes nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .data import check_observations
from .likelihoods import Likelihood, make_likelihood
from .nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .priors import Prior, make_prior


class VAE(nn.Module):
    """A VAE whose ``model(x)`` and ``guide(x)`` are plain Pyro functions.

    :param data_dim: values per observation ``D`` (784 for MNIST).
    :param latent_dim: dimension ``d`` of ``z``.
    :param hidden: hidden widths of the MLP encoder (the decoder mirrors them); for
        ``arch="conv"`` the first entry is the width of the fully connected layer.
    :param activation: nonlinearity of the hidden layers.
    :param arch: ``"mlp"`` or ``"conv"`` (28x28 images).
    :param likelihood: a :class:`~pyrovae.likelihoods.Likelihood` or its name.
    :param prior: a :class:`~pyrovae.priors.Prior` or its name.
    :param name: prefix of the parameter names in Pyro's param store.
    """

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 20,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        arch: str = "mlp",
        likelihood: str | Likelihood = "bernoulli",
        prior: str | Prior = "normal",
        image_shape: Sequence[int] = (28, 28),
        likelihood_options: dict[str, Any] | None = None,
        prior_options: dict[str, Any] | None = None,
        name: str = "vae",
    ) -> None:
        super().__init__()
        self.data_dim, self.latent_dim, self.name = data_dim, latent_dim, name
        self.likelihood = make_likelihood(likelihood, **(likelihood_options or {}))
        self.prior = make_prior(prior, latent_dim, **(prior_options or {}))
        out_dim = self.likelihood.decoder_outputs(data_dim)
        if arch == "mlp":
            self.encoder = MLPEncoder(data_dim, hidden, latent_dim, activation)
            self.decoder = MLPDecoder(latent_dim, hidden, out_dim, activation)
        elif arch == "conv":
            channels = out_dim // 784
            self.encoder = ConvEncoder(image_shape, hidden[0], latent_dim, activation)
            self.decoder = ConvDecoder(latent_dim, hidden[0], channels, activation)
        else:
            raise ValueError(f"arch must be 'mlp' or 'conv', not {arch!r}")
        if hasattr(self.prior, "attach_encoder"):  # the VampPrior reuses q's encoder
            self.prior.attach_encoder(self.encoder, data_dim)

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x|z) for the rows of ``x``."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        pyro.module(f"{self.name}.likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) = Normal(loc(x), scale(x)), one factor per row of ``x``."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # Pictures and diagnostics: the same pieces, outside of inference.

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Shape, finiteness and likelihood-support checks, with a clear error."""
        check_observations(x, self.data_dim, what)
        self.likelihood.check_support(x)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and scale of q(z|x)."""
        return self.encoder(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = mean of q(z|x)]."""
        return self.likelihood.mean(self.decoder(self.encoder(x)[0]))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def generate(self, num_samples: int) -> torch.Tensor:
        """E[x | z] for ``z ~ p(z)``: the usual picture of what the model generates."""
        z = self.prior().sample((num_samples,))
        return self.decode_mean(z)
