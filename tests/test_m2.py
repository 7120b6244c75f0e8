"""The semi-supervised M2 model (Kingma et al. 2014): its objective term by term against hand
computations with the same random numbers, log p(x) with y summed out against a closed form, the
compiled loss against the eager one, clear errors, and the zoo's CLI commands end to end."""

import argparse
import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from pyro.distributions import Bernoulli, Normal
from torch import nn

import pyrovae
from pyrovae.cli import main
from pyrovae.models import M2
from pyrovae.models.m2 import choose_labelled

torch.set_num_threads(1)
C, D, LATENT = 10, 12, 3
FAST = ["--train-size", "600", "--heldout-size", "100", "--batch-size", "100", "--no-progress", "--threads", "1"]


def tiny_m2(**options) -> M2:
    return M2(data_dim=D, image_shape=(3, 4), num_labels=options.pop("num_labels", 20), latent_dim=LATENT,
              hidden=(8,), **options).double()


def batch(n: int, labelled):
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((n, D), 0.3, dtype=torch.float64), generator=g)
    y = torch.randint(C, (n,), generator=g)
    return x, y, torch.as_tensor(labelled, dtype=torch.bool).expand(n).clone()


def elbo_given_label(m: M2, x, y, eps):
    r"""L(x, y) for one z = loc + scale * eps ~ q(z | x, y): log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)."""
    loc, scale = m.encoder_z(x, y)
    z = loc + scale * eps
    log_px = Bernoulli(logits=m.decoder(z, y)).log_prob(x).sum(-1)
    return log_px - math.log(C) + Normal(0.0, 1.0).log_prob(z).sum(-1) - Normal(loc, scale).log_prob(z).sum(-1)


def hand_loss(m: M2, x, y, labelled, seed: int):
    """-J: the guide draws z for the C enumerated labels of every row (masked on labelled rows), then
    z_label for every row (masked on unlabelled ones), in that order."""
    torch.manual_seed(seed)
    eps_u = torch.randn(C, len(x), LATENT, dtype=x.dtype)
    eps_l = torch.randn(len(x), LATENT, dtype=x.dtype)
    logits = m.encoder_y(x)
    q = logits.softmax(-1)
    elbo_k = torch.stack([elbo_given_label(m, x, torch.full_like(y, k), eps_u[k]) for k in range(C)], -1)
    entropy = -(q * logits.log_softmax(-1)).sum(-1)
    unlabelled = (q * elbo_k).sum(-1) + entropy  # U(x)
    supervised = elbo_given_label(m, x, y, eps_l)  # L(x, y)
    cross_entropy = F.cross_entropy(logits, y, reduction="none")
    per_row = torch.where(labelled, -supervised + m.aux_loss_multiplier * cross_entropy, -unlabelled)
    return per_row.sum()


def objective_loss(m: M2, x, y, labelled, seed: int):
    torch.manual_seed(seed)
    return m.default_objective().differentiable_loss(m.model, m.guide, x, y, labelled)


def test_all_labels_observed_is_a_classifier_plus_a_conditional_vae():
    m, (x, y, labelled) = tiny_m2(), batch(7, True)
    loss = objective_loss(m, x, y, labelled, seed=3)
    torch.manual_seed(3)
    torch.randn(C, len(x), LATENT, dtype=x.dtype)  # the unlabelled stream's (masked) draws come first
    cvae = elbo_given_label(m, x, y, torch.randn(len(x), LATENT, dtype=x.dtype)).sum()
    classifier = F.cross_entropy(m.encoder_y(x), y, reduction="sum")
    expected = 46.0 * classifier - cvae
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


