"""Annealed importance sampling, BDMC and defensive importance sampling against exact answers.

The linear-Gaussian pair of test_importance: p(x) = N(b, W W^T + s^2 I) in closed form, and a
guide made poor on purpose (too narrow, shifted).
"""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_importance import LATENT, SIGMA, make_pair

import pyrovae
from pyrovae.infer import AIS, ContractError, Defensive, annealing_schedule, bdmc


def test_the_exact_posterior_gives_the_exact_marginal_whatever_the_chains_do(lingauss):
    """With q = p(z|x) every log w(z) equals log p(x), so log W = sum_t (b_t - b_t-1) log p(x) exactly."""
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    res = pyrovae.log_marginal_likelihood(model, guide, x, method="ais", num_steps=6, num_samples=3)
    assert res.method == "ais" and res.num_samples == 3 and res.extras["num_steps"] == 6
    assert torch.allclose(res.log_px, exact, atol=1e-9, rtol=0)
    assert (res.extras["acceptance"] > 0.5).all()  # an exact guide makes a smooth target


def test_ais_converges_to_the_exact_value_as_the_number_of_steps_grows(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=0.5)
    errors = {}
    for steps in (2, 60):
        pyro.set_rng_seed(1)
        res = pyrovae.log_marginal_likelihood(model, guide, x[:20], method=AIS(num_steps=steps, pilot_steps=30),
                                              num_samples=16)
        errors[steps] = (res.log_px - exact[:20]).mean().item()
        if steps == 60:
            # within its error bar (plus a little for the remaining finite-T bias)
            assert abs(errors[steps]) < 3 * res.mean_stderr + 0.05, (errors, res.mean_stderr)
            assert ((res.extras["acceptance"] > 0.4) & (res.extras["acceptance"] < 0.9)).all()
    assert errors[2] < -0.1 and abs(errors[60]) < abs(errors[2]) / 3, errors


def test_bdmc_brackets_the_exact_log_marginal(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=0.5)
    template = torch.zeros(80, len(b), dtype=torch.float64)  # only its shape matters
    pyro.set_rng_seed(0)
    res = bdmc(model, guide, template, options=AIS(num_steps=15), num_samples=16)
    cov_x = W @ W.T + SIGMA**2 * torch.eye(len(b), dtype=torch.float64)
    truth = dist.MultivariateNormal(b, cov_x).log_prob(res.x)  # of the simulated data
    assert res.x.shape == template.shape and res.x.std() > 0.5
    # each bound holds in expectation; over 80 datapoints the means hold with margin (~3 s.e.)
    assert res.lower.mean < truth.mean().item() < res.upper.mean
    assert 0.1 < res.gap < 2.0
    assert res.summary()["gap"] == pytest.approx(res.gap)


def test_defensive_sampling_tames_the_tails_and_agrees_with_the_exact_value(lingauss):
    """A guide half as wide as the posterior: plain IS weights have infinite variance (k-hat > 0.7),
    the defensive mixture's are bounded; both estimates are unbiased for p(x)."""
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, widen=0.5)
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=2000)
    pyro.set_rng_seed(0)
    safe = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=2000, method="defensive")
    assert (plain.khat > 0.7).double().mean() > 0.3 and plain.stderr_trustworthy is False
    assert (safe.khat < 0.7).all() and safe.stderr_trustworthy and safe.method == "defensive"
    assert abs(safe.mean - exact.mean().item()) < 3 * safe.mean_stderr + 0.01
    assert abs(plain.mean - exact.mean().item()) < 0.3
    # a mixture with the exact posterior as its main part is still exact in expectation, not per draw
    good_model, good_guide = make_pair(W, b, post_cov)
    res = pyrovae.log_marginal_likelihood(good_model, good_guide, x, num_samples=500,
                                          method=Defensive(heavy_weight=0.1, prior_weight=0.1))
    assert abs(res.mean - exact.mean().item()) < 3 * res.mean_stderr + 1e-3


def test_constrained_latents_move_in_unconstrained_space():
    """z ~ LogNormal(0, 1), x | z ~ N(log z, s^2): p(x) = N(0, 1 + s^2). A poor LogNormal guide;
    AIS must anneal log z with the Jacobian of exp to find the exact value."""
    s = 0.5
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.LogNormal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z.log(), s), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.LogNormal(x / (1 + s**2) + 0.3, 0.2))

    exact = dist.Normal(0.0, math.sqrt(1 + s**2)).log_prob(x)
    pyro.set_rng_seed(0)
    res = pyrovae.log_marginal_likelihood(model, guide, x, method=AIS(num_steps=80, pilot_steps=40), num_samples=32)
    assert ((res.log_px - exact).abs() < 3 * res.stderr + 0.05).all(), (res.log_px, exact, res.stderr)


