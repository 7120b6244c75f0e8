"""The Fréchet distance: zero for a set against itself, the closed form for Gaussians, and a shipped
MNIST classifier whose features tell digits from decoded noise."""

import math
from importlib import resources

import pytest
import torch

import pyrovae
from pyrovae.frechet import (
    WEIGHTS,
    classifier_accuracy,
    classifier_features,
    frechet_distance,
    frechet_distance_gaussians,
    gaussian_fit,
    load_classifier,
)
from pyrovae.models import AutoEncoder


@pytest.fixture(scope="module")
def grey_digits():
    return pyrovae.load_embedded_mnist().with_space("grey").observations()


def _random_cov(k, seed):
    a = torch.randn(k, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(k, dtype=torch.float64)


def test_a_set_against_itself_is_zero(grey_digits):
    x = grey_digits[:500]
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    mu, sigma = gaussian_fit(classifier_features(x))
    assert frechet_distance_gaussians(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)


def test_the_formula_matches_closed_forms_for_gaussians():
    mu1, mu2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 3.0])
    # diagonal (commuting) covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 of the standard deviations
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    expected = 5.0 + ((s1 - s2) ** 2).sum().item()
    assert frechet_distance_gaussians(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2)) == pytest.approx(expected)
    # commuting, rotated: the same eigenvectors
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    c1, c2 = q @ torch.diag(s1.double() ** 2) @ q.T, q @ torch.diag(s2.double() ** 2) @ q.T
    assert frechet_distance_gaussians(mu1, c1, mu2, c2) == pytest.approx(expected)
    # non-commuting 2x2: tr (S1 S2)^(1/2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    a, b = _random_cov(2, 2), _random_cov(2, 3)
    tr_sqrt = math.sqrt((a @ b).trace().item() + 2 * math.sqrt(torch.det(a).item() * torch.det(b).item()))
    expected = 1.0 + a.trace().item() + b.trace().item() - 2 * tr_sqrt
    assert frechet_distance_gaussians(torch.zeros(2), a, torch.tensor([1.0, 0.0]), b) == pytest.approx(expected)
    # features drawn from known Gaussians: the fitted distance approaches the exact one
    k, n = 8, 200_000
    ca, cb = _random_cov(k, 4), _random_cov(k, 5)
    ma, mb = torch.zeros(k, dtype=torch.float64), torch.ones(k, dtype=torch.float64)
    exact = frechet_distance_gaussians(ma, ca, mb, cb)
    torch.manual_seed(0)
    fa = torch.distributions.MultivariateNormal(ma, ca).sample((n,))
    fb = torch.distributions.MultivariateNormal(mb, cb).sample((n,))
    assert frechet_distance_gaussians(*gaussian_fit(fa), *gaussian_fit(fb)) == pytest.approx(exact, rel=0.02)


def test_the_shipped_classifier_is_small_float16_and_loads_as_weights():
    with resources.as_file(resources.files("pyrovae") / "_embedded" / WEIGHTS) as path:
        assert path.stat().st_size < 1.5e6
        state = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values())
    net = load_classifier()
    assert net.features(torch.zeros(3, 784)).shape == (3, 128)


def test_the_classifier_reads_mnist_test_digits(mnist_dir):
    test = pyrovae.load_dataset("mnist", "test", mnist_dir).subset(slice(0, 1000))
    assert classifier_accuracy(test.with_space("grey").observations(), test.labels) > 0.97  # 0.982 measured


def test_test_digits_are_far_from_decoded_noise_and_close_to_training_digits(grey_digits, mnist_dir):
    test = pyrovae.load_dataset("mnist", "test", mnist_dir).subset(slice(0, 2000)).with_space("grey").observations()
    training = frechet_distance(test, grey_digits[:2000])
    torch.manual_seed(0)
    noise = AutoEncoder().generate(2000)  # an untrained decoder's E[x | z], z ~ N(0, I)
    decoded = frechet_distance(test, noise)
    assert training < 10 and decoded > 30 * training, (training, decoded)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        frechet_distance(test, 255 * test)
