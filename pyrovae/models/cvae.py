r"""Conditional VAEs (Sohn et al. 2015; Doersch 2016, §4): completing digits from quadrants, and
generating digits of a given label.

**Image completion** (:class:`QuadrantCVAE`, ``--model cvae``): an MNIST digit is cut into its four
quadrants; ``quadrants`` of them are given (:math:`x`, the input) and the rest are predicted
(:math:`y`, the output), as in Pyro's CVAE tutorial: 1 given = the bottom-left quadrant, 2 = the
left half, 3 = all but the bottom-right quadrant. For each image

.. math::

    z \sim p_\theta(z \mid x) = \mathcal{N}(\mu_\theta(x), \operatorname{diag}\sigma^2_\theta(x))
    \quad\text{(prior network)}, \qquad
    y \mid x, z \sim \operatorname{Bernoulli}(g_\theta(x, z)) \quad\text{(generation network)}

with the recognition network :math:`q_\phi(z \mid x, y)` as guide. The conditional ELBO is
:math:`E_q[\log p(y \mid x, z)] - \mathrm{KL}(q(z \mid x, y) \,\|\, p(z \mid x))`, and importance
sampling of the same pair gives :math:`\log p(y \mid x)` per image. The model and guide take the
whole image and split it with a fixed mask, so every pyrovae tool that takes ``model(x)`` works
on them unchanged. :class:`QuadrantNN` is the deterministic baseline
:math:`y \sim \operatorname{Bernoulli}(f_\theta(x))`, the network the tutorial compares with.

**Label-conditioned generation** (:class:`LabelCVAE`, ``--model cvae-label``):
:math:`z \sim \mathcal{N}(0, I)`, :math:`x \mid y, z \sim \operatorname{Bernoulli}(g_\theta(z, y))`
and :math:`q_\phi(z \mid x, y)`; importance sampling gives :math:`\log p(x \mid y)`.

Targets are scored by a Bernoulli log-probability. On binarised digits it is a likelihood; on
grey values in :math:`[0, 1]` (``data_space="grey"``, the default of the completion models, as in
Pyro's tutorial) it is the negative binary cross-entropy, which is *not* a normalised density:
numbers on that scale compare with Pyro's table and with each other, not with likelihoods.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ..data import (
    BINARY_SPACES,
    DataError,
    ImageData,
    as_float_tensor,
    check_labels,
    check_observations,
    heldout_generator,
    in_spaces,
)
from ..likelihoods import Bernoulli
from ..nets import MLP, MLPEncoder

COMPLETION_SPACES = ("grey", "binary-dynamic", "binary-threshold")


def quadrant_mask(quadrants: int, image_shape: Sequence[int] = (28, 28)) -> torch.Tensor:
    """The flat boolean mask of the *given* pixels when ``quadrants`` of 4 are given (Pyro's
    convention: 1 = bottom-left, 2 = left half, 3 = all but the bottom-right quadrant)."""
    if isinstance(quadrants, bool) or quadrants not in (1, 2, 3):
        raise ValueError(f"quadrants must be 1, 2 or 3 (the quadrants given as input), not {quadrants!r}")
    h, w = tuple(image_shape)[-2:]
    given = torch.zeros(h, w, dtype=torch.bool)
    given[h // 2 :, : w // 2] = True  # bottom left
    if quadrants >= 2:
        given[:, : w // 2] = True  # left half
    if quadrants == 3:
        given[: h // 2, :] = True  # and top right
    return given.reshape(-1)


class _Completion(nn.Module):
    """What the completion models share: the mask that splits an image into (given, predicted),
    their data spaces and checks, and their pictures."""

    data_space = "grey"

    def __init__(self, data_dim: int, image_shape: Sequence[int], quadrants: int, name: str) -> None:
        super().__init__()
        self.image_shape, self.quadrants, self.name = tuple(image_shape), quadrants, name
        if data_dim != len(quadrant_mask(quadrants, self.image_shape)):
            raise ValueError(f"quadrants need square images; data_dim {data_dim} != H*W of {self.image_shape}")
        self.data_dim = data_dim
        mask = quadrant_mask(quadrants, self.image_shape)
        self.register_buffer("given_index", mask.nonzero()[:, 0], persistent=False)
        self.register_buffer("hidden_index", (~mask).nonzero()[:, 0], persistent=False)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(given pixels, pixels to predict)`` of flat images ``x``."""
        return x[..., self.given_index], x[..., self.hidden_index]

    def join(self, given: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Flat images from their given and predicted pixels."""
        x = given.new_empty(*hidden.shape[:-1], self.data_dim)
        x[..., self.given_index] = given.expand(*hidden.shape[:-1], given.shape[-1])
        x[..., self.hidden_index] = hidden
        return x

    def prepare_data(self, data, heldout: bool = False):
        """Images in a space the Bernoulli score takes: grey (the default, Pyro's), or binarised."""
        if not isinstance(data, ImageData):
            return as_float_tensor(data, next(self.parameters()).dtype)
        return in_spaces(data, COMPLETION_SPACES, self.name, "scores pixels in [0, 1] (grey: Pyro's tutorial)")

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        check_observations(x, self.data_dim, what)
        if x.min() < 0 or x.max() > 1:
            raise DataError(f"{what}: pixel values must lie in [0, 1]; got [{x.min():.3g}, {x.max():.3g}]")

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return values.clamp(0, 1)

    def masked_input(self, x: torch.Tensor) -> torch.Tensor:
        """The images with the pixels to predict shown mid-grey (what the model is given)."""
        given, hidden = self.split(x)
        return self.join(given, torch.full_like(hidden, 0.5))

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """completions.png (given quadrants, completions, truth) and curves.png."""
        from .. import plots

        x = self.prepare_data(heldout).observations(heldout_generator(seed))[:10]
        x = x.to(next(self.parameters()).device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            rows = [torch.cat([self.masked_input(xi[None]), self.complete(xi[None], 6), xi[None]]) for xi in x]
        cols = ["given", *[f"draw {k + 1}" for k in range(len(rows[0]) - 2)], "truth"]
        plots.plot_rows(run / "completions.png", [r.cpu() for r in rows], [""] * len(rows), self.image_shape,
                        f"{self.quadrants} quadrant(s) given; E[y | x, z], z ~ p(z | x)", cols)
        written = ["completions.png"]
        written += plots.write_curves(run, history)
        return written

    def report(self) -> dict[str, Any]:
        return {"likelihood": "bernoulli", "prior": "conditional", "discrete_likelihood": True,
                "quadrants_given": self.quadrants, "scored_dim": len(self.hidden_index),
                "scales": {"grey": "grey-cross-entropy"}}


class QuadrantCVAE(_Completion):
    """The CVAE of Sohn et al. (2015) for completing digits from ``quadrants`` given quadrants.

    :param latent_dim: dimension of ``z`` (200, as Pyro's tutorial).
    :param hidden: hidden widths of the prior, recognition and generation networks.

    Example:

    >>> import pyrovae
    >>> from pyrovae.models import QuadrantCVAE
    >>> cvae = QuadrantCVAE(quadrants=2, latent_dim=2, hidden=[16])
    >>> x = pyrovae.load_embedded_mnist().subset(slice(0, 3)).with_space("grey").observations()
    >>> res = pyrovae.log_marginal_likelihood(cvae.model, cvae.guide, x, num_samples=5)
    >>> res.log_px.shape, cvae.complete(x).shape
    (torch.Size([3]), torch.Size([3, 784]))
    """

    def __init__(
        self,
        data_dim: int = 784,
        image_shape: Sequence[int] = (28, 28),
        quadrants: int = 1,
        latent_dim: int = 200,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
        name: str = "cvae",
    ) -> None:
        super().__init__(data_dim, image_shape, quadrants, name)
        self.latent_dim = latent_dim
        n_given, n_hidden = len(self.given_index), len(self.hidden_index)
        self.prior_net = MLPEncoder(n_given, hidden, latent_dim, activation)
        self.recognition_net = MLPEncoder(data_dim, hidden, latent_dim, activation)
        self.generation_net = MLP(latent_dim + n_given, hidden, n_hidden, activation)

    def model(self, x: torch.Tensor) -> None:
        """p(z | x_given) p(y | x_given, z) for the rows of the flat images ``x``."""
        pyro.module(f"{self.name}.prior", self.prior_net)
        pyro.module(f"{self.name}.generation", self.generation_net)
        given, hidden = self.split(x)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(*self.prior_net(given)).to_event(1))
            logits = self.generation_net(torch.cat([z, given.expand(*z.shape[:-1], given.shape[-1])], -1))
            pyro.sample("y", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=hidden)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x_given, y): the recognition network sees the whole image."""
        pyro.module(f"{self.name}.recognition", self.recognition_net)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.recognition_net(x)).to_event(1))

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int = 1, sample: bool = False) -> torch.Tensor:
        """``num_samples`` completions of each image's given pixels, ``(num_samples * N, D)``:
        E[y | x, z] (or a draw of y) with z ~ p(z | x), beside the given pixels."""
        given, _ = self.split(x)
        z = dist.Normal(*self.prior_net(given)).sample((num_samples,))
        probs = torch.sigmoid(self.generation_net(torch.cat([z, given.expand(num_samples, *given.shape)], -1)))
        hidden = torch.bernoulli(probs) if sample else probs
        return self.join(given, hidden).transpose(0, 1).reshape(-1, self.data_dim)

    def generate(self, num_samples: int, sample: bool = False, heldout: torch.Tensor | None = None) -> torch.Tensor:
        """Completions of the first ``num_samples`` held-out images (a CVAE needs its input)."""
        if heldout is None:
            raise ValueError("a completion CVAE draws completions of given quadrants: pass heldout= images")
        return self.complete(heldout[:num_samples], 1, sample)


class QuadrantNN(_Completion):
    """The deterministic baseline: ``y ~ Bernoulli(f(x_given))``, an MLP with no latent variable
    (Pyro's tutorial: 784-500-500-784 on masked images), trained by the same SVI loop.

    Example:

    >>> import pyrovae
    >>> from pyrovae.models import QuadrantNN
    >>> net = QuadrantNN(quadrants=1, hidden=[16])
    >>> x = pyrovae.load_embedded_mnist().subset(slice(0, 3)).with_space("grey").observations()
    >>> res = pyrovae.log_marginal_likelihood(net.model, net.guide, x, num_samples=5)
    >>> res.log_px.shape
    torch.Size([3])
    """

    def __init__(
        self,
        data_dim: int = 784,
        image_shape: Sequence[int] = (28, 28),
        quadrants: int = 1,
        hidden: Sequence[int] = (500, 500),
        activation: str = "relu",
        name: str = "quadrant-nn",
    ) -> None:
        super().__init__(data_dim, image_shape, quadrants, name)
        self.net = MLP(len(self.given_index), hidden, len(self.hidden_index), activation)

    def model(self, x: torch.Tensor) -> None:
        """p(y | x_given) = Bernoulli(f(x_given)), no latent variable."""
        pyro.module(f"{self.name}.net", self.net)
        given, hidden = self.split(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Bernoulli(logits=self.net(given), validate_args=False).to_event(1), obs=hidden)

    def guide(self, x: torch.Tensor) -> None:
        """Nothing to infer."""

    @torch.no_grad()
    def complete(self, x: torch.Tensor, num_samples: int = 1, sample: bool = False) -> torch.Tensor:
        given, _ = self.split(x)
        probs = torch.sigmoid(self.net(given)).expand(num_samples, *given.shape[:-1], -1)
        hidden = torch.bernoulli(probs) if sample else probs
        return self.join(given, hidden).transpose(0, 1).reshape(-1, self.data_dim)

    def generate(self, num_samples: int, sample: bool = False, heldout: torch.Tensor | None = None) -> torch.Tensor:
        if heldout is None:
            raise ValueError("the baseline completes given quadrants: pass heldout= images")
        return self.complete(heldout[:num_samples], 1, sample)


class LabelCVAE(nn.Module):
    """A CVAE that generates digits of a given label: p(z) p(x | y, z), q(z | x, y).

    :param classes: number of labels (10 for MNIST); labels are ``0 .. classes - 1``.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.models import LabelCVAE
    >>> cvae = LabelCVAE(latent_dim=2, hidden=[16])
    >>> x = torch.bernoulli(torch.full((2, 784), 0.5), generator=torch.Generator().manual_seed(0))
    >>> res = pyrovae.log_marginal_likelihood(cvae.model, cvae.guide, x, torch.tensor([3, 7]), num_samples=5)
    >>> res.log_px.shape, cvae.generate(4).shape
    (torch.Size([2]), torch.Size([4, 784]))
    """

    data_space = "binary-dynamic"

    def __init__(
        self,
        data_dim: int = 784,
        image_shape: Sequence[int] = (28, 28),
        classes: int = 10,
        latent_dim: int = 20,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        name: str = "cvae-label",
    ) -> None:
        super().__init__()
        if classes < 2:
            raise ValueError(f"classes must be >= 2, not {classes}")
        self.data_dim, self.image_shape, self.classes, self.name = data_dim, tuple(image_shape), classes, name
        self.latent_dim = latent_dim
        self.encoder = MLPEncoder(data_dim + classes, hidden, latent_dim, activation)
        self.decoder = MLP(latent_dim + classes, list(hidden)[::-1], data_dim, activation)

    def _onehot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, self.classes).to(like.dtype).expand(*like.shape[:-1], self.classes)

    def model(self, x: torch.Tensor | None, y: torch.Tensor) -> None:
        """p(z) p(x | y, z); ``x=None`` draws images of the labels ``y``."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
            logits = self.decoder(torch.cat([z, self._onehot(y, z)], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """q(z | x, y)."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(*self.encoder(torch.cat([x, self._onehot(y, x)], -1))).to_event(1))

    def prepare_data(self, data, heldout: bool = False):
        """Images with their labels, binarised unless a binary space is set."""
        if not isinstance(data, ImageData):
            return as_float_tensor(data, next(self.parameters()).dtype)
        if data.labels is None:
            raise DataError(f"the {self.name} model conditions on labels, and {data.name} has none")
        return in_spaces(data, BINARY_SPACES, self.name).with_labels()

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None, what: str = "data") -> None:
        check_observations(x, self.data_dim, what)
        if y is None:
            raise DataError(f"{what}: the {self.name} model takes (images, labels); pass data.with_labels()")
        check_labels(y, self.classes, what)
        Bernoulli().check_support(x)  # the likelihood's own check, and its fix

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False) -> torch.Tensor:
        """Images of the labels 0, 1, ..., classes - 1, 0, 1, ... with z ~ p(z)."""
        y = torch.arange(num_samples, device=next(self.parameters()).device) % self.classes
        z = torch.randn(num_samples, self.latent_dim, device=y.device)
        probs = torch.sigmoid(self.decoder(torch.cat([z, self._onehot(y, z)], -1)))
        return torch.bernoulli(probs) if sample else probs

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return values.clamp(0, 1)

    def report(self) -> dict[str, Any]:
        return {"likelihood": "bernoulli", "prior": "normal", "discrete_likelihood": True, "conditioned_on": "label"}

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """by_label.png: one row per label, several z ~ p(z); curves.png."""
        from .. import plots

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            images = self.generate(self.classes * 10).cpu()
        rows = [images[c :: self.classes] for c in range(self.classes)]
        plots.plot_rows(run / "by_label.png", rows, [f"y = {c}" for c in range(self.classes)], self.image_shape,
                        "E[x | y, z], z ~ p(z): one row per label")
        written = ["by_label.png"]
        written += plots.write_curves(run, history)
        return written
