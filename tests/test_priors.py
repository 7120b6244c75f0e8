"""Priors: normalisation, shapes under particles, the closed-form-KL flag, SVI and log p(x)
with each one, and that swapping a prior or likelihood leaves the rest of the VAE alone."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence

import pyrovae
from pyrovae.infer import Trainer
from pyrovae.likelihoods import LIKELIHOODS
from pyrovae.nets import MLPEncoder
from pyrovae.priors import PRIORS, make_prior

OPTIONS = {"mog": {"components": 5}, "vamp": {"pseudo_inputs": 20}, "flow": {"num_flows": 2}}
# jitter of the parameters: spline flows with large random weights have density spikes no grid resolves
JITTER = {"flow": 0.1}


def standalone(name, latent_dim, data_dim=10, randomise=True, dtype=torch.float32):
    """A prior outside a VAE (the VampPrior with a small encoder), parameters jittered."""
    torch.manual_seed(1)
    options = dict(OPTIONS.get(name, {}))
    if name == "vamp":
        options["data_dim"] = data_dim
    prior = make_prior(name, latent_dim, **options)
    modules = [prior]
    if name == "vamp":
        encoder = MLPEncoder(data_dim, (16,), latent_dim)
        prior.attach_encoder(encoder)
        modules.append(encoder)
    if randomise:
        with torch.no_grad():
            for m in modules:
                for p in m.parameters():
                    p.add_(JITTER.get(name, 0.5) * torch.randn_like(p))
    for m in modules:
        m.to(dtype)
    return prior


def test_every_registered_prior_is_tested():
    assert set(PRIORS) == {"normal", "learned-normal", "mog", "vamp", "flow"}


def test_make_prior_passes_options():
    assert make_prior("mog", 3, components=4).locs.shape == (4, 3)
    assert make_prior("vamp", 3, pseudo_inputs=7, data_dim=12).pseudo_inputs.shape == (7, 12)
    assert len(make_prior("flow", 3, num_flows=3).flows) == 3
    with pytest.raises(pyrovae.ConfigError, match="the normal prior has no option 'components'"):
        make_prior("normal", 3, components=4)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", sorted(PRIORS))
def test_density_integrates_to_one(name, dim):
    """Grid integration of exp(log p(z)) over [-20, 20]^dim, parameters randomised; the
    learned priors must also differ from N(0, I), so a prior that ignores its parameters fails."""
    prior = standalone(name, dim, dtype=torch.float64)
    n = 4001 if dim == 1 else 801
    axis = torch.linspace(-20, 20, n, dtype=torch.float64)
    grid = torch.cartesian_prod(*[axis] * dim).reshape(-1, dim) if dim > 1 else axis[:, None]
    with torch.no_grad():
        log_p = prior().log_prob(grid)
    assert log_p.shape == (len(grid),)
    dens = log_p.exp().reshape([n] * dim)
    for _ in range(dim):
        dens = torch.trapezoid(dens, axis, dim=-1)
    assert dens.item() == pytest.approx(1.0, abs=2e-3)
    if name != "normal":
        std = dist.Normal(0.0, 1.0).log_prob(grid).sum(-1).double()
        central = (grid.abs() < 2).all(-1)
        assert (log_p - std)[central].abs().max() > 0.05


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_unbatched_distribution_broadcasts_over_particles(name):
    d = 3
    p = standalone(name, d)()
    assert p.batch_shape == () and p.event_shape == (d,)
    z = torch.randn(4, 5, d)
    assert p.log_prob(z).shape == (4, 5)
    assert torch.allclose(p.expand((5,)).log_prob(z), p.log_prob(z))
    assert p.sample((2, 5)).shape == (2, 5, d)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_closed_form_kl_flag_agrees_with_pyro(name):
    prior = standalone(name, 3)
    torch.manual_seed(0)
    q = dist.Normal(torch.randn(6, 3), torch.rand(6, 3) + 0.5).to_event(1)
    for p in (prior(), prior().expand((6,))):  # as given, and as the data plate expands it
        try:
            kl = kl_divergence(q, p)
        except NotImplementedError:
            has_formula = False
        else:
            has_formula = True
        assert has_formula == prior.closed_form_kl
    if prior.closed_form_kl:  # and the formula is right: Monte Carlo of log q - log p
        z = q.sample((100_000,))
        diff = (q.log_prob(z) - prior().log_prob(z)).double()
        assert ((diff.mean(0) - kl.double()).abs() < 5 * diff.std(0) / math.sqrt(len(z))).all()


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_meanfield_elbo_with_or_without_a_kl_formula(name):
    """TraceMeanField_ELBO uses the formula where there is one and Monte Carlo otherwise: its
    average matches Trace_ELBO's."""
    vae = pyrovae.VAE(latent_dim=3, hidden=(16,), prior=name, prior_options=OPTIONS.get(name))
    x = torch.bernoulli(torch.full((2, 784), 0.3))
    mf = pyro.infer.TraceMeanField_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    tr = pyro.infer.Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        a, b = mf.loss(vae.model, vae.guide, x), tr.loss(vae.model, vae.guide, x)
    assert math.isfinite(a) and a == pytest.approx(b, rel=2e-3)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_a_few_svi_steps_lower_the_loss(binary_split, name):
    """3 epochs on 1,000 digits with TraceMeanField_ELBO, then 1 with 2 vectorised particles."""
    train, _ = binary_split
    x = train.subset(slice(0, 1000)).observations(torch.Generator().manual_seed(0))
    vae = pyrovae.VAE(latent_dim=8, hidden=(64,), prior=name, prior_options=OPTIONS.get(name))
    trainer = Trainer(vae.model, vae.guide, objective="meanfield", lr=3e-3)
    trainer.setup(x[:100])
    before = trainer.evaluate(x[:200])
    prior_before = [p.detach().clone() for p in vae.prior.parameters()]
    trainer.fit(x, epochs=3, batch_size=100, progress=False, verbose=False)
    after = trainer.evaluate(x[:200])
    assert after > before + 100, (before, after)  # 350 nats when written
    # the prior's own parameters are trained too
    assert all(not torch.equal(a, b) for a, b in zip(prior_before, vae.prior.parameters()))
    vectorised = Trainer(vae.model, vae.guide, objective="elbo", num_particles=2, lr=3e-3)
    vectorised.fit(x, epochs=1, batch_size=100, progress=False, verbose=False)
    assert vectorised.evaluate(x[:200]) > after - 5


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_importance_sampled_log_px_is_finite(name):
    vae = pyrovae.VAE(latent_dim=4, hidden=(32,), prior=name, prior_options=OPTIONS.get(name))
    x = torch.bernoulli(torch.full((12, 784), 0.3))
    res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=16, chunk_size=64)
    assert torch.isfinite(res.log_px).all() and (res.log_px >= res.elbo - 1e-6).all()
    iwae = pyrovae.IWAE(num_particles=3).differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(iwae)


