r"""Autoencoder baselines as Pyro model/guide pairs: plain, denoising, sparse and contractive.

An autoencoder has an encoder :math:`f_\phi` and a decoder :math:`g_\theta` and no distribution
on its code. As a Pyro pair (:class:`AutoEncoder`, ``--model autoencoder``) the guide puts all
its mass on the code, and the model has no prior term:

.. math::

    q_\phi(z_i \mid x_i) = \delta\big(z_i - f_\phi(x_i)\big), \qquad
    z_i \sim \text{flat (log density 0)}, \qquad
    x_i \mid z_i \sim \operatorname{Bernoulli}\big(\sigma(g_\theta(z_i))\big)

(``dist.Delta(f(x)).to_event(1)`` in the guide, ``dist.ImproperUniform`` in the model). Pyro's
ELBO :math:`E_q[\log p(x \mid z) + \log p(z) - \log q(z \mid x)]` is then exactly
:math:`\log p_\theta(x \mid z = f_\phi(x))` -- the negative binary cross-entropy of the
reconstruction, the VAE's likelihood with the same 784-400-20 networks -- plus the penalties,
which enter as ``pyro.factor`` terms. It is **not** a bound on any :math:`\log p(x)`: with no
prior there is no :math:`p(x)`, which is why ``pyrovae evaluate`` refuses these models
(``report()["no_log_px"]``).

The seed slides (d'Ascoli, *Variational Auto-Encoders*) list the four; per datapoint, with
:math:`\ell(x, z) = \log p_\theta(x \mid z)`:

* **plain** (``kind="plain"``): :math:`\ell(x, f(x))`.
* **denoising** (Vincent et al. 2008, *Extracting and composing robust features with denoising
  autoencoders*): :math:`E_{\tilde x \sim q_\nu(\tilde x \mid x)}[\ell(x, f(\tilde x))]` with
  *masking noise*: each pixel of :math:`\tilde x` is set to 0 with probability :math:`\nu`
  (``noise``, default 0.25, the middle of the 10-40% the paper studies). The guide encodes the
  corrupted :math:`\tilde x` (one draw per step), the model scores the clean :math:`x`;
  :meth:`~AutoEncoder.encode`, the pictures and the reconstruction errors use clean inputs.
* **sparse**, two penalties (``sparsity=``):

  - ``"kl"`` (default; Ng, *Sparse autoencoder*, CS294A lecture notes 2011): sigmoid codes
    :math:`a(x) = \sigma(f(x)) \in (0, 1)^d`, the minibatch's mean activation
    :math:`\hat\rho_j = \frac1N \sum_n a_j(x_n)`, and the penalty
    :math:`\beta \sum_j \mathrm{KL}(\rho \,\|\, \hat\rho_j)`, where
    :math:`\mathrm{KL}(\rho \,\|\, \hat\rho) = \rho \log\frac{\rho}{\hat\rho}
    + (1 - \rho)\log\frac{1 - \rho}{1 - \hat\rho}`,
    once per datapoint as in Ng's per-example average cost; :math:`\rho = 0.05` (``sparsity_target``)
    and :math:`\beta = 3` (``sparsity_weight``) are the notes' values. The penalty is a function of
    the whole minibatch, so its value depends on the batch size.
  - ``"l1"`` (the slides' :math:`\lambda \sum_j |a_j|`) on the linear code:
    :math:`\lambda \sum_j |z_j|`, :math:`\lambda = 10^{-4} D` by default: Chollet's
    *Building autoencoders in Keras* (2016) puts :math:`10^{-4}` against a cross-entropy averaged
    over the :math:`D` pixels, we sum it over them. A linear code can shrink while the decoder's
    first layer grows to undo it, so the L1 penalty is weaker than it looks.
* **contractive** (Rifai et al. 2011, *Contractive auto-encoders: explicit invariance during
  feature extraction*): :math:`\lambda \|J_f(x)\|_F^2 = \lambda \sum_{j,i} (\partial z_j / \partial x_i)^2`,
  exact per datapoint: for an MLP encoder in closed form, :math:`J = W_2 \operatorname{diag}(s) W_1`
  and :math:`\|J\|_F^2 = s^\top (W_1 W_1^\top \circ W_2^\top W_2)\, s` with :math:`s` the hidden
  activations' slopes (:func:`mlp_jacobian_norm2`, which the compiled loss traces), otherwise by
  :math:`d` batched vector-Jacobian products (``torch.autograd.grad(..., is_grads_batched=True,
  create_graph=True)``); either way the penalty's own gradient flows to the encoder. Rifai et al.
  choose :math:`\lambda` per data set on validation data and publish no single value;
  ``contraction_weight`` defaults to 0.1 (our choice; after 50 MNIST epochs the penalty costs
  0.8 nats per image, ``docs/autoencoders.md``). Their code is a sigmoid layer, ours is linear: as
  with L1, the scale of the code is partly free, and the penalty shrinks it (code std 0.7 against
  the plain AE's 3.8).

Penalties are in nats per datapoint, on the scale of the summed log-likelihood, and are
subtracted from the ELBO; ``metrics.csv`` records the held-out objective (reconstruction
log-likelihood plus penalties, on corrupted inputs for the denoising AE) as ``heldout_elbo``
and the clean reconstruction's negative log-likelihood as ``recon_nll``.

**Why decoding** :math:`z \sim \mathcal N(0, I)` **gives noise for an AE and digits for a VAE.**
Nothing in an autoencoder's objective mentions the distribution of its codes: the training
digits' codes sit wherever initialisation and optimisation put them, at whatever scale (the
decoder can absorb any invertible affine map of the code), and the decoder is trained only on
that set. A draw from :math:`\mathcal N(0, I)` mostly lands where no training code lies, and
:math:`g(z)` there is whatever the network extrapolates -- blobs, strokes, grey noise. A VAE's
objective contains :math:`\mathrm{KL}(q(z \mid x) \,\|\, \mathcal N(0, I))`: it encodes each
digit into a ball rather than a point, and pulls the balls together towards the prior
(the seed slides' "encode into balls, bring the balls closer"), so the aggregate posterior
:math:`\frac1N \sum_n q(z \mid x_n)` roughly fills :math:`\mathcal N(0, I)` and the decoder has been
trained where the prior puts its mass. Fitting a Gaussian to an AE's training codes
(:func:`code_gaussian`; an ex-post prior, as in Ghosh et al. 2020's regularised autoencoders)
puts the draws back in the codes' region; how digit-like the decodes are then is what the
Fréchet distance of :mod:`pyrovae.frechet` measures (``examples/autoencoders.py``,
``docs/autoencoders.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from torch import nn

from ..data import (
    BINARY_SPACES,
    DataError,
    ImageData,
    as_float_tensor,
    check_observations,
    heldout_generator,
    in_spaces,
)
from ..likelihoods import Bernoulli
from ..nets import MLP, MLPDecoder, Tanh

KINDS = ("plain", "denoising", "sparse", "contractive")
SPARSITIES = ("kl", "l1")
NO_LOG_PX = (
    "an autoencoder defines no p(x): its code z = f(x) is a deterministic function of x with no prior "
    "(a Delta guide and a flat, improper p(z)), so there is no marginal likelihood to estimate by importance "
    "sampling, and its held-out ELBO in metrics.csv is the reconstruction log-likelihood plus penalties, not a "
    "bound on log p(x). Compare autoencoders by reconstruction error (recon_nll in metrics.csv) and by the "
    "Frechet distance of decoded samples (pyrovae.frechet, examples/autoencoders.py); for log p(x) train a VAE "
    "(--model vae)"
)


class AutoEncoder(nn.Module):
    """A deterministic autoencoder as a Pyro pair: Delta guide, flat code "prior", Bernoulli likelihood.

    :param kind: ``"plain"``, ``"denoising"``, ``"sparse"`` or ``"contractive"`` (module docstring).
    :param latent_dim: dimension ``d`` of the code.
    :param hidden: hidden widths of the MLP encoder (the decoder mirrors them), as the VAE's.
    :param noise: denoising: probability ``nu`` that masking noise sets a pixel to 0.
    :param sparsity: sparse: ``"kl"`` (sigmoid codes, KL to the target rate) or ``"l1"`` (linear code).
    :param sparsity_target: sparse, KL: the target mean activation ``rho``.
    :param sparsity_weight: sparse: ``beta`` (KL) or ``lambda`` (L1) in nats per datapoint;
        ``None``: 3 for KL (Ng), ``1e-4 * data_dim`` for L1.
    :param contraction_weight: contractive: ``lambda`` of the squared Frobenius norm of dz/dx.

    Example:

    >>> import math, pyro, torch
    >>> from pyrovae.models import AutoEncoder
    >>> ae = AutoEncoder(kind="denoising", latent_dim=2, hidden=[16])
    >>> x = torch.bernoulli(torch.full((4, 784), 0.5), generator=torch.Generator().manual_seed(0))
    >>> ae.encode(x).shape, ae.reconstruct(x).shape
    (torch.Size([4, 2]), torch.Size([4, 784]))
    >>> math.isfinite(pyro.infer.Trace_ELBO().loss(ae.model, ae.guide, x))
    True
    """

    data_space = "binary-dynamic"

    def __init__(
        self,
        data_dim: int = 784,
        image_shape: Sequence[int] = (28, 28),
        kind: str = "plain",
        latent_dim: int = 20,
        hidden: Sequence[int] = (400,),
        activation: str = "softplus",
        noise: float = 0.25,
        sparsity: str = "kl",
        sparsity_target: float = 0.05,
        sparsity_weight: float | None = None,
        contraction_weight: float = 0.1,
        name: str = "ae",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if sparsity not in SPARSITIES:
            raise ValueError(f"sparsity must be one of {SPARSITIES}, not {sparsity!r}")
        if not 0 <= noise < 1:
            raise ValueError(f"noise is the probability of masking a pixel, in [0, 1); got {noise}")
        if not 0 < sparsity_target < 1:
            raise ValueError(f"sparsity_target is a mean activation in (0, 1); got {sparsity_target}")
        if sparsity_weight is None:
            sparsity_weight = 3.0 if sparsity == "kl" else 1e-4 * data_dim
        for what, value in (("sparsity_weight", sparsity_weight), ("contraction_weight", contraction_weight)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{what} must be a finite number >= 0, not {value}")
        self.data_dim, self.latent_dim, self.image_shape, self.name = data_dim, latent_dim, tuple(image_shape), name
        self.kind, self.noise, self.sparsity = kind, float(noise), sparsity
        self.sparsity_target, self.sparsity_weight = float(sparsity_target), float(sparsity_weight)
        self.contraction_weight = float(contraction_weight)
        if not hidden:
            raise ValueError("the autoencoder's encoder needs at least one hidden layer")
        self.encoder = MLP(data_dim, hidden, latent_dim, activation)  # the VAE's body and mean head
        self.decoder = MLPDecoder(latent_dim, hidden, data_dim, activation)
        self.likelihood = Bernoulli()

    @property
    def sigmoid_code(self) -> bool:
        """Whether codes are sigmoid activations in (0, 1) (the KL-sparse AE) rather than linear."""
        return self.kind == "sparse" and self.sparsity == "kl"

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The code ``f(x)``, with gradients."""
        h = self.encoder(x)
        return torch.sigmoid(h) if self.sigmoid_code else h

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """Masking noise (Vincent et al. 2008): each value set to 0 with probability ``noise``."""
        return x * (torch.rand_like(x) >= self.noise).to(x.dtype)

    # The pair.

    def model(self, x: torch.Tensor) -> None:
        """log p(x | z) of the clean ``x`` at the guide's code, no prior term, penalties as factors."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        if self.kind == "contractive":  # the penalty is the encoder's
            pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.ImproperUniform(constraints.real, (), (self.latent_dim,)))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
            if self.kind == "sparse":
                pyro.factor("sparsity", -self.sparsity_weight * self.sparsity_penalty(z))
            elif self.kind == "contractive":
                pyro.factor("contraction", -self.contraction_weight * self.contraction_penalty(x))

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = Delta(f(x)), of a corrupted x for the denoising AE."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        inputs = self.corrupt(x) if self.kind == "denoising" else x
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Delta(self.code(inputs)).to_event(1))

    # Penalties, per datapoint and unweighted.

    def sparsity_penalty(self, z: torch.Tensor) -> torch.Tensor:
        """``sum_j KL(rho || rho_hat_j)`` with ``rho_hat`` the mean of the batch's sigmoid codes,
        the same for every row (KL); ``sum_j |z_j|`` per row (L1). Shape ``z.shape[:-1]``."""
        if self.sparsity == "l1":
            return z.abs().sum(-1)
        rho, eps = self.sparsity_target, 1e-6
        rho_hat = z.mean(-2, keepdim=True).clamp(eps, 1 - eps)
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return kl.sum(-1).expand(z.shape[:-1])

    def contraction_penalty(self, x: torch.Tensor) -> torch.Tensor:
        """``||d f(x) / d x||_F^2`` per row of ``x``, exact, differentiable in the encoder's weights.

        For an MLP encoder with a linear code, in closed form (:func:`mlp_jacobian_norm2`, which the
        compiled loss can trace); otherwise by ``d`` batched vector-Jacobian products."""
        if not self.sigmoid_code:
            norm2 = mlp_jacobian_norm2(self.encoder, x)
            if norm2 is not None:
                return norm2
        with torch.enable_grad():  # also under the held-out bound's no_grad
            xg = x.detach().requires_grad_(True)
            z = self.code(xg)
            d = z.shape[-1]
            basis = torch.eye(d, dtype=z.dtype, device=z.device).reshape(d, *([1] * (z.dim() - 1)), d)
            (jac,) = torch.autograd.grad(z, xg, basis.expand(d, *z.shape), is_grads_batched=True,
                                         create_graph=True)  # jac[j, n, i] = dz_nj / dx_ni (rows independent)
        return jac.pow(2).sum((0, -1))

    # Data.

    def prepare_data(self, data, heldout: bool = False):
        """Binarised images (the VAE's data: dynamic binarisation unless a binary space is set)."""
        if not isinstance(data, ImageData):
            return as_float_tensor(data, next(self.parameters()).dtype)
        return in_spaces(data, BINARY_SPACES, "autoencoder", "scores binarised digits by a Bernoulli likelihood")

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        check_observations(x, self.data_dim, what)
        self.likelihood.check_support(x)

    # Codes, reconstructions, decodes (no gradients).

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The codes of clean inputs."""
        return self.code(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = f(x)]."""
        return self.decode_mean(self.code(x))

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False, codes: Any = None) -> torch.Tensor:
        """Decoded codes: ``z ~ N(0, I)`` (what a VAE's prior would give; mostly noise for an AE, see the
        module docstring), or ``z ~ codes`` (e.g. :func:`code_gaussian` of training codes). E[x | z], or
        with ``sample=True`` draws x ~ Bernoulli."""
        means = decoded(self, num_samples, codes)
        return torch.bernoulli(means) if sample else means

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return values.clamp(0, 1)

    @torch.no_grad()
    def heldout_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """``recon_nll``: -log p(x | z = f(x)) of clean inputs, nats per image."""
        return {"recon_nll": reconstruction_errors(self, x)["bernoulli_nll"]}

    def report(self) -> dict[str, Any]:
        """The likelihood, the kind and its weight, and ``no_log_px``: why there is no log p(x) to evaluate."""
        weights = {"plain": {}, "denoising": {"noise": self.noise},
                   "sparse": {"sparsity": self.sparsity, "sparsity_target": self.sparsity_target,
                              "sparsity_weight": self.sparsity_weight},
                   "contractive": {"contraction_weight": self.contraction_weight}}[self.kind]
        return {"likelihood": "bernoulli", "prior": "none (deterministic code)", "discrete_likelihood": True,
                "kind": self.kind, **weights, "no_log_px": NO_LOG_PX}

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """reconstructions.png, samples.png (z ~ N(0, I)), samples-fitted.png (z from a Gaussian fitted
        to the run's training codes, or the held-out codes outside a run folder), curves.png, latent.png."""
        from .. import plots

        run, shape = Path(run), self.image_shape
        device = next(self.parameters()).device
        x = self.prepare_data(heldout).observations(heldout_generator(seed), device=device)
        fit, fitted_on = _training_images(run, self, seed), "training"
        if fit is None:
            fit, fitted_on = x, "held-out"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            plots.plot_reconstructions(run / "reconstructions.png", x[:64], self.reconstruct(x[:64]), shape)
            plots.plot_samples(run / "samples.png", self.generate(64), shape, "E[x | z], z ~ N(0, I)")
            gaussian = code_gaussian(self.encode(fit[:10_000].to(device)))
            plots.plot_samples(run / "samples-fitted.png", self.generate(64, codes=gaussian), shape,
                               f"E[x | z], z ~ Gaussian fitted to {fitted_on} codes")
        written = ["reconstructions.png", "samples.png", "samples-fitted.png"]
        written += plots.write_curves(run, history)
        n = min(len(x), 5000)
        plots.plot_latent(run / "latent.png", self.encode(x[:n]), heldout.labels[:n] if heldout.labels is not None
                          else None)
        return [*written, "latent.png"]


