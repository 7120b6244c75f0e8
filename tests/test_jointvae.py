"""JointVAE (Dupont 2018) and the capacity objective: hand computations, schedules, jit, IS, CLI."""

import itertools
import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import pyrovae
from pyrovae.cli import main
from pyrovae.infer.weighted import CapacityELBO, discrete_kl, site_kl
from pyrovae.models.jointvae import JointVAE, linear_assignment, match_codes

torch.set_num_threads(1)

W = torch.tensor([[1.0, 0.5], [-0.3, 2.0], [0.2, 0.1]])  # x = W z + noise: 2-D z, 3-D x
SIGMA, A, S = 0.7, torch.tensor([[0.4, -0.2, 0.1], [0.3, 0.5, -0.6]]), torch.tensor([0.5, 0.8])


def gaussian_model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, SIGMA).to_event(1), obs=x)


def gaussian_guide(x):
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x @ A.T, S).to_event(1))


def _hand_terms(x, z):
    """Reconstruction sum and the batch-mean KL(N(Ax, S) || N(0, I)), written out."""
    recon = (-0.5 * ((x - z @ W.T) / SIGMA) ** 2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi)).sum()
    mu = x @ A.T
    kl = (0.5 * (mu**2 + S**2 - 1) - S.log()).sum(-1)
    return recon, kl.mean()


def _loss_and_z(objective, x, seed=1):
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(gaussian_model, gaussian_guide, x)
    pyro.set_rng_seed(seed)  # the objective runs the guide first: the same z
    z = poutine.trace(gaussian_guide).get_trace(x).nodes["z"]["value"]
    return loss, z


@pytest.mark.parametrize("capacity", [0.0, 0.3, 25.0])
def test_capacity_objective_equals_the_hand_computation(capacity):
    x = torch.randn(7, 3)
    loss, z = _loss_and_z(CapacityELBO({"z": ("z",)}, gamma=3.0, capacities={"z": capacity}), x)
    recon, kl = _hand_terms(x, z)
    assert torch.allclose(loss, -recon + 3.0 * 7 * (kl - capacity).abs(), rtol=1e-5)


def test_the_penalty_vanishes_when_the_capacity_is_the_kl():
    x = torch.randn(6, 3)
    _, kl = _hand_terms(x, torch.zeros(6, 2))
    pyrovae.set_factor("C", kl.item())
    loss, z = _loss_and_z(CapacityELBO({"z": ("z",)}, gamma=30.0, capacities={"z": "C"}), x)
    recon, _ = _hand_terms(x, z)
    assert torch.allclose(loss, -recon, rtol=1e-5, atol=1e-3)


def test_a_site_in_no_group_enters_as_in_the_elbo():
    """With the only latent in no group, the loss is -(recon - KL): the closed-form-KL ELBO."""
    x = torch.randn(5, 3)
    loss, z = _loss_and_z(_no_group(), x)
    recon, kl = _hand_terms(x, z)
    assert torch.allclose(loss, -recon + 5 * kl, rtol=1e-5)


def _no_group():
    objective = CapacityELBO({"z": ("z",)}, gamma=1.0)
    objective.groups = {}  # what a pair with no grouped site sees
    return objective


# ---------------------------------------------------------------- the discrete surrogate


def test_discrete_kl_is_the_categorical_kl_by_hand():
    logits = torch.randn(6, 4) * 2
    q = dist.RelaxedOneHotCategorical(torch.tensor(0.67), logits=logits)
    p = dist.RelaxedOneHotCategorical(torch.tensor(0.67), probs=torch.ones(4) / 4)
    probs = logits.softmax(-1)
    hand = (probs * (probs * 4).log()).sum(-1)
    assert torch.allclose(discrete_kl(q, p), hand, atol=1e-6)
    assert torch.allclose(site_kl(q, p.expand([6]), q.rsample()), hand, atol=1e-6)  # through .expand too


def _relaxed_pair(logits, tau=0.67):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", dist.RelaxedOneHotCategorical(torch.tensor(tau), probs=torch.ones(logits.shape[-1]) / 4))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            c_logits = pyro.param("logits", logits)
            pyro.sample("c", dist.RelaxedOneHotCategorical(torch.tensor(tau), logits=c_logits))

    return model, guide


def test_the_objective_uses_the_discrete_surrogate_for_relaxed_sites():
    logits, x = torch.randn(5, 4) * 3, torch.randn(5, 2)
    model, guide = _relaxed_pair(logits)
    loss = CapacityELBO({"c": ("c",)}, gamma=2.0, capacities={"c": 0.1}).differentiable_loss(model, guide, x)
    probs = logits.softmax(-1)
    kl = (probs * (probs * 4).log()).sum(-1).mean()
    recon = dist.Normal(0.0, 1.0).log_prob(x).sum()
    assert torch.allclose(loss, -recon + 2.0 * 5 * (kl - 0.1).abs(), rtol=1e-5)


