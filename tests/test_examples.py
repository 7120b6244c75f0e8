"""The example scripts run end to end (shortened) and print what they promise."""

import argparse
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"


def _args(**kw):
    base = dict(dataset="embedded", data_dir=None, epochs=1, latent_dim=4, hidden=[32], train_size=1000,
                test_size=60, num_samples=20, seed=0, progress=False)
    return argparse.Namespace(**{**base, **kw})


def test_every_example_takes_the_shared_small_run_flags(capsys, monkeypatch):
    """The docs' gallery runs each script with --train-size (pyrovae.data.add_data_arguments)."""
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert len(scripts) >= 9
    for script in scripts:
        monkeypatch.setattr(sys, "argv", [str(script), "--help"])
        with pytest.raises(SystemExit) as stop:  # argparse exits after printing the help; nothing is trained
            runpy.run_path(str(script), run_name="__main__")
        assert stop.value.code == 0, script.name
        usage = capsys.readouterr().out
        for flag in ("--train-size", "--test-size", "--dataset", "--data-dir"):
            assert flag in usage, (script.name, flag)


def test_swap_likelihood_ranks_the_8bit_models_and_sets_the_bernoulli_apart(capsys, load_example):
    load_example("swap_likelihood").main(_args(variants=["bernoulli", "gaussian-sigma0.1", "categorical-16-levels"]))
    out = capsys.readouterr().out
    assert "never ranked against each other" in out
    assert "bernoulli" in out and "alone on that scale" in out
    assert "`8-bit` scale" in out and "| 2 |" in out  # the Gaussian and the categorical, ranked


def test_swap_prior_ranks_all_priors_with_paired_errors(capsys, load_example):
    load_example("swap_prior").main(_args(variants=["normal", "mog-10", "flow"]))
    out = capsys.readouterr().out
    assert "| 3 |" in out and "s.e.(Δ)" in out and "never ranked" not in out


def test_cvae_example_scores_baseline_and_cvae_by_importance_sampling(capsys, load_example):
    load_example("cvae").main(_args(quadrants=3, eval_samples=10, eval_points=40))
    out = capsys.readouterr().out
    assert "quadrant-nn: -log p(y | x) =" in out and "cvae: -log p(y | x) =" in out and "K=10" in out


def test_mixture_example_reports_log_px_and_clustering(capsys, load_example):
    load_example("mixture_vae").main(_args(components=3, eval_samples=10, eval_points=40))
    out = capsys.readouterr().out
    assert "class summed out" in out and "clustering accuracy" in out
