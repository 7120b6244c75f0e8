"""β-VAE, KL warm-up, capacity and free bits (pyrovae/infer/weighted.py): exact checks on a
linear-Gaussian pair whose KL is known in closed form, then the trainer and the CLI."""

import json
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyrovae
from pyrovae.cli import main
from pyrovae.infer import BetaELBO, CapacityELBO, ContractError, Trainer, kl_weighting
from pyrovae.infer.weighted import parse_anneal, parse_capacity

D, N = 3, 6
torch.manual_seed(0)
W = torch.randn(4, D)
X = torch.randn(N, 4)
LOC0, LOG_SCALE0 = torch.randn(N, D), torch.randn(N, D) * 0.3


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([D]).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, 1.0).to_event(1), obs=x)


def make_guide():
    loc, log_scale = LOC0.clone().requires_grad_(), LOG_SCALE0.clone().requires_grad_()

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return guide, loc, log_scale


def exact_kl_per_dim() -> torch.Tensor:
    return torch.distributions.kl_divergence(dist.Normal(LOC0, LOG_SCALE0.exp()), dist.Normal(0.0, 1.0))


def loss_at(objective, guide, seed=1):
    pyro.set_rng_seed(seed)
    return objective.differentiable_loss(model, guide, X)


def test_beta_weights_exactly_the_closed_form_kl():
    guide, _, _ = make_guide()
    kl = exact_kl_per_dim().sum()
    assert BetaELBO(2.0).terms(model, guide, X)["kl"].item() == pytest.approx(kl.item(), rel=1e-6)
    # same random numbers: the losses differ by (β - 1) KL and nothing else
    diff = loss_at(BetaELBO(4.0), guide) - loss_at(BetaELBO(1.0), guide)
    assert diff.item() == pytest.approx(3 * kl.item(), rel=1e-5)
    assert not BetaELBO(1.0).weighted and BetaELBO(4.0).weighted and BetaELBO("beta").weighted


def test_beta_one_is_the_meanfield_elbo():
    guide, _, _ = make_guide()
    ours = loss_at(BetaELBO(1.0), guide)
    pyro.set_rng_seed(1)
    pyros = pyro.infer.TraceMeanField_ELBO().differentiable_loss(model, guide, X)
    assert ours.item() == pytest.approx(pyros.item(), rel=1e-6)


def test_free_bits_floor_each_dimension_and_stop_its_kl_gradient():
    per_dim = exact_kl_per_dim().mean(0)  # batch-mean KL of each dimension
    lam = float(per_dim.sort().values[1])  # between the smallest and the largest
    guide, loc, _ = make_guide()
    objective = BetaELBO(1.0, free_bits=lam)
    assert torch.allclose(objective.terms(model, guide, X)["kl_per_dim"].detach(), per_dim, atol=1e-6)
    diff = loss_at(objective, guide) - loss_at(BetaELBO(1.0), guide)
    floored = N * per_dim.clamp(min=lam).sum() - exact_kl_per_dim().sum()
    assert diff.item() == pytest.approx(floored.item(), rel=1e-5, abs=1e-5)
    # below the floor a dimension's loc gets only the reconstruction's gradient
    (grad_fb,) = torch.autograd.grad(loss_at(objective, guide), loc)
    (grad_recon,) = torch.autograd.grad(loss_at(BetaELBO(1e-12), guide), loc)
    below, above = per_dim < lam, per_dim > lam
    assert torch.allclose(grad_fb[:, below], grad_recon[:, below], atol=1e-5)
    assert not torch.allclose(grad_fb[:, above], grad_recon[:, above], atol=1e-3)


def test_free_bits_refuse_a_kl_that_does_not_split_by_dimension():
    mix = dist.MixtureSameFamily(dist.Categorical(torch.ones(2)),
                                 dist.Normal(torch.zeros(2, D), 1.0).to_event(1))

    def mixture_model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", mix)
            pyro.sample("x", dist.Normal(z @ W.T, 1.0).to_event(1), obs=x)

    guide, _, _ = make_guide()
    with pytest.raises(ContractError, match="splits by latent dimension.*MixtureSameFamily"):
        BetaELBO(1.0, free_bits=0.5).differentiable_loss(mixture_model, guide, X)
    BetaELBO(2.0).differentiable_loss(mixture_model, guide, X)  # without free bits: a Monte Carlo KL