# ---------------------------------------------------------------- per-step capacities, jit


@pytest.mark.parametrize("jit", [False, True])
def test_the_schedule_moves_the_capacity_per_step(jit):
    """The pair's loss does not depend on random numbers, and lr is tiny: between two steps the
    loss moves by gamma * N * (C_1 - C_0), the schedule's step."""
    logits, x = torch.tensor([[6.0, 0.0, 0.0, 0.0]]).expand(8, 4).clone(), torch.randn(8, 2)
    model, guide = _relaxed_pair(logits)
    schedule = pyrovae.linear(0.0, 0.5, steps=10)
    objective = CapacityELBO({"c": ("c",)}, gamma=3.0, capacities={"c": "C_c"})
    trainer = pyrovae.Trainer(model, guide, objective=objective, lr=1e-9, jit=jit, schedules={"C_c": schedule})
    losses = [trainer.step(x).item() for _ in range(4)]
    for step in range(3):
        expected = 3.0 * 8 * (schedule(step + 1) - schedule(step))
        assert losses[step] - losses[step + 1] == pytest.approx(expected, rel=1e-3)
    assert pyrovae.infer.factors()["C_c"].item() == pytest.approx(schedule(3))
    assert trainer.compiled == jit


def _tiny_jointvae(**options):
    return JointVAE(latent_dim=2, categories=3, hidden=(16,), capacity_steps=3, **options)


def _jointvae_losses(x, jit: bool) -> tuple[list[float], pyrovae.Trainer]:
    pyro.clear_param_store()
    pyrovae.infer.clear_factors()
    pyro.set_rng_seed(0)
    vae = _tiny_jointvae()
    trainer = pyrovae.Trainer(vae.model, vae.guide, objective=vae.default_objective(), jit=jit,
                              schedules=vae.training_schedules())
    return [trainer.step(x).item() for _ in range(6)], trainer


def test_compiled_loss_equals_eager_across_the_capacity_ramp(binary_split):
    x = binary_split[1][:32]
    eager, _ = _jointvae_losses(x, jit=False)
    compiled, trainer = _jointvae_losses(x, jit=True)
    assert trainer.compiled and trainer.jit_fallback is None
    assert compiled == pytest.approx(eager, rel=1e-4)
    assert pyrovae.infer.factors()["jointvae.capacity_c"].item() == pytest.approx(math.log(3))  # capped at log K


# ---------------------------------------------------------------- importance sampling


def test_log_px_is_exact_when_the_decoder_ignores_the_latents(binary_split):
    """q = p exactly and p(x | z, c) constant: every weight is p(x | .), for any K."""
    vae = _tiny_jointvae()
    with torch.no_grad():
        for p in vae.encoder.gaussian.parameters():
            p.zero_()
        vae.encoder.gaussian.scale.bias.fill_(math.log(math.expm1(1 - 1e-5)))  # softplus + 1e-5 = 1
        for p in vae.encoder.logits.parameters():
            p.zero_()
        vae.decoder[0].weight.zero_()  # the first layer ignores [z, c]
    x = binary_split[1][:40]
    # K < 25 skips PSIS, whose tail fit fails on weights equal up to float32 rounding
    res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=20)
    exact = vae.likelihood(vae.decoder(torch.zeros(1, 5))).log_prob(x)
    assert torch.allclose(res.log_px, exact.double(), atol=1e-3)


# ---------------------------------------------------------------- matching codes to labels


def test_matching_recovers_a_permutation_exactly():
    labels = torch.arange(10).repeat(30)[torch.randperm(300)]
    perm = torch.randperm(10)
    accuracy, mapping = match_codes(perm[labels], labels)
    assert accuracy == 1.0 and all(mapping[perm[label]] == label for label in range(10))


