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

Called without data, ``model()`` *generates*: ``x`` is sampled, so Pyro's
``Predictive(vae.model, num_samples=64)()`` gives prior predictive draws, and
``Predictive(poutine.uncondition(vae.model), guide=vae.guide, num_samples=8)(x)`` posterior
predictive ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..data import DataError, ImageData, as_float_tensor, check_observations, heldout_generator
from ..likelihoods import Likelihood, make_likelihood
from ..nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from ..priors import Prior, make_prior


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
    :param image_shape: shape of one observation for pictures (``(H, W)`` or ``(C, H, W)``).
    :param name: prefix of the parameter names in Pyro's param store.

    Example:

    >>> import pyro, torch, pyrovae
    >>> vae = pyrovae.VAE(data_dim=4, latent_dim=2, hidden=[8], image_shape=(2, 2))
    >>> x = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    >>> guide = pyro.poutine.trace(vae.guide).get_trace(x)
    >>> model = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=guide)).get_trace(x)
    >>> guide.nodes["z"]["value"].shape, model.nodes["x"]["value"].shape
    (torch.Size([2, 2]), torch.Size([2, 4]))
    >>> vae.generate(3).shape, vae.reconstruct(x).shape
    (torch.Size([3, 4]), torch.Size([2, 4]))
    >>> res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=10)
    >>> res.log_px.shape, bool((res.log_px < 0).all())
    (torch.Size([2]), True)
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
        self.image_shape = tuple(image_shape)
        self.likelihood = make_likelihood(likelihood, **(likelihood_options or {}))
        prior_options = dict(prior_options or {})
        if prior == "vamp":  # pseudo-inputs live where the data do (levels, counts)
            prior_options.setdefault("input_range", _data_range(self.likelihood))
        self.prior = make_prior(prior, latent_dim, **prior_options)
        out_dim = self.likelihood.decoder_outputs(data_dim)
        if arch == "mlp":
            self.encoder = MLPEncoder(data_dim, hidden, latent_dim, activation)
            self.decoder = MLPDecoder(latent_dim, hidden, out_dim, activation)
        elif arch == "conv":
            channels = out_dim // math.prod(self.image_shape[-2:])
            self.encoder = ConvEncoder(image_shape, hidden[0], latent_dim, activation)
            self.decoder = ConvDecoder(latent_dim, hidden[0], channels, activation)
        else:
            raise ValueError(f"arch must be 'mlp' or 'conv', not {arch!r}")
        if hasattr(self.prior, "attach_encoder"):  # the VampPrior reuses q's encoder
            self.prior.attach_encoder(self.encoder, data_dim)

    def model(self, x: torch.Tensor | None = None, num_datapoints: int = 1) -> None:
        """p(z) p(x|z) for the rows of ``x``; without ``x``, draws ``num_datapoints`` images."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        pyro.module(f"{self.name}.prior", self.prior)
        pyro.module(f"{self.name}.likelihood", self.likelihood)
        with pyro.plate("data", x.shape[0] if x is not None else num_datapoints):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) = Normal(loc(x), scale(x)), one factor per row of ``x``."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # Data: the space the likelihood scores, and checks with the fix in the message.

    @property
    def data_space(self) -> str:
        """The data space images are observed in by default: the likelihood's."""
        return self.likelihood.data_space

    def prepare_data(self, data, heldout: bool = False):
        """``data`` as the pair observes it. An :class:`~pyrovae.data.ImageData` in the
        likelihood's data space: chosen when unset, refused when it cannot be scored (e.g.
        binarised digits under a categorical over grey levels). A tensor (or array) in the
        parameters' floating dtype: bool, integer (counts, 0/1), half and double precision are
        converted, other dtypes refused with the fix."""
        if not isinstance(data, ImageData):
            return as_float_tensor(data, next(self.parameters()).dtype)
        lik = self.likelihood
        levels = getattr(lik, "levels", None)
        if data.space is None:
            return data.with_space(lik.data_space, levels)
        fix = f"data.with_space({lik.data_space!r}{f', {levels}' if levels else ''}), or an ImageData without a space"
        if data.space not in lik.data_spaces:
            raise DataError(
                f"the {lik.name} likelihood scores data in space {' or '.join(map(repr, lik.data_spaces))}, but "
                f"{data.name} is in space {data.space!r}; use {fix} (the likelihood's space is then chosen)"
            )
        if levels is not None and data.levels != levels:
            raise DataError(
                f"the {lik.name} likelihood has {levels} levels but {data.name} is quantised to "
                f"{data.levels}; use {fix}"
            )
        return data

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Shape, finiteness and likelihood-support checks, with a clear error."""
        check_observations(x, self.data_dim, what)
        self.likelihood.check_support(x)

    # Pictures and diagnostics: the same pieces, outside of inference.

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
    def generate(self, num_samples: int, sample: bool = False) -> torch.Tensor:
        """Images from the model, ``z ~ p(z)``: E[x | z] (the usual picture), or with
        ``sample=True`` draws ``x ~ p(x | z)``."""
        z = self.prior().sample((num_samples,))
        if sample:
            return self.likelihood(self.decoder(z)).sample()
        return self.decode_mean(z)

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        """Values in the data's units mapped to ``[0, 1]`` for display."""
        return self.likelihood.to_picture(values)

    def report(self) -> dict[str, Any]:
        """What an evaluation summary records about this model."""
        return {
            "likelihood": self.likelihood.name, "prior": self.prior.name,
            "discrete_likelihood": self.likelihood.discrete,
        }

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """reconstructions.png, samples.png, curves.png, latent.png and (2-D z) manifold.png."""
        from .. import plots

        run, shape = Path(run), self.image_shape
        device = next(self.parameters()).device
        x = self.prepare_data(heldout).observations(heldout_generator(seed), device=device)
        picture = self.to_picture  # data units (levels, counts) -> [0, 1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            plots.plot_reconstructions(
                run / "reconstructions.png", picture(x[:64]), picture(self.reconstruct(x[:64])), shape
            )
            plots.plot_samples(run / "samples.png", picture(self.generate(64)), shape, "E[x | z], z ~ p(z)")
        written = ["reconstructions.png", "samples.png"]
        written += plots.write_curves(run, history)
        n = min(len(x), 5000)
        labels = heldout.labels[:n] if heldout.labels is not None else None
        plots.plot_latent(run / "latent.png", self.encode(x[:n])[0], labels)
        written.append("latent.png")
        if self.latent_dim == 2:
            plots.plot_manifold(run / "manifold.png", lambda z: picture(self.decode_mean(z)), shape)
            written.append("manifold.png")
        return written


def _data_range(likelihood: Likelihood) -> tuple[float, float]:
    """The range of the values a likelihood's data space holds."""
    if likelihood.data_space == "levels":
        return 0.0, float(likelihood.levels - 1)
    if likelihood.data_space == "counts":
        return 0.0, 255.0  # 8-bit images as counts
    return 0.0, 1.0


def configure_vae(options: dict[str, Any], data_space: str | None, levels: int) -> dict[str, Any]:
    """Options that follow from the run's data: a categorical's levels are the data's levels."""
    options = dict(options)
    lik_options = dict(options["likelihood_options"] or {})
    if options["likelihood"] == "categorical":
        lik_options.setdefault("levels", levels)
    options["likelihood_options"] = lik_options
    return options