def test_capacity_over_all_latents_is_one_group():
    guide, _, _ = make_guide()
    one = loss_at(CapacityELBO(None, gamma=3.0, capacities={"z": 0.5}), guide)
    named = loss_at(CapacityELBO({"z": ("z",)}, gamma=3.0, capacities={"z": 0.5}), guide)
    assert one.item() == pytest.approx(named.item(), rel=1e-7)
    kl_bar = exact_kl_per_dim().sum(-1).mean()
    diff = one - loss_at(BetaELBO(1e-12), guide)
    assert diff.item() == pytest.approx(3.0 * N * abs(kl_bar.item() - 0.5), rel=1e-4)


@pytest.mark.parametrize("jit", [False, True])
def test_warm_up_follows_its_schedule_step_by_step(jit):
    """β(step) = β · linear(step), set per step; the compiled loss follows it as the eager one."""
    pyrovae.infer.clear_factors()
    pyro.clear_param_store()

    def guide(x):
        loc, log_scale = pyro.param("loc", LOC0.clone()), pyro.param("log_scale", LOG_SCALE0.clone())
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    objective, schedules = kl_weighting(beta=2.0, kl_anneal=parse_anneal("linear:4"))
    seen = []
    trainer = Trainer(model, guide, objective=objective, schedules=schedules, jit=jit, lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a jit/eager disagreement would warn
        for _ in range(6):
            trainer.step(X)
            seen.append(pyrovae.factor("beta").item())
    assert seen == pytest.approx([2.0 * min(s / 4, 1.0) if s else 2e-6 for s in range(6)], rel=1e-6)


def test_specs_parse_and_refuse_with_the_form():
    assert parse_anneal("cyclical:10:0.5")(5) == pytest.approx(1.0)
    assert parse_anneal("linear:10:5")(10) == pytest.approx(0.5)
    assert parse_capacity("25:100000") == (25.0, 100000)
    for bad in ("linear", "linear:x", "cosine:10", "linear:0"):
        with pytest.raises(ValueError, match="linear:STEPS|steps must be"):
            parse_anneal(bad)
    with pytest.raises(ValueError, match="C_MAX:STEPS"):
        parse_capacity("25")
    with pytest.raises(ValueError, match="capacity= alone"):
        kl_weighting(beta=2.0, capacity=(5.0, 10))


S = ["--train-size", "300", "--heldout-size", "50", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


def _metrics(run):
    import csv

    return list(csv.DictReader((run / "metrics.csv").open()))


def test_cli_flags_train_record_the_true_elbo_and_resume_on_schedule(tmp_path):
    run = tmp_path / "beta"
    assert main(["train", *S, "--epochs", "2", "--beta", "4", "--kl-anneal", "linear:4", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["beta"] == 4.0 and config["kl_anneal"] == "linear:4"
    rows = _metrics(run)
    assert all(r["objective"] == "BetaELBO, weighted" and float(r["train_elbo"]) < 0 for r in rows)
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)["trainer"]
    assert float(state["factors"]["beta"]) == pytest.approx(4.0)  # past the 4 warm-up steps
    assert len(_metrics(run)) == 3
    for flags in (["--free-bits", "0.25"], ["--capacity", "5:20", "--capacity-gamma", "10"]):
        out = tmp_path / flags[0].strip("-")
        assert main(["train", *S, "--epochs", "1", *flags, "--out", str(out)]) == 0
        assert _metrics(out)[0]["objective"].endswith("weighted")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--capacity", "5:100", "--beta", "2"], "give --capacity alone"),
        (["--model", "mixture", "--beta", "2"], "trains with its own objective"),
        (["--objective", "iwae", "--free-bits", "1"], "--objective iwae is not the ELBO"),
        (["--kl-anneal", "cosine:5"], "argument --kl-anneal"),
        (["--beta", "-1"], "argument --beta: must be >= 0"),
    ],
)
def test_cli_refuses_what_does_not_combine(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", *S, "--epochs", "1", *flags, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
