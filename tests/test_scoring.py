"""Scores on one scale and the paired comparison of runs (pyrovae.scoring, `pyrovae compare`)."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.scoring import ComparisonError, Scored, compare, data_scale, on_scale


def _uniform_pair(levels=None):
    """p(x) uniform on (0,1)^D (a density) or on L levels (a mass), with a dummy latent."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            if levels is None:
                pyro.sample("x", dist.Uniform(0.0, 1.0).expand([x.shape[1]]).to_event(1), obs=x)
            else:
                pyro.sample("x", dist.Categorical(logits=torch.zeros(levels)).expand([x.shape[1]]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    return model, guide


def test_uniform_density_and_uniform_levels_score_the_uniform_8bit_mass():
    """Both are the uniform distribution over 256^D images once put on the 8-bit scale."""
    d = 12
    k = torch.randint(0, 256, (5, d)).float()
    dequantized = (k + torch.rand_like(k)) / 256
    levels16 = torch.div(k, 16, rounding_mode="floor")
    res_cont = pyrovae.log_marginal_likelihood(*_uniform_pair(), dequantized, num_samples=30)
    res_cat = pyrovae.log_marginal_likelihood(*_uniform_pair(16), levels16, num_samples=30)
    a = Scored.from_result("uniform density", res_cont, "dequantized")
    b = Scored.from_result("uniform 16 levels", res_cat, "levels", levels=16)
    assert a.key == b.key  # same scale, so comparable
    assert np.allclose(a.log_px, -d * math.log(256), atol=1e-4)
    assert np.allclose(b.log_px, -d * math.log(256), atol=1e-4)
    assert on_scale(float(a.log_px.mean()), d, "dequantized")["bits_per_dim"] == pytest.approx(16.0, abs=1e-4)


def test_data_spaces_map_to_their_scales():
    assert data_scale("dequantized") == ("8-bit", -math.log(256))
    assert data_scale("levels", 256) == ("8-bit", 0.0)
    assert data_scale("levels", 10)[0] == "levels-10"  # 256 is not a multiple of 10
    assert data_scale("grey")[0] == "grey-density"
    assert data_scale("binary-dynamic")[0] == "binary-dynamic"


def _scored(name, log_px, scale="8-bit", seed=0, k=100):
    n = len(log_px)
    summary = {"scale": scale, "dataset": "mnist", "data": "mnist-test", "heldout_seed": seed,
               "num_datapoints": n, "data_dim": 784, "num_samples": k, "likelihood": name, "prior": "normal"}
    return Scored(name, np.asarray(log_px, float), np.full(n, 0.01), np.zeros(n), summary)


def test_paired_standard_error_is_that_of_the_differences():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(-100, 20, size=400)  # shared by both models: cancels in the pairs
    better = difficulty + 1.0 + rng.normal(0, 0.5, 400)
    worse = difficulty + rng.normal(0, 0.5, 400)
    table = compare([_scored("worse", worse), _scored("better", better)])
    assert [r["run"] for r in table] == ["better", "worse"]
    d = worse - better
    assert table[1]["diff"] == pytest.approx(d.mean())
    assert table[1]["diff_se"] == pytest.approx(d.std(ddof=1) / math.sqrt(400))
    assert table[1]["diff_se"] < 0.1 * table[1]["se"]  # pairing removes the test points' spread
    assert table[0]["diff"] == 0 and table[0]["diff_se"] == 0


def test_runs_on_different_data_spaces_are_not_ranked():
    a = _scored("bernoulli", np.full(10, -90.0), scale="binary-dynamic")
    b = _scored("gaussian", np.full(10, -700.0), scale="8-bit")
    with pytest.raises(ComparisonError, match="cannot be ranked"):
        compare([a, b])
    with pytest.raises(ComparisonError, match="cannot be ranked"):
        compare([_scored("a", np.zeros(10)), _scored("b", np.zeros(10), seed=1)])
    with pytest.raises(ComparisonError, match="different K"):
        compare([_scored("a", np.zeros(10)), _scored("b", np.zeros(10), k=5)])