@pytest.mark.parametrize("name", sorted(PRIORS))
def test_jit_traced_loss_agrees_with_the_eager_one(binary_split, name):
    """Compiled loss with 2 vectorised particles, checked against eager on two batches (the
    spline flow's identity tails used to freeze a batch-dependent shape into the trace)."""
    train, _ = binary_split
    x = train.subset(slice(0, 200)).observations(torch.Generator().manual_seed(0))
    vae = pyrovae.VAE(latent_dim=4, hidden=(32,), prior=name, prior_options=OPTIONS.get(name))
    trainer = Trainer(vae.model, vae.guide, objective="elbo", num_particles=2, jit=True)
    trainer.fit(x, epochs=1, batch_size=100, progress=False, verbose=False)
    assert trainer.compiled and math.isfinite(trainer.history[-1]["train_bound"])


def test_prior_state_round_trips_through_a_checkpoint():
    for name in sorted(PRIORS):
        pyro.clear_param_store()
        vae = pyrovae.VAE(latent_dim=3, hidden=(16,), prior=name, prior_options=OPTIONS.get(name))
        z = torch.randn(5, 3)
        fresh = pyrovae.VAE(latent_dim=3, hidden=(16,), prior=name, prior_options=OPTIONS.get(name))
        fresh.load_state_dict(vae.state_dict())
        with torch.no_grad():
            assert torch.allclose(fresh.prior().log_prob(z), vae.prior().log_prob(z)), name


