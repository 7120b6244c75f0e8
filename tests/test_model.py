import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyrovae
from pyrovae.distributions import IndependentBernoulli


def traces(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_model_and_guide_shapes(arch):
    vae = pyrovae.VAE(latent_dim=5, hidden=(64,), arch=arch, activation="relu")
    x = torch.bernoulli(torch.full((7, 784), 0.3))
    model_trace, guide_trace = traces(vae, x)
    assert model_trace.nodes["z"]["value"].shape == (7, 5)
    assert model_trace.nodes["x"]["fn"].event_shape == (784,)
    assert model_trace.nodes["x"]["log_prob"].shape == (7,)
    assert guide_trace.nodes["z"]["log_prob"].shape == (7,)
    # every network parameter is registered with Pyro under the model's name
    names = set(pyro.get_param_store().keys())
    assert {f"vae.{n}" for n, _ in vae.named_parameters()} == {n.replace("$$$", ".") for n in names}


@pytest.mark.parametrize("data_dim", [784, 7, 1])  # groups of 56, a prime, a single pixel
def test_fast_bernoulli_equals_pyro_bernoulli(data_dim):
    torch.manual_seed(0)
    logits = torch.randn(3, 4, data_dim, dtype=torch.float64) * 10
    logits[0, 0, 0], logits[0, 1, -1] = 200.0, -200.0  # far tails: no under/overflow
    x = torch.bernoulli(torch.full((4, data_dim), 0.4, dtype=torch.float64))
    ours = IndependentBernoulli(logits.float()).log_prob(x.float())
    ref = dist.Bernoulli(logits=logits).to_event(1).log_prob(x)
    assert ours.shape == (3, 4)
    assert torch.allclose(ours.double(), ref, rtol=1e-5, atol=1e-3)
    expanded = IndependentBernoulli(logits[0].float()).expand((3, 4))
    assert torch.allclose(expanded.log_prob(x.float()).double(), ref[0].expand(3, 4), rtol=1e-5, atol=1e-3)
    assert expanded.sample().shape == (3, 4, data_dim)
    # the gradient is the Bernoulli score x - sigmoid(l), as for the fused BCE
    leaf = logits.float().requires_grad_()
    IndependentBernoulli(leaf).log_prob(x.float()).sum().backward()
    assert torch.allclose(leaf.grad.double(), x - torch.sigmoid(logits), atol=1e-5)


def test_closed_form_kl_matches_monte_carlo():
    """KL(N(mu, diag s^2) || N(0, I)) = 1/2 sum(s^2 + mu^2 - 1 - log s^2) (docs/math.md)
    equals Pyro's kl_divergence and the Monte Carlo average of log q(z) - log p(z)."""
    torch.manual_seed(0)
    vae = pyrovae.VAE(latent_dim=8, hidden=(32,))
    x = torch.bernoulli(torch.full((6, 784), 0.3))
    loc, scale = vae.encode(x)
    formula = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2)).sum(-1)
    q = dist.Normal(loc, scale).to_event(1)
    p = vae.prior()
    assert torch.allclose(torch.distributions.kl_divergence(q, p.expand((6,))), formula, rtol=1e-5)
    z = q.sample((200_000,))
    diff = (q.log_prob(z) - p.log_prob(z)).double()
    mc, se = diff.mean(0), diff.std(0) / math.sqrt(len(z))
    assert ((mc - formula.double()).abs() < 4 * se).all()


def test_meanfield_elbo_uses_the_closed_form_kl():
    """TraceMeanField_ELBO's loss = -E[log p(x|z)] + KL: check it against the formula with the
    reconstruction term estimated separately, within Monte Carlo error."""
    torch.manual_seed(1)
    vae = pyrovae.VAE(latent_dim=4, hidden=(32,))
    x = torch.bernoulli(torch.full((1, 784), 0.2))
    loc, scale = vae.encode(x)
    kl = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2)).sum()
    z = dist.Normal(loc, scale).sample((20_000,))
    rec = IndependentBernoulli(vae.decoder(z)).log_prob(x).detach().double()
    elbo_formula = rec.mean() - kl.double()
    losses = torch.tensor(
        [pyro.infer.TraceMeanField_ELBO().loss(vae.model, vae.guide, x) for _ in range(4000)],
        dtype=torch.float64,
    )
    se = math.hypot(rec.std() / math.sqrt(len(rec)), losses.std() / math.sqrt(len(losses)))
    assert abs(-losses.mean() - elbo_formula) < 4 * se


def test_bad_data_is_refused_before_training(binary_split):
    train, _ = binary_split
    vae = pyrovae.VAE(latent_dim=4, hidden=(32,))
    before = [p.detach().clone() for p in vae.parameters()]
    grey = train.with_space("grey")
    nan = train.observations(torch.Generator().manual_seed(0))[:100].clone()
    nan[5, 10] = float("nan")
    cases = [
        (grey, "bernoulli likelihood scores data in space 'binary-dynamic'.*with_space"),
        (grey.observations()[:100], "Bernoulli likelihood needs binary data.*binary-dynamic"),
        (nan, "NaN"),
        (torch.zeros(10, 28, 28), r"shape \(N, D\)"),
        (torch.zeros(10, 100), "expects 784"),
    ]
    for data, message in cases:
        with pytest.raises(pyrovae.DataError, match=message):
            pyrovae.train(vae.model, vae.guide, data, epochs=1, check_data=vae.check_data, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))


