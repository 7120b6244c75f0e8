"""The widened contract: several tensors per datapoint, enumerated sites, scaled sites, any
objective, per-step factors -- each against an exact answer where one exists.

Conditional linear-Gaussian model: z | y ~ N(A y, I), x | z, y ~ N(W z + B y + b, s^2 I), so
p(x | y) = N(W A y + B y + b, W W^T + s^2 I) and p(z | x, y) = N(m, S) with
S = (I + W^T W / s^2)^-1, m = S (A y + W^T (x - B y - b) / s^2).
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, TraceEnum_ELBO, TraceGraph_ELBO
from torch import nn

import pyrovae
from pyrovae.infer import ContractError, log_importance_weights

D, L, Y, SIGMA = 5, 2, 3, 0.5
F64 = torch.float64


@pytest.fixture
def conditional():
    g = torch.Generator().manual_seed(0)
    W, A = torch.randn(D, L, generator=g, dtype=F64), torch.randn(L, Y, generator=g, dtype=F64)
    B, b = torch.randn(D, Y, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64)
    y = torch.randn(100, Y, generator=g, dtype=F64)
    z = y @ A.T + torch.randn(100, L, generator=g, dtype=F64)
    x = z @ W.T + y @ B.T + b + SIGMA * torch.randn(100, D, generator=g, dtype=F64)
    cov = W @ W.T + SIGMA**2 * torch.eye(D, dtype=F64)
    exact = dist.MultivariateNormal(y @ (W @ A + B).T + b, cov).log_prob(x)
    S = torch.linalg.inv(torch.eye(L, dtype=F64) + W.T @ W / SIGMA**2)

    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(y @ A.T, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + y @ B.T + b, SIGMA).to_event(1), obs=x)

    def guide(x, y):
        with pyro.plate("data", x.shape[0]):
            m = (y @ A.T + (x - y @ B.T - b) @ W / SIGMA**2) @ S.T
            pyro.sample("z", dist.MultivariateNormal(m, S))

    return model, guide, x, y, exact


def test_conditional_pair_gets_its_exact_log_px_given_y_in_chunks(conditional):
    """Before: y was passed whole to every chunk and the guide died with a size error."""
    model, guide, x, y, exact = conditional
    for chunk in (1, 7, 10_000):  # one row per chunk, several, all at once
        res = pyrovae.log_marginal_likelihood(model, guide, x, y, num_samples=1, chunk_size=chunk)
        assert res.log_px.shape == (100,)
        assert torch.allclose(res.log_px, exact, atol=1e-9, rtol=0)
    chunked = pyrovae.log_marginal_likelihood(model, guide, x, y, num_samples=100, chunk_size=150)
    assert torch.allclose(chunked.log_px, exact, atol=1e-9, rtol=0)


def test_keyword_tensors_are_passed_whole(conditional):
    model, guide, x, y, exact = conditional

    def model_kw(x, *, y):
        return model(x, y)

    def guide_kw(x, *, y):
        return guide(x, y)

    with pytest.raises(ContractError):  # y whole against a chunk of x: a plain run fails
        pyrovae.log_marginal_likelihood(model_kw, guide_kw, x, y=y, num_samples=10, chunk_size=50)
    res = pyrovae.log_marginal_likelihood(model_kw, guide_kw, x[:3], y=y[:3], num_samples=1)
    assert torch.allclose(res.log_px, exact[:3], atol=1e-9, rtol=0)


def test_train_takes_a_tuple_of_tensors_and_compiles_a_conditional_pair():
    """Before: DataError 'data must be a torch.Tensor or ImageData, got tuple'."""
    torch.manual_seed(0)
    y = torch.randn(1200, 3)
    x = torch.cat([y, y ** 2], -1) @ torch.randn(6, 6) + 0.1 * torch.randn(1200, 6)
    dec, enc = nn.Linear(2 + 3, 6), nn.Linear(6 + 3, 4)

    def model(x, y):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(dec(torch.cat([z, y.expand(z.shape[:-1] + (3,))], -1)), 0.2).to_event(1),
                        obs=x)

    def guide(x, y):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            h = enc(torch.cat([x, y], -1))
            pyro.sample("z", dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:])).to_event(1))

    trainer = pyrovae.train(model, guide, (x[:1000], y[:1000]), (x[1000:], y[1000:]), epochs=15, batch_size=100,
                            lr=1e-2, jit=True, progress=False, verbose=False)
    h = trainer.history
    assert trainer.compiled and h[-1]["heldout_elbo"] > h[0]["heldout_elbo"] + 20
    res = pyrovae.log_marginal_likelihood(model, guide, x[1000:], y[1000:], num_samples=200)
    assert res.mean > h[-1]["heldout_elbo"] - 1.0  # the bound sits below log p(x|y)


def test_tuple_batches_are_shuffled_together():
    from pyrovae.data import minibatches

    x = torch.arange(10.0).unsqueeze(-1)
    y = torch.arange(10) * 100
    for xb, yb in minibatches((x, y), 3, torch.Generator().manual_seed(0)):
        assert torch.equal(xb[:, 0].long() * 100, yb)
    with pytest.raises(pyrovae.DataError, match="share dim 0"):
        pyrovae.train(lambda x, y: None, lambda x, y: None, (x, y[:5]), epochs=1, progress=False)


def test_a_batch_that_does_not_fit_the_model_signature_is_a_clear_error(binary_split):
    train, _ = binary_split
    vae = pyrovae.VAE(latent_dim=2, hidden=(16,))
    with pytest.raises(pyrovae.DataError, match=r"2 tensor\(s\) per batch.*with_labels"):
        pyrovae.train(vae.model, vae.guide, train.subset(slice(0, 200)).with_labels(), epochs=1, progress=False)


def test_image_data_with_labels_gives_x_and_y(embedded):
    x, y = embedded.subset(slice(0, 50)).with_space("binary-threshold").with_labels().tensors()
    assert x.shape == (50, 784) and torch.equal(y, embedded.labels[:50])


# --------------------------------------------------------------------------------- enumeration

PI = torch.tensor([0.2, 0.5, 0.3], dtype=F64)


@pytest.fixture
def mixture():
    """c ~ Cat(pi), z | c ~ N(mu_c, I), x | z ~ N(W z + b, s^2 I):
    p(x) = sum_c pi_c N(x; W mu_c + b, W W^T + s^2 I)."""
    g = torch.Generator().manual_seed(1)
    W, b = torch.randn(D, L, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64)
    mu = 2 * torch.randn(3, L, generator=g, dtype=F64)
    c = torch.multinomial(PI, 40, replacement=True, generator=g)
    x = (mu[c] + torch.randn(40, L, generator=g, dtype=F64)) @ W.T + b + SIGMA * torch.randn(40, D, generator=g,
                                                                                              dtype=F64)
    marginals = dist.MultivariateNormal(mu @ W.T + b, W @ W.T + SIGMA**2 * torch.eye(D, dtype=F64))
    exact = torch.logsumexp(PI.log() + marginals.log_prob(x.unsqueeze(-2)), -1)
    S = torch.linalg.inv(torch.eye(L, dtype=F64) + W.T @ W / SIGMA**2)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(mu[c], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

    def guide(x):  # one Gaussian over the posterior's mixture, widened: finite-variance weights
        with pyro.plate("data", x.shape[0]):
            r = torch.softmax(PI.log() + marginals.log_prob(x.unsqueeze(-2)), -1)  # p(c | x)
            m_c = (mu + ((x - b) @ W / SIGMA**2).unsqueeze(-2)) @ S.T  # E[z | x, c]
            mean = (r.unsqueeze(-1) * m_c).sum(-2)
            dev = m_c - mean.unsqueeze(-2)
            spread = (r[..., None, None] * dev.unsqueeze(-1) * dev.unsqueeze(-2)).sum(-3)
            pyro.sample("z", dist.MultivariateNormal(mean, 1.5**2 * (S + spread)))

    return model, guide, x, exact, (W, b, mu)


def test_enumerated_class_is_summed_out_in_each_weight_exactly(mixture):
    """log w_ik = log sum_c pi_c N(z_ik; mu_c, I) N(x_i; W z_ik + b, s^2) - log q(z_ik | x_i), to float64."""
    model, guide, x, _, (W, b, mu) = mixture
    pyro.set_rng_seed(3)
    lw = log_importance_weights(model, guide, x, num_particles=5, max_plate_nesting=1)
    pyro.set_rng_seed(3)
    with pyro.plate("num_particles_vectorized", 5, dim=-2):
        site = poutine.trace(guide).get_trace(x).nodes["z"]
    z = site["value"]
    prior = torch.logsumexp(PI.log() + dist.Normal(mu, 1.0).to_event(1).log_prob(z.unsqueeze(-2)), -1)
    manual = prior + dist.Normal(z @ W.T + b, SIGMA).to_event(1).log_prob(x) - site["fn"].log_prob(z)
    assert lw.shape == (5, 40) and torch.allclose(lw, manual, atol=1e-10, rtol=0)


def test_enumerated_mixture_gets_its_exact_log_px_within_the_standard_error(mixture):
    model, guide, x, exact, _ = mixture
    res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=4000)
    err = res.log_px - exact
    assert (err.abs() < 4 * res.stderr).all() and abs(err.mean()) < 4 * res.mean_stderr
    assert res.khat.max() < 0.7


def test_enumerated_mixture_compiled_gives_the_eager_estimate(mixture):
    """The pass compiled by torch.jit (Pyro's sum-product contraction inside the graph) draws the
    eager pass's random numbers and sums the class out the same way."""
    model, guide, x, _, _ = mixture
    runs = {}
    for jit in (False, True):
        pyro.set_rng_seed(5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a fallback to eager would warn
            runs[jit] = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=60, chunk_size=128, jit=jit,
                                                        workers=1)
    assert torch.allclose(runs[True].log_px, runs[False].log_px, atol=1e-6, rtol=0)
    assert not torch.allclose(runs[True].ess, torch.full_like(runs[True].ess, 60.0))  # the weights vary


def test_enumeration_inside_a_nested_plate_is_a_product_of_per_pixel_sums():
    """An outlier indicator per pixel, o_d ~ Bernoulli(e) enumerated inside pyro.plate('pixels'):
    x_d | z ~ (1 - e) N(z, 1) + e N(0, 10). Each weight must be log N(z; 0, 1) + sum_d log of the
    two-term mixture - log q(z), the sum over o_d taken per pixel before the product."""
    eps, x = 0.1, torch.tensor([[0.3, 4.0, -0.5], [12.0, 0.1, 0.2]], dtype=F64)

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, 1, dtype=F64), 1.0))
            with pyro.plate("pixels", x.shape[1], dim=-1):
                o = pyro.sample("o", dist.Bernoulli(torch.tensor(eps, dtype=F64)), infer={"enumerate": "parallel"})
                loc = torch.where(o.bool(), torch.zeros_like(z), z)
                scale = torch.where(o.bool(), torch.full_like(o, 10.0), torch.ones_like(o))
                pyro.sample("x", dist.Normal(loc, scale), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True), 1.0))

    pyro.set_rng_seed(0)
    lw = log_importance_weights(model, guide, x, num_particles=4, max_plate_nesting=2, plate_name="data")
    pyro.set_rng_seed(0)
    with pyro.plate("num_particles_vectorized", 4, dim=-3):
        site = poutine.trace(guide).get_trace(x).nodes["z"]
    z = site["value"]  # (4, 2, 1)
    ten = torch.tensor(10.0, dtype=F64)
    per_pixel = torch.logaddexp(math.log(1 - eps) + dist.Normal(z, 1.0).log_prob(x),
                                math.log(eps) + dist.Normal(0.0, ten).log_prob(x))
    manual = (dist.Normal(0.0, 1.0).log_prob(z) + per_pixel.sum(-1, keepdim=True) - site["fn"].log_prob(z))[..., 0]
    assert torch.allclose(lw, manual, atol=1e-10, rtol=0)