def test_vamp_prior_shares_the_encoder_without_owning_it():
    vae = pyrovae.VAE(latent_dim=3, hidden=(16,), prior="vamp", prior_options={"pseudo_inputs": 6})
    assert [n for n, _ in vae.prior.named_parameters()] == ["pseudo_raw"]
    names = [n for n, _ in vae.named_parameters()]
    assert len(names) == len(set(names)) and not any(n.startswith("prior.") and "encoder" in n for n in names)
    u = vae.prior.pseudo_inputs
    assert u.shape == (6, 784) and (u >= 0).all() and (u <= 1).all()
    loc, scale = vae.encoder(u)  # the mixture's components are q(z | u_k)
    p = vae.prior()
    assert torch.allclose(p.component_distribution.base_dist.loc, loc)
    assert torch.allclose(p.mixture_distribution.probs, torch.full((6,), 1 / 6))
    p.log_prob(torch.randn(4, 3)).sum().backward()  # p(z) trains the encoder and the u_k
    assert vae.encoder.head.loc.weight.grad is not None and vae.prior.pseudo_raw.grad is not None
    vae.prior.attach_encoder(vae.encoder, data_dim=20)
    assert vae.prior.pseudo_inputs.shape == (6, 20)
    small = pyrovae.VAE(data_dim=50, latent_dim=3, hidden=(16,), prior="vamp", prior_options={"pseudo_inputs": 6})
    assert small.prior.pseudo_inputs.shape == (6, 50)  # sized from the encoder, not the default 784
    with pytest.raises(RuntimeError, match="attach_encoder"):
        make_prior("vamp", 3)()


def _sites(trace):
    return {n: s for n, s in trace.nodes.items() if s["type"] == "sample"}


def _signature(vae, x):
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    g, m = _sites(guide_trace), _sites(model_trace)
    qz = g["z"]["fn"]
    return {
        "encoder": [(n, tuple(p.shape)) for n, p in vae.encoder.named_parameters()],
        "decoder_hidden": [(n, tuple(p.shape)) for n, p in vae.decoder.named_parameters()][:-2],
        "guide_sites": sorted(g),
        "model_sites": sorted(m),
        "observed": sorted(n for n, s in m.items() if s["is_observed"]),
        "q_type": (type(qz).__name__, type(qz.base_dist).__name__, qz.batch_shape, qz.event_shape),
        "z_event": m["z"]["fn"].event_shape,
        "x_shapes": (m["x"]["fn"].batch_shape, m["x"]["fn"].event_shape),
    }


def test_swapping_changes_nothing_else():
    """Every likelihood and every prior gives the same encoder, guide, sample sites and
    shapes as the default VAE; only the decoder's output layer size may differ."""
    x = torch.bernoulli(torch.full((5, 784), 0.3))
    reference = _signature(pyrovae.VAE(latent_dim=4, hidden=(32,)), x)
    assert reference["q_type"][:2] == ("Independent", "Normal") and reference["guide_sites"] == ["data", "z"]
    assert reference["observed"] == ["x"] and reference["x_shapes"] == ((5,), (784,))
    variants = [dict(likelihood=n, likelihood_options={"levels": 4} if n == "categorical" else {}) for n in LIKELIHOODS]
    variants += [dict(prior=n, prior_options=OPTIONS.get(n)) for n in PRIORS]
    for kw in variants:
        vae = pyrovae.VAE(latent_dim=4, hidden=(32,), **kw)
        assert _signature(vae, x) == reference, kw
        assert vae.decoder[-1].out_features == vae.likelihood.decoder_outputs(784)
