r"""A mixture VAE with an enumerated class (Aziz 2017; Dilokthanakul et al. 2016, GMVAE).

The seed's discrete mixture :math:`P(x) = \sum_c P(c) P(x \mid c)`, with a continuous latent
inside each component. For each image

.. math::

    c \sim \operatorname{Categorical}(\pi), \qquad
    z \mid c \sim \mathcal{N}(\mu_c, \operatorname{diag}\sigma_c^2), \qquad
    x \mid z \sim \operatorname{Bernoulli}(\text{decoder}_\theta(z))

and the guide :math:`q_\phi(z \mid x)` proposes :math:`z` only. The class is marked
``infer={"enumerate": "parallel"}`` in the model, so ``TraceEnum_ELBO`` sums it out exactly:

.. math::

    \mathrm{ELBO}(x) = E_{q(z \mid x)}\Big[\log \sum_c \pi_c\, \mathcal{N}(z; \mu_c, \sigma_c^2)
    + \log p(x \mid z) - \log q(z \mid x)\Big],

and importance sampling sums it out inside every weight, so ``pyrovae evaluate`` gives
:math:`\log p(x)` of the mixture. The class of an image is read off
:math:`p(c \mid z = E_q[z \mid x]) \propto \pi_c \mathcal{N}(z; \mu_c, \sigma_c^2)`, which
:func:`cluster_accuracy` scores against labels (each cluster takes its majority label).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..data import (
    BINARY_SPACES,
    ImageData,
    as_float_tensor,
    check_observations,
    heldout_generator,
    heldout_seed,
    in_spaces,
)
from ..io import write_json
from ..likelihoods import Bernoulli
from ..nets import MLPDecoder, MLPEncoder


class MixtureVAE(nn.Module):
    """A VAE whose latent space is a mixture of ``components`` Gaussians with an explicit,
    enumerated class site ``c``.

    :param components: number of mixture components (classes).
    :param latent_dim: dimension of ``z``.
    :param hidden: hidden widths of the encoder (the decoder mirrors them).
    :param learn_weights: learn the mixing weights :math:`\\pi` (else uniform, as GMVAE; learned
        weights tend to empty components early in training).
    :param init_spread: standard deviation of the initial component means.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.models import MixtureVAE
    >>> mix = MixtureVAE(data_dim=4, image_shape=(2, 2), components=3, latent_dim=2, hidden=[8])
    >>> x = torch.bernoulli(torch.full((5, 4), 0.5), generator=torch.Generator().manual_seed(0))
    >>> res = pyrovae.log_marginal_likelihood(mix.model, mix.guide, x, num_samples=10)
    >>> res.log_px.shape, mix.class_posterior(x).shape
    (torch.Size([5]), torch.Size([5, 3]))
    """

    data_space = "binary-dynamic"
    default_objective = "enum"

    def __init__(
        self,
        data_dim: int = 784,
        image_shape: Sequence[int] = (28, 28),
        components: int = 10,
        latent_dim: int = 10,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        learn_weights: bool = False,
        init_spread: float = 2.0,
        name: str = "mixture",
    ) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"components must be >= 1, not {components}")
        if not init_spread > 0:
            raise ValueError(f"init_spread must be positive, not {init_spread}")
        self.data_dim, self.image_shape, self.name = data_dim, tuple(image_shape), name
        self.components, self.latent_dim = components, latent_dim
        self.encoder = MLPEncoder(data_dim, hidden, latent_dim, activation)
        self.decoder = MLPDecoder(latent_dim, hidden, data_dim, activation)
        self.mixture = Components(components, latent_dim, learn_weights, init_spread)

    def model(self, x: torch.Tensor | None = None, num_datapoints: int = 1) -> None:
        """c ~ Cat(pi), z | c ~ N(mu_c, sigma_c), x | z ~ Bernoulli(decoder(z)); c summed out."""
        pyro.module(f"{self.name}.mixture", self.mixture)
        pyro.module(f"{self.name}.decoder", self.decoder)
        mix = self.mixture
        with pyro.plate("data", x.shape[0] if x is not None else num_datapoints):
            c = pyro.sample("c", dist.Categorical(logits=mix.logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", mix.component(c))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = Normal(loc(x), scale(x))."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.encoder(x)).to_event(1))

    # Data

    def prepare_data(self, data, heldout: bool = False):
        """Images binarised (a fresh draw per epoch unless a binary space is set)."""
        if not isinstance(data, ImageData):
            return as_float_tensor(data, next(self.parameters()).dtype)
        return in_spaces(data, BINARY_SPACES, self.name)

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        check_observations(x, self.data_dim, what)
        Bernoulli().check_support(x)  # the likelihood's own check, and its fix

    # Clusters

    @torch.no_grad()
    def class_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """p(c | z = E_q[z | x]) for each row of ``x``, shape ``(N, components)``."""
        z = self.encoder(x)[0]
        mix = self.mixture
        log_pz = mix.component(torch.arange(self.components, device=z.device)).log_prob(z[:, None, :])
        return (log_pz + mix.logits.log_softmax(-1)).softmax(-1)

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False, component: int | None = None) -> torch.Tensor:
        """E[x | z] (or draws of x) with c ~ pi (or c = ``component``) and z ~ p(z | c)."""
        mix = self.mixture
        if component is None:
            c = dist.Categorical(logits=mix.logits).sample((num_samples,))
        else:
            c = torch.full((num_samples,), component, dtype=torch.long, device=mix.locs.device)
        z = mix.component(c).sample()
        probs = torch.sigmoid(self.decoder(z))
        return torch.bernoulli(probs) if sample else probs

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return values.clamp(0, 1)

    def report(self) -> dict[str, Any]:
        return {"likelihood": "bernoulli", "prior": f"mixture of {self.components} Gaussians, class enumerated",
                "discrete_likelihood": True}

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """components.png (samples per component), latent.png, curves.png and clustering.json."""
        from .. import plots

        run = Path(run)
        x = self.prepare_data(heldout).observations(heldout_generator(seed)).to(self.mixture.locs.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rows = [self.generate(12, component=c).cpu() for c in range(self.components)]
        weights = self.mixture.logits.softmax(-1).tolist()
        plots.plot_rows(run / "components.png", rows, [f"c={c} ({w:.0%})" for c, w in enumerate(weights)],
                        self.image_shape, "E[x | z], z ~ p(z | c): one row per component")
        written = ["components.png"]
        labels = heldout.labels
        if labels is not None:
            plots.plot_latent(run / "latent.png", self.encoder(x[:5000])[0].detach(), labels[:5000])
            posterior = self.class_posterior(x)
            write_json(run / "clustering.json", {**cluster_accuracy(posterior.argmax(-1).cpu(), labels),
                                                 "data": heldout.name, "heldout_seed": heldout_seed(seed),
                                                 "assignment": "argmax p(c | z = E_q[z | x])"})
            written += ["latent.png", "clustering.json"]
        written += plots.write_curves(run, history)
        return written


class Components(nn.Module):
    """The mixture's weights (logits, learned or a fixed uniform buffer) and its Gaussians."""

    def __init__(self, components: int, latent_dim: int, learn_weights: bool, init_spread: float) -> None:
        super().__init__()
        if learn_weights:
            self.logits = nn.Parameter(torch.zeros(components))
        else:
            self.register_buffer("logits", torch.zeros(components))
        self.locs = nn.Parameter(torch.randn(components, latent_dim) * init_spread)
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))

    def component(self, c: torch.Tensor) -> dist.TorchDistribution:
        """p(z | c) for class indices ``c`` (any shape, e.g. Pyro's enumerated ``(K, 1)``)."""
        return dist.Normal(self.locs[c], self.log_scales[c].exp()).to_event(1)


def cluster_accuracy(clusters: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Unsupervised clustering accuracy: each cluster takes its majority label, and the share of
    points whose cluster's label is theirs (the usual score for GMVAE-style models; several
    clusters may take the same label)."""
    clusters, labels = clusters.long().cpu(), labels.long().cpu()
    if clusters.shape != labels.shape or clusters.dim() != 1:
        raise ValueError(f"clusters and labels must be 1-D of one length, not {tuple(clusters.shape)} and "
                         f"{tuple(labels.shape)}")
    counts = torch.zeros(int(clusters.max()) + 1, int(labels.max()) + 1, dtype=torch.long)
    counts.index_put_((clusters, labels), torch.ones_like(labels), accumulate=True)
    majority = counts.argmax(1)
    return {"accuracy": counts.max(1).values.sum().item() / len(labels), "cluster_label": majority.tolist(),
            "cluster_sizes": counts.sum(1).tolist(), "points": len(labels)}