def test_enumerated_pair_needs_an_objective_that_sums_it_out(mixture):
    """Before: Trace_ELBO sampled c from the prior and printed a 'held-out elbo' that is no bound."""
    model, _, x, _, _ = mixture
    enc = nn.Linear(D, 2 * L).double()

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            h = enc(x)
            pyro.sample("z", dist.Normal(h[..., :L], nn.functional.softplus(h[..., L:])).to_event(1))

    with pytest.raises(ContractError, match=r"\['c'\].*objective='enum'"):
        pyrovae.train(model, guide, x, epochs=1, progress=False)
    for objective in ("enum", TraceEnum_ELBO(max_plate_nesting=1)):
        pyro.clear_param_store()
        trainer = pyrovae.train(model, guide, x, x, epochs=30, batch_size=20, lr=3e-2, jit=True,
                                objective=objective, progress=False, verbose=False)
        assert trainer.compiled, trainer.jit_fallback
        h = trainer.history
        assert h[-1]["heldout_elbo"] > h[0]["heldout_elbo"]
        res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=500)
        assert h[-1]["heldout_elbo"] < res.mean + 0.1  # the enumerated ELBO is a bound


def test_iwae_sums_out_enumerated_sites_too(mixture):
    model, guide, x, exact, _ = mixture
    bound = -pyrovae.IWAE(num_particles=2000).loss(model, guide, x) / len(x)
    assert bound < exact.mean().item() + 0.05 and bound > exact.mean().item() - 1.0


