r"""The semi-supervised M2 model (Kingma, Rezende, Mohamed & Welling 2014, *Semi-supervised learning
with deep generative models*, NeurIPS), as a Pyro model/guide pair.

Generative model (``M2.model``), for each image in the ``data`` plate:

.. math::

    y \sim p(y) = \mathrm{Cat}(1/C), \qquad z \sim p(z) = \mathcal{N}(0, I), \qquad
    x \mid y, z \sim \mathrm{Bernoulli}\big(\sigma(\mathrm{decoder}_\theta([z, \mathrm{onehot}(y)]))\big)

Guide (``M2.guide``): :math:`q_\phi(y \mid x) = \mathrm{Cat}(\mathrm{softmax}(\mathrm{encoder}_y(x)))` and
:math:`q_\phi(z \mid x, y) = \mathcal{N}(\mathrm{encoder}_z([x, \mathrm{onehot}(y)]))`.

One batch carries both streams: per datapoint ``(x, y, labelled)``. For a labelled row ``y`` is
observed; for an unlabelled one ``y`` is a latent variable that the guide proposes (its true
label, which held-out rows carry, is then never observed: it is only compared with
:math:`\arg\max_y q(y \mid x)`). The loss minimised is the paper's eq. 9,

.. math::

    \mathcal{J}^\alpha = \sum_{(x, y)\ \text{labelled}} -\mathcal{L}(x, y)
        + \sum_{x\ \text{unlabelled}} -\mathcal{U}(x)
        + \alpha \sum_{(x, y)\ \text{labelled}} -\log q_\phi(y \mid x)

    \mathcal{L}(x, y) = E_{q(z \mid x, y)}[\log p(x \mid y, z) + \log p(y) + \log p(z) - \log q(z \mid x, y)]
        \le \log p(x, y)

    \mathcal{U}(x) = \sum_y q(y \mid x)\, \mathcal{L}(x, y) + \mathcal{H}(q(y \mid x)) \le \log p(x)

with L and U written as bounds (the paper's are their negatives, so its signs read
:math:`\mathcal{J} = \sum \mathcal{L} + \sum \mathcal{U}`). It is written with masks inside one
``pyro.plate("data", N)``, one group of sites per term:

* U(x), unlabelled rows: model ``y`` (latent), ``z``, ``x``; guide ``y`` ~ q(y|x), ``z`` ~ q(z|x,y);
* L(x, y), labelled rows: model ``y_label`` (observed), ``z_label``, ``x_label``; guide ``z_label``;
* α log q(y|x), labelled rows: model ``y_aux``, y observed under q(y|x) (the guide's classifier),
  in ``poutine.scale(scale=α)``.

:class:`M2Objective` (the model's ``default_objective``) is ``TraceEnum_ELBO`` with the guide's
``y`` enumerated (``config_enumerate(guide, "parallel")`` applied inside the objective), so that
the sum over y in U(x) is exact, as in Pyro's ``examples/vae/ss_vae_M2.py``. ``M2.guide`` itself
*samples* y ~ q(y|x): importance sampling (:func:`pyrovae.log_marginal_likelihood`) then proposes
both y and z from the guide, and estimates log p(x) = log Σ_y ∫ p(y) p(z) p(x|y,z) dz.

The labelled terms L and α are separate sites rather than ``where(labelled, y, y_enumerated)`` in
one stream: there a labelled row's z would be drawn once per enumerated value and weighted by
q(y|x), which adds noise to the classifier's gradient. Masked sites are computed for every row (a
graph that ``torch.jit.trace`` can compile); eagerly, a batch without labelled rows (held-out data,
importance sampling) skips them, which changes no number.

**Evaluation.** ``pyrovae.unscaled`` drops α, but keeps ``y_aux``: the "ELBO" of a labelled row in
``train_elbo`` includes :math:`+\log q(y \mid x) \le 0` (a looser bound). Held-out rows are all
unlabelled, so the held-out ELBO, ``heldout_elbo_enum`` and importance sampling score
:math:`\log p(x)` with y summed out, untouched by the auxiliary term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn

from ..config import ConfigError
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
from ..infer.handlers import unscaled
from ..likelihoods import make_likelihood
from ..nets import MLP, GaussianHead, activation

#: lr and batch size of the example run in Pyro's examples/vae/ss_vae_M2.py (which also sets Adam's
#: beta1 = 0.95; pyrovae keeps torch's (0.9, 0.999)); 50 epochs (the script's default is 100)
PYRO_TRAINING = {"lr": 0.00042, "batch_size": 200, "epochs": 50}


class M2Objective(TraceEnum_ELBO):
    r"""The M2 objective :math:`-\mathcal{J}^\alpha`: ``TraceEnum_ELBO`` whose guide has its discrete
    sites enumerated in parallel (``config_enumerate(guide, "parallel")``), so that
    :math:`\mathcal{U}(x) = \sum_y q(y \mid x) \mathcal{L}(x, y) + \mathcal{H}(q(y \mid x))` is summed
    exactly, while the guide given to importance sampling samples y (Kingma et al. 2014).

    ``weighted`` tells the trainer that this is not the ELBO (the α-weighted classification term),
    so that ``metrics.csv`` records ``train_elbo`` beside the objective.
    """

    def __init__(self, weighted: bool = True) -> None:
        super().__init__(max_plate_nesting=1)
        self.weighted = weighted

    def _get_traces(self, model, guide, args, kwargs):
        return super()._get_traces(model, config_enumerate(guide, "parallel"), args, kwargs)


class LabelInput(nn.Module):
    r"""The first layer of a network on ``[v, onehot(y)]``: :math:`a(W_v v + W_y \mathrm{onehot}(y) + b)`.

    Equal to a ``Linear`` on the concatenation; split so that with y enumerated (shape ``(C, 1)``)
    :math:`W_v v` is computed once for the C labels instead of C times.
    """

    def __init__(self, in_dim: int, num_classes: int, out_dim: int, act: str) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.value = nn.Linear(in_dim, out_dim)
        self.label = nn.Linear(num_classes, out_dim, bias=False)
        self.act = activation(act)

    def forward(self, v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.act(self.value(v) + self.label(F.one_hot(y, self.num_classes).to(v.dtype)))


class LabelledEncoder(nn.Module):
    """``(x, y) -> (loc, scale)`` of q(z | x, y)."""

    def __init__(self, data_dim: int, num_classes: int, hidden: Sequence[int], latent_dim: int, act: str) -> None:
        super().__init__()
        self.input = LabelInput(data_dim, num_classes, hidden[0], act)
        layers: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(a, b), activation(act)]
        self.body = nn.Sequential(*layers)
        self.head = GaussianHead(hidden[-1], latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(self.input(x, y)))


class LabelledDecoder(nn.Module):
    """``(z, y) ->`` Bernoulli logits of p(x | y, z)."""

    def __init__(self, latent_dim: int, num_classes: int, hidden: Sequence[int], data_dim: int, act: str) -> None:
        super().__init__()
        self.input = LabelInput(latent_dim, num_classes, hidden[0], act)
        self.body = MLP(hidden[0], hidden[1:], data_dim, act)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.body(self.input(z, y))


@dataclass(frozen=True)
class SemiSupervisedImages:
    """A data source whose rows are ``(x, y, labelled)``: the images in their data space, every
    row's true label, and which rows the model observes the label of."""

    images: ImageData
    labelled: torch.Tensor  # bool, (N,)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def space(self) -> str | None:
        return self.images.space

    @property
    def levels(self) -> int:
        return self.images.levels

    @property
    def name(self) -> str:
        return self.images.name

    @property
    def fresh_each_epoch(self) -> bool:
        return self.images.fresh_each_epoch

    def tensors(self, generator: torch.Generator | None = None, device: torch.device | str | None = None):
        x = self.images.observations(generator, device)
        return x, self.images.labels.to(x.device), self.labelled.to(x.device)


