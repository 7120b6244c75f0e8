"""Importance-sampled log p(x) against closed-form answers.

Linear-Gaussian model: z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D), so that
p(x) = N(b, W W^T + s^2 I) and p(z | x) = N(m(x), S) with S = (I + W^T W / s^2)^-1 and
m(x) = S W^T (x - b) / s^2. With q = p(z | x) every weight equals p(x).
"""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO
from torch import nn

import pyrovae
from pyrovae.infer import ContractError, log_importance_weights, psis_khat

D, LATENT, SIGMA = 5, 3, 0.5


def linear_gaussian():
    """Data, parameters and exact answers of the linear-Gaussian model (the `lingauss` fixture of conftest)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D, LATENT, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    z = torch.randn(40, LATENT, generator=g, dtype=torch.float64)
    x = z @ W.T + b + SIGMA * torch.randn(40, D, generator=g, dtype=torch.float64)
    cov_x = W @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    exact = dist.MultivariateNormal(b, cov_x).log_prob(x)
    post_cov = torch.linalg.inv(torch.eye(LATENT, dtype=torch.float64) + W.T @ W / SIGMA**2)
    return W, b, x, exact, post_cov


def make_pair(W, b, post_cov, shift=0.0, widen=1.0):
    """A user-written pair with pyro.param: the exact posterior as the guide when shift=0 and
    widen=1, else a deliberately poor one (mean moved by `shift`, covariance times widen^2)."""

    def model(x):
        w = pyro.param("W", W)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(b[:LATENT]), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T + b, SIGMA).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc = (x - b) @ W @ post_cov.T / SIGMA**2 + shift
            pyro.sample("z", dist.MultivariateNormal(loc, widen**2 * post_cov))

    return model, guide


def test_exact_posterior_gives_the_exact_marginal_even_with_one_sample(lingauss):
    """(a) and (e): a user-written pair, K = 1 and K = 50, float64."""
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    for k in (1, 50):
        res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=k)
        assert res.log_px.shape == (40,)
        assert torch.allclose(res.log_px, exact, atol=1e-9, rtol=0)
    assert torch.allclose(res.ess, torch.full_like(res.ess, 50.0))
    assert torch.allclose(res.stderr, torch.zeros(40, dtype=torch.float64), atol=1e-6)
    assert (res.khat == -math.inf).all()  # equal weights: no tail at all


class TwoSiteLinearGaussian(nn.Module):
    """The same model with z split into sites z1 (first coordinate) and z2 (the rest), the
    exact posterior written as q(z1 | x) q(z2 | z1, x), and parameters in nn.Modules."""

    def __init__(self, W, b, post_cov):
        super().__init__()
        self.W, self.b, self.S = nn.Parameter(W.clone()), b, post_cov

    def model(self, x):
        pyro.module("lg", self)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros_like(x[:, 0]), 1.0))
            z2 = pyro.sample("z2", dist.Normal(torch.zeros_like(x[:, :2]), 1.0).to_event(1))
            z = torch.cat([z1.unsqueeze(-1), z2], -1)
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, SIGMA).to_event(1), obs=x)

    def guide(self, x):
        m = (x - self.b) @ self.W.detach() @ self.S.T / SIGMA**2
        S = self.S
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(m[:, 0], S[0, 0].sqrt()))
            gain = S[1:, 0] / S[0, 0]  # conditional Gaussian of z2 given z1
            loc2 = m[:, 1:] + (z1 - m[:, 0]).unsqueeze(-1) * gain
            cov2 = S[1:, 1:] - torch.outer(S[1:, 0], S[0, 1:]) / S[0, 0]
            pyro.sample("z2", dist.MultivariateNormal(loc2, cov2))


def test_several_latent_sites_and_chunking(lingauss):
    W, b, x, exact, post_cov = lingauss
    pair = TwoSiteLinearGaussian(W, b, post_cov)
    for chunk in (7, 64, 10_000):  # splits data, particles, or neither
        res = pyrovae.log_marginal_likelihood(pair.model, pair.guide, x, num_samples=20, chunk_size=chunk)
        assert torch.allclose(res.log_px, exact, atol=1e-9, rtol=0)


def test_discrete_latent_sampled_by_the_guide():
    """Aziz's mixture model: c ~ Cat(pi), x | c ~ N(mu_c, 1). With q(c | x) = p(c | x)
    every weight is p(x) = sum_c pi_c N(x; mu_c, 1)."""
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    mu = torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64)
    x = torch.linspace(-6, 7, 30, dtype=torch.float64).unsqueeze(-1)
    joint = pi.log() + dist.Normal(mu, 1.0).log_prob(x)  # (30, 3)
    exact = torch.logsumexp(joint, -1)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(pi))
            pyro.sample("x", dist.Normal(mu[c].unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=pi.log() + dist.Normal(mu, 1.0).log_prob(x)))

    res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=30)
    assert torch.allclose(res.log_px, exact, atol=1e-9, rtol=0)


def test_poor_guide_error_shrinks_with_k_and_sits_within_its_error_bars(lingauss):
    """(b): the guide's mean is off by 0.3 and its spread 1.3 times too wide (a wider
    proposal keeps the weights' variance finite)."""
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=1.3)
    errors = []
    for k in (10, 100, 1000, 10_000):
        res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=k)
        err = res.log_px - exact
        errors.append(err.abs().mean().item())
        assert (err.abs() < 3 * res.stderr + 1e-12).double().mean() >= 0.9
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 10
    assert (res.khat < 0.7).all()


