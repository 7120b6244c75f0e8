r"""JointVAE: continuous and relaxed discrete latents with controlled capacities (Dupont 2018).

Generative model (``JointVAE.model``), for each of the :math:`N` images in the ``data`` plate:

.. math::

    z_i \sim \mathcal{N}(0, I_d), \qquad
    c_i \sim \mathrm{RelaxedOneHotCategorical}(\tau, \tfrac1K \mathbf{1}_K), \qquad
    x_i \mid z_i, c_i \sim \mathrm{Bernoulli}(\sigma(\mathrm{decoder}_\theta([z_i, c_i])))

Guide (``JointVAE.guide``), one encoder with two heads:

.. math::

    q_\phi(z_i, c_i \mid x_i) = \mathcal{N}\big(z_i; \mu_\phi(x_i), \operatorname{diag}\sigma^2_\phi(x_i)\big)\,
    \mathrm{RelaxedOneHotCategorical}\big(c_i; \tau, \mathrm{logits}_\phi(x_i)\big)

Training maximises Dupont's (2018, "Learning Disentangled Joint Continuous and Discrete
Representations") capacity objective, per datapoint

.. math::

    E_q[\log p(x \mid z, c)] - \gamma\,|\mathrm{KL}_z - C_z| - \gamma\,|\mathrm{KL}_c - C_c|,

with the capacities :math:`C_z, C_c` ramped linearly per step from 0 (Burgess et al. 2018) and
:math:`\mathrm{KL}_c` the KL of the *discrete* categoricals under the relaxations
(:class:`~pyrovae.infer.weighted.CapacityELBO`). Both latents are continuous and proposed by
the guide, so the held-out ELBO and importance-sampled :math:`\log p(x)` are those of this
relaxed-code model (``docs/zoo.md, JointVAE``).

The code's accuracy against held-out labels is read after matching codes to labels one-to-one
(:func:`match_codes`, the Hungarian algorithm).
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

from ..data import DataError, ImageData, as_float_tensor, check_observations, heldout_generator, in_spaces
from ..infer.factors import Schedule, linear
from ..infer.weighted import CapacityELBO, discrete_kl
from ..likelihoods import Bernoulli
from ..nets import MLP, GaussianHead, MLPDecoder, activation

# Dupont samples with log(alpha + 1e-12): the guide's log-probabilities stay above log(1e-12), so
# that a confident code cannot underflow a relaxed sample's coordinates to 0 (whose log-density
# would be -inf) while the KL_c target pulls it towards one-hot.
LOG_FLOOR = math.log(1e-12)
TRAVERSAL_DIMS = 3  # continuous dimensions drawn as traversals: the most used (largest KL)
TRAVERSAL_QUANTILES = 9  # columns of a traversal: Normal quantiles from 0.05 to 0.95


class JointVAE(nn.Module):
    """JointVAE (Dupont 2018) as a Pyro model/guide pair.

    :param data_dim: values per image ``D`` (784 for MNIST).
    :param latent_dim: dimension ``d`` of the continuous code ``z`` (Dupont's MNIST: 10).
    :param categories: categories ``K`` of the discrete code ``c`` (Dupont's MNIST: 10).
    :param hidden: hidden widths of the MLP encoder, the decoder mirrors them; ``None``: 512, 256
        (``None`` rather than a tuple default, so that ``--hidden`` takes any number of widths).
    :param activation: nonlinearity of the hidden layers.
    :param temperature: τ of the relaxed categoricals, prior and guide (Dupont: 0.67).
    :param gamma: γ, the weight of each ``|KL − C|`` (Dupont's MNIST: 30).
    :param capacity_z: the capacity ``C_z`` reached at the end of the ramp, in nats (5).
    :param capacity_c: the same for ``c`` (5), capped at ``log K``, the most a K-way code can hold.
    :param capacity_steps: steps (minibatches) of the linear ramps from 0 (Dupont: 25,000).
    :param image_shape: shape of one image for pictures.
    :param name: prefix of the parameter and factor names.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.models import JointVAE
    >>> vae = JointVAE(latent_dim=2, categories=3, hidden=(16,))
    >>> type(vae.default_objective()).__name__, sorted(vae.training_schedules())
    ('CapacityELBO', ['jointvae.capacity_c', 'jointvae.capacity_z'])
    >>> x = torch.bernoulli(torch.full((4, 784), 0.5), generator=torch.Generator().manual_seed(0))
    >>> res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=5)
    >>> res.log_px.shape
    torch.Size([4])
    """

    data_space = "binary-dynamic"

    def __init__(
        self,
        data_dim: int = 784,
        latent_dim: int = 10,
        categories: int = 10,
        hidden: tuple[int, ...] | None = None,
        activation: str = "relu",
        temperature: float = 0.67,
        gamma: float = 30.0,
        capacity_z: float = 5.0,
        capacity_c: float = 5.0,
        capacity_steps: int = 25_000,
        image_shape: Sequence[int] = (28, 28),
        name: str = "jointvae",
    ) -> None:
        super().__init__()
        hidden = tuple(hidden) if hidden is not None else (512, 256)
        _check_options(latent_dim, categories, hidden, temperature, gamma, capacity_z, capacity_c, capacity_steps)
        self.data_dim, self.latent_dim, self.categories, self.name = data_dim, latent_dim, categories, name
        self.image_shape = tuple(image_shape)
        self.temperature, self.gamma = float(temperature), float(gamma)
        self.capacity_z, self.capacity_steps = float(capacity_z), int(capacity_steps)
        self.capacity_c = min(float(capacity_c), math.log(categories))  # Dupont caps C_c at log K
        self.likelihood = Bernoulli()
        self.encoder = JointEncoder(data_dim, hidden, latent_dim, categories, activation)
        self.decoder = MLPDecoder(latent_dim + categories, hidden, data_dim, activation)
        # not saved in checkpoints: they follow from the options in config.json
        self.register_buffer("tau", torch.tensor(self.temperature), persistent=False)
        self.register_buffer("prior_logits", torch.zeros(categories), persistent=False)

    # ---------------------------------------------------------------- the pair

    def prior_c(self) -> dist.RelaxedOneHotCategorical:
        """p(c) = RelaxedOneHotCategorical(τ, uniform)."""
        return dist.RelaxedOneHotCategorical(self.tau, logits=self.prior_logits)

    def model(self, x: torch.Tensor | None = None, labels: torch.Tensor | None = None, num_datapoints: int = 1):
        """p(z) p(c) p(x | z, c) for the rows of ``x``; without ``x``, draws ``num_datapoints`` images.
        ``labels`` (held-out batches only, for :meth:`heldout_metrics`) are not modelled."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        with pyro.plate("data", x.shape[0] if x is not None else num_datapoints):
            z = pyro.sample("z", dist.Normal(self.tau.new_zeros(self.latent_dim), 1.0).to_event(1))
            c = pyro.sample("c", self.prior_c())
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([z, c], -1))), obs=x)

    def guide(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """q(z | x) q(c | x): a diagonal Normal and a relaxed categorical with logits from the encoder."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale, logits = self.encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            pyro.sample("c", dist.RelaxedOneHotCategorical(self.tau, logits=logits))

    # ---------------------------------------------------------------- training

    def capacity_factors(self) -> dict[str, str]:
        """Group -> the name of the factor holding its capacity (set per step by the schedules)."""
        return {"z": f"{self.name}.capacity_z", "c": f"{self.name}.capacity_c"}

    def default_objective(self) -> CapacityELBO:
        """The capacity objective with γ and the factor-held capacities of this model."""
        return CapacityELBO(groups={"z": ("z",), "c": ("c",)}, gamma=self.gamma, capacities=self.capacity_factors())

    def training_schedules(self) -> dict[str, Schedule]:
        """Linear ramps 0 -> C_z and 0 -> C_c over ``capacity_steps`` steps (Burgess et al. 2018)."""
        names = self.capacity_factors()
        return {
            names["z"]: linear(0.0, self.capacity_z, self.capacity_steps),
            names["c"]: linear(0.0, self.capacity_c, self.capacity_steps),
        }

    # ---------------------------------------------------------------- data

    def prepare_data(self, data, heldout: bool = False):
        """Binarised images (``binary-dynamic`` unless the data say ``binary-threshold``); held-out
        images with labels come as ``(x, labels)``, for :meth:`heldout_metrics`; training data never
        carry labels (the model is unsupervised). A tensor becomes the parameters' float dtype."""
        if not isinstance(data, ImageData):
            return as_float_tensor(data, next(self.parameters()).dtype)
        data = in_spaces(data, self.likelihood.data_spaces, "JointVAE")
        return data.with_labels(heldout and data.labels is not None)

    def check_data(self, x: torch.Tensor, labels: torch.Tensor | None = None, what: str = "data") -> None:
        """Binary images of ``data_dim`` values; labels, if any, one integer per image."""
        check_observations(x, self.data_dim, what)
        self.likelihood.check_support(x)
        if labels is not None and (labels.shape != x.shape[:1] or labels.is_floating_point()):
            raise DataError(f"the {what}'s labels must be one integer per image, shape ({x.shape[0]},)")

    # ---------------------------------------------------------------- diagnostics

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loc and scale of q(z | x) and the logits of q(c | x)."""
        return self.encoder(x)

    @torch.no_grad()
    def kl_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-datapoint KL_z (closed form, per dimension) and KL_c (discrete surrogate)."""
        loc, scale, logits = self.encoder(x)
        kl_z = 0.5 * (loc**2 + scale**2 - 1) - scale.log()
        kl_c = discrete_kl(dist.RelaxedOneHotCategorical(self.tau, logits=logits), self.prior_c())
        return {"kl_z": kl_z, "kl_c": kl_c, "logits": logits}

    @torch.no_grad()
    def heldout_metrics(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """Mean KL_z and KL_c (nats per image) and, with labels, the accuracy of the most probable
        code after the best one-to-one matching of codes to labels (:func:`match_codes`)."""
        kl = self.kl_terms(x)
        out = {"kl_z": kl["kl_z"].sum(-1).mean().item(), "kl_c": kl["kl_c"].mean().item()}
        if labels is not None:
            out["code_accuracy"] = match_codes(kl["logits"].argmax(-1), labels, self.categories)[0]
        return out

    @torch.no_grad()
    def decode_mean(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """E[x | z, c]."""
        return self.likelihood.mean(self.decoder(torch.cat([z, c], -1)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = mean of q(z | x), c = one-hot of the most probable code]."""
        loc, _, logits = self.encoder(x)
        return self.decode_mean(loc, nn.functional.one_hot(logits.argmax(-1), self.categories).to(loc))

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False) -> torch.Tensor:
        """Images from the model, z ~ p(z) and c ~ p(c) (relaxed, as the model defines it): E[x | z, c],
        or with ``sample=True`` draws x ~ p(x | z, c)."""
        z = torch.randn(num_samples, self.latent_dim, device=self.tau.device)
        c = self.prior_c().sample((num_samples,))
        out = self.decoder(torch.cat([z, c], -1))
        return self.likelihood(out).sample() if sample else self.likelihood.mean(out)

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return self.likelihood.to_picture(values)

    def report(self) -> dict[str, Any]:
        """What an evaluation summary records: the relaxed-code model whose log p(x) it is."""
        return {
            "likelihood": self.likelihood.name,
            "prior": f"normal({self.latent_dim}) x relaxed-categorical(K={self.categories}, tau={self.temperature})",
            "discrete_likelihood": True,
        }

    def write_pictures(self, run: Path, heldout: ImageData, history: list[dict], seed: int) -> list[str]:
        """reconstructions.png, samples.png, curves.png, latent.png, codes.png (samples per discrete
        code) and traversal-z<d>.png for the most used continuous dimensions (one row per code)."""
        from .. import plots

        run, shape = Path(run), self.image_shape
        x = self.prepare_data(heldout).observations(heldout_generator(seed), device=self.tau.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            plots.plot_reconstructions(run / "reconstructions.png", x[:64], self.reconstruct(x[:64]), shape)
            plots.plot_samples(run / "samples.png", self.generate(64), shape, "E[x | z, c], z ~ p(z), c ~ p(c) relaxed")
            written = ["reconstructions.png", "samples.png", *self._code_pictures(run, x[:5000])]
        written += plots.write_curves(run, history)
        n = min(len(x), 5000)
        labels = heldout.labels[:n] if heldout.labels is not None else None
        plots.plot_latent(run / "latent.png", self.encode(x[:n])[0], labels)
        return [*written, "latent.png"]

    def _code_pictures(self, run: Path, x: torch.Tensor) -> list[str]:
        from .. import plots

        codes = torch.eye(self.categories, device=self.tau.device)  # one row per discrete value
        rows = [f"c={k}" for k in range(self.categories)]
        z = torch.randn(10, self.latent_dim, device=codes.device)  # the same z in every row
        plots.plot_rows(run / "codes.png", [self.decode_mean(z, codes[k].expand(10, -1)) for k in range(len(codes))],
                        rows, self.image_shape, "E[x | z, c = one-hot k], the same z ~ p(z) in each column")
        written = ["codes.png"]
        p = torch.linspace(0.05, 0.95, TRAVERSAL_QUANTILES, device=codes.device)
        values = torch.distributions.Normal(0.0, 1.0).icdf(p)
        used = self.kl_terms(x)["kl_z"].mean(0).argsort(descending=True)[:TRAVERSAL_DIMS]
        for d in used.tolist():
            z = torch.zeros(len(values), self.latent_dim, device=codes.device)
            z[:, d] = values
            images = [self.decode_mean(z, codes[k].expand(len(values), -1)) for k in range(len(codes))]
            plots.plot_rows(run / f"traversal-z{d}.png", images, rows, self.image_shape,
                            f"z[{d}] over Normal quantiles 0.05..0.95, other z = 0",
                            col_labels=[f"{v:.1f}" for v in values.tolist()])
            written.append(f"traversal-z{d}.png")
        return written


class JointEncoder(nn.Module):
    """``x -> (loc, scale, logits)``: an MLP body, a Gaussian head for z and a logits head for c."""

    def __init__(self, data_dim: int, hidden: Sequence[int], latent_dim: int, categories: int, act: str) -> None:
        super().__init__()
        self.body = nn.Sequential(MLP(data_dim, hidden[:-1], hidden[-1], act), activation(act))
        self.gaussian = GaussianHead(hidden[-1], latent_dim)
        self.logits = nn.Linear(hidden[-1], categories)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(x)
        loc, scale = self.gaussian(h)
        log_probs = torch.log_softmax(self.logits(h), -1)
        return loc, scale, torch.logaddexp(log_probs, torch.full_like(log_probs, LOG_FLOOR))


# ---------------------------------------------------------------- matching codes to labels


def match_codes(codes: torch.Tensor, labels: torch.Tensor, num_codes: int | None = None) -> tuple[float, list[int]]:
    """Accuracy of ``codes`` as predictions of ``labels`` under the best one-to-one map of codes to
    labels, and that map (``mapping[k]`` is code k's label; ``-1`` for a code left unmatched when
    there are more codes than labels). Exact: the Hungarian algorithm (:func:`linear_assignment`)
    on the code-by-label count table."""
    codes, labels = codes.long().cpu(), labels.long().cpu()
    if codes.shape != labels.shape or codes.dim() != 1:
        raise ValueError(f"codes and labels must be 1-D of one length; got {tuple(codes.shape)}, {tuple(labels.shape)}")
    if len(codes) == 0:
        return float("nan"), []
    k = max(int(codes.max()) + 1, num_codes or 0)
    n_labels = int(labels.max()) + 1
    size = max(k, n_labels)
    counts = torch.zeros(size, size, dtype=torch.long)
    counts.index_put_((codes, labels), torch.ones_like(codes), accumulate=True)
    assign = linear_assignment((-counts).tolist())
    hits = sum(counts[i, assign[i]].item() for i in range(size))
    return hits / len(codes), [assign[i] if assign[i] < n_labels else -1 for i in range(k)]


def linear_assignment(cost: list[list[float]]) -> list[int]:
    """The column for each row of a square ``cost`` matrix minimising the total cost: the Hungarian
    algorithm (Kuhn 1955) with potentials, O(n³); exact for integer costs."""
    n = len(cost)
    u, v = [0.0] * (n + 1), [0.0] * (n + 1)
    match, way = [0] * (n + 1), [0] * (n + 1)  # match[j]: the row (1-based) given column j
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        slack, used = [math.inf] * (n + 1), [False] * (n + 1)
        while match[j0] != 0:  # grow an alternating tree from row i until a free column is reached
            used[j0] = True
            i0, delta, j1 = match[j0], math.inf, 0
            for j in range(1, n + 1):
                if not used[j]:
                    reduced = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if reduced < slack[j]:
                        slack[j], way[j] = reduced, j0
                    if slack[j] < delta:
                        delta, j1 = slack[j], j
            for j in range(n + 1):
                if used[j]:
                    u[match[j]] += delta
                    v[j] -= delta
                else:
                    slack[j] -= delta
            j0 = j1
        while j0:  # flip the augmenting path
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    assign = [0] * n
    for j in range(1, n + 1):
        assign[match[j] - 1] = j - 1
    return assign


def _check_options(latent_dim, categories, hidden, temperature, gamma, capacity_z, capacity_c, steps) -> None:
    checks = [
        (latent_dim >= 1, f"latent_dim must be >= 1, not {latent_dim}"),
        (categories >= 2, f"categories must be >= 2 (a code with one value holds nothing), not {categories}"),
        (len(hidden) >= 1 and all(h >= 1 for h in hidden), f"hidden needs one or more positive widths, not {hidden}"),
        (temperature > 0, f"temperature must be > 0 (Dupont: 0.67; smaller is closer to one-hot), not {temperature}"),
        (gamma >= 0, f"gamma must be >= 0 (Dupont's MNIST: 30), not {gamma}"),
        (capacity_z >= 0, f"capacity_z must be >= 0 nats (Dupont's MNIST: 5), not {capacity_z}"),
        (capacity_c >= 0, f"capacity_c must be >= 0 nats (at most log K counts), not {capacity_c}"),
        (steps >= 1, f"capacity_steps must be >= 1 (Dupont: 25000), not {steps}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
