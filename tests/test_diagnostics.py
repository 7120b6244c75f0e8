"""Diagnostics of the latent code against closed forms: a linear-Gaussian pair with its exact
posterior as the guide (KL per dimension, active units, mutual information, rate/distortion and
inference gaps known exactly), a pair whose decoder ignores z, the trainer's collapse warning,
and ``pyrovae diagnose`` from the command line."""

import csv
import json
import math
import warnings

import matplotlib.image
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae import diagnostics
from pyrovae.cli import main
from pyrovae.diagnostics import PosteriorCollapseWarning

P, SIGMA = 6, 0.5
S = torch.tensor([2.0, 0.5, 0.04, 0.0])  # column norms of W: strong, weak, below the threshold, unused


class LinearGaussian:
    r"""z ~ N(0, I_4), x = W z + b + sigma eps with orthogonal columns of norms S: the posterior is
    diagonal, q(z_j | x) = N(v_j s_j u_j^T (x - b) / sigma^2, v_j), v_j = sigma^2 / (sigma^2 + s_j^2)."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        u, _ = torch.linalg.qr(torch.randn(P, len(S), generator=g))
        self.w, self.b = u * S, torch.randn(P, generator=g)
        self.v = SIGMA**2 / (SIGMA**2 + S**2)

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, len(S), generator=g) @ self.w.T + self.b + SIGMA * torch.randn(n, P, generator=g)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([len(S)]).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.w.T + self.b, SIGMA).to_event(1), obs=x)

    def post_mean(self, x):
        return self.v * ((x - self.b) @ self.w) / SIGMA**2

    def guide(self, x):  # the exact posterior
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.post_mean(x), self.v.sqrt()).to_event(1))

    def bad_guide(self, x):  # the right family, the wrong numbers
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * self.post_mean(x) + 0.3, 2 * self.v.sqrt()).to_event(1))

    def log_px(self, x):
        return dist.MultivariateNormal(self.b, self.w @ self.w.T + SIGMA**2 * torch.eye(P)).log_prob(x)


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian()


def test_kl_per_dimension_and_active_units_match_the_closed_form(lg):
    x = lg.sample(2000)
    kl = diagnostics.kl_per_dimension(lg.model, lg.guide, x)
    m, v = lg.post_mean(x), lg.v
    exact = 0.5 * (v + m**2 - 1 - v.log())  # KL(N(m, v) || N(0, 1)) per datapoint and dimension
    assert kl.closed_form and kl.names == ["z[0]", "z[1]", "z[2]", "z[3]"] and kl.per_datapoint.shape == (2000, 4)
    torch.testing.assert_close(kl.per_datapoint, exact.double(), rtol=1e-5, atol=1e-6)
    # over the data distribution, E KL_j = I(x; z_j) = log(1 + s_j^2 / sigma^2) / 2
    assert torch.allclose(kl.mean, 0.5 * torch.log1p(S**2 / SIGMA**2).double(), rtol=0.05, atol=1e-3)
    assert kl.mean[3] == 0 and kl.mean[2] > 1e-3  # unused: q = p; weak: informative, though inactive below

    au = diagnostics.active_units(lg.guide, x)
    torch.testing.assert_close(au.activity, m.var(0).double(), rtol=1e-5, atol=1e-8)
    # Cov_x(E[z_j | x]) = 1 - v_j = s_j^2 / (s_j^2 + sigma^2): 0.94, 0.5, 0.0064, 0
    assert torch.allclose(au.activity, (1 - v).double(), rtol=0.1, atol=1e-3)
    assert au.active.tolist() == [True, True, False, False] and au.count == 2
    assert diagnostics.active_units(lg.guide, x, threshold=0.001).count == 3


def test_a_prior_without_closed_form_kl_is_monte_carlo_and_a_mixture_prior_is_refused(lg):
    x = lg.sample(1000)

    def with_prior(prior):
        def model(x):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", prior)
                pyro.sample("x", dist.Normal(z @ lg.w.T + lg.b, SIGMA).to_event(1), obs=x)

        return model

    identity = dist.TransformedDistribution(dist.Normal(0.0, 1.0), [dist.transforms.AffineTransform(0.0, 1.0)])
    pyro.set_rng_seed(0)
    mc = diagnostics.kl_per_dimension(with_prior(identity.expand([4]).to_event(1)), lg.guide, x, num_samples=50)
    exact = diagnostics.kl_per_dimension(lg.model, lg.guide, x)
    assert not mc.closed_form and mc.num_samples == 50
    se = mc.per_datapoint.std(0) / math.sqrt(len(x))
    assert ((mc.mean - exact.mean).abs() <= 4 * se + 1e-3).all(), (mc.mean, exact.mean)

    mixture = dist.MixtureSameFamily(dist.Categorical(torch.ones(2)),
                                     dist.Normal(torch.tensor([[-1.0] * 4, [1.0] * 4]), 1.0).to_event(1))
    with pytest.raises(pyrovae.ContractError, match="factorise over dimensions.*rate_distortion"):
        diagnostics.kl_per_dimension(with_prior(mixture), lg.guide, x)
    rd = diagnostics.rate_distortion(with_prior(mixture), lg.guide, x, num_samples=5)  # the total KL, by Monte Carlo
    assert not rd.closed_form and rd.rate.mean() > 0


def test_mutual_information_and_the_rate_distortion_split_match_the_closed_form(lg):
    x = lg.sample(2000)
    pyro.set_rng_seed(0)
    mi = diagnostics.mutual_information(lg.guide, x)
    exact_mi = 0.5 * torch.log1p(S**2 / SIGMA**2).sum().item()  # 1.766 nats
    assert mi.num_points == 2000 and mi.max_mi == pytest.approx(math.log(2000))
    assert abs(mi.mi - exact_mi) < 4 * mi.stderr + 0.02, (mi.mi, exact_mi, mi.stderr)

    rd = diagnostics.rate_distortion(lg.model, lg.guide, x, num_samples=20)
    kl = diagnostics.kl_per_dimension(lg.model, lg.guide, x)
    torch.testing.assert_close(rd.rate, kl.per_datapoint.sum(1), rtol=1e-5, atol=1e-5)  # both closed form
    m = lg.post_mean(x)  # -E_q log N(x; W z + b, sigma^2 I), z ~ N(m, diag v)
    distortion = (P / 2 * math.log(2 * math.pi * SIGMA**2)
                  + (((x - m @ lg.w.T - lg.b) ** 2).sum(1) + (S**2 * lg.v).sum()) / (2 * SIGMA**2))
    assert abs(rd.distortion.mean().item() - distortion.mean().item()) < 0.01
    # the exact posterior: ELBO = log p(x); the aggregate posterior is the prior, so rate ~ MI
    assert abs(rd.elbo.mean().item() - lg.log_px(x).mean().item()) < 0.01
    assert abs(rd.rate.mean().item() - mi.mi) < 0.1


def test_a_decoder_that_ignores_z_with_the_prior_as_guide_has_no_active_units_and_no_information():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
            pyro.sample("x", dist.Normal(torch.zeros(P), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 3), 1.0).to_event(1))

    x = torch.randn(500, P)
    au = diagnostics.active_units(guide, x)
    assert au.count == 0 and (au.activity == 0).all()
    assert abs(diagnostics.mutual_information(guide, x, num_samples=4).mi) < 1e-5
    assert (diagnostics.kl_per_dimension(model, guide, x).mean == 0).all()


def test_mutual_information_of_a_guide_whose_second_site_depends_on_the_first():
    """x ~ N(0, 1), q(z1 | x) = N(x, 1), q(z2 | z1, x) = N(z1, 1): z2 adds nothing about x, so
    I(x; z1, z2) = I(x; z1) = log(2) / 2. Reusing q(z2 | .) of the guide's own draw of z1 would
    not give it: the guide must be rerun at each pair's z1."""

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(x, 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(z1, 1.0).to_event(1))

    x = torch.randn(2000, 1)
    pyro.set_rng_seed(0)
    mi = diagnostics.mutual_information(guide, x, num_samples=2)
    assert abs(mi.mi - 0.5 * math.log(2)) < 4 * mi.stderr + 0.02, mi