def test_too_narrow_guide_is_flagged_by_khat(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.5, widen=0.4)
    with pytest.warns(UserWarning, match="k-hat > 0.7"):
        res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=2000)
    assert (res.khat > 0.7).double().mean() > 0.5
    assert (res.log_px < exact).double().mean() > 0.8  # heavy tails: biased low in practice


def test_elbo_below_iwae_below_log_px(lingauss):
    """(c): E[log p^_K] increases with K and stays below log p(x), beyond Monte Carlo error."""
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.5, widen=1.5)
    bounds, ses = [], []
    for k in (1, 5, 50):
        # 200 replicate estimates of the bound, averaged over datapoints
        reps = torch.stack(
            [log_importance_weights(model, guide, x, num_particles=k).logsumexp(0) - math.log(k)
             for _ in range(200)]
        ).mean(1)
        bounds.append(reps.mean().item())
        ses.append(reps.std().item() / math.sqrt(len(reps)))
    truth = exact.mean().item()
    assert bounds[0] + 3 * ses[0] < bounds[1] and bounds[1] + 3 * ses[1] < bounds[2]
    assert bounds[2] < truth


def test_sum_of_per_datapoint_estimates_matches_renyi_elbo():
    """(d): sum_i log p^_K(x_i) against Pyro's RenyiELBO(alpha=0) for our VAE, K = 20."""
    torch.manual_seed(0)
    vae = pyrovae.VAE(latent_dim=4, hidden=(32,))
    x = torch.bernoulli(torch.full((16, 784), 0.3))
    renyi = RenyiELBO(alpha=0, num_particles=20, vectorize_particles=True, max_plate_nesting=1)
    ours = torch.tensor([
        pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=20).log_px.sum().item()
        for _ in range(100)
    ])
    theirs = torch.tensor([-renyi.loss(vae.model, vae.guide, x) for _ in range(100)])
    se = math.sqrt(ours.var() / 100 + theirs.var() / 100)
    assert abs(ours.mean() - theirs.mean()) < 4 * se