def test_enumerated_discrete_latents_are_summed_out_in_ais():
    """A two-component mixture with z shared: c ~ Cat(pi), z ~ N(0,1), x ~ N(z + mu_c, 1). p(x) is
    a mixture of N(mu_c, 2); the guide is a single too-narrow Normal."""
    mu = torch.tensor([-2.0, 2.0], dtype=torch.float64)
    pi = torch.tensor([0.3, 0.7], dtype=torch.float64)
    x = torch.tensor([-2.5, 0.0, 1.0, 3.0], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("c", dist.Categorical(pi), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("x", dist.Normal(z + mu[c], 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.3 * x, 0.3))

    exact = torch.logsumexp(pi.log()[:, None] + dist.Normal(mu[:, None], math.sqrt(2)).log_prob(x), 0)
    pyro.set_rng_seed(0)
    res = pyrovae.log_marginal_likelihood(model, guide, x, method=AIS(num_steps=60, pilot_steps=30), num_samples=32)
    assert ((res.log_px - exact).abs() < 3 * res.stderr + 0.05).all(), (res.log_px, exact, res.stderr)
    pyro.set_rng_seed(0)
    res = pyrovae.log_marginal_likelihood(model, guide, x, method="defensive", num_samples=4000)
    assert torch.allclose(res.log_px, exact, atol=0.05), (res.log_px, exact)


def test_honest_summary_of_heavy_tailed_weights(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, widen=0.5)
    pyro.set_rng_seed(0)
    with pytest.warns(UserWarning, match="method='ais'"):
        res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=1024)
    summary = res.summary()
    assert summary["method"] == "is" and summary["stderr_trustworthy"] is False
    assert list(summary["convergence"]) == ["64", "256", "1024"]
    assert summary["convergence"]["1024"] == pytest.approx(res.mean)
    assert summary["convergence"]["64"] < summary["convergence"]["1024"]  # a lower bound that still climbs
    assert "Convergence check" in res.caveat() and "method='ais'" in res.caveat()
    good_model, good_guide = make_pair(W, b, post_cov)
    good = pyrovae.log_marginal_likelihood(good_model, good_guide, x, num_samples=100)
    assert good.stderr_trustworthy and good.caveat() is None


def test_schedule_and_settings_are_checked():
    betas = annealing_schedule(10)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    assert (betas[1:6].diff() > 0).all() and betas[1] < 0.1 / 2  # sigmoid: dense near 0
    for bad in (dict(num_steps=0), dict(target_accept=1.0), dict(schedule="cosine"), dict(num_leapfrog=1.5)):
        with pytest.raises(ValueError):
            AIS(**bad)
    with pytest.raises(ValueError, match="sum < 1"):
        Defensive(heavy_weight=0.6, prior_weight=0.5)
    model, guide = make_pair(torch.eye(LATENT), torch.zeros(LATENT), torch.eye(LATENT))
    with pytest.raises(ValueError, match="one of"):
        pyrovae.log_marginal_likelihood(model, guide, torch.zeros(3, LATENT), method="annealed")
    with pytest.raises(ValueError, match="takes none"):
        pyrovae.log_marginal_likelihood(model, guide, torch.zeros(3, LATENT), num_steps=10)


def test_bdmc_refuses_a_model_whose_observation_is_not_x():
    def model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
            pyro.sample("y", dist.Normal(z + x, 1.0), obs=y[:, 0])
            pyro.sample("y2", dist.Normal(z, 1.0), obs=y[:, 1])

    def guide(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))

    with pytest.raises(ContractError, match="exactly one observed site"):
        bdmc(model, guide, torch.zeros(4), torch.zeros(4, 2), num_steps=3, num_samples=2)


def test_evaluate_and_compare_keep_the_methods_apart(tmp_path, capsys):
    """Through the CLI: --method ais and defensive write their own files; compare ranks within a
    method, and refuses two runs whose latest evaluations use different estimators."""
    from pyrovae.cli import main

    runs = []
    for hidden in ("32", "16"):  # the same seed: the same held-out points
        run = tmp_path / f"run{hidden}"
        assert main(["train", "--epochs", "1", "--latent-dim", "2", "--hidden", hidden, "--train-size", "600",
                     "--heldout-size", "50", "--batch-size", "100", "--out", str(run),
                     "--no-progress", "--threads", "1"]) == 0
        runs.append(run)
    a, b = runs
    assert main(["evaluate", str(a), "--method", "ais", "--ais-steps", "4", "--num-samples", "3",
                 "--max-datapoints", "6", "--bdmc", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "AIS, T=4, 3 chains" in out and "HMC acceptance" in out and "BDMC on 4 datapoints" in out
    summary = __import__("json").loads((a / "evaluation-ais-T4-K3-first6.json").read_text())
    assert summary["method"] == "ais" and summary["num_steps"] == 4 and 0 < summary["mean_acceptance"] <= 1
    bd = __import__("json").loads((a / "bdmc-T4-K3.json").read_text())
    assert bd["mean_lower"] <= bd["mean_upper"] + 5 and bd["num_datapoints"] == 4
    for run in (a, b):
        assert main(["evaluate", str(run), "--method", "defensive", "--num-samples", "40", "--max-datapoints", "6",
                     "--no-progress"]) == 0
    assert (a / "evaluation-defensive-K40-first6.csv").exists()
    assert main(["compare", str(a), str(b), "--method", "defensive", "--png", str(tmp_path / "c.png")]) == 0, \
        capsys.readouterr().err
    assert "defensive importance sampling, K = 40" in capsys.readouterr().out
    # b has no AIS evaluation: compare names the methods it has and the fix
    assert main(["compare", str(a), str(b), "--method", "ais", "--png", str(tmp_path / "d.png")]) == 2
    err = capsys.readouterr().err
    assert "no evaluation-ais-T*-K*.json" in err and "defensive" in err
    assert main(["evaluate", str(a), "--ais-steps", "10", "--no-progress"]) == 2
    assert "belong to --method ais" in capsys.readouterr().err


def test_compare_refuses_to_rank_across_estimators(lingauss):
    from pyrovae.scoring import ComparisonError, Scored, compare

    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    is_res = pyrovae.log_marginal_likelihood(model, guide, x, num_samples=30)
    ais_res = pyrovae.log_marginal_likelihood(model, guide, x, method="ais", num_steps=3, num_samples=30)
    a = Scored.from_result("a", is_res, "continuous", discrete=False)
    b_ = Scored.from_result("b", ais_res, "continuous", discrete=False)
    with pytest.raises(ComparisonError, match="different estimators"):
        compare([a, b_])
    table = compare([a, Scored.from_result("c", is_res, "continuous", discrete=False)])
    assert table[0]["method"] == "importance sampling, K = 30"