def test_a_scaled_objective_weights_an_enumerated_sum_outside_the_sum(mixture):
    """As TraceEnum_ELBO: beta * log sum_c p(c) p(z | c), not log sum_c (p(c) p(z | c))^beta."""
    _, guide, x, _, (W, b, mu) = mixture
    beta = 0.3

    def model(x, c_scale=beta):
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=c_scale):
                c = pyro.sample("c", dist.Categorical(PI), infer={"enumerate": "parallel"})
            with poutine.scale(scale=beta):
                z = pyro.sample("z", dist.Normal(mu[c], 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + b, SIGMA).to_event(1), obs=x)

    pyro.set_rng_seed(3)
    lw = log_importance_weights(model, guide, x, num_particles=4, max_plate_nesting=1, scaled=True)
    pyro.set_rng_seed(3)
    with pyro.plate("num_particles_vectorized", 4, dim=-2):
        site = poutine.trace(guide).get_trace(x).nodes["z"]
    z = site["value"]
    prior = torch.logsumexp(PI.log() + dist.Normal(mu, 1.0).to_event(1).log_prob(z.unsqueeze(-2)), -1)
    manual = beta * prior + dist.Normal(z @ W.T + b, SIGMA).to_event(1).log_prob(x) - site["fn"].log_prob(z)
    assert torch.allclose(lw, manual, atol=1e-10, rtol=0)
    with pytest.raises(ContractError, match="different poutine.scale factors"):
        log_importance_weights(lambda x: model(x, c_scale=1.0), guide, x, num_particles=2, max_plate_nesting=1,
                               scaled=True)