def test_contract_violations_are_named():
    x = torch.randn(10, 2)

    def good_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def good_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.8).to_event(1))

    def global_latent_model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(mu.unsqueeze(-1) * torch.ones(2), 1.0).to_event(1), obs=x)

    def global_latent_guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    def obs_outside_model(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(2), obs=x)

    def enumerated_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.8).to_event(1), infer={"enumerate": "parallel"})

    def subsampled_model(x):
        with pyro.plate("data", 100, subsample_size=x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)

    def missing_batch_event_model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([x.shape[0], 2]), obs=x)

    def empty_guide(x):
        pass

    cases = [
        (global_latent_model, global_latent_guide, "'mu' is outside pyro.plate"),
        (obs_outside_model, empty_guide, "observed model site 'x' is outside"),
        (good_model, enumerated_guide, "enumerated"),
        (good_model, empty_guide, "not in the guide"),
        (subsampled_model, empty_guide, "without subsampling"),
        (missing_batch_event_model, empty_guide, r"Shape mismatch inside plate\('data'\)"),
    ]
    for model, guide, message in cases:
        with pytest.raises(ContractError, match=message):
            pyrovae.log_marginal_likelihood(model, guide, x, num_samples=4)
    assert pyrovae.log_marginal_likelihood(good_model, good_guide, x, num_samples=4).log_px.shape == (10,)


def test_khat_backends_agree():
    """ArviZ 0.x (az.psislw) and 1.x (arviz_stats) give the same k-hat for our weights."""
    pytest.importorskip("arviz_stats")
    rng = np.random.default_rng(0)
    lw = np.concatenate([rng.standard_normal((3, 4000)), 3 * rng.standard_t(2, (3, 4000))])
    a = psis_khat(lw, backend="arviz")
    b = psis_khat(lw, backend="arviz_stats")
    assert np.allclose(a, b, atol=0.05)
    assert (a[:3] < 0.5).all() and (a[3:] > 0.4).all()


def _doc_blocks():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "importance_sampling.md").read_text()
    return [b.replace("print(res.summary())", "") for b in re.findall(r"```python\n(.*?)```", text, re.S)]


def _mixture_exact(x):
    components = torch.distributions.Normal(torch.arange(3.0), math.sqrt(2.0))
    return (torch.logsumexp(components.log_prob(x.unsqueeze(-1)), -1) - math.log(3)).double()


def test_contract_examples_in_the_docs_recover_the_exact_mixture_density():
    """docs/importance_sampling.md's first two pairs: x ~ (1/3) sum_c N(c, 2), c sampled by the
    guide, then c enumerated in the model and summed out."""
    blocks = _doc_blocks()
    pyro.set_rng_seed(0)
    scope = {}
    for block in blocks[:2]:
        exec(compile(block, "importance_sampling.md", "exec"), scope)
        x, res = scope["x"].squeeze(-1), scope["res"]
        err = res.log_px - _mixture_exact(x)
        assert (err.abs() < 4 * res.stderr + 1e-6).all()
        assert abs(err.mean()) < 4 * res.mean_stderr
        assert res.khat.max() < 0.7
    assert "enumerate" in blocks[1]


def test_conditional_example_in_the_docs_is_exact_with_one_sample(capsys):
    blocks = _doc_blocks()
    scope = {}
    exec(compile(blocks[0].split("x = 3 *")[0] + blocks[2], "importance_sampling.md", "exec"), scope)
    assert scope["res"].log_px.shape == (500,)
    assert torch.allclose(scope["res"].log_px, scope["exact"].double(), atol=1e-5, rtol=0)
    assert "tensor(" in capsys.readouterr().out


def test_the_docs_state_the_default_chunk_size_of_the_code():
    from pathlib import Path

    from pyrovae.infer.importance import DEFAULT_CHUNK_SIZE

    text = (Path(__file__).parents[1] / "docs" / "importance_sampling.md").read_text()
    assert f"default 2¹² = {DEFAULT_CHUNK_SIZE:,}" in text and DEFAULT_CHUNK_SIZE == 2**12


def test_khat_of_weights_equal_up_to_float32_rounding_is_minus_infinity():
    """A perfect proposal's weights computed in float32 differ by rounding only (1e-5 apart at
    |log w| = 550): no tail to fit, k-hat -inf, where ArviZ alone raises 'All tail values are the same'."""
    lw = np.float32(-550.0) + np.random.default_rng(0).normal(0, 1e-5, (3, 200)).astype(np.float32)
    assert np.all(psis_khat(lw) == -np.inf)
    mixed = np.vstack([lw[:1].astype(np.float64), np.random.default_rng(1).normal(size=(1, 200))])
    k = psis_khat(mixed)
    assert k[0] == -np.inf and np.isfinite(k[1])