def test_inference_gaps_vanish_for_the_exact_posterior_and_log_px_is_exact(lg):
    x = lg.sample(20)
    gaps = diagnostics.inference_gaps(lg.model, lg.guide, x, steps=50, num_samples=100)
    exact = lg.log_px(x).double()
    torch.testing.assert_close(gaps.log_px_q, exact, rtol=0, atol=1e-5)  # the exact posterior: exact for any K
    # q* starts at the optimum and stays there up to float32 rounding; what is left is the Monte
    # Carlo error of K = 100 draws from a q* a hair away from the posterior
    torch.testing.assert_close(gaps.log_px, exact, rtol=0, atol=2e-3)
    assert gaps.approximation_gap.abs().max() < 2e-3 and gaps.amortisation_gap.abs().max() < 2e-3


def test_a_bad_encoder_has_an_amortisation_gap_that_the_optimised_q_closes(lg):
    x = lg.sample(20)
    pyro.set_rng_seed(0)
    gaps = diagnostics.inference_gaps(lg.model, lg.bad_guide, x, steps=200, lr=0.05, num_samples=300)
    exact = lg.log_px(x).double()
    # q* recovers the exact posterior, so ELBO(q*) = log p(x): no approximation gap
    torch.testing.assert_close(gaps.elbo_qstar, exact, rtol=0, atol=1e-3)
    torch.testing.assert_close(gaps.log_px, exact, rtol=0, atol=1e-3)
    assert gaps.approximation_gap.abs().max() < 1e-3
    # the amortisation gap is KL(q || posterior), in closed form; ELBO(q) is a K-sample mean
    q = dist.Normal(0.5 * lg.post_mean(x) + 0.3, 2 * lg.v.sqrt())
    kl = torch.distributions.kl_divergence(q, dist.Normal(lg.post_mean(x), lg.v.sqrt())).sum(-1).double()
    assert (gaps.amortisation_gap > 1).all()
    assert abs(gaps.amortisation_gap.mean() - kl.mean()) < 0.1 * kl.mean(), (gaps.amortisation_gap.mean(), kl.mean())
    assert gaps.curve[-1][0] == 200 and gaps.curve[-1][1] > gaps.curve[0][1]


