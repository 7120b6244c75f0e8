"""The conditional VAEs and the mixture VAE: exact answers, clear errors, and the CLI path."""

import json
import math

import matplotlib.image
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

import pyrovae
from pyrovae.cli import main
from pyrovae.models.cvae import LabelCVAE, QuadrantCVAE, QuadrantNN, quadrant_mask
from pyrovae.models.mixture import MixtureVAE, cluster_accuracy

FAST = ["--train-size", "600", "--heldout-size", "100", "--batch-size", "100", "--no-progress", "--epochs", "1"]


def _grey(n=20, seed=0):
    return pyrovae.load_embedded_mnist().subset(slice(seed, seed + n)).with_space("grey").observations()


def test_quadrants_follow_pyros_convention():
    image = torch.arange(784).reshape(28, 28)
    one, two, three = (quadrant_mask(q).reshape(28, 28) for q in (1, 2, 3))
    assert one.sum() == 196 and one[14:, :14].all() and not one[:14].any() and not one[:, 14:].any()
    assert two.sum() == 392 and two[:, :14].all() and not two[:, 14:].any()
    assert three.sum() == 588 and not three[14:, 14:].any() and three[:14].all()
    model = QuadrantCVAE(quadrants=3, latent_dim=2, hidden=(8,))
    given, hidden = model.split(image.reshape(1, -1).float())
    assert torch.equal(model.join(given, hidden), image.reshape(1, -1).float())
    for bad in (0, 4, True):
        with pytest.raises(ValueError, match="1, 2 or 3"):
            quadrant_mask(bad)


def _copy_mlp(target, source, offset=0):
    """Copy ``source``'s layers into ``target``; the first layer of ``target`` may take ``offset``
    extra leading inputs, which get zero weights (so ``target`` ignores them)."""
    layers = [m for m in target.modules() if isinstance(m, torch.nn.Linear)]
    others = [m for m in source.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, (a, b) in enumerate(zip(layers, others)):
            a.bias.copy_(b.bias)
            if i == 0:
                a.weight.zero_()
                a.weight[:, offset:] = b.weight
            else:
                a.weight.copy_(b.weight)


@pytest.mark.parametrize("quadrants", [1, 2, 3])
def test_cvae_whose_decoder_ignores_z_scores_exactly_the_baseline(quadrants):
    """With p(y | x, z) = the baseline's p(y | x) and q(z | x, y) = p(z | x), every importance
    weight is p(y | x): importance sampling gives the baseline's log-likelihood exactly."""
    cvae = QuadrantCVAE(quadrants=quadrants, latent_dim=3, hidden=(16,))
    nn_model = QuadrantNN(quadrants=quadrants, hidden=(16,))
    _copy_mlp(cvae.generation_net, nn_model.net, offset=3)
    with torch.no_grad():  # recognition = prior: zero weights on the pixels to predict
        first, prior_first = cvae.recognition_net.body[0][0], cvae.prior_net.body[0][0]
        first.weight.zero_()
        first.weight[:, cvae.given_index] = prior_first.weight
        first.bias.copy_(prior_first.bias)
        cvae.recognition_net.head.load_state_dict(cvae.prior_net.head.state_dict())
    x = _grey()
    given, hidden = nn_model.split(x)
    exact = dist.Bernoulli(logits=nn_model.net(given), validate_args=False).log_prob(hidden).sum(-1)
    res = pyrovae.log_marginal_likelihood(cvae.model, cvae.guide, x, num_samples=7, progress=False)
    assert torch.allclose(res.log_px, exact.double(), atol=1e-4)
    assert res.stderr.max() < 1e-4
    base = pyrovae.log_marginal_likelihood(nn_model.model, nn_model.guide, x, num_samples=2, progress=False)
    assert torch.allclose(base.log_px, exact.double(), atol=1e-5)


def test_label_cvae_with_guide_equal_to_prior_and_z_ignored_is_exact():
    model = LabelCVAE(latent_dim=2, hidden=(16,))
    with torch.no_grad():
        first = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear)][0]
        first.weight[:, :2] = 0  # the decoder ignores z
        head = model.encoder.head  # q(z | x, y) = N(0, 1)
        head.loc.weight.zero_(), head.loc.bias.zero_(), head.scale.weight.zero_()
        head.scale.bias.fill_(math.log(math.expm1(1 - 1e-5)))
    data = model.prepare_data(pyrovae.load_embedded_mnist().subset(slice(0, 30)))
    x, y = data.tensors(torch.Generator().manual_seed(0))
    logits = model.decoder(torch.cat([torch.zeros(30, 2), F.one_hot(y, 10).float()], -1))
    exact = dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
    res = pyrovae.log_marginal_likelihood(model.model, model.guide, x, y, num_samples=5, progress=False)
    assert torch.allclose(res.log_px, exact.double(), atol=1e-4)


def test_mixture_weights_sum_the_class_out_exactly():
    """log w = log sum_c pi_c N(z; mu_c, sigma_c) + log p(x | z) - log q(z | x), by hand."""
    model = MixtureVAE(components=4, latent_dim=3, hidden=(16,), learn_weights=True)
    with torch.no_grad():
        model.mixture.logits.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    x = (_grey(12) > 0.5).float()
    torch.manual_seed(3)
    logw = pyrovae.log_importance_weights(model.model, model.guide, x, num_particles=5)
    torch.manual_seed(3)
    loc, scale = model.encoder(x)
    z = dist.Normal(loc, scale).rsample((5,))  # the guide's draws, same random numbers
    mix = model.mixture
    log_pz = torch.logsumexp(
        torch.stack([mix.logits.log_softmax(-1)[c] + mix.component(torch.tensor(c)).log_prob(z) for c in range(4)]), 0
    )
    log_px_z = dist.Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
    expected = log_pz + log_px_z - dist.Normal(loc, scale).log_prob(z).sum(-1)
    assert torch.allclose(logw, expected, atol=1e-4)


