"""Autoencoders as Pyro pairs: the ELBO of the Delta guide is the reconstruction log-likelihood plus
the penalties, each penalty is what its formula says, the denoising guide encodes corrupted inputs
while the model scores clean ones, and the CLI trains them and refuses to evaluate a log p(x)."""

import csv
import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO

import pyrovae
from pyrovae.cli import main
from pyrovae.models import MODELS, AutoEncoder
from pyrovae.models.autoencoders import code_gaussian, mlp_jacobian_norm2, reconstruction_errors
from pyrovae.nets import MLP

SMALL = dict(data_dim=30, image_shape=(5, 6), hidden=(16,), latent_dim=3)
FAST = ["--train-size", "300", "--heldout-size", "50", "--hidden", "16", "--latent-dim", "2", "--no-progress"]


def _binary(n=8, d=30, seed=0):
    return torch.bernoulli(torch.full((n, d), 0.3), generator=torch.Generator().manual_seed(seed))


def _loglik(logits, x):
    """log Bernoulli(x | sigmoid(logits)), summed: by hand, not through the likelihood object."""
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum()


def _jacobian_norm2(f, x):
    return torch.stack([torch.autograd.functional.jacobian(f, xi, create_graph=True).pow(2).sum() for xi in x])


CASES = [("plain", {}), ("denoising", {}), ("sparse", {}), ("sparse", {"sparsity": "l1"}), ("contractive", {})]


@pytest.mark.parametrize("kind,options", CASES, ids=["plain", "denoising", "sparse-kl", "sparse-l1", "contractive"])
def test_the_elbo_is_the_reconstruction_log_likelihood_minus_the_penalty(kind, options):
    ae = AutoEncoder(kind=kind, **options, **SMALL)
    x = _binary()
    pyro.set_rng_seed(3)
    elbo = -Trace_ELBO().loss(ae.model, ae.guide, x)
    torch.manual_seed(3)  # the same masking noise, drawn by hand
    inputs = x * (torch.rand_like(x) >= 0.25) if kind == "denoising" else x
    h = ae.encoder(inputs)
    with torch.no_grad():
        if kind == "sparse" and not options:
            z, rho = torch.sigmoid(h), 0.05
            rho_hat = z.mean(0)
            kl = (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
            penalty = len(x) * 3.0 * kl  # Ng's beta = 3, once per datapoint
        elif kind == "sparse":
            z, penalty = h, 1e-4 * 30 * h.abs().sum()  # lambda = 1e-4 D
        elif kind == "contractive":
            z, penalty = h, 0.1 * _jacobian_norm2(ae.encoder, x).sum()  # at the clean x
        else:
            z, penalty = h, torch.tensor(0.0)
        expected = _loglik(ae.decoder(z), x) - penalty
    assert penalty.item() > 0 or kind in ("plain", "denoising")
    assert elbo == pytest.approx(expected.item(), rel=1e-5, abs=1e-4)


def test_the_contraction_penalty_is_the_squared_frobenius_norm_of_the_encoder_jacobian():
    torch.manual_seed(0)
    x = torch.rand(4, 784)
    ae = AutoEncoder(kind="contractive")  # the default 784-400-20 encoder: closed form
    got, want = ae.contraction_penalty(x), _jacobian_norm2(ae.encoder, x)
    assert torch.allclose(got, want, rtol=1e-4)
    # the penalty's gradient in the encoder's weights is the Jacobian norm's
    g_got = torch.autograd.grad(got.sum(), ae.encoder[0].weight)[0]
    g_want = torch.autograd.grad(want.sum(), ae.encoder[0].weight)[0]
    assert torch.allclose(g_got, g_want, rtol=1e-3, atol=1e-7)
    for hidden, act in (((16, 8, 5), "relu"), ((16, 8), "tanh"), ((16,), "elu")):  # deeper: the product form
        mlp = MLP(30, hidden, 3, act)
        assert torch.allclose(mlp_jacobian_norm2(mlp, x[:, :30]), _jacobian_norm2(mlp, x[:, :30]), rtol=1e-4)
    gelu = AutoEncoder(kind="contractive", activation="gelu", **SMALL)  # no closed form: autograd
    assert mlp_jacobian_norm2(gelu.encoder, x[:, :30]) is None
    with torch.no_grad():  # as under the held-out bound
        assert torch.allclose(gelu.contraction_penalty(x[:, :30]), _jacobian_norm2(gelu.encoder, x[:, :30]),
                              rtol=1e-4)


def test_the_sparsity_penalties_by_hand():
    ae = AutoEncoder(kind="sparse", sparsity_target=0.05, **SMALL)
    at_target = torch.full((5, 3), 0.05)
    assert torch.allclose(ae.sparsity_penalty(at_target), torch.zeros(5), atol=1e-6)
    half = torch.full((5, 3), 0.5)  # KL(0.05 || 0.5) per unit, 3 units, the same for every row
    per_unit = 0.05 * math.log(0.05 / 0.5) + 0.95 * math.log(0.95 / 0.5)
    assert torch.allclose(ae.sparsity_penalty(half), torch.full((5,), 3 * per_unit))
    z = torch.tensor([[0.1, 0.9, 0.2], [0.3, 0.1, 0.0]])  # rho_hat = (0.2, 0.5, 0.1)
    kl = sum(0.05 * math.log(0.05 / r) + 0.95 * math.log(0.95 / (1 - r)) for r in (0.2, 0.5, 0.1))
    assert torch.allclose(ae.sparsity_penalty(z), torch.full((2,), kl))
    l1 = AutoEncoder(kind="sparse", sparsity="l1", **SMALL)
    assert l1.sparsity_weight == pytest.approx(30e-4)
    assert torch.allclose(l1.sparsity_penalty(torch.tensor([[1.0, -2.0, 0.5]])), torch.tensor([3.5]))
    assert torch.all((ae.encode(_binary()) > 0) & (ae.encode(_binary()) < 1))  # KL sparsity: sigmoid codes


def test_the_denoising_guide_encodes_corrupted_inputs_and_the_model_scores_clean_ones():
    noisy = AutoEncoder(kind="denoising", noise=0.5, **SMALL)
    plain = AutoEncoder(kind="plain", **SMALL)
    plain.load_state_dict(noisy.state_dict())  # the same weights
    x = torch.ones(6, 30)
    guide = poutine.trace(noisy.guide).get_trace(x)
    z = guide.nodes["z"]["value"]
    assert not torch.allclose(z, plain.encode(x))  # codes of corrupted inputs
    model = poutine.trace(poutine.replay(noisy.model, trace=guide)).get_trace(x)
    assert torch.equal(model.nodes["x"]["value"], x)  # the clean x is scored ...
    assert torch.allclose(model.nodes["x"]["fn"].log_prob(x), _loglik_rows(noisy.decoder(z), x))  # ... at z
    assert torch.allclose(noisy.encode(x), plain.encode(x))  # pictures and errors encode clean inputs
    assert noisy.corrupt(torch.ones(10_000, 30)).mean().item() == pytest.approx(0.5, abs=0.02)  # noise=0.5 masks half


def _loglik_rows(logits, x):
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)