def test_inference_gaps_refuse_a_guide_family_they_cannot_optimise(lg):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Laplace(torch.zeros(x.shape[0], 4), 1.0).to_event(1))

    with pytest.raises(pyrovae.ContractError, match="Normal guide sites.*'z' is a Independent of Laplace"):
        diagnostics.inference_gaps(lg.model, guide, lg.sample(5), steps=2)


# ---------------------------------------------------------------------------------------------
# the trainer's collapse check


class Encoded(nn.Module):
    """The linear-Gaussian model with a learned linear encoder; ``amortised=False``: the guide's
    mean is a free vector, the same for every x (collapsed by construction)."""

    def __init__(self, lg, latent=2, amortised=True):
        super().__init__()
        self.lg, self.latent, self.amortised = lg, latent, amortised
        self.encoder = nn.Linear(P, 2 * latent)
        self.free = nn.Parameter(torch.zeros(2 * latent))

    def model(self, x):
        pyro.module("enc", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent]).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.lg.w[:, : self.latent].T + self.lg.b, SIGMA).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("enc", self)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x) if self.amortised else self.free.expand(x.shape[0], -1)
            pyro.sample("z", dist.Normal(h[:, : self.latent], nn.functional.softplus(h[:, self.latent :]))
                        .to_event(1))


def _train(pair, lg, **options):
    x = lg.sample(400, seed=2)
    options = {"epochs": 2, "batch_size": 100, "progress": False, "verbose": False, "jit": False, **options}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = pyrovae.train(pair.model, pair.guide, x[:300], x[300:], **options)
    return trainer, [w for w in caught if issubclass(w.category, PosteriorCollapseWarning)]


def test_the_trainer_warns_once_at_posterior_collapse_and_records_active_units(lg):
    trainer, caught = _train(Encoded(lg, amortised=False), lg)
    assert [r["active_units"] for r in trainer.history] == [0, 0]
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert message.startswith("epoch 1: posterior collapse: none of the 2 latent units is active")
    assert "--kl-anneal" in message and "--free-bits" in message


def test_a_healthy_pair_does_not_warn_and_a_unit_that_dies_is_named(lg):
    trainer, caught = _train(Encoded(lg), lg, lr=1e-8)
    assert caught == [] and [r["active_units"] for r in trainer.history] == [2, 2]

    pyro.clear_param_store()
    pair = Encoded(lg)

    def kill_unit_1(trainer, record):  # after epoch 1's check: z[1]'s mean stops depending on x
        with torch.no_grad():
            pair.encoder.weight[1] = 0.0

    trainer, caught = _train(pair, lg, lr=1e-8, epochs=3, callback=kill_unit_1)
    assert [r["active_units"] for r in trainer.history] == [2, 1, 1]
    assert len(caught) == 1 and str(caught[0].message).startswith(
        "epoch 2: latent unit(s) z[1] were active at an earlier epoch and are inactive now")


def test_the_collapse_check_leaves_the_course_of_training_unchanged(lg, monkeypatch):
    def final(check: bool):
        pyro.clear_param_store()
        if not check:
            monkeypatch.setattr(pyrovae.Trainer, "_active_units", lambda self, batch, seed: {})
        pyro.set_rng_seed(3)
        trainer, _ = _train(Encoded(lg), lg, epochs=3)
        return trainer, [p.detach().clone() for p in trainer.params]

    with_check, params = final(True)
    without, params_without = final(False)
    assert "active_units" in with_check.history[-1] and "active_units" not in without.history[-1]
    assert [r["train_bound"] for r in with_check.history] == [r["train_bound"] for r in without.history]
    assert all(torch.equal(a, b) for a, b in zip(params, params_without))