@pytest.mark.parametrize("labelled", [False, [True, False, False, True, False, False]], ids=["none", "mixed"])
def test_the_enumerated_loss_is_the_sum_over_y_by_hand_in_value_and_gradient(labelled):
    m, (x, y, mask) = tiny_m2(), batch(6, labelled)
    loss, expected = objective_loss(m, x, y, mask, seed=5), hand_loss(m, x, y, mask, seed=5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    params = list(m.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    hand = torch.autograd.grad(expected, params, allow_unused=True)
    for g, h in zip(grads, hand):
        assert (g is None and h is None) or torch.allclose(g, h, rtol=1e-8, atol=1e-10)


class StandardNormal(nn.Module):
    """q(z | x, y) = p(z): exact when the decoder ignores z."""

    def forward(self, x, y):
        shape = (*torch.broadcast_shapes(x.shape[:-1], y.shape), LATENT)
        return x.new_zeros(shape), x.new_ones(shape)


def z_free_m2():
    """A tiny M2 whose decoder ignores z, so p(x) = sum_y p(y) p(x | y) in closed form."""
    m = tiny_m2()
    with torch.no_grad():
        m.decoder.input.value.weight.zero_()
        m.decoder.input.label.weight.normal_(0.0, 2.0)
    m.encoder_z = StandardNormal()
    logits = m.decoder(torch.zeros(C, LATENT, dtype=torch.float64), torch.arange(C)).detach()  # (C, D)
    return m, logits


def exact_log_px(x, logits):
    log_px_given_y = x @ logits.T - F.softplus(logits).sum(-1)  # (N, C)
    return torch.logsumexp(log_px_given_y - math.log(C), -1), log_px_given_y


def test_importance_sampling_of_an_unlabelled_row_sums_y_out_exactly():
    m, logits = z_free_m2()
    x, y, labelled = batch(20, False)
    exact, log_px_given_y = exact_log_px(x, logits)
    posterior = nn.Linear(D, C).double()  # q(y | x) = p(y | x): every weight is p(x)
    with torch.no_grad():
        posterior.weight.copy_(logits)
        posterior.bias.copy_(-F.softplus(logits).sum(-1))
    m.encoder_y = posterior
    res = pyrovae.log_marginal_likelihood(m.model, m.guide, x, y, labelled, num_samples=50)
    assert torch.allclose(res.log_px, exact, atol=1e-9)


def test_importance_sampling_with_a_rough_classifier_is_within_its_standard_errors():
    m, logits = z_free_m2()
    x, y, labelled = batch(20, False)
    exact, _ = exact_log_px(x, logits)
    res = pyrovae.log_marginal_likelihood(m.model, m.guide, x, y, labelled, num_samples=1000,
                                          khat_warn_share=1.0)
    assert ((res.log_px - exact).abs() <= 4 * res.stderr + 1e-6).all()
    assert (res.log_px - exact).abs().max() > 0  # y was sampled, not summed by the guide


def test_the_compiled_loss_of_a_step_equals_an_independent_eager_computation():
    m = M2(data_dim=D, image_shape=(3, 4), num_labels=20, latent_dim=LATENT, hidden=(8,))
    trainer = pyrovae.Trainer(m.model, m.guide, objective=m.default_objective(), jit=True)
    for labelled in ([True, False] * 5, [False] * 10):  # a batch without labelled rows skips them eagerly
        x, y, mask = batch(10, labelled)
        x = x.float()
        state = torch.get_rng_state()
        eager = m.default_objective().differentiable_loss(m.model, m.guide, x, y, mask).item()
        torch.set_rng_state(state)
        assert trainer.step(x, y, mask).item() == pytest.approx(eager, rel=1e-5)
        assert trainer.compiled, trainer.jit_fallback


def test_labelled_images_are_balanced_per_class_and_fixed_by_the_seed(embedded):
    labels = embedded.labels[:2000]
    mask = choose_labelled(labels, 100, 10, seed=0)
    assert mask.sum() == 100 and torch.equal(torch.bincount(labels[mask], minlength=10), torch.full((10,), 10))
    assert torch.equal(mask, choose_labelled(labels, 100, 10, seed=0))
    assert not torch.equal(mask, choose_labelled(labels, 100, 10, seed=1))
    m = M2(num_labels=100, latent_dim=2, hidden=(8,))
    source = m.prepare_data(embedded.subset(slice(0, 2000)))
    assert torch.equal(source.labelled, mask) and source.space == "binary-dynamic"
    x, y, held = m.prepare_data(embedded.subset(slice(0, 50)), heldout=True).tensors(torch.Generator())
    assert not held.any() and torch.equal(y, embedded.labels[:50]) and set(x.unique().tolist()) <= {0.0, 1.0}


def test_bad_data_and_options_get_errors_that_name_the_fix(embedded):
    images = embedded.images[:200]
    m = M2(num_labels=100, latent_dim=2, hidden=(8,))
    with pytest.raises(pyrovae.DataError, match=r"has no labels; pass them: pyrovae.from_tensor\(images, labels="):
        pyrovae.build_model(pyrovae.RunConfig(model="m2", model_options={"num_labels": 10}),
                            pyrovae.from_tensor(images))
    with pytest.raises(pyrovae.DataError, match=r"labels must lie in 0..9, but they range over \[0, 10\]"):
        m.prepare_data(pyrovae.from_tensor(images, labels=torch.arange(200) % 11))
    with pytest.raises(pyrovae.DataError, match="num_labels=300 is more than the 200 images"):
        M2(num_labels=300).prepare_data(pyrovae.from_tensor(images, labels=embedded.labels[:200]))
    with pytest.raises(pyrovae.DataError, match="class 3 has only 0 "):
        m.prepare_data(pyrovae.from_tensor(images, labels=torch.where(embedded.labels[:200] == 3, 4,
                                                                       embedded.labels[:200])))
    with pytest.raises(pyrovae.ConfigError, match="num_labels=105 must be a non-negative multiple of num_classes=10"):
        M2(num_labels=105)
    with pytest.raises(pyrovae.DataError, match="scores binarised digits.*binary-dynamic"):
        m.prepare_data(embedded.with_space("grey"))
    x, y, labelled = (t[:20] for t in m.prepare_data(embedded.subset(slice(0, 2000))).tensors(torch.Generator()))
    with pytest.raises(pyrovae.DataError, match=r"shape \(N,\).*use y.argmax\(-1\)"):
        m.check_data(x, F.one_hot(y, 10), labelled)
    with pytest.raises(pyrovae.DataError, match=r"must be a bool tensor of shape \(20,\)"):
        m.check_data(x, y, labelled.float())
    with pytest.raises(pyrovae.DataError, match=r"shape \(N, D\).*x.reshape"):
        m.check_data(x.reshape(20, 28, 28), y, labelled)
    with pytest.raises(pyrovae.DataError, match="binary data"):
        m.check_data(x * 0.5, y, labelled)
    with pytest.raises(pyrovae.DataError, match=r"takes \(x, y, labelled\)"):
        m.check_data(x)


def test_the_cli_refuses_bad_options_before_writing_anything(tmp_path, capsys):
    run = tmp_path / "bad"
    for opts, message in ((["--model-opt", "num_labels=105"], "multiple of num_classes=10"),
                          ([], "needs the option(s) ['num_labels']"),
                          (["--model-opt", "num_labels=1000"], "num_labels=1000 is more than the 600 images")):
        assert main(["train", "--model", "m2", *opts, "--epochs", "1", "--out", str(run), *FAST]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not run.exists()


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "m2"
    args = ["train", "--model", "m2", "--model-opt", "num_labels=100", "--latent-dim", "4", "--hidden", "32",
            "--epochs", "2", "--out", str(run), *FAST]
    assert main(args) == 0
    return run


def test_cli_train_records_accuracy_per_epoch_and_pictures(m2_run):
    config = json.loads((m2_run / "config.json").read_text())
    assert config["model"] == "m2" and config["model_options"]["num_labels"] == 100
    assert config["data_space"] == "binary-dynamic"
    rows = list(csv.DictReader((m2_run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 <= float(r["heldout_accuracy"]) <= 1.0
        assert float(r["heldout_elbo_enum"]) < 0 and float(r["heldout_elbo"]) < 0
        assert r["objective"] == "M2Objective, weighted" and float(r["train_elbo"]) < 0
    for name in ("samples.png", "curves.png", "latent.png"):
        assert (m2_run / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.filterwarnings("ignore:Pareto k-hat")  # two epochs of a tiny model
def test_cli_evaluate_scores_log_px_with_y_summed_out_and_sample_draws(m2_run, tmp_path):
    assert main(["evaluate", str(m2_run), "--num-samples", "30", "--max-datapoints", "40", "--no-progress"]) == 0
    summary = json.loads((m2_run / "evaluation-K30-first40.json").read_text())
    assert summary["model"] == "m2" and summary["scale"] == "binary-dynamic" and summary["num_labels"] == 100
    assert summary["mean_log_px"] < 0 and summary["mean_log_px"] >= summary["mean_elbo"]
    assert len(list(csv.DictReader((m2_run / "evaluation-K30-first40.csv").open()))) == 40
    out = tmp_path / "s.png"
    assert main(["sample", str(m2_run), "--num", "16", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_the_example_script_runs(capsys, load_example):
    load_example("ss_vae_m2").main(argparse.Namespace(
        dataset="embedded", data_dir=None, num_labels=100, epochs=1, seed=0, train_size=600, test_size=100,
        eval_samples=20, eval_points=30, threads=1, latent_dim=4, hidden=[32]))
    out = capsys.readouterr().out
    assert "test accuracy" in out and "log p(x)" in out


def test_the_command_line_uses_m2s_own_training_settings_unless_flags_say_otherwise():
    from pyrovae.cli import build_parser
    from pyrovae.cli.__init__ import given_flags
    from pyrovae.cli.train import config_from_args

    parser = build_parser()
    m2 = ["train", "--model", "m2", "--model-opt", "num_labels=100"]
    for argv, expected in ((m2, (0.00042, 200, 50)), ([*m2, "--lr", "0.01"], (0.01, 200, 50)),
                           (["train"], (1e-3, 128, 20))):
        args = parser.parse_args(argv)
        args.given = given_flags(parser, "train", argv)
        config = config_from_args(args)
        assert (config.lr, config.batch_size, config.epochs) == expected, argv


def test_particles_are_not_silently_dropped_for_m2s_own_objective():
    config = pyrovae.RunConfig(model="m2", model_options={"num_labels": 100}, particles=3)
    model = pyrovae.build_model(config, pyrovae.load_embedded_mnist())
    with pytest.raises(pyrovae.ConfigError, match="num_particles= is for named objectives"):
        pyrovae.build_trainer(model, config)
