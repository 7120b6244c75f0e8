import csv
import json
import math
import os
import platform
import resource
import subprocess
import sys

import matplotlib.image
import pytest

import pyrovae
from pyrovae.cli import build_parser, main

FAST = ["--train-size", "1500", "--heldout-size", "300", "--batch-size", "100", "--no-progress"]


def _png_ok(path):
    img = matplotlib.image.imread(path)
    return img.shape[0] > 50 and img.shape[1] > 50 and img.std() > 0.01


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "r2"
    args = ["train", "--epochs", "2", "--latent-dim", "2", "--hidden", "64", "--out", str(run), *FAST]
    assert main(args) == 0
    return run


def test_train_writes_every_file(run2d):
    for name in ("config.json", "metrics.csv", "checkpoint.pt"):
        assert (run2d / name).stat().st_size > 0
    for name in ("reconstructions.png", "samples.png", "curves.png", "latent.png", "manifold.png"):
        assert _png_ok(run2d / name), name
    config = json.loads((run2d / "config.json").read_text())
    assert config["model_options"]["latent_dim"] == 2 and config["data_space"] == "binary-dynamic"
    assert config["data_dim"] == 784 and config["image_shape"] == [28, 28]  # read from the data
    rows = list(csv.DictReader((run2d / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["heldout_elbo"]) < 0 for r in rows)
    assert not list(run2d.glob(".*.tmp"))  # no temporary files left behind


def test_latent_scatter_uses_a_projection_beyond_two_dims(tmp_path):
    run = tmp_path / "r5"
    assert main(["train", "--epochs", "1", "--latent-dim", "5", "--hidden", "32", "--out", str(run), *FAST]) == 0
    assert _png_ok(run / "latent.png") and not (run / "manifold.png").exists()


def test_resume_continues_and_refuses_to_overwrite(run2d, capsys):
    assert main(["train", "--epochs", "1", "--out", str(run2d), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run2d), "--epochs", "3", "--no-progress"]) == 0
    rows = list(csv.DictReader((run2d / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_sample_command(run2d, tmp_path):
    out = tmp_path / "s.png"
    assert main(["sample", str(run2d), "--num", "16", "--out", str(out), "--save-tensor", str(tmp_path / "s.pt")]) == 0
    assert _png_ok(out) and (tmp_path / "s.pt").exists()


def test_missing_data_is_a_clear_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", _offline)
    run = tmp_path / "run"
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nothing"), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "PYROVAE_DATA" in err and "Traceback" not in err
    assert not run.exists()


def _offline(*args, **kwargs):
    import urllib.error

    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_every_flag_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help"


def test_console_script_help_runs():
    out = subprocess.run(
        [sys.executable, "-m", "pyrovae.cli", "train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--data-space" in out and "--objective" in out and "nats per datapoint" in out
    out = subprocess.run([sys.executable, "-m", "pyrovae", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("pyrovae ")  # python -m pyrovae, as torchrun launches it


def test_readme_example_runs():
    """The README's Python example, shortened to 2 epochs and 50 samples."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    code = code.replace("epochs=10", "epochs=2").replace("num_samples=1000", "num_samples=50")
    code = code.replace("print(res.summary())", "summary = res.summary()")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["summary"]["num_datapoints"] == 1000 and scope["summary"]["mean_log_px"] < 0


def test_readme_swap_example_observes_the_images_in_the_likelihoods_space():
    """The README's second block, after the first one's data, on 600 digits for 1 epoch."""
    import re
    from pathlib import Path

    import pyrovae

    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[1].replace("epochs=10", "epochs=1")
    train, test = pyrovae.load_embedded_mnist().split(1000)
    scope = {"pyrovae": pyrovae, "train": train.subset(slice(0, 600)), "test": test.subset(slice(0, 100))}
    exec(compile(code, "README.md", "exec"), scope)
    vae, record = scope["vae"], scope["trainer"].history[-1]
    assert vae.prepare_data(train).space == "levels" and vae.prepare_data(train).levels == 16
    # a 16-level categorical over 784 pixels starts near -784 log 16 = -2174 nats; binarised
    # digits would score near zero
    assert -2200 < record["heldout_elbo"] < -500


def test_evaluate_writes_summary_csv_and_khat_picture(run2d, capsys):
    assert main(["evaluate", str(run2d), "--num-samples", "50", "--max-datapoints", "100", "--no-progress"]) == 0
    summary = json.loads((run2d / "evaluation-K50-first100.json").read_text())
    rows = list(csv.DictReader((run2d / "evaluation-K50-first100.csv").open()))
    assert len(rows) == summary["num_datapoints"] == 100
    assert summary["scale"] == "binary-dynamic" and summary["mean_log_px"] < 0
    mean = sum(float(r["log_px"]) for r in rows) / len(rows)
    assert abs(mean - summary["mean_log_px"]) < 1e-3
    assert summary["mean_elbo"] <= summary["mean_log_px"]  # Jensen, on the same samples
    assert _png_ok(run2d / "khat-K50-first100.png")
    assert "bits/dim" in capsys.readouterr().out


def test_compare_ranks_runs_and_refuses_other_data_spaces(run2d, tmp_path, capsys):
    other = tmp_path / "other"
    space = tmp_path / "grey"
    common = ["--epochs", "1", "--latent-dim", "2", "--hidden", "64", *FAST]
    assert main(["train", *common, "--prior", "mog", "--prior-opt", "components=3", "--out", str(other)]) == 0
    gaussian = ["--likelihood", "gaussian", "--likelihood-opt", "sigma=0.2"]
    assert main(["train", *common, *gaussian, "--out", str(space)]) == 0
    for run in (run2d, other, space):
        assert main(["evaluate", str(run), "--num-samples", "50", "--max-datapoints", "100", "--no-progress"]) == 0
    png = tmp_path / "cmp.png"
    capsys.readouterr()
    assert main(["compare", str(run2d), str(other), "--png", str(png), "--markdown", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "| 1 |" in out and "| 2 |" in out and "binary-dynamic" in out and _png_ok(png)
    assert main(["compare", str(run2d), str(space), "--png", str(tmp_path / "no.png")]) == 2
    err = capsys.readouterr().err
    assert "cannot be ranked" in err and "Traceback" not in err and not (tmp_path / "no.png").exists()


def test_meanfield_is_refused_without_a_closed_form_kl(tmp_path, capsys):
    run = tmp_path / "mf"
    assert main(["train", "--objective", "meanfield", "--prior", "mog", "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "closed form" in err and "--objective elbo" in err and not run.exists()


def test_categorical_levels_with_vamp_prior_trains_and_draws_pictures(tmp_path):
    run = tmp_path / "cat"
    args = ["train", "--epochs", "1", "--likelihood", "categorical", "--data-space", "levels", "--levels", "8",
            "--prior", "vamp", "--prior-opt", "pseudo_inputs=10", "--latent-dim", "2", "--hidden", "32",
            "--out", str(run), *FAST]
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    options = config["model_options"]
    assert options["likelihood_options"] == {"levels": 8} and config["levels"] == 8
    assert pyrovae.load_model(run)[0].prior.input_range == (0.0, 7.0)
    for name in ("reconstructions.png", "samples.png", "manifold.png"):
        assert _png_ok(run / name), name
    assert main(["evaluate", str(run), "--num-samples", "30", "--max-datapoints", "50", "--no-progress"]) == 0
    summary = json.loads((run / "evaluation-K30-first50.json").read_text())
    # 8 levels -> the 8-bit scale: each level's mass spread over 32 grey values
    assert summary["scale"] == "8-bit"
    assert summary["nats_per_image"] == pytest.approx(summary["mean_log_px"] - 784 * math.log(32), rel=1e-9)


V01_KEYS = (  # what pyrovae 0.1's `train` wrote into config.json (commit fc9e754)
    "pyrovae_version", "created", "dataset", "data_dir", "data_space", "levels", "train_size", "heldout_size",
    "data_dim", "image_shape", "latent_dim", "hidden", "activation", "arch", "likelihood", "likelihood_options",
    "prior", "prior_options", "objective", "particles", "epochs", "batch_size", "lr", "lr_decay", "clip_norm",
    "jit", "seed", "device",
)


def test_a_version_0_1_run_folder_evaluates_and_resumes(run2d, tmp_path):
    """config.json with the VAE's options at the top level; a checkpoint without step count,
    factors or objective names in its history."""
    import shutil

    import torch

    old = tmp_path / "v01"
    shutil.copytree(run2d, old)
    config = json.loads((old / "config.json").read_text())
    flat = {**{k: v for k, v in config.items() if k in V01_KEYS}, **config["model_options"], "pyrovae_version": "0.1.0"}
    (old / "config.json").write_text(json.dumps({k: flat[k] for k in V01_KEYS}))
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    for key in ("steps", "factors"):
        state["trainer"].pop(key)
    for record in state["trainer"]["history"]:
        record.pop("objective")
    torch.save(state, old / "checkpoint.pt")
    assert main(["evaluate", str(old), "--num-samples", "20", "--max-datapoints", "30", "--no-progress"]) == 0
    assert main(["train", "--resume", str(old), "--epochs", str(len(state["trainer"]["history"]) + 1),
                 "--no-progress"]) == 0
    assert json.loads((old / "config.json").read_text())["model_options"]["latent_dim"] == 2


def test_resume_errors_name_the_way_out(run2d, tmp_path, capsys):
    import shutil

    empty = tmp_path / "interrupted"
    empty.mkdir()
    (empty / "config.json").write_text((run2d / "config.json").read_text())
    assert main(["train", "--resume", str(empty), "--no-progress"]) == 2
    assert "no checkpoint to resume" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(run2d, broken)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(broken), "--num-samples", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot be read as a pyrovae checkpoint" in err and "Traceback" not in err
    assert main(["train", "--resume", str(run2d), "--epochs", "-1", "--no-progress"]) == 2
    assert "argument --epochs: must be at least 1, got -1" in capsys.readouterr().err


def test_a_data_space_the_likelihood_cannot_score_is_refused_in_flags(tmp_path, capsys):
    run = tmp_path / "grey"
    assert main(["train", "--data-space", "grey", "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "--data-space binary-dynamic" in err and "with_space" not in err and not run.exists()


def test_the_cli_keeps_freed_memory_in_the_heap_unless_told_not_to():
    code = "import sys; from pyrovae import reuse_freed_memory; sys.exit(0 if reuse_freed_memory() else 1)"
    glibc = platform.libc_ver()[0] == "glibc"
    assert subprocess.run([sys.executable, "-c", code]).returncode == (0 if glibc else 1)
    env = {**os.environ, "PYROVAE_SYSTEM_MALLOC": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 1


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_memory_kept_in_the_heap_is_not_faulted_in_again():
    # 64 MB tensors are above glibc's mmap threshold: by default each one maps (and faults in) fresh pages
    code = """if True:
        import resource, sys, torch, pyrovae
        took = pyrovae.reuse_freed_memory()
        torch.ones(2**24)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            torch.ones(2**24)
        print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"""

    def faults(**env):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                             text=True, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    (kept, heap), (default, system) = faults(), faults(PYROVAE_SYSTEM_MALLOC="1")
    assert kept and not default
    assert system > 5 * 2**26 / resource.getpagesize() / 2  # 16,384 pages per tensor, faulted in each time
    assert heap < system / 3  # at most one of the five (where the heap had to grow)
