"""M1+M2 (Kingma et al. 2014): M2 on the latent codes of a trained, frozen VAE."""

from __future__ import annotations

import argparse
import json
import shutil

import pyro
import pytest
import torch

import pyrovae
from pyrovae.cli import main
from pyrovae.models import M1M2, VAE

torch.set_num_threads(1)
FAST = ["--train-size", "600", "--heldout-size", "100", "--batch-size", "100", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def m1_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "m1"
    assert main(["train", "--model", "vae", "--latent-dim", "4", "--hidden", "16", "--epochs", "1",
                 "--out", str(run), *FAST]) == 0
    return run


def test_training_leaves_m1_as_trained_and_the_run_needs_no_m1_folder_afterwards(m1_run, tmp_path):
    m1_copy, run = tmp_path / "m1", tmp_path / "m1m2"
    shutil.copytree(m1_run, m1_copy)
    assert main(["train", "--model", "m1m2", "--model-opt", f"m1={m1_copy}", "--model-opt", "num_labels=100",
                 "--latent-dim", "3", "--hidden", "16", "--epochs", "1", "--out", str(run), *FAST]) == 0
    options = json.loads((run / "config.json").read_text())["model_options"]
    assert options["m1_options"]["latent_dim"] == 4 and options["m1_fingerprint"]
    vae, _ = pyrovae.load_model(m1_copy)
    model, _ = pyrovae.load_model(run)
    for (name, trained), (_, kept) in zip(vae.state_dict().items(), model.m1.state_dict().items()):
        assert torch.equal(trained, kept), name  # frozen: M2's objective never moves M1
    shutil.rmtree(m1_copy)  # the run's own checkpoint holds M1
    again, _ = pyrovae.load_model(run)
    assert not again.m1_loaded
    assert all(torch.equal(a, b) for a, b in zip(again.m1.state_dict().values(), vae.state_dict().values()))
    assert main(["evaluate", str(run), "--num-samples", "20", "--max-datapoints", "30", "--no-progress"]) == 0
    summary = json.loads((run / "evaluation-K20-first30.json").read_text())
    assert summary["model"] == "m1m2" and summary["mean_log_px"] >= summary["mean_elbo"]
    for name in ("samples.png", "curves.png", "latent.png"):
        assert (run / name).read_bytes()[:4] == b"\x89PNG"


def test_a_step_trains_m2s_networks_and_not_m1():
    m1 = VAE(data_dim=12, latent_dim=3, hidden=[8], image_shape=(3, 4))
    model = M1M2(12, (3, 4), m1=m1, num_labels=10, latent_dim=2, hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.bernoulli(torch.full((20, 12), 0.4), generator=torch.Generator().manual_seed(0))
    y, labelled = torch.arange(20) % 10, torch.arange(20) < 10
    trainer = pyrovae.Trainer(model.model, model.guide, objective=model.default_objective(), lr=0.01)
    trainer.step(x, y, labelled)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and not any(k.startswith("m1.") for k in moved)
    assert {k.split(".")[0] for k in moved} == {"encoder_y", "encoder_z", "decoder"}


@pytest.mark.filterwarnings("ignore:Pareto k-hat")  # an untrained M2
def test_importance_sampling_scores_x_through_m1s_decoder_exactly():
    """With an M1 whose decoder ignores z1, p(x | z1) is the Bernoulli of its output bias, one factor
    in every importance weight: changing the bias moves the log p(x) estimate by exactly the change of
    that log-probability, on the same random numbers."""
    m1 = VAE(data_dim=12, latent_dim=3, hidden=[8], image_shape=(3, 4)).double()
    last = [m for m in m1.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    x = torch.bernoulli(torch.full((4, 12), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))
    estimates, exact = [], []
    for bias in (0.0, 1.5):
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(bias)
        torch.manual_seed(0)  # the same M2 weights for both
        model = M1M2(12, (3, 4), m1=m1, num_labels=10, latent_dim=2, hidden=(8,)).double()
        torch.manual_seed(3)  # the same draws for both
        res = pyrovae.log_marginal_likelihood(model.model, model.guide, x, torch.zeros(4, dtype=torch.long),
                                              torch.zeros(4, dtype=torch.bool), num_samples=50)
        estimates.append(res.log_px)
        exact.append(torch.distributions.Bernoulli(logits=last.bias).log_prob(x).sum(-1))
    assert torch.allclose(estimates[1] - estimates[0], exact[1] - exact[0], atol=1e-9)
    assert not torch.allclose(estimates[0], exact[0])  # the M2 part is in the estimate too


def _m1_with_an_inactive_unit(shift: float = 0.0) -> VAE:
    """An M1 whose unit 1 has the same posterior mean, ``shift``, for every image."""
    torch.manual_seed(0)
    m1 = VAE(latent_dim=3, hidden=[8])
    with torch.no_grad():
        m1.encoder.head.loc.weight[[0, 2]] *= 50
        m1.encoder.head.loc.weight[1] = 0.0
        m1.encoder.head.loc.bias[1] = shift
    return m1


def test_m2_models_m1s_active_units_and_gives_the_others_m1s_prior():
    digits = pyrovae.load_embedded_mnist().subset(slice(0, 300))
    x = digits.subset(slice(0, 8)).observations(torch.Generator().manual_seed(0))
    classes = []
    for units in ("active", "all"):
        for shift in (0.0, 3.0):
            torch.manual_seed(1)  # the same M2 weights for every model
            model = M1M2(m1=_m1_with_an_inactive_unit(shift), num_labels=100, latent_dim=2, hidden=(8,),
                         m1_units=units)
            model.prepare_data(digits)
            assert model.report()["m1_units_modelled"] == (2 if units == "active" else 3)
            rows = (x, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.bool))
            torch.manual_seed(2)  # the same z1 ~ q(z1 | x) but for the inactive unit's shift
            classes.append(pyro.poutine.trace(model.guide).get_trace(*rows).nodes["y"]["fn"].probs)
            if units == "active":
                p_z1 = pyro.poutine.trace(model.model).get_trace(*rows).nodes["z1"]["fn"].base_dist
                assert torch.equal(p_z1.loc[:, 1], torch.zeros(8)) and torch.equal(p_z1.scale[:, 1], torch.ones(8))
                assert not torch.equal(p_z1.scale[:, 0], torch.ones(8))
    assert torch.equal(classes[0], classes[1])  # q(y | z1) does not see the inactive unit
    assert not torch.allclose(classes[2], classes[3])  # with m1_units="all" it does
    with pytest.raises(pyrovae.ConfigError, match="no active unit"):
        M1M2(m1=VAE(latent_dim=3, hidden=[8]).requires_grad_(False).apply(_zero_loc), num_labels=100,
             hidden=(8,)).prepare_data(digits)
    with pytest.raises(pyrovae.ConfigError, match="m1_units must be"):
        M1M2(m1=VAE(latent_dim=3, hidden=[8]), num_labels=100, m1_units="some")


def _zero_loc(module: torch.nn.Module) -> None:
    if module.__class__.__name__ == "GaussianHead":
        module.loc.weight.data.zero_()


def test_m1_must_be_a_trained_vae_run_and_the_cli_says_so_before_writing(tmp_path, capsys):
    run = tmp_path / "bad"
    for m1, message in ((tmp_path / "nothing", "does not exist"),):
        assert main(["train", "--model", "m1m2", "--model-opt", f"m1={m1}", "--model-opt", "num_labels=100",
                     "--epochs", "1", "--out", str(run), *FAST]) == 2
        err = capsys.readouterr().err
        assert message in err and "pyrovae train --model vae" in err and "Traceback" not in err
        assert not run.exists()


def test_labelled_images_are_copied_and_their_terms_weighted_so_the_objective_is_unchanged():
    digits = pyrovae.load_embedded_mnist().subset(slice(0, 600))
    m1 = VAE(latent_dim=3, hidden=[8])
    model = M1M2(m1=m1, num_labels=100, latent_dim=2, hidden=(8,), m1_units="all")  # an untrained M1
    rows = model.prepare_data(digits)
    assert len(rows) == 600 + 100 * 4 and int(rows.labelled.sum()) == 500  # 500 unlabelled: 5 copies
    assert model.label_weight == pytest.approx(1 / 5)
    assert len(model.prepare_data(digits, heldout=True)) == 600
    # every labelled term (L(x, y) and the alpha-weighted classifier term) carries the weight 1/R
    x = torch.bernoulli(torch.full((6, 784), 0.3), generator=torch.Generator().manual_seed(0))
    y, labelled = torch.arange(6), torch.ones(6, dtype=torch.bool)
    losses = []
    for weight in (1.0, 0.2):
        model.label_weight = weight
        torch.manual_seed(1)
        losses.append(model.default_objective().differentiable_loss(model.model, model.guide, x, y, labelled))
    assert losses[1].item() == pytest.approx(0.2 * losses[0].item(), rel=1e-5)
    with pytest.raises(pyrovae.ConfigError, match="label_copies must be >= 0"):
        M1M2(m1=m1, num_labels=100, label_copies=-1)


def test_the_example_script_runs(capsys, load_example):
    load_example("ss_vae_m1m2").main(argparse.Namespace(
        dataset="embedded", data_dir=None, num_labels=100, m1_epochs=1, m1_latent_dim=4, m1_hidden=[32], epochs=1,
        seed=0, train_size=600, test_size=100, eval_samples=20, eval_points=30, threads=1, latent_dim=3,
        hidden=[16]))
    out = capsys.readouterr().out
    assert "M1: held-out ELBO" in out and "test accuracy" in out and "log p(x)" in out
    assert "M2 modelled" in out and "of M1's 4 units" in out