def test_a_guide_without_continuous_latents_is_skipped_silently():
    def model(x):
        pyro.module("lin", lin)
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(lin(nn.functional.one_hot(c, 3).float()), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.Categorical(logits=torch.zeros(x.shape[0], 3)))

    lin = nn.Linear(3, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorCollapseWarning)
        trainer = pyrovae.train(model, guide, torch.randn(100, 2), torch.randn(50, 2), epochs=1, progress=False,
                                verbose=False, jit=False)
    assert "active_units" not in trainer.history[-1] and "heldout_elbo" in trainer.history[-1]


# ---------------------------------------------------------------------------------------------
# the model object: traversals, and a report that skips what does not apply


def test_latent_traversals_decode_along_each_dimension_around_a_code_or_the_prior():
    vae = pyrovae.VAE(latent_dim=3, hidden=(8,))
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    prior = diagnostics.latent_traversals(vae, dims=[2, 0], num_steps=5, span=2.0)
    assert prior.images.shape == (2, 5, 784) and prior.dims == [2, 0] and (prior.center == 0).all()
    z = torch.zeros(5, 3)
    z[:, 2] = torch.linspace(-2, 2, 5)
    torch.testing.assert_close(prior.images[0], vae.decode_mean(z))
    around = diagnostics.latent_traversals(vae, x)
    torch.testing.assert_close(around.center, vae.encode(x[:1])[0][0])
    assert around.images.shape == (3, 9, 784) and 0 <= around.images.min() and around.images.max() <= 1
    with pytest.raises(pyrovae.ContractError, match=r"needs \['latent_dim', 'decode_mean'\]"):
        diagnostics.latent_traversals(object())


def test_report_skips_what_does_not_apply_with_the_reason():
    vae = pyrovae.VAE(latent_dim=3, hidden=(8,), prior="mog")
    x = torch.bernoulli(torch.full((60, 784), 0.3))
    found = diagnostics.report(vae.model, vae.guide, x, gap_points=0)
    s = found.summary()
    assert found.kl is None and "factorise over dimensions" in s["skipped"]["kl"] and s["skipped"]["gaps"]
    assert s["latent_units"] == 3 and s["mi_points"] == 60 and math.isfinite(s["rate"])
    assert s["marginal_kl"] == pytest.approx(s["rate"] - s["mutual_information"])


# ---------------------------------------------------------------------------------------------
# the command line


def _png_ok(path):
    img = matplotlib.image.imread(path)
    return img.shape[0] > 50 and img.shape[1] > 50 and img.std() > 0.01


def test_pyrovae_diagnose_writes_the_json_and_pictures_and_refuses_bad_input(tmp_path, capsys):
    run = tmp_path / "r"
    train = ["train", "--epochs", "1", "--train-size", "300", "--heldout-size", "50", "--hidden", "16",
             "--latent-dim", "2", "--out", str(run), "--no-progress"]
    assert main(train) == 0
    assert list(csv.DictReader((run / "metrics.csv").open()))[0]["active_units"] in ("0", "1", "2")
    capsys.readouterr()
    args = ["diagnose", str(run), "--num-points", "40", "--gap-points", "4", "--gap-steps", "10",
            "--num-samples", "30", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "active units" in out and "approximation gap" in out and "wrote" in out
    s = json.loads((run / "diagnostics.json").read_text())
    assert s["num_points"] == 40 and s["mi_points"] == 40 and s["gap_points"] == 4 and s["checkpoint_epoch"] == 1
    assert set(s["kl_per_dim"]) == set(s["activity"]) == {"z[0]", "z[1]"} and s["skipped"] == {}
    assert s["kl_total"] == pytest.approx(s["rate"]) and s["inference_gap"] == pytest.approx(
        s["approximation_gap"] + s["amortisation_gap"])
    assert s["pictures"] == ["kl-per-dimension.png", "traversals-prior.png", "traversals-x0.png"]
    assert all(_png_ok(run / p) for p in s["pictures"]) and not list(run.glob(".*.tmp"))

    for bad, says in ((["diagnose", str(tmp_path / "nope")], "is not a run folder"),
                      (["diagnose", str(run), "--num-points", "0"], "argument --num-points: must be at least 1"),
                      (["diagnose", str(run), "--gap-steps", "x"], "argument --gap-steps: expected a whole number")):
        assert main(bad) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