def test_a_guide_that_enumerates_is_refused_by_importance_sampling():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(2)))
            pyro.sample("x", dist.Normal(c.double().unsqueeze(-1), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=torch.zeros(2)), infer={"enumerate": "parallel"})

    with pytest.raises(ContractError, match="guide site 'c' is enumerated"):
        pyrovae.log_marginal_likelihood(model, guide, torch.zeros(4, 1, dtype=F64), num_samples=5)


# --------------------------------------------------------------------------------- scaled sites


@pytest.mark.parametrize("beta", [0.5, 4.0])
def test_a_beta_weighted_pair_gets_the_unweighted_log_px(conditional, beta):
    """Before: beta=0.5 gave -9.35 for an exact -10.66 (factor analysis), with a tiny error bar."""
    model, guide, x, y, exact = conditional

    def weighted_model(x, y):
        with poutine.scale(scale=beta):
            model(x, y)

    def weighted_guide(x, y):
        with poutine.scale(scale=beta):
            guide(x, y)

    res = pyrovae.log_marginal_likelihood(weighted_model, weighted_guide, x, y, num_samples=3)
    assert torch.allclose(res.log_px, exact, atol=1e-9, rtol=0)
    heldout = pyrovae.Trainer(weighted_model, weighted_guide, jit=False).evaluate((x, y))
    assert heldout == pytest.approx(exact.mean().item(), abs=1e-8)  # exact guide: ELBO = log p(x|y)