def test_linear_assignment_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(3)
    for n in (1, 2, 4, 6):
        for _ in range(5):
            cost = torch.randint(0, 20, (n, n), generator=gen).tolist()
            assign = linear_assignment(cost)
            best = min(sum(cost[i][p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
            assert sorted(assign) == list(range(n)) and sum(cost[i][assign[i]] for i in range(n)) == best


def test_matching_with_more_codes_than_labels():
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    codes = torch.tensor([2, 2, 0, 0, 1, 3])  # best: 2 -> 0, 0 -> 1: 4 of 6
    accuracy, mapping = match_codes(codes, labels, num_codes=4)
    assert accuracy == pytest.approx(4 / 6) and mapping[2] == 0 and mapping[0] == 1


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("option, value, words", [
    ("temperature", 0.0, "temperature must be > 0"), ("temperature", -1.0, "temperature must be > 0"),
    ("capacity_z", -1.0, "capacity_z must be >= 0"), ("capacity_c", -0.5, "capacity_c must be >= 0"),
    ("gamma", -1.0, "gamma must be >= 0"), ("categories", 1, "categories must be >= 2"),
])
def test_bad_options_are_refused_with_the_fix(option, value, words):
    with pytest.raises(ValueError, match=words):
        JointVAE(**{option: value})


def test_bad_objective_settings_are_refused():
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        CapacityELBO({"z": ("z",)}, gamma=-1.0)
    with pytest.raises(ValueError, match=r"capacities\['z'\] must be >= 0"):
        CapacityELBO({"z": ("z",)}, capacities={"z": -2.0})
    with pytest.raises(ValueError, match="unknown group"):
        CapacityELBO({"z": ("z",)}, capacities={"c": 1.0})
    with pytest.raises(ValueError, match="needs groups"):
        CapacityELBO({})
    with pytest.raises(pyrovae.ContractError, match="does not sample"):
        CapacityELBO({"z": ("z",), "c": ("c",)}).differentiable_loss(gaussian_model, gaussian_guide, torch.randn(3, 3))


def test_a_bad_option_on_the_command_line_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--model", "jointvae", "--model-opt", "temperature=0", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "temperature must be > 0" in err and "Traceback" not in err


# ---------------------------------------------------------------- the command line


def test_train_evaluate_sample_on_the_command_line(tmp_path):
    run = tmp_path / "jv"
    args = ["train", "--model", "jointvae", "--epochs", "2", "--latent-dim", "3", "--hidden", "32",
            "--model-opt", "categories=4", "--model-opt", "capacity_steps=20", "--train-size", "600",
            "--heldout-size", "100", "--batch-size", "100", "--threads", "1", "--no-progress", "--out", str(run)]
    assert main(args) == 0
    metrics = (run / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    assert {"train_elbo", "heldout_elbo", "kl_z", "kl_c", "code_accuracy"} <= set(header) and len(metrics) == 3
    assert "CapacityELBO, weighted" in metrics[1]
    for name in ("reconstructions.png", "samples.png", "codes.png", "curves.png", "latent.png"):
        assert (run / name).stat().st_size > 0, name
    assert len(list(run.glob("traversal-z*.png"))) == 3
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "jointvae" and config["model_options"]["categories"] == 4
    assert main(["evaluate", str(run), "--num-samples", "8", "--max-datapoints", "40", "--threads", "1",
                 "--no-progress"]) == 0
    summary = json.loads((run / "evaluation-K8-first40.json").read_text())
    assert "relaxed-categorical(K=4" in summary["prior"] and summary["mean_log_px"] < 0
    assert main(["sample", str(run), "--num", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_the_example_trains_and_scores(capsys, tmp_path, load_example):
    import argparse

    module = load_example("jointvae")
    args = argparse.Namespace(dataset="embedded", data_dir=None, epochs=1, batch_size=100, lr=5e-4, latent_dim=3,
                              categories=4, hidden=[32], capacity_steps=50, train_size=600, test_size=60,
                              num_samples=10,
                              out=str(tmp_path), seed=0, progress=False)
    res = module.main(args)
    out = capsys.readouterr().out
    assert "code accuracy after matching" in out and "log p(x) of the relaxed-code model" in out
    assert len(res) == 60 and (tmp_path / "codes.png").exists()


def test_vectorised_particles_keep_one_capacity_term_per_batch():
    """With K particles the KL is averaged over particles and datapoints inside |KL - C|: two
    capacities on the same random numbers differ by gamma * N * (|KL - a| - |KL - b|)."""
    x = torch.randn(6, 3)
    _, kl = _hand_terms(x, torch.zeros(6, 2))
    losses = []
    for capacity in (0.0, kl.item() + 1.0):
        pyro.set_rng_seed(5)
        objective = CapacityELBO({"z": ("z",)}, gamma=2.0, capacities={"z": capacity}, num_particles=4)
        losses.append(objective.differentiable_loss(gaussian_model, gaussian_guide, x))
    assert (losses[0] - losses[1]).item() == pytest.approx(2.0 * 6 * (kl.item() - 1.0), rel=1e-4)


def test_pyro_svi_steps_with_the_capacity_objective(binary_split):
    vae = _tiny_jointvae()
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=vae.default_objective())
    assert math.isfinite(svi.step(binary_split[1][:16]))