def choose_labelled(labels: torch.Tensor, num_labels: int, num_classes: int, seed: int = 0,
                    what: str = "the training data") -> torch.Tensor:
    """A bool mask of ``num_labels`` rows, ``num_labels / num_classes`` of each class, drawn with a
    generator seeded by ``seed`` (balanced per class, as Pyro's ss-vae and Kingma et al. 2014)."""
    if num_labels > len(labels):
        raise DataError(
            f"num_labels={num_labels} is more than the {len(labels):,} images of {what}; lower num_labels "
            "(--model-opt num_labels=...) or train on more images"
        )
    per_class, gen = num_labels // num_classes, torch.Generator().manual_seed(seed)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        rows = (labels == c).nonzero()[:, 0]
        if len(rows) < per_class:
            raise DataError(
                f"num_labels={num_labels} asks for {per_class} labelled images of each class, but class {c} has "
                f"only {len(rows)} in {what}; lower num_labels (--model-opt num_labels=...) or train on more images"
            )
        mask[rows[torch.randperm(len(rows), generator=gen)[:per_class]]] = True
    return mask


class M2(nn.Module):
    """The M2 model of Kingma et al. (2014): ``model(x, y, labelled)`` and ``guide(x, y, labelled)``.

    Defaults are those of Pyro's ``examples/vae/ss_vae_M2.py`` (train with :data:`PYRO_TRAINING`).

    :param num_labels: how many training images are labelled, ``num_labels / num_classes`` per class.
    :param latent_dim: dimension of z (Pyro's ``z_dim``).
    :param hidden: hidden widths of the three networks (encoder_y, encoder_z, decoder).
    :param activation: nonlinearity of the hidden layers.
    :param aux_loss_multiplier: α, the weight of the classification term on labelled rows.
    :param num_classes: C, labels are ``0 .. C - 1``.
    :param label_seed: seed of the choice of labelled images.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.data import as_tensors
    >>> from pyrovae.models import M2
    >>> m2 = M2(num_labels=20, latent_dim=2, hidden=[16])
    >>> digits = pyrovae.load_embedded_mnist().subset(slice(0, 100))
    >>> x, y, labelled = as_tensors(m2.prepare_data(digits), torch.Generator().manual_seed(0))
    >>> int(labelled.sum()), m2.classify(x[:5]).shape
    (20, torch.Size([5]))
    >>> unlabelled = torch.zeros(4, dtype=torch.bool)
    >>> res = pyrovae.log_marginal_likelihood(m2.model, m2.guide, x[:4], y[:4], unlabelled, num_samples=5)
    >>> res.log_px.shape
    torch.Size([4])
    """

    data_space = "binary-dynamic"
    # a jit graph always builds the labelled rows' sites (one graph per batch shape, _any_labelled); on
    # held-out data, where no row is labelled, that is a second decoder pass for nothing: evaluate eagerly
    evaluation_jit = False
    training_defaults = PYRO_TRAINING  # what `pyrovae train --model m2` uses unless flags say otherwise

    def __init__(
        self,
        data_dim: int = 784,
        image_shape: Sequence[int] = (28, 28),
        *,
        num_labels: int,
        latent_dim: int = 50,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        aux_loss_multiplier: float = 46.0,
        num_classes: int = 10,
        label_seed: int = 0,
        name: str = "m2",
    ) -> None:
        super().__init__()
        _check_options(num_labels, num_classes, aux_loss_multiplier, hidden)
        self.data_dim, self.image_shape, self.name = data_dim, tuple(image_shape), name
        self.num_labels, self.num_classes, self.label_seed = num_labels, num_classes, label_seed
        self.latent_dim, self.aux_loss_multiplier = latent_dim, float(aux_loss_multiplier)
        self.likelihood = make_likelihood("bernoulli")
        self.encoder_y = MLP(data_dim, hidden, num_classes, activation)  # logits of q(y | x)
        self.encoder_z = LabelledEncoder(data_dim, num_classes, hidden, latent_dim, activation)
        self.decoder = LabelledDecoder(latent_dim, num_classes, hidden, data_dim, activation)

    # ------------------------------------------------------------------ the pair

    def model(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        """p(y) p(z) p(x | y, z): y latent on unlabelled rows, observed on labelled ones, where the
        α-weighted term α log q(y | x) is added (Kingma et al. 2014, eq. 9)."""
        pyro.module(self.name, self)
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=~labelled):  # U(x): y is a latent the guide proposes
                y_latent = pyro.sample("y", self._prior_y(x))
                z = pyro.sample("z", self._prior_z(x))
                pyro.sample("x", self.likelihood(self.decoder(z, y_latent)), obs=x)
            if _any_labelled(labelled):  # L(x, y) and the classifier's term
                with poutine.mask(mask=labelled):
                    pyro.sample("y_label", self._prior_y(x), obs=y)
                    z = pyro.sample("z_label", self._prior_z(x))
                    pyro.sample("x_label", self.likelihood(self.decoder(z, y)), obs=x)
                    if self.aux_loss_multiplier > 0:  # Pyro refuses poutine.scale(scale=0)
                        with poutine.scale(scale=self.aux_loss_multiplier):
                            pyro.sample("y_aux", dist.Categorical(logits=self.encoder_y(x)), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        """q(y | x) q(z | x, y) on unlabelled rows, q(z | x, y) on labelled ones. y is sampled
        here; :class:`M2Objective` enumerates it."""
        pyro.module(self.name, self)
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=~labelled):
                y_latent = pyro.sample("y", dist.Categorical(logits=self.encoder_y(x)))
                pyro.sample("z", dist.Normal(*self.encoder_z(x, y_latent)).to_event(1))
            # last, so that skipping it eagerly leaves every earlier random number as in a jit graph
            if _any_labelled(labelled):
                with poutine.mask(mask=labelled):
                    pyro.sample("z_label", dist.Normal(*self.encoder_z(x, y)).to_event(1))

    def _prior_y(self, x: torch.Tensor) -> dist.Categorical:
        return dist.Categorical(logits=x.new_zeros(self.num_classes))

    def _prior_z(self, x: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1)

    def default_objective(self) -> M2Objective:
        """:class:`M2Objective`; it says it is weighted when the classification term is on."""
        return M2Objective(weighted=self.num_labels > 0 and self.aux_loss_multiplier > 0)

    # ------------------------------------------------------------------ data

    def prepare_data(self, data, heldout: bool = False):
        """An :class:`~pyrovae.data.ImageData` with labels as ``(x, y, labelled)`` rows
        (:class:`SemiSupervisedImages`), binarised unless a binary space is set: ``num_labels`` rows
        labelled (balanced per class, ``label_seed``), none with ``heldout=True``. A tensor is
        converted to the parameters' dtype; anything else is returned as is."""
        if isinstance(data, SemiSupervisedImages):
            return data
        if not isinstance(data, ImageData):
            return as_float_tensor(data, next(self.parameters()).dtype)
        if data.labels is None:
            raise DataError(
                f"the M2 model trains on labelled and unlabelled images and scores accuracy against labels, but "
                f"{data.name} has no labels; pass them: pyrovae.from_tensor(images, labels=...)"
            )
        data = in_spaces(data, BINARY_SPACES, "M2").with_labels(False)
        check_labels(data.labels, self.num_classes, data.name)
        if heldout:
            return SemiSupervisedImages(data, torch.zeros(len(data), dtype=torch.bool))
        return SemiSupervisedImages(data, choose_labelled(data.labels, self.num_labels, self.num_classes,
                                                          self.label_seed, data.name))

    def check_data(self, x: torch.Tensor, y: torch.Tensor | None = None, labelled: torch.Tensor | None = None,
                   what: str = "data") -> None:
        """Binary images ``(N, D)``, labels ``(N,)`` in ``0 .. C - 1``, a bool mask ``(N,)``."""
        if y is None or labelled is None:
            raise DataError(
                f"{what}: the M2 model takes (x, y, labelled) per datapoint; build them with "
                "m2.prepare_data(images_with_labels)"
            )
        check_observations(x, self.data_dim, what)
        self.likelihood.check_support(x)
        check_labels(y, self.num_classes, what)
        if labelled.dtype != torch.bool or labelled.shape != (x.shape[0],):
            raise DataError(
                f"{what}: `labelled` must be a bool tensor of shape ({x.shape[0]},), one flag per image, not "
                f"{labelled.dtype} of shape {tuple(labelled.shape)}"
            )
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{what}: {y.shape[0]} labels for {x.shape[0]} images")

    # ------------------------------------------------------------------ outside inference

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """arg max_y q(y | x)."""
        return self.encoder_y(x).argmax(-1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> float:
        """Share of images whose arg max q(y | x) is the true label ``y``, in chunks of ``chunk``."""
        correct = sum(int((self.classify(xb) == yb).sum()) for xb, yb in zip(x.split(chunk), y.split(chunk)))
        return correct / len(x)

    @torch.no_grad()
    def heldout_metrics(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor,
                        chunk: int = 1000) -> dict[str, float]:
        """``heldout_accuracy`` (arg max q(y|x) against the true y) and ``heldout_elbo_enum``, the
        held-out ELBO with y summed out exactly (the trainer's ``heldout_elbo`` samples y ~ q(y|x))."""
        bound, model, guide = M2Objective(weighted=False), unscaled(self.model), unscaled(self.guide)
        parts = zip(x.split(chunk), y.split(chunk), labelled.split(chunk))
        loss = sum(bound.loss(model, guide, *part) for part in parts)
        return {"heldout_accuracy": self.accuracy(x, y, chunk), "heldout_elbo_enum": -loss / len(x)}

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | y, z]."""
        return torch.sigmoid(self.decoder(z, y))

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images from the model: y ~ p(y) (or the labels ``y``), z ~ p(z); E[x | y, z], or with
        ``sample=True`` draws x ~ p(x | y, z)."""
        device = next(self.parameters()).device
        if y is None:
            y = torch.randint(self.num_classes, (num_samples,), device=device)
        z = torch.randn(num_samples, self.latent_dim, device=device)
        mean = self.decode_mean(z, y.to(device))
        return torch.bernoulli(mean) if sample else mean

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return values.clamp(0, 1)

    def report(self) -> dict[str, Any]:
        return {
            "likelihood": "bernoulli", "prior": "normal", "discrete_likelihood": True,
            "num_labels": self.num_labels, "aux_loss_multiplier": self.aux_loss_multiplier,
        }

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """samples.png (one row per digit y, the same z ~ p(z) down each column), curves.png, and
        latent.png (means of q(z | x, y = arg max q(y | x)), coloured by the true digit)."""
        from .. import plots

        run, device = Path(run), next(self.parameters()).device
        x, y, _ = self.prepare_data(heldout, heldout=True).tensors(heldout_generator(seed), device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z = torch.randn(10, self.latent_dim, device=device)
        rows = [self.decode_mean(z, torch.full((10,), c, device=device)) for c in range(self.num_classes)]
        plots.plot_rows(run / "samples.png", rows, [f"y = {c}" for c in range(self.num_classes)], self.image_shape,
                        "E[x | y, z]: one row per digit y, the same z ~ p(z) down each column")
        written = ["samples.png"]
        written += plots.write_curves(run, history)
        n = min(len(x), 5000)
        with torch.no_grad():
            loc, _ = self.encoder_z(x[:n], self.classify(x[:n]))
        plots.plot_latent(run / "latent.png", loc, y[:n])
        return [*written, "latent.png"]


def _any_labelled(labelled: torch.Tensor) -> bool:
    """Whether to build the labelled rows' sites: always under ``torch.jit.trace`` (one graph for
    every batch), else only when some row is labelled (masked-out sites add nothing)."""
    return torch.jit.is_tracing() or bool(labelled.any())


def _check_options(num_labels: int, num_classes: int, aux_loss_multiplier: float, hidden: Sequence[int]) -> None:
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, not {num_classes}")
    if num_labels < 0 or num_labels % num_classes:
        raise ConfigError(
            f"num_labels={num_labels} must be a non-negative multiple of num_classes={num_classes}: labelled "
            f"images are chosen balanced per class (e.g. num_labels=100, 600, 1000 or 3000)"
        )
    if not aux_loss_multiplier >= 0:
        raise ConfigError(f"aux_loss_multiplier must be >= 0 (0: no classification term), not {aux_loss_multiplier}")
    if not hidden:
        raise ConfigError("hidden must name at least one hidden width, e.g. hidden=(500,)")