def test_no_prior_term_and_helpers():
    ae = AutoEncoder(**SMALL)
    x = _binary()
    guide = poutine.trace(ae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(ae.model, trace=guide)).get_trace(x)
    model.compute_log_prob()
    guide.compute_log_prob()
    assert torch.equal(model.nodes["z"]["log_prob"], torch.zeros(8))  # flat: no prior term
    assert torch.equal(guide.nodes["z"]["log_prob"], torch.zeros(8))  # Delta at its own point
    errors = reconstruction_errors(ae, x)
    with torch.no_grad():
        logits = ae.decoder(ae.encoder(x))
    assert errors["bernoulli_nll"] == pytest.approx(-_loglik(logits, x).item() / 8, rel=1e-5)
    assert errors["mse"] == pytest.approx((torch.sigmoid(logits) - x).pow(2).mean().item(), rel=1e-5)
    g = code_gaussian(torch.randn(5000, 3) * torch.tensor([1.0, 2.0, 3.0]) + 4)
    assert torch.allclose(g.loc, torch.full((3,), 4.0, dtype=torch.float64), atol=0.15)
    assert torch.allclose(g.covariance_matrix.diagonal(), torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64),
                          rtol=0.1)
    assert ae.generate(7).shape == (7, 30) and ae.generate(7, codes=g).shape == (7, 30)
    with pytest.raises(ValueError, match="kind must be one of"):
        AutoEncoder(kind="variational", **SMALL)


def test_the_contractive_pair_compiles_and_every_kind_trains(embedded):
    train, heldout = embedded.subset(slice(0, 400)), embedded.subset(slice(400, 450))
    for kind in ("contractive", "sparse"):
        pyro.clear_param_store()
        ae = AutoEncoder(kind=kind, hidden=(32,), latent_dim=4)
        trainer = pyrovae.train(ae.model, ae.guide, train, heldout, epochs=3, batch_size=50, progress=False,
                                verbose=False)
        assert trainer.compiled, trainer.jit_fallback  # the closed-form Jacobian traces
        first, last = trainer.history[0], trainer.history[-1]
        assert last["heldout_elbo"] > first["heldout_elbo"] and last["recon_nll"] > 0
        assert last["heldout_elbo"] <= -last["recon_nll"] + 1e-3  # the objective subtracts a penalty


def test_train_sample_and_evaluate_refuses_from_the_cli(tmp_path, capsys):
    assert "autoencoder" in MODELS
    run = tmp_path / "dae"
    args = ["train", "--model", "autoencoder", "--model-opt", "kind=denoising", "--epochs", "2", "--out", str(run),
            *FAST]
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "autoencoder" and config["model_options"]["kind"] == "denoising"
    assert config["model_options"]["latent_dim"] == 2 and config["data_space"] == "binary-dynamic"
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(float(r["recon_nll"]) > 0 for r in rows)
    for name in ("reconstructions.png", "samples.png", "samples-fitted.png", "curves.png", "latent.png"):
        assert (run / name).stat().st_size > 0, name
    capsys.readouterr()
    assert main(["evaluate", str(run), "--num-samples", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot evaluate" in err and "defines no p(x)" in err and "deterministic function of x" in err
    assert "--model vae" in err and "Frechet" in err and "Traceback" not in err
    assert not list(run.glob("evaluation-K*"))
    assert main(["sample", str(run), "--num", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_python_refuses_log_px_of_an_autoencoder_and_warns_of_no_collapse(embedded):
    """Before: log_marginal_likelihood returned the reconstruction log-likelihood as "log p(x)",
    and the trainer warned of "posterior collapse" for a sparse autoencoder's quiet units."""
    import warnings

    train, heldout = embedded.split(100, seed=0)
    ae = AutoEncoder(kind="sparse", latent_dim=4, hidden=(16,))
    x = ae.prepare_data(heldout).observations(torch.Generator().manual_seed(0))
    with pytest.raises(pyrovae.ContractError, match="point mass.*an autoencoder defines no p"):
        pyrovae.log_marginal_likelihood(ae.model, ae.guide, x, num_samples=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pyrovae.diagnostics.PosteriorCollapseWarning)
        trainer = pyrovae.train(ae.model, ae.guide, train.subset(slice(0, 300)), heldout, epochs=2,
                                progress=False, verbose=False)
    assert "active_units" in trainer.history[-1]