def test_user_pair_gets_a_clear_support_error_without_check_data():
    def model(x):
        w = pyro.param("w", torch.zeros(5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Bernoulli(logits=w).to_event(1), obs=x)

    def guide(x):
        pass

    with pytest.raises(pyrovae.DataError, match="site 'x'.*support"):
        pyrovae.train(model, guide, torch.rand(20, 5), epochs=1, progress=False)


def test_fast_tanh_equals_torch_tanh_in_value_and_gradient():
    from pyrovae.nets import Tanh

    x = torch.linspace(-30, 30, 10001, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(Tanh()(x), torch.tanh(x), rtol=0, atol=3e-7)
    leaf = x.clone().requires_grad_()
    Tanh()(leaf).sum().backward()
    assert torch.allclose(leaf.grad, 1 - torch.tanh(x) ** 2, rtol=0, atol=1e-6)


def test_fast_softplus_is_within_two_ulp_of_the_exact_value_with_the_exact_gradient():
    from pyrovae.nets import Softplus, softplus

    x = torch.cat([torch.linspace(-80, 100, 200_001), -torch.logspace(-8, 1.9, 20_001),
                   torch.logspace(-8, 1.9, 20_001), torch.tensor([0.0, float("inf"), -float("inf")])])
    exact = torch.nn.functional.softplus(x.double())
    with torch.no_grad():
        got = Softplus()(x)
    finite = torch.isfinite(exact) & (exact > 1e-30)  # below: float32's subnormals
    ulps = (got.double() - exact).abs()[finite] / (torch.finfo(torch.float32).eps * exact[finite])
    assert ulps.max() < 2
    assert got[-2] == float("inf") and got[-1] == 0 and torch.isnan(softplus(torch.tensor(float("nan"))))
    leaf = x[:-2].clone().requires_grad_()  # the gradient sigma(x), as F.softplus's to rounding
    softplus(leaf).sum().backward()
    assert torch.allclose(leaf.grad, torch.sigmoid(x[:-2]), rtol=1e-6, atol=0)
    # twice differentiable (a contractive penalty differentiates the gradient)
    d = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softplus, (d,)) and torch.autograd.gradgradcheck(softplus, (d,))
    # a jit trace (the trainer's compiled loss) gives the eager values and gradient
    w = torch.randn(5, 3, requires_grad=True)
    traced = torch.jit.trace(lambda a, v: softplus(a @ v), (torch.randn(4, 5), w), check_trace=False)
    a = torch.randn(4, 5)
    eager_grad = torch.autograd.grad(softplus(a @ w).sum(), w)[0]
    assert torch.equal(traced(a, w), softplus(a @ w))
    assert torch.equal(torch.autograd.grad(traced(a, w).sum(), w)[0], eager_grad)
    assert Softplus(beta=2.0)(x[:5]).equal(torch.nn.functional.softplus(x[:5], beta=2.0))


def test_predictive_on_the_model_draws_real_samples():
    """Before: Predictive(vae.model) returned the data and model(None) failed."""
    from pyro import poutine
    from pyro.infer import Predictive

    vae = pyrovae.VAE(latent_dim=3, hidden=(16,))
    prior = Predictive(vae.model, num_samples=7)()
    assert prior["x"].shape == (7, 1, 784) and prior["z"].shape == (7, 1, 3)
    assert set(prior["x"].unique().tolist()) == {0.0, 1.0}  # Bernoulli draws, not means
    wide = Predictive(vae.model, num_samples=4, parallel=True)(None, num_datapoints=5)
    assert wide["x"].shape == (4, 5, 784)
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    posterior = Predictive(poutine.uncondition(vae.model), guide=vae.guide, num_samples=6)(x)
    assert posterior["x"].shape == (6, 5, 784) and not torch.equal(posterior["x"][0], x)
    means, draws = vae.generate(10), vae.generate(10, sample=True)
    assert ((means > 0) & (means < 1)).all() and set(draws.unique().tolist()) <= {0.0, 1.0}


def test_a_vae_observes_image_data_in_its_likelihoods_space(embedded):
    """Before: a categorical VAE trained on binarised digits passed every check."""
    vae = pyrovae.VAE(latent_dim=2, hidden=(16,), likelihood="categorical", likelihood_options={"levels": 16})
    digits = embedded.subset(slice(0, 300))
    trainer = pyrovae.train(vae.model, vae.guide, digits, digits, epochs=1, progress=False, verbose=False)
    # found through vae.model: observed as 16 grey levels, a categorical's score (~ -784 log 16 untrained)
    assert trainer.prepare_data == vae.prepare_data
    assert -2300 < trainer.history[-1]["heldout_elbo"] < -1000
    with pytest.raises(pyrovae.DataError, match=r"scores data in space 'levels'.*with_space\('levels', 16\)"):
        pyrovae.train(vae.model, vae.guide, digits.with_space("binary-dynamic"), epochs=1, progress=False)
    with pytest.raises(pyrovae.DataError, match="has 16 levels but .* quantised to 8"):
        pyrovae.train(vae.model, vae.guide, digits.with_space("levels", 8), epochs=1, progress=False)
    dequantized = pyrovae.VAE(latent_dim=2, hidden=(16,), likelihood="beta").prepare_data(digits)
    assert dequantized.space == "dequantized"