def test_cluster_accuracy():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    assert cluster_accuracy(torch.tensor([5, 5, 3, 3, 0, 0, 0]), labels)["accuracy"] == 1.0
    merged = cluster_accuracy(torch.tensor([0, 0, 0, 0, 1, 1, 0]), labels)  # cluster 0: three 0/1 rows, one 2
    assert merged["accuracy"] == pytest.approx(4 / 7) and merged["cluster_label"] == [0, 2]


def test_bad_data_and_options_are_clear_errors():
    no_labels = pyrovae.ImageData(pyrovae.load_embedded_mnist().images[:10])
    with pytest.raises(pyrovae.DataError, match="conditions on labels"):
        LabelCVAE(hidden=(8,)).prepare_data(no_labels)
    x = torch.zeros(4, 784)
    with pytest.raises(pyrovae.DataError, match="0..9"):
        LabelCVAE(hidden=(8,)).check_data(x, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(pyrovae.DataError, match="integer"):
        LabelCVAE(hidden=(8,)).check_data(x, torch.zeros(4))
    with pytest.raises(pyrovae.DataError, match="binary-dynamic"):
        MixtureVAE(hidden=(8,)).prepare_data(no_labels.with_space("grey"))
    grey = torch.full((4, 784), 0.5)  # the Bernoulli likelihood's own check, with its fix
    with pytest.raises(pyrovae.DataError, match="binary data.*binary-dynamic"):
        MixtureVAE(hidden=(8,)).check_data(grey)
    with pytest.raises(pyrovae.DataError, match="binary data.*binary-dynamic"):
        LabelCVAE(hidden=(8,)).check_data(grey, torch.zeros(4, dtype=torch.long))
    with pytest.raises(pyrovae.DataError, match=r"\[0, 1\]"):
        QuadrantCVAE(hidden=(8,), latent_dim=2).check_data(x - 1)


def test_bad_quadrant_count_on_the_command_line(tmp_path, capsys):
    code = main(["train", "--model", "cvae", "--model-opt", "quadrants=4", "--out", str(tmp_path / "r"), *FAST])
    assert code == 2 and "1, 2 or 3" in capsys.readouterr().err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "model, options, picture",
    [("cvae", ["quadrants=2", "latent_dim=4", "hidden=32"], "completions.png"),
     ("quadrant-nn", ["quadrants=1", "hidden=32"], "completions.png"),
     ("cvae-label", ["latent_dim=2", "hidden=32"], "by_label.png"),
     ("mixture", ["components=3", "latent_dim=2", "hidden=32"], "components.png")],
)
def test_train_evaluate_sample_from_the_command_line(tmp_path, capsys, model, options, picture):
    run = tmp_path / model
    flags = [arg for opt in options for arg in ("--model-opt", opt)]
    assert main(["train", "--model", model, *flags, "--out", str(run), *FAST]) == 0
    img = matplotlib.image.imread(run / picture)
    assert img.shape[0] > 50 and img.std() > 0.01
    assert main(["evaluate", str(run), "--num-samples", "20", "--max-datapoints", "30", "--no-progress"]) == 0
    summary = json.loads((run / "evaluation-K20-first30.json").read_text())
    assert math.isfinite(summary["mean_log_px"]) and summary["model"] == model
    if model in ("cvae", "quadrant-nn"):  # grey targets: a cross-entropy score, on its own scale
        assert summary["scale"] == "grey-cross-entropy" and summary["data_dim"] < 784
    assert main(["sample", str(run), "--num", "8", "--seed", "1"]) == 0
    assert (run / "samples-seed1.png").exists()
    if model == "mixture":
        clustering = json.loads((run / "clustering.json").read_text())
        assert 0 < clustering["accuracy"] <= 1 and clustering["points"] == 100


def test_completion_scores_are_compared_on_their_own_scale(tmp_path, capsys):
    runs = []
    for model, extra in (("quadrant-nn", []), ("cvae", ["--model-opt", "latent_dim=4"])):
        run = tmp_path / model
        assert main(["train", "--model", model, "--model-opt", "quadrants=2", "--hidden", "32", *extra,
                     "--out", str(run), *FAST]) == 0
        assert main(["evaluate", str(run), "--num-samples", "20", "--no-progress"]) == 0
        runs.append(str(run))
    vae = tmp_path / "vae"  # a density of grey values: never ranked with the cross-entropies
    assert main(["train", "--likelihood", "continuous-bernoulli", "--data-space", "grey", "--hidden", "32",
                 "--out", str(vae), *FAST]) == 0
    assert main(["evaluate", str(vae), "--num-samples", "20", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["compare", *runs, "--png", str(tmp_path / "c.png")]) == 0
    assert "`grey-cross-entropy` scale" in capsys.readouterr().out
    assert main(["compare", *runs, str(vae), "--png", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err
    assert "vae: scale grey-density" in err and "cvae: scale grey-cross-entropy" in err