def _training_images(run: Path, model: AutoEncoder, seed: int) -> torch.Tensor | None:
    """Up to 10,000 training images of the run in ``run`` (its ``config.json``), as the model observes
    them; ``None`` outside a run folder."""
    from ..config import ConfigError, RunConfig
    from ..runs import load_run_data  # runs imports the zoo: read here, not at import

    try:
        train, _ = load_run_data(RunConfig.load(run / "config.json"))
    except (OSError, ConfigError, DataError):
        return None
    train = train.subset(slice(0, 10_000))
    return model.prepare_data(train).observations(torch.Generator().manual_seed(seed))


def _slope(act: nn.Module, pre: torch.Tensor) -> torch.Tensor | None:
    """The derivative of an elementwise activation at ``pre`` (``None`` for one not listed)."""
    if isinstance(act, nn.Softplus):
        return torch.where(pre * act.beta > act.threshold, torch.ones_like(pre), torch.sigmoid(act.beta * pre))
    if isinstance(act, nn.ReLU):
        return (pre > 0).to(pre.dtype)
    if isinstance(act, Tanh):
        return 1 - act(pre).pow(2)
    if isinstance(act, nn.LeakyReLU):
        return torch.where(pre > 0, torch.ones_like(pre), torch.full_like(pre, act.negative_slope))
    if isinstance(act, nn.ELU):
        return torch.where(pre > 0, torch.ones_like(pre), act.alpha * torch.exp(pre))
    return None