# ------------------------------------------------------------------------- the compiled pass


def _estimates(model, guide, x, *args, jit, **options):
    pyro.set_rng_seed(0)
    return pyrovae.log_marginal_likelihood(model, guide, x, *args, jit=jit, workers=1, khat_warn_share=1.0, **options)


def test_compiled_pass_gives_the_eager_estimate(lingauss, monkeypatch):
    """A poor guide (the weights vary from draw to draw): the graph draws the eager pass's random numbers.
    Not to float64 precision: the trace records d log(2 pi) of the MultivariateNormal in float32."""
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=1.5)
    eager = _estimates(model, guide, x, jit=False, num_samples=50, chunk_size=64)
    traced = []
    trace = torch.jit.trace
    monkeypatch.setattr(torch.jit, "trace", lambda *a, **k: traced.append(1) or trace(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager would warn
        compiled = _estimates(model, guide, x, jit=True, num_samples=50, chunk_size=64)
    assert traced  # a graph was built (and, with no warning, used)
    assert torch.allclose(compiled.log_px, eager.log_px, atol=1e-6, rtol=0)
    assert torch.allclose(compiled.ess, eager.ess, atol=1e-4, rtol=0)
    assert (eager.log_px - exact).abs().max() > 1e-3  # a frozen draw would have shown


def test_compiled_pass_with_a_python_number_argument_gives_the_eager_estimate(lingauss):
    W, b, x, _, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3)

    def scaled_model(x, shift):  # a Python number passed whole to every chunk
        return model(x - shift)

    def scaled_guide(x, shift):
        return guide(x - shift)

    eager = _estimates(scaled_model, scaled_guide, x, 0.5, jit=False, num_samples=30, chunk_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled = _estimates(scaled_model, scaled_guide, x, 0.5, jit=True, num_samples=30, chunk_size=16)
    assert torch.allclose(compiled.log_px, eager.log_px, atol=1e-6, rtol=0)


@pytest.mark.parametrize("total, why", [
    (lambda x: float(x.sum()), "converts a tensor to a Python or NumPy value"),  # refused when tracing
    (lambda x: np.asarray(x).sum(), "differs from the eager one"),  # no tracer warning: the check on other rows
], ids=["float", "numpy"])
def test_python_branch_on_the_data_is_not_compiled(total, why):
    """A trace would freeze the branch of the first chunk for every chunk; the pass stays eager."""
    x = torch.tensor([[-1.0], [2.0], [-0.5], [1.5]], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            scale = 1.0 if total(x) > 0 else 3.0  # control flow on the data
            pyro.sample("x", dist.Normal(z, scale).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.8).to_event(1))

    eager = _estimates(model, guide, x, jit=False, num_samples=40, chunk_size=8)
    with pytest.warns(UserWarning, match=rf"{why}.*Evaluating without jit"):
        compiled = _estimates(model, guide, x, jit=True, num_samples=40, chunk_size=8)
    assert torch.allclose(compiled.log_px, eager.log_px, atol=1e-12, rtol=0)
    scales = torch.where(x > 0, 1.0, 3.0).squeeze(-1).double()
    exact = dist.Normal(0.0, (1 + scales**2).sqrt()).log_prob(x.squeeze(-1))
    assert ((eager.log_px - exact).abs() < 5 * eager.stderr + 1e-6).all()


def test_jit_must_be_a_bool_or_none(lingauss):
    W, b, x, _, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    with pytest.raises(ValueError, match="jit must be True, False or None"):
        pyrovae.log_marginal_likelihood(model, guide, x, num_samples=5, jit="yes")
    with pytest.raises(ValueError, match="jit=True compiles the weight pass of method='is'"):
        pyrovae.log_marginal_likelihood(model, guide, x, num_samples=5, method="ais", jit=True)
