r"""Sample quality by the Fréchet distance in the features of a small MNIST classifier.

The Fréchet Inception Distance (Heusel et al. 2017) fits a Gaussian to the penultimate-layer
features of a classifier for each of two image sets and reports the Fréchet (2-Wasserstein)
distance between the two Gaussians,

.. math::

    d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2}\big).

Inception features mean little for 28x28 digits, so pyrovae ships its own feature network
(:class:`MNISTClassifier`, a 784-256-128-10 ReLU MLP trained on the 60,000 MNIST training
digits' grey values, ``_embedded/mnist_classifier.pt``; how it was trained and its test accuracy
are in ``_embedded/README.md``, ``benchmarks/train_classifier.py`` re-creates it); the features are
its 128 penultimate ReLU activations. Numbers are comparable only with numbers from the same
network and the same sample sizes (the estimate is biased upwards for small sets).

The trace of the matrix square root is computed stably in float64 from the symmetric positive
semi-definite :math:`\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}`, which has the eigenvalues of
:math:`\Sigma_1 \Sigma_2`: :math:`\operatorname{tr}(\Sigma_1\Sigma_2)^{1/2} = \sum_k \sqrt{\lambda_k}`,
negative round-off eigenvalues clipped to 0 (no complex parts, unlike ``scipy.linalg.sqrtm``).

Images are ``(N, 784)`` values in ``[0, 1]``: grey digits (``ImageData.with_space("grey")``), or
a decoder's means :math:`E[x \mid z]` -- for a Bernoulli decoder trained on dynamically binarised
digits these are on the grey digits' scale, since a grey value is the mean of its binarisation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from importlib import resources

import torch
from torch import nn

WEIGHTS = "mnist_classifier.pt"


class MNISTClassifier(nn.Module):
    """``784 -> 256 -> 128 -> 10``, ReLU; :meth:`features` are the 128 penultimate activations.

    Example:

    >>> import torch
    >>> from pyrovae.frechet import MNISTClassifier
    >>> net = MNISTClassifier()
    >>> net(torch.zeros(3, 784)).shape, net.features(torch.zeros(3, 784)).shape
    (torch.Size([3, 10]), torch.Size([3, 128]))
    """

    def __init__(self, data_dim: int = 784, hidden: Sequence[int] = (256, 128), classes: int = 10) -> None:
        super().__init__()
        dims = [data_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(dims[-1], classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.head(self.body(x))


@functools.cache
def load_classifier() -> MNISTClassifier:
    """The shipped classifier (float16 weights, read with ``weights_only=True``, used in float32)."""
    with resources.as_file(resources.files("pyrovae") / "_embedded" / WEIGHTS) as path:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net = MNISTClassifier()
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval().requires_grad_(False)


def _images(images: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(images).detach().float().cpu()
    x = x.reshape(len(x), -1)
    if x.shape[1] != 784:
        raise ValueError(f"the MNIST classifier takes 28x28 images, (N, 784); got shape {tuple(images.shape)}")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"images must lie in [0, 1] (grey values or Bernoulli means); got [{x.min():.3g}, "
                         f"{x.max():.3g}]")
    return x


@torch.no_grad()
def classifier_features(images: torch.Tensor, classifier: MNISTClassifier | None = None,
                        batch_size: int = 2000) -> torch.Tensor:
    """Penultimate features ``(N, 128)`` of ``images`` (``(N, 784)`` in ``[0, 1]``), float64.

    Example:

    >>> import pyrovae
    >>> from pyrovae.frechet import classifier_features
    >>> grey = pyrovae.load_embedded_mnist().subset(slice(0, 100)).with_space("grey").observations()
    >>> classifier_features(grey).shape
    torch.Size([100, 128])
    """
    net = classifier or load_classifier()
    x = _images(images)
    return torch.cat([net.features(part).double() for part in x.split(batch_size)])


@torch.no_grad()
def classifier_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: MNISTClassifier | None = None) -> float:
    """Share of ``images`` whose most probable class is their label.

    Example:

    >>> import pyrovae
    >>> from pyrovae.frechet import classifier_accuracy
    >>> digits = pyrovae.load_embedded_mnist().subset(slice(0, 100))
    >>> classifier_accuracy(digits.with_space("grey").observations(), digits.labels) > 0.9
    True
    """
    net = classifier or load_classifier()
    predicted = torch.cat([net(part).argmax(-1) for part in _images(images).split(2000)])
    return (predicted == torch.as_tensor(labels).cpu()).double().mean().item()


def gaussian_fit(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of ``(N, k)`` features, float64.

    Example:

    >>> import torch
    >>> from pyrovae.frechet import gaussian_fit
    >>> mu, sigma = gaussian_fit(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
    >>> mu.tolist(), sigma.tolist()
    ([1.0, 1.0], [[2.0, 0.0], [0.0, 0.0]])
    """
    f = torch.as_tensor(features).double()
    if f.dim() != 2 or len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors as an (N, k) tensor; got shape {tuple(f.shape)}")
    mu = f.mean(0)
    fc = f - mu
    return mu, fc.T @ fc / (len(f) - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance_gaussians(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                               sigma2: torch.Tensor) -> float:
    r""":math:`\|\mu_1 - \mu_2\|^2 + \operatorname{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`, in float64.

    Example:

    >>> import torch
    >>> from pyrovae.frechet import frechet_distance_gaussians
    >>> eye = torch.eye(2, dtype=torch.float64)
    >>> frechet_distance_gaussians(torch.zeros(2), eye, torch.tensor([3.0, 4.0]), 4 * eye)
    27.0
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t).double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    value = diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(value.item(), 0.0)


def frechet_distance(images_a: torch.Tensor, images_b: torch.Tensor,
                     classifier: MNISTClassifier | None = None) -> float:
    """The Fréchet distance between Gaussians fitted to the classifier features of two image sets
    (``(N, 784)`` values in ``[0, 1]``; the sizes may differ).

    Example:

    >>> import torch
    >>> from pyrovae.frechet import frechet_distance
    >>> a = torch.rand(200, 784, generator=torch.Generator().manual_seed(0))
    >>> b = torch.rand(200, 784, generator=torch.Generator().manual_seed(1))
    >>> frechet_distance(a, a) < 1e-6, frechet_distance(a, b) > 0
    (True, True)
    """
    fa, fb = (classifier_features(x, classifier) for x in (images_a, images_b))
    return frechet_distance_gaussians(*gaussian_fit(fa), *gaussian_fit(fb))