def mlp_jacobian_norm2(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor | None:
    r"""``||J(x)||_F^2`` per row of ``x`` for an MLP of ``Linear`` layers and elementwise activations,
    in closed form; ``None`` for other networks.

    With :math:`J = W_L S_{L-1} W_{L-1} \cdots S_1 W_1` (:math:`S_k` the diagonal of the activations'
    slopes) and :math:`M = W_L S_{L-1} \cdots W_2 S_1`, :math:`\|J\|_F^2 = \operatorname{tr}(M G M^\top)`
    with :math:`G = W_1 W_1^\top`, computed once per batch; with one hidden layer it is
    :math:`s^\top (G \circ W_2^\top W_2)\, s` for the slopes :math:`s`, ``O(H^2)`` per row instead of
    ``O(d H D)``."""
    layers = list(mlp)
    linears = layers[0::2]
    acts = layers[1::2]
    if not linears or len(linears) != len(acts) + 1 or not all(isinstance(m, nn.Linear) for m in linears):
        return None
    slopes, h = [], x
    for lin, act in zip(linears[:-1], acts):
        pre = lin(h)
        slope = _slope(act, pre)
        if slope is None:
            return None
        slopes.append(slope)
        h = act(pre)
    w = [lin.weight for lin in linears]
    gram = w[0] @ w[0].T
    if len(w) == 1:  # a linear encoder: the same for every row
        return gram.diagonal().sum().expand(x.shape[:-1])
    if len(w) == 2:
        s = slopes[0]
        return ((s @ (gram * (w[1].T @ w[1]))) * s).sum(-1)
    m = w[-1]
    for k in range(len(w) - 2, 0, -1):
        m = (m * slopes[k][..., None, :]) @ w[k]
    m = m * slopes[0][..., None, :]
    return torch.einsum("...jh,hk,...jk->...", m, gram, m)


# Shared by examples/autoencoders.py: the same numbers for autoencoders and VAEs.


@torch.no_grad()
def latent_codes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An autoencoder's codes, or a VAE's posterior means, of ``x``."""
    z = model.encode(x)
    return z[0] if isinstance(z, tuple) else z


def code_gaussian(z: torch.Tensor, jitter: float = 1e-5) -> dist.MultivariateNormal:
    """The Gaussian with the mean and covariance of the codes ``z`` (``(N, d)``), a jitter on the diagonal."""
    z = z.detach().double()
    loc = z.mean(0)
    zc = z - loc
    cov = zc.T @ zc / max(len(z) - 1, 1) + jitter * torch.eye(z.shape[1], dtype=z.dtype)
    return dist.MultivariateNormal(loc, covariance_matrix=cov)


@torch.no_grad()
def reconstruction_errors(model: nn.Module, x: torch.Tensor, batch_size: int = 2000) -> dict[str, float]:
    """``bernoulli_nll``: -log p(x | z = code(x)) in nats per image (a VAE at its posterior mean), and
    ``mse``: the mean squared error per pixel of E[x | z] against ``x``."""
    nll = sq = 0.0
    for part in x.split(batch_size):
        logits = model.decoder(latent_codes(model, part))
        nll += F.binary_cross_entropy_with_logits(logits, part, reduction="sum").item()
        sq += (torch.sigmoid(logits) - part).pow(2).sum().item()
    return {"bernoulli_nll": nll / len(x), "mse": sq / x.numel()}


@torch.no_grad()
def decoded(model: nn.Module, num_samples: int, codes: Any = None) -> torch.Tensor:
    """E[x | z] for ``z ~ N(0, I)`` or ``z ~ codes`` (a distribution), for an autoencoder or a VAE."""
    device = next(model.parameters()).device
    if codes is None:
        z = torch.randn(num_samples, model.latent_dim, device=device)
    else:
        z = codes.sample((num_samples,)).to(device=device, dtype=torch.get_default_dtype())
    return model.decode_mean(z)


@torch.no_grad()
def assess(model: nn.Module, x_fit: torch.Tensor, x_test: torch.Tensor, reference: torch.Tensor,
           num_samples: int = 10_000) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """What examples/autoencoders.py reports of one model: :func:`reconstruction_errors` on ``x_test``,
    and Fréchet distances (:mod:`pyrovae.frechet`) to the ``reference`` images (grey test digits) of
    ``num_samples`` reconstructions of ``x_test``, decodes of ``z ~ N(0, I)``, and decodes of ``z`` from
    the Gaussian fitted to the codes of ``x_fit`` (training images). Returns the numbers and the images."""
    from ..frechet import frechet_distance

    z = latent_codes(model, x_fit)
    gaussian = code_gaussian(z)
    images = {
        "reconstructions": model.reconstruct(x_test[:num_samples]),
        "z ~ N(0, I)": decoded(model, num_samples),
        "z ~ fitted Gaussian": decoded(model, num_samples, gaussian),
    }
    scores = {
        **reconstruction_errors(model, x_test),
        "frechet": {name: frechet_distance(reference, x) for name, x in images.items()},
        "code_mean_norm": z.mean(0).norm().item(),
        "code_std": z.std(0).mean().item(),
    }
    return scores, images