def test_a_weighted_objective_records_the_true_elbo_beside_it():
    model, guide = _annealed_pair(lambda: pyrovae.factor("beta"))
    x = torch.randn(600, 4) @ torch.randn(4, 4)
    pyrovae.set_factor("beta", 4.0)
    trainer = pyrovae.train(model, guide, x, x[:200], epochs=2, batch_size=100, progress=False, verbose=False)
    record = trainer.history[-1]
    assert record["objective"] == "elbo, weighted" and "train_elbo" in record
    # the weighted bound penalises the KL four times: it sits below the true ELBO
    assert record["train_bound"] < record["train_elbo"] - 1


# --------------------------------------------------------------------------------- objectives


def _tiny_vae(seed=0):
    torch.manual_seed(seed)
    return pyrovae.VAE(latent_dim=3, hidden=(16,), name=f"tiny{seed}")


def test_iwae_is_a_pyro_elbo_that_pyros_own_svi_steps():
    """Before: SVI(..., loss=pyrovae.IWAE(5)) failed with "'IWAE' object is not callable"."""
    vae = _tiny_vae()
    x = torch.bernoulli(torch.full((32, 784), 0.3))
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss=pyrovae.IWAE(5))
    losses = [svi.step(x) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_iwae_equals_renyi_alpha_zero_in_value_and_gradient():
    """Same seed, same vectorised particle draw: RenyiELBO(alpha=0) and IWAE agree to float precision."""
    vae = _tiny_vae()
    x = torch.bernoulli(torch.full((8, 784), 0.3))
    params = list(vae.parameters())
    pyro.set_rng_seed(5)
    ours = pyrovae.IWAE(num_particles=5, max_plate_nesting=1).differentiable_loss(vae.model, vae.guide, x)
    ours_grads = torch.autograd.grad(ours, params)
    renyi = RenyiELBO(alpha=0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(5)
    theirs = renyi.loss_and_grads(vae.model, vae.guide, x)
    assert ours.item() == pytest.approx(theirs, rel=1e-5)
    for a, p in zip(ours_grads, params):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("objective", [TraceGraph_ELBO(max_plate_nesting=1), RenyiELBO(alpha=0.5, num_particles=2)])
def test_any_pyro_elbo_object_trains(binary_split, objective):
    train, x_heldout = binary_split
    vae = _tiny_vae()
    trainer = pyrovae.train(vae.model, vae.guide, train.subset(slice(0, 1500)), x_heldout[:300], epochs=3,
                            batch_size=100, objective=objective, progress=False, verbose=False)
    h = trainer.history
    assert h[-1]["heldout_elbo"] > h[0]["heldout_elbo"] + 5
    assert h[-1]["objective"].startswith(type(objective).__name__)


def test_unknown_objective_names_the_choices():
    vae = _tiny_vae()
    with pytest.raises(ValueError, match="unknown objective 'elbo2'.*'enum'.*differentiable_loss"):
        pyrovae.Trainer(vae.model, vae.guide, objective="elbo2")
    with pytest.raises(ValueError, match=r"is a class; pass an instance, e.g. TraceEnum_ELBO\(max_plate_nesting=1\)"):
        pyrovae.Trainer(vae.model, vae.guide, objective=TraceEnum_ELBO)


def test_jit_with_an_objective_that_cannot_be_compiled_says_so():
    vae = _tiny_vae()
    trainer = pyrovae.Trainer(vae.model, vae.guide, objective=RenyiELBO(alpha=0.5, num_particles=2), jit=True)
    with pytest.warns(UserWarning, match="RenyiELBO has only loss_and_grads"):
        trainer.step(torch.bernoulli(torch.full((8, 784), 0.3)))
    assert not trainer.compiled and "loss_and_grads" in trainer.jit_fallback


def test_a_torch_error_inside_the_pair_on_the_first_rows_is_a_data_error():
    dec = nn.Linear(3, 4)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(dec(x), 1.0).to_event(1), obs=x)  # (N, 4) into Linear(3, 4)

    with pytest.raises(pyrovae.DataError, match="fails on the first rows of the training data: mat1 and mat2"):
        pyrovae.train(model, lambda x: None, torch.zeros(20, 4), epochs=1, progress=False)


# --------------------------------------------------------------------------------- per-step factors


def _annealed_pair(read):
    """A pair whose KL term is weighted by read(); decoder and encoder fixed by the seed."""
    torch.manual_seed(0)
    dec, enc = nn.Linear(2, 4), nn.Linear(4, 4)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=read()):
                z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(dec(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", x.shape[0]):
            h = enc(x)
            with poutine.scale(scale=read()):
                pyro.sample("z", dist.Normal(h[..., :2], nn.functional.softplus(h[..., 2:])).to_event(1))

    return model, guide


def test_a_schedule_is_a_graph_input_that_the_compiled_loss_follows():
    """Before: a per-step weight was frozen at its first value in the traced graph."""
    warmup = pyrovae.linear(0.01, 1.0, steps=12)
    runs = {}
    for jit in (False, True):
        pyro.clear_param_store()
        model, guide = _annealed_pair(lambda: pyrovae.factor("kl"))
        x = torch.randn(400, 4, generator=torch.Generator().manual_seed(1))
        trainer = pyrovae.Trainer(model, guide, jit=jit, lr=1e-2, schedules={"kl": warmup})
        pyro.set_rng_seed(0)
        runs[jit] = torch.stack([trainer.step(xb) for xb in x.split(100) for _ in range(4)])
        if jit:
            assert trainer.compiled, trainer.jit_fallback
    assert torch.allclose(runs[True], runs[False], rtol=1e-4)
    assert pyrovae.factor("kl").item() == pytest.approx(warmup(15))


def test_a_python_number_changed_in_a_callback_is_caught_under_jit():
    """Before: annealing by changing a float in `callback` was silently frozen under jit=True."""
    histories = {}
    for jit in (False, True):
        state = {"beta": 0.1}
        pyro.clear_param_store()
        model, guide = _annealed_pair(lambda state=state: state["beta"])
        x = torch.randn(400, 4, generator=torch.Generator().manual_seed(1))
        trainer = pyrovae.Trainer(model, guide, jit=jit, lr=1e-2)

        def anneal(tr, record, state=state):
            state["beta"] = min(1.0, state["beta"] + 0.3)

        if jit:
            with pytest.warns(UserWarning, match="Python number that changed"):
                trainer.fit(x, epochs=4, batch_size=100, progress=False, verbose=False, callback=anneal)
            assert not trainer.compiled
        else:
            trainer.fit(x, epochs=4, batch_size=100, progress=False, verbose=False, callback=anneal)
        histories[jit] = [r["train_bound"] for r in trainer.history]
    assert histories[True] == pytest.approx(histories[False], rel=1e-4)


def test_schedules_and_their_steps_survive_a_checkpoint():
    """A warm-up interrupted after 2 of 4 epochs and resumed into fresh objects repeats the
    uninterrupted run exactly: the step count, and so each step's factor, is restored."""
    from pyrovae.infer import cyclical
    from pyrovae.infer.factors import FLOOR

    schedule = cyclical(0.0, 1.0, period=10, ramp=0.5)
    assert [schedule(s) for s in (0, 2, 5, 9, 10, 12)] == pytest.approx([FLOOR, 0.4, 1, 1, FLOOR, 0.4])
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))

    def run(epochs, state=None):
        pyro.clear_param_store()
        pyrovae.set_factor("kl", 0.77)  # a stale value that the schedule must overwrite
        model, guide = _annealed_pair(lambda: pyrovae.factor("kl"))
        trainer = pyrovae.Trainer(model, guide, jit=False, schedules={"kl": pyrovae.linear(0.01, 1.0, steps=10)})
        if state is not None:
            trainer.load_state_dict(state, x[:10])
        trainer.fit(x, epochs=epochs, batch_size=100, seed=2, progress=False, verbose=False)
        return trainer

    straight = run(4)
    first = run(2)
    assert first.state_dict()["steps"] == 6
    resumed = run(4, first.state_dict())
    assert resumed.steps == straight.steps == 12
    assert [r["train_bound"] for r in resumed.history] == [r["train_bound"] for r in straight.history]
