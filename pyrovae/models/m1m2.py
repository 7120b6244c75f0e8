r"""The stacked semi-supervised model M1+M2 (Kingma, Rezende, Mohamed & Welling 2014, §3.2 and
Table 1), as one Pyro model/guide pair.

M1 is a trained VAE (:class:`~pyrovae.models.VAE`): p(x | z₁) and q(z₁ | x). M2 is the
semi-supervised model of :mod:`pyrovae.models.m2`, with M1's latent z₁ in the place of the image.
The generative model (``M1M2.model``), per image in the ``data`` plate:

.. math::

    y \sim \mathrm{Cat}(1/C), \quad z_2 \sim \mathcal{N}(0, I), \quad
    z_1 \mid y, z_2 \sim \mathcal{N}(\mu_\theta(y, z_2), \mathrm{diag}\,\sigma^2_\theta(y, z_2)), \quad
    x \mid z_1 \sim p_{\mathrm{M1}}(x \mid z_1)

and the guide (``M1M2.guide``):
:math:`q(z_1 \mid x)\, q_\phi(y \mid z_1)\, q_\phi(z_2 \mid z_1, y)`, with :math:`q(z_1 \mid x)`
M1's encoder. M1 is frozen (its parameters are not registered with Pyro, so no objective trains
them), as in the paper, where M1 is learned first and M2 on its latent codes: with M1 fixed, the
terms :math:`\log p(x \mid z_1) - \log q(z_1 \mid x)` do not depend on M2's parameters, and
training this pair by the M2 objective (:class:`~pyrovae.models.M2Objective`, y summed out for
unlabelled rows, the α-weighted :math:`-\log q(y \mid z_1)` on labelled ones) is training M2 on
codes :math:`z_1 \sim q(z_1 \mid x)` drawn afresh at every step. The bound and importance sampling
score the whole hierarchy: :math:`\log p(x) = \log \sum_y \iint p(y) p(z_2) p(z_1 \mid y, z_2)
p(x \mid z_1)\, dz_1\, dz_2`, with y, z₁ and z₂ proposed by the guide.

Only M1's *active* units (Burda et al. 2016: the variance over the training digits of the mean of
q(z₁ | x) above 0.01) are M2's to model, as in Kingma et al.'s code, which keeps the units whose
mean has a standard deviation above 0.1: q(y | z₁), q(z₂ | z₁, y) see those units alone (the others
multiplied by zero), and p(z₁ | y, z₂) gives the others N(0, 1), M1's own prior, which q(z₁ | x)
matches there: they are noise that the classifier would otherwise have to learn to ignore.
``m1_units="all"`` gives M2 every unit.

Sites, as in M2 (labelled rows observe y in their own group of sites; masks choose the rows):

* unlabelled rows: model ``y`` (latent), ``z2``, ``z1``, ``x``; guide ``z1``, ``y``, ``z2``;
* labelled rows: model ``y_label`` (observed), ``z2_label``, ``z1_label``, ``x_label``, and
  ``y_aux`` (y observed under q(y | z₁), scaled by α); guide ``z1_label``, ``z2_label``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from ..config import ConfigError
from ..data import BINARY_SPACES, ImageData, heldout_generator
from ..diagnostics import ACTIVITY_THRESHOLD
from .m2 import M2, LabelledEncoder, SemiSupervisedImages, _any_labelled
from .vae import VAE

#: What `pyrovae train --model m1m2` uses unless flags say otherwise (docs/zoo.md: how they were chosen).
M1M2_TRAINING = {"lr": 0.001, "batch_size": 200, "epochs": 150}


class M1M2(M2):
    """Kingma et al.'s (2014) M1+M2: M2 (y, z₂) generating the latent z₁ of a frozen, trained VAE M1.

    :param m1: the M1 VAE: a ``pyrovae train --model vae`` run folder (its checkpoint's weights), or a
        :class:`~pyrovae.models.VAE`, copied.
    :param num_labels: how many training images are labelled, ``num_labels / num_classes`` per class.
    :param latent_dim: dimension of z₂.
    :param hidden: hidden widths of M2's three networks, q(y|z₁), q(z₂|z₁,y) and p(z₁|y,z₂).
    :param aux_loss_multiplier: α, the weight of −log q(y | z₁) on labelled rows.
    :param label_copies: R, how many times each labelled image is in an epoch's rows, each copy's
        terms weighted 1/R (the same objective, with labelled rows in R times as many batches);
        0: as many copies as make the labelled rows about as many as the unlabelled ones.
    :param m1_units: ``"active"``: M2 models M1's active units, chosen by :meth:`prepare_data` from
        the training images (until then, all units); ``"all"``: every unit.
    :param m1_options: the M1 run's model options (read from its ``config.json`` when not given).
    :param m1_fingerprint: the M1 checkpoint's fingerprint (recorded for provenance).

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.data import as_tensors
    >>> from pyrovae.models import M1M2, VAE
    >>> m1 = VAE(latent_dim=4, hidden=[16])  # untrained here, so no unit is active: model them all
    >>> model = M1M2(m1=m1, num_labels=20, latent_dim=2, hidden=[8], m1_units="all")
    >>> x, y, labelled = as_tensors(model.prepare_data(pyrovae.load_embedded_mnist().subset(slice(0, 100))),
    ...                             torch.Generator().manual_seed(0))
    >>> res = pyrovae.log_marginal_likelihood(model.model, model.guide, x[:3], y[:3], labelled[:3] & False,
    ...                                       num_samples=5)
    >>> res.log_px.shape, model.classify(x[:3]).shape
    (torch.Size([3]), torch.Size([3]))
    """

    training_defaults = M1M2_TRAINING

    def __init__(
        self,
        data_dim: int = 784,
        image_shape: Sequence[int] = (28, 28),
        *,
        m1: str | VAE,
        num_labels: int,
        latent_dim: int = 50,
        hidden: Sequence[int] = (500,),
        activation: str = "softplus",
        aux_loss_multiplier: float = 200.0,
        num_classes: int = 10,
        label_seed: int = 0,
        label_copies: int = 0,
        m1_units: str = "active",
        m1_options: dict[str, Any] | None = None,
        m1_fingerprint: str | None = None,
        name: str = "m1m2",
    ) -> None:
        vae, loaded = _m1_vae(m1, data_dim, image_shape, m1_options)
        super().__init__(vae.latent_dim, num_labels=num_labels, latent_dim=latent_dim, hidden=hidden,
                         activation=activation, aux_loss_multiplier=aux_loss_multiplier,
                         num_classes=num_classes, label_seed=label_seed, name=name)
        self.data_dim, self.image_shape = data_dim, tuple(image_shape)
        self.m1 = vae.requires_grad_(False)
        self.likelihood = vae.likelihood  # p(x | z1): what check_data holds the images to
        self.data_space = vae.likelihood.data_space
        # p(z1 | y, z2): M2's decoder with a Gaussian head (loc, scale) over z1
        self.decoder = LabelledEncoder(latent_dim, num_classes, hidden, vae.latent_dim, activation)
        self.m1_source = m1 if isinstance(m1, str) else None
        if label_copies < 0:
            raise ConfigError(f"label_copies must be >= 0 (0: as many as the unlabelled rows), not {label_copies}")
        self.label_copies, self.label_weight = label_copies, 1.0  # set by prepare_data from the training data
        if m1_units not in ("active", "all"):
            raise ConfigError(f"m1_units must be 'active' (M1's active units) or 'all', not {m1_units!r}")
        self.m1_units = m1_units
        # which of M1's units M2 models; a buffer, so that the checkpoint keeps the choice
        self.register_buffer("m1_active", torch.ones(vae.latent_dim, dtype=torch.bool))
        # False when M1's run folder is gone: a run's own checkpoint then restores M1 (load_run)
        self.m1_loaded, self.m1_fingerprint = loaded, m1_fingerprint

    def _register(self) -> None:
        # M2's networks only: M1 is frozen, so no objective sees (or trains) its parameters
        for part in ("encoder_y", "encoder_z", "decoder"):
            pyro.module(f"{self.name}.{part}", getattr(self, part))

    # ------------------------------------------------------------------ the pair

    def model(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        """p(y) p(z₂) p(z₁ | y, z₂) p(x | z₁), y latent on unlabelled rows, observed on labelled ones
        (with α log q(y | z₁) added, Kingma et al. 2014, eq. 9)."""
        self._register()
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=~labelled):
                y_latent = pyro.sample("y", self._prior_y(x))
                z2 = pyro.sample("z2", self._prior_z(x))
                z1 = pyro.sample("z1", self._p_z1(z2, y_latent))
                pyro.sample("x", self.likelihood(self.m1.decoder(z1)), obs=x)
            if _any_labelled(labelled):
                with poutine.mask(mask=labelled), poutine.scale(scale=self.label_weight):
                    pyro.sample("y_label", self._prior_y(x), obs=y)
                    z2 = pyro.sample("z2_label", self._prior_z(x))
                    z1 = pyro.sample("z1_label", self._p_z1(z2, y))
                    pyro.sample("x_label", self.likelihood(self.m1.decoder(z1)), obs=x)
                    if self.aux_loss_multiplier > 0:
                        with poutine.scale(scale=self.aux_loss_multiplier):
                            pyro.sample("y_aux", dist.Categorical(logits=self.encoder_y(self._codes(z1))), obs=y)

    def guide(self, x: torch.Tensor, y: torch.Tensor, labelled: torch.Tensor) -> None:
        """q(z₁ | x) q(y | z₁) q(z₂ | z₁, y) on unlabelled rows, q(z₁ | x) q(z₂ | z₁, y) on labelled
        ones; y is sampled here, :class:`~pyrovae.models.M2Objective` enumerates it."""
        self._register()
        q_z1 = dist.Normal(*self.m1.encoder(x)).to_event(1)  # once for both groups of rows
        with pyro.plate("data", x.shape[0]):
            with poutine.mask(mask=~labelled):
                codes = self._codes(pyro.sample("z1", q_z1))
                y_latent = pyro.sample("y", dist.Categorical(logits=self.encoder_y(codes)))
                pyro.sample("z2", dist.Normal(*self.encoder_z(codes, y_latent)).to_event(1))
            if _any_labelled(labelled):  # last: skipping it eagerly leaves the earlier draws as in a graph
                with poutine.mask(mask=labelled), poutine.scale(scale=self.label_weight):
                    codes = self._codes(pyro.sample("z1_label", q_z1))
                    pyro.sample("z2_label", dist.Normal(*self.encoder_z(codes, y)).to_event(1))

    def _codes(self, z1: torch.Tensor) -> torch.Tensor:
        """What M2's networks see of z₁: the active units, the others zeroed."""
        return z1 * self.m1_active

    def _p_z1(self, z2: torch.Tensor, y: torch.Tensor) -> dist.Distribution:
        """p(z₁ | y, z₂): the decoder's Gaussian on the active units, N(0, 1) on the others."""
        loc, scale = self.decoder(z2, y)
        return dist.Normal(loc * self.m1_active, torch.where(self.m1_active, scale, torch.ones_like(scale))).to_event(1)

    # ------------------------------------------------------------------ data

    def prepare_data(self, data, heldout: bool = False):
        """As :meth:`M2.prepare_data`, with each labelled training image repeated ``R`` times
        (``label_copies``; their terms are weighted 1/R in the model, so the objective per epoch is
        unchanged): with 100 labels among 60,000 images a labelled image is then in about every
        other batch rather than one batch per epoch, which the M1+M2 measurements favour
        (docs/zoo.md)."""
        rows = super().prepare_data(data, heldout)
        if heldout or not isinstance(data, ImageData):
            return rows
        self._choose_units(rows.images)
        if not bool(rows.labelled.any()):
            return rows
        labelled = rows.labelled.nonzero()[:, 0]
        copies = self.label_copies or max(1, round(int((~rows.labelled).sum()) / len(labelled)))
        self.label_weight = 1.0 / copies
        index = torch.cat([torch.arange(len(rows)), labelled.repeat(copies - 1)])
        return SemiSupervisedImages(rows.images.subset(index), rows.labelled[index])

    @torch.no_grad()
    def _choose_units(self, images: ImageData, num_rows: int = 10_000) -> None:
        """M1's active units on the first ``num_rows`` training images (their observations drawn with
        a fixed seed, so that a resumed run chooses the same units)."""
        if self.m1_units == "all":
            return
        device = self.m1_active.device
        # diagnostics.active_units measures the same variance through M1's guide, but its pyro.module
        # would put M1's frozen weights into the param store the trainer optimises
        x = images.subset(slice(0, num_rows)).observations(torch.Generator().manual_seed(0), device)
        active = self.m1.encoder(x.to(next(self.m1.parameters()).dtype))[0].var(0) > ACTIVITY_THRESHOLD
        if not bool(active.any()):
            raise ConfigError("M1 has no active unit on these images (the mean of q(z1 | x) does not move with x: "
                              "an untrained or collapsed M1), so M2 has nothing to model: train M1 (with "
                              "--free-bits if it collapses) or pass --model-opt m1_units=all")
        self.m1_active.copy_(active)

    # ------------------------------------------------------------------ outside inference

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """arg max_y q(y | z₁ = mean of q(z₁ | x))."""
        return self.encoder_y(self._codes(self.m1.encoder(x)[0])).argmax(-1)

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """E[x | z₁ = mean of p(z₁ | y, z₂)] for z₂ = ``z``."""
        return self.m1.decode_mean(self._p_z1(z, y).mean)

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False, y: torch.Tensor | None = None) -> torch.Tensor:
        """Images from the model: y ~ p(y) (or ``y``), z₂ ~ p(z₂), z₁ ~ p(z₁ | y, z₂); E[x | z₁], or
        with ``sample=True`` draws x ~ p(x | z₁)."""
        device = next(self.parameters()).device
        y = torch.randint(self.num_classes, (num_samples,), device=device) if y is None else y.to(device)
        z1 = self._p_z1(torch.randn(num_samples, self.latent_dim, device=device), y).sample()
        logits = self.m1.decoder(z1)
        return self.likelihood(logits).sample() if sample else self.likelihood.mean(logits)

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return self.m1.to_picture(values)

    def report(self) -> dict[str, Any]:
        return {**super().report(), "likelihood": self.likelihood.name,
                "discrete_likelihood": self.likelihood.discrete, "m1": self.m1_source,
                "m1_fingerprint": self.m1_fingerprint, "m1_latent_dim": self.m1.latent_dim,
                "m1_units_modelled": int(self.m1_active.sum())}

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """samples.png (one row per digit y, the same z₂ ~ p(z₂) down each column, E[x | z₁ = mean of
        p(z₁ | y, z₂)]), curves.png and latent.png (means of q(z₂ | z₁, y = arg max q(y | z₁)))."""
        from .. import plots

        run, device = Path(run), next(self.parameters()).device
        x, y, _ = self.prepare_data(heldout, heldout=True).tensors(heldout_generator(seed), device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            z2 = torch.randn(10, self.latent_dim, device=device)
        rows = [self.decode_mean(z2, torch.full((10,), c, device=device)) for c in range(self.num_classes)]
        plots.plot_rows(run / "samples.png", rows, [f"y = {c}" for c in range(self.num_classes)], self.image_shape,
                        "E[x | z1 = mean of p(z1 | y, z2)]: one row per digit y, the same z2 down each column")
        written = ["samples.png", *plots.write_curves(run, history)]
        n = min(len(x), 5000)
        with torch.no_grad():
            codes = self._codes(self.m1.encoder(x[:n])[0])
            loc, _ = self.encoder_z(codes, self.encoder_y(codes).argmax(-1))
        plots.plot_latent(run / "latent.png", loc, y[:n])
        return [*written, "latent.png"]


def _m1_vae(m1: str | VAE, data_dim: int, image_shape: Sequence[int],
            m1_options: dict[str, Any] | None) -> tuple[VAE, bool]:
    """M1 as a VAE of its own (a copy), and whether its trained weights were read."""
    if isinstance(m1, VAE):
        if m1.data_dim != data_dim:
            raise ConfigError(f"M1 models {m1.data_dim} values per image, the data have {data_dim}")
        return _binary(copy.deepcopy(m1)), True
    from ..runs import CHECKPOINT, load_checkpoint, restore_module

    options = m1_options if m1_options is not None else m1_run_options(m1)["m1_options"]
    vae = VAE(data_dim, image_shape=image_shape, **options)
    if not (Path(m1) / CHECKPOINT).exists():  # a new run checked this (m1_run_options); a saved run holds M1
        return _binary(vae), False
    restore_module(vae, load_checkpoint(m1), m1)
    return _binary(vae), True


def _binary(vae: VAE) -> VAE:
    if vae.likelihood.data_space not in BINARY_SPACES:
        raise ConfigError(
            f"M1+M2 observes binarised digits, as M2 does, but M1's likelihood is {vae.likelihood.name!r}; "
            "train M1 with the bernoulli likelihood"
        )
    return vae


def m1_run_options(m1: str) -> dict[str, Any]:
    """``m1_options`` and ``m1_fingerprint`` of a ``pyrovae train --model vae`` run folder, or a
    :class:`~pyrovae.ConfigError` that says what to point ``m1`` at."""
    from ..runs import CONFIG, checkpoint_fingerprint, load_config

    fix = "point --model-opt m1=... at the folder of a finished `pyrovae train --model vae` run"
    if not (Path(m1) / CONFIG).exists():
        raise ConfigError(f"M1+M2 needs a trained M1: {Path(m1) / CONFIG} does not exist; {fix}")
    config = load_config(m1)
    if config.model != "vae":
        raise ConfigError(f"M1 must be a VAE, but {m1} is a {config.model!r} run; {fix}")
    if checkpoint_fingerprint(m1) is None:
        raise ConfigError(f"{m1} has no checkpoint yet; {fix}")
    return {"m1_options": config.model_options, "m1_fingerprint": checkpoint_fingerprint(m1)}


def configure_m1m2(options: dict[str, Any], data_space: str | None, levels: int) -> dict[str, Any]:
    """At the start of a run, record M1's architecture and checkpoint fingerprint in the options, so
    that the run's ``config.json`` describes the whole model (its checkpoint then holds M1 too)."""
    if options.get("m1_options") is None:
        options = {**options, **m1_run_options(str(options["m1"]))}
    return options
