"""A catalogue of bad inputs and faults: every one a clear error, every run folder whole.

Each case asserts the exit status (2 for a user error, 0 where the input is fine), that the
message names the problem, that there is no traceback, and that the run folder is unchanged,
absent, or whole afterwards. The tiny setting `S` trains in about a second on the embedded digits.
"""

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrovae
from pyrovae.cli import build_parser, main

S = ["--train-size", "300", "--heldout-size", "50", "--hidden", "16", "--latent-dim", "2", "--no-progress"]
ROOT = Path(__file__).parents[1]


def state(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` and the SHA-256 of its bytes (lock files aside)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".lock")
    }


def whole(run: Path, just_killed: bool = False) -> bool:
    """A run folder whose config and checkpoint load and whose metrics agree with the checkpoint.
    Right after a kill -9, half-written temporary files may lie beside them (no reader looks at
    them) and metrics.csv may be one epoch behind; the next writer removes and rewrites those."""
    if not run.exists():
        return False
    config = json.loads((run / "config.json").read_text())
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    epochs = ckpt["trainer"]["epoch"]
    rows = len((run / "metrics.csv").read_text().strip().splitlines()) - 1 if (run / "metrics.csv").exists() else 0
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    if just_killed:
        return config["model"] == "vae" and rows in (epochs - 1, epochs)
    return config["model"] == "vae" and epochs == rows and not leftovers


def no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.rglob("*") if ".new-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")]


def fails(args, capsys, *needles, code=2):
    """Run the CLI; assert the exit status and that stderr names every needle, in one line."""
    assert main(args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run, evaluated on its whole held-out set with K=10."""
    run = tmp_path_factory.mktemp("rel") / "base"
    assert main(["train", *S, "--epochs", "2", "--out", str(run)]) == 0
    assert main(["evaluate", str(run), "--num-samples", "10", "--no-progress"]) == 0
    return run


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


# ------------------------------------------------------------------------------------- flags

BAD_FLAGS = [
    ("--lr", "0", "must be positive"), ("--lr", "-1", "must be positive"), ("--lr", "nan", "finite"),
    ("--lr", "inf", "finite"), ("--lr", "abc", "expected a number"), ("--lr", "1e400", "finite"),
    ("--lr-decay", "0", "must be positive"), ("--lr-decay", "-0.5", "must be positive"),
    ("--lr-decay", "nan", "finite"), ("--clip-norm", "0", "must be positive"),
    ("--clip-norm", "-1", "must be positive"), ("--clip-norm", "inf", "finite"),
    ("--batch-size", "0", "at least 1"), ("--batch-size", "-5", "at least 1"),
    ("--batch-size", "2.5", "whole number"), ("--batch-size", "abc", "whole number"),
    ("--epochs", "0", "at least 1"), ("--epochs", "-1", "at least 1"), ("--epochs", "1.5", "whole number"),
    ("--particles", "0", "at least 1"), ("--particles", "-2", "at least 1"),
    ("--latent-dim", "0", "at least 1"), ("--latent-dim", "-1", "at least 1"),
    ("--hidden", "0", "at least 1"), ("--hidden", "", "comma-separated"), ("--hidden", "a,b", "comma-separated"),
    ("--hidden", "10,-5", "at least 1"), ("--hidden", "10,,5", "comma-separated"),
    ("--levels", "1", "at least 2"), ("--levels", "x", "whole number"),
    ("--train-size", "0", "at least 1"), ("--train-size", "-1", "at least 1"),
    ("--heldout-size", "0", "at least 1"), ("--heldout-size", "-3", "at least 1"),
    ("--max-minutes", "0", "must be positive"), ("--max-minutes", "-1", "must be positive"),
    ("--max-minutes", "nan", "finite"), ("--seed", "-1", "between 0"), ("--seed", str(2**32), "between 0"),
    ("--seed", "x", "whole number"), ("--threads", "0", "at least 1"), ("--threads", "-1", "at least 1"),
    ("--likelihood", "nope", "invalid choice"), ("--prior", "nope", "invalid choice"),
    ("--objective", "nope", "invalid choice"), ("--data-space", "nope", "invalid choice"),
    ("--device", "tpu", "invalid choice"), ("--model", "nope", "invalid choice"),
    ("--epoch", "3", "unrecognized arguments"),  # no abbreviations: --epoch is not --epochs
]


@pytest.mark.parametrize("flag,value,message", BAD_FLAGS, ids=[f"{f}={v}" for f, v, _ in BAD_FLAGS])
def test_a_bad_train_flag_is_one_line_and_writes_nothing(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    err = fails(["train", *S, flag, value, "--out", str(out)], capsys, message)
    assert len(err.strip().splitlines()) == 1 and "--help)" in err
    assert not out.exists() and not list(tmp_path.iterdir())


BAD_OTHER_FLAGS = [
    (["evaluate", "RUN", "--num-samples", "1"], "at least 2"),
    (["evaluate", "RUN", "--num-samples", "x"], "whole number"),
    (["evaluate", "RUN", "--max-datapoints", "-5"], "at least 1"),
    (["evaluate", "RUN", "--max-datapoints", "0"], "at least 1"),
    (["evaluate", "RUN", "--chunk-size", "0"], "at least 1"),
    (["evaluate", "RUN", "--seed", "-3"], "between 0"),
    (["evaluate", "RUN", "--threads", "0"], "at least 1"),
    (["sample", "RUN", "--num", "0"], "at least 1"),
    (["sample", "RUN", "--seed", "-1"], "between 0"),
    (["compare", "RUN", "RUN", "--num-samples", "0"], "at least 1"),
]


@pytest.mark.parametrize("args,message", BAD_OTHER_FLAGS, ids=[" ".join(a[0:1] + a[2:]) for a, _ in BAD_OTHER_FLAGS])
def test_bad_flags_of_the_other_commands_leave_the_run_alone(run, capsys, args, message):
    before = state(run)
    fails([str(run) if a == "RUN" else a for a in args], capsys, message)
    assert state(run) == before


# ------------------------------------------------------------------------------------- options

BAD_OPTIONS = [
    (["--prior", "mog", "--prior-opt", "components=2.5"], "components must be an integer"),
    (["--prior", "mog", "--prior-opt", "components=0"], "components must be >= 1"),
    (["--prior", "mog", "--prior-opt", "init_spread=-1"], "init_spread must be positive"),
    (["--prior", "flow", "--prior-opt", "hidden_dims=abc"], "comma-separated integers"),
    (["--prior", "flow", "--prior-opt", "hidden_dims=32,0"], "positive widths"),
    (["--prior", "flow", "--prior-opt", "num_flows=0"], "num_flows >= 1"),
    (["--prior", "vamp", "--prior-opt", "input_range=0,1,2"], "2 comma-separated numbers"),
    (["--prior", "vamp", "--prior-opt", "input_range=1,0"], "low < high"),
    (["--prior", "vamp", "--prior-opt", "pseudo_inputs=-1"], "pseudo_inputs must be >= 1"),
    (["--prior", "normal", "--prior-opt", "components=3"], "has no option 'components'"),
    (["--likelihood", "gaussian", "--likelihood-opt", "sigma=abc"], "sigma must be a finite number"),
    (["--likelihood", "gaussian", "--likelihood-opt", "sigma=-1"], "sigma must be positive"),
    (["--likelihood", "gaussian", "--likelihood-opt", "sgma=1"], "has no option 'sgma'; its options: sigma=0.1"),
    (["--likelihood", "gaussian-learned", "--likelihood-opt", "scale=bogus"], "scale must be one of"),
    (["--likelihood", "gaussian-learned", "--likelihood-opt", "init_scale=0"], "min_scale < init_scale"),
    (["--likelihood", "categorical", "--likelihood-opt", "levels=1"], "levels must be an integer >= 2"),
    (["--likelihood", "beta", "--likelihood-opt", "min_concentration=0"], "must be positive"),
    (["--likelihood", "poisson", "--likelihood-opt", "min_rate=0"], "min_rate must be positive"),
    (["--likelihood", "multinomial", "--likelihood-opt", "total_count=2.5"], "total_count must be an integer"),
    (["--model-opt", "latent_dim=2.5"], "latent_dim must be an integer"),
    (["--model-opt", "nope=1"], "has no option(s) ['nope']"),
    (["--model-opt", "activation=swish"], "swish"),
    (["--likelihood-opt", "x"], "expected KEY=VALUE"),
    (["--prior-opt", "=3"], "expected KEY=VALUE"),
    (["--prior-opt", "components=nan"], "finite"),
    (["--prior", "mog", "--prior-opt", "components=none"], "components takes a value, not none"),
]


@pytest.mark.parametrize("args,message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_value_names_the_option_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    fails(["train", *S, *args, "--out", str(out)], capsys, message)
    assert not out.exists()


def test_the_tuple_syntax_the_help_shows_works(tmp_path, capsys):
    out = tmp_path / "vamp"
    assert main(["train", *S, "--epochs", "1", "--prior", "vamp", "--prior-opt", "input_range=0,1",
                 "--prior-opt", "pseudo_inputs=5", "--out", str(out)]) == 0
    assert whole(out) and pyrovae.load_model(out)[0].prior.input_range == (0.0, 1.0)


BAD_SPACES = [
    (["--data-space", "grey"], "--data-space binary-dynamic"),
    (["--likelihood", "beta", "--data-space", "binary-dynamic"], "beta likelihood scores data in space 'dequantized'"),
    (["--likelihood", "categorical", "--data-space", "levels", "--levels", "16", "--likelihood-opt", "levels=8"],
     "has 8 levels but"),
    (["--likelihood", "poisson", "--data-space", "grey"], "--data-space counts"),
    (["--likelihood", "gaussian", "--data-space", "counts"], "gaussian likelihood scores data"),
    (["--likelihood", "gaussian", "--data-space", "binary-dynamic"], "gaussian likelihood scores data"),
]


@pytest.mark.parametrize("args,message", BAD_SPACES, ids=[" ".join(a) for a, _ in BAD_SPACES])
def test_a_data_space_the_likelihood_cannot_score_is_refused(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    fails(["train", *S, *args, "--out", str(out)], capsys, message)
    assert not out.exists()


# ------------------------------------------------------------------------------------- data files


@pytest.fixture(scope="module")
def mnist_copy(mnist_dir, tmp_path_factory):
    """A private copy of the MNIST archives (to damage)."""
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(mnist_dir / "MNIST", root / "MNIST")
    return root


def _damaged(mnist_copy, tmp_path, how):
    root = tmp_path / "data"
    shutil.copytree(mnist_copy, root)
    archive = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    how(archive)
    return root


DAMAGE = {
    "truncated": (lambda a: a.write_bytes(a.read_bytes()[:1000]), "truncated or corrupt (1,000 bytes)"),
    "flipped byte": (lambda a: a.write_bytes(b"\x00" + a.read_bytes()[1:]), "truncated or corrupt"),
    "empty": (lambda a: a.write_bytes(b""), "truncated or corrupt (0 bytes)"),
    "a folder": (lambda a: (a.unlink(), a.mkdir()), "is not a file"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_archive_is_named_not_reported_missing(mnist_copy, tmp_path, capsys, name):
    how, message = DAMAGE[name]
    root = _damaged(mnist_copy, tmp_path, how)
    fails(["train", *S, "--dataset", "mnist", "--data-dir", str(root), "--out", str(tmp_path / "r")], capsys,
          "t10k-labels-idx1-ubyte.gz", message)
    assert not (tmp_path / "r").exists()


def test_fashion_mnist_files_in_the_mnist_folder_are_named(mnist_copy, tmp_path, capsys):
    fashion = Path(os.environ.get("PYROVAE_DATA", ROOT.parent / "shared" / "data")) / "FashionMNIST" / "raw"
    if not fashion.exists():
        pytest.skip("Fashion-MNIST not available")
    root = _damaged(mnist_copy, tmp_path, lambda a: shutil.copy(fashion / a.name, a))
    fails(["train", *S, "--dataset", "mnist", "--data-dir", str(root)], capsys, "it is FashionMNIST's")


def test_a_damaged_archive_is_caught_even_after_a_good_one_was_unpacked(mnist_copy, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mnist_copy, root)
    assert len(pyrovae.load_dataset("mnist", "test", root)) == 10_000  # unpacked into the cache
    archive = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(pyrovae.DataError, match="truncated or corrupt"):
        pyrovae.load_dataset("mnist", "test", root)


def test_the_data_folder_is_never_written_to(mnist_copy, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mnist_copy, root)
    before = state(root)
    pyrovae.load_dataset("mnist", "train", root)
    pyrovae.load_dataset("mnist", "test", root)
    assert state(root) == before and not list(root.rglob(".*"))


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_a_data_dir_that_is_not_a_folder_is_refused_and_not_created(tmp_path, capsys, kind):
    target = tmp_path / "nothing"
    if kind == "a file":
        target.write_text("x")
    fails(["train", *S, "--dataset", "mnist", "--data-dir", str(target)], capsys,
          "does not exist" if kind == "missing" else "is not a folder", "PYROVAE_DATA")
    assert target.exists() == (kind == "a file")


def test_missing_archives_offline_name_the_files(tmp_path, capsys, monkeypatch):
    def offline(*args, **kwargs):
        import urllib.error

        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    (tmp_path / "empty").mkdir()
    fails(["train", *S, "--dataset", "mnist", "--data-dir", str(tmp_path / "empty")], capsys,
          "t10k-images-idx3-ubyte.gz", "could not be downloaded")


# ------------------------------------------------------------------------------------- run folders


def test_evaluate_a_folder_that_does_not_exist(tmp_path, capsys):
    fails(["evaluate", str(tmp_path / "nope"), "--no-progress"], capsys, "not a run folder")


def test_sample_a_folder_that_does_not_exist(tmp_path, capsys):
    fails(["sample", str(tmp_path / "nope")], capsys, "does not exist")


def test_a_run_without_checkpoint_is_named_and_can_be_restarted(run, capsys):
    (run / "checkpoint.pt").unlink()
    fails(["evaluate", str(run), "--no-progress"], capsys, "checkpoint.pt does not exist")
    fails(["train", "--resume", str(run), "--no-progress"], capsys, "no checkpoint to resume", "--overwrite")
    assert main(["train", *S, "--epochs", "1", "--out", str(run)]) == 0 and whole(run)


CONFIG_DAMAGE = {
    "invalid JSON": (lambda c: c.write_text("{not json"), "is not valid JSON"),
    "an unknown key": (lambda c: c.write_text(json.dumps({**json.loads(c.read_text()), "latnt_dim": 3})),
                       "unknown configuration keys ['latnt_dim']"),
    "a value out of range": (lambda c: c.write_text(json.dumps({**json.loads(c.read_text()), "lr": -1})),
                             "--lr -1 is out of range"),
    "a folder": (lambda c: (c.unlink(), c.mkdir()), "Is a directory"),
    "missing": (lambda c: c.unlink(), "config.json does not exist"),
    "a string for a number": (lambda c: c.write_text(json.dumps({**json.loads(c.read_text()), "lr": "0.001"})),
                              "lr ('0.001') has the wrong type"),
    "null for a number": (lambda c: c.write_text(json.dumps({**json.loads(c.read_text()), "epochs": None})),
                          "epochs (None) has the wrong type"),
    "not an object": (lambda c: c.write_text('"5"'), "a JSON object of settings, not str"),
    "an unknown device": (lambda c: c.write_text(json.dumps({**json.loads(c.read_text()), "device": "tpu"})),
                          "device='tpu' is out of range"),
}


@pytest.mark.parametrize("name", list(CONFIG_DAMAGE))
@pytest.mark.parametrize("command", ["evaluate", "sample", "resume"])
def test_a_damaged_config_is_named_and_nothing_changes(run, capsys, name, command):
    damage, message = CONFIG_DAMAGE[name]
    damage(run / "config.json")
    before = state(run)
    args = {"evaluate": ["evaluate", str(run), "--no-progress"], "sample": ["sample", str(run)],
            "resume": ["train", "--resume", str(run), "--epochs", "3", "--no-progress"]}[command]
    fails(args, capsys, message)
    assert state(run) == before


def _evil_checkpoint(path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch /tmp/pyrovae-pwned",))

    path.write_bytes(pickle.dumps({"module": Evil(), "trainer": {}}, protocol=2))


CHECKPOINT_DAMAGE = {
    "random bytes": (lambda p: p.write_bytes(os.urandom(300)), "cannot be read as a pyrovae checkpoint"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:5000]), "truncated, corrupt or not a checkpoint"),
    "empty": (lambda p: p.write_bytes(b""), "truncated, corrupt or not a checkpoint"),
    "a pickle with code": (_evil_checkpoint, "never unpickles"),
    "not a pyrovae checkpoint": (lambda p: torch.save({"weights": torch.zeros(3)}, p), "not a pyrovae checkpoint"),
    "another model's": (lambda p: torch.save({"module": {"x": torch.zeros(1)}, "trainer": {"epoch": 1}}, p),
                        "does not fit the model"),
}


@pytest.mark.parametrize("name", list(CHECKPOINT_DAMAGE))
@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_damaged_checkpoint_is_named_safely(run, capsys, name, command):
    damage, message = CHECKPOINT_DAMAGE[name]
    damage(run / "checkpoint.pt")
    before = state(run)
    args = ["evaluate", str(run), "--no-progress"] if command == "evaluate" else \
        ["train", "--resume", str(run), "--epochs", "3", "--no-progress"]
    err = fails(args, capsys, message)
    assert "weights_only=False" not in err and not Path("/tmp/pyrovae-pwned").exists()
    assert state(run) == before


@pytest.mark.parametrize("flag,value", [("--lr", "0.1"), ("--batch-size", "10"), ("--seed", "4"), ("--out", "x"),
                                        ("--hidden", "8"), ("--objective", "iwae")])
def test_resume_refuses_a_flag_it_would_ignore(run, capsys, flag, value):
    before = state(run)
    fails(["train", "--resume", str(run), "--epochs", "3", flag, value, "--no-progress"], capsys,
          f"{flag} would change it")
    assert state(run) == before


def test_resume_with_no_epochs_left_says_so(run, capsys):
    before = state(run)
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert "asks for no more" in capsys.readouterr().out and state(run) == before


def test_a_new_run_into_an_existing_one_needs_overwrite(run, capsys):
    before = state(run)
    fails(["train", *S, "--out", str(run)], capsys, "already holds a run", "--resume", "--overwrite")
    assert state(run) == before


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    fails(["train", *S, "--out", str(tmp_path / "f")], capsys, "is a file")
    assert (tmp_path / "f").read_text() == "x"


def test_a_permission_error_is_one_line_and_the_old_run_stays(run, capsys, monkeypatch):
    before = state(run)

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("pyrovae.io.atomic_write", refuse)
    monkeypatch.setattr("pyrovae.runs.atomic_write", refuse)
    fails(["train", *S, "--epochs", "1", "--out", str(run), "--overwrite"], capsys, "Permission denied")
    assert state(run) == before and no_leftovers(run.parent)


# ------------------------------------------------------------------------------------- evaluations


@pytest.mark.parametrize("k", [2, 5, 24])
def test_evaluate_with_few_samples_writes_valid_json(run, k):
    """Before: every K from 2 to 24 crashed after the whole computation (k-hat is NaN there)."""
    assert main(["evaluate", str(run), "--num-samples", str(k), "--no-progress"]) == 0
    summary = json.loads((run / f"evaluation-K{k}.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert summary["max_khat"] is None and (run / f"khat-K{k}.png").stat().st_size > 0


def test_a_subset_evaluation_does_not_replace_the_full_one(run):
    full = (run / "evaluation-K10.json").read_text()
    assert main(["evaluate", str(run), "--num-samples", "10", "--max-datapoints", "5", "--no-progress"]) == 0
    assert (run / "evaluation-K10.json").read_text() == full
    assert json.loads((run / "evaluation-K10-first5.json").read_text())["num_datapoints"] == 5


def test_overwrite_leaves_no_evaluation_of_the_old_model(run, tmp_path, capsys):
    """Before: --overwrite kept the old evaluation-K*.json and compare ranked the new model by it."""
    assert main(["train", *S, "--epochs", "1", "--seed", "5", "--out", str(run), "--overwrite"]) == 0
    assert not list(run.glob("evaluation-*")) and whole(run)
    fails(["compare", str(run), str(run), "--png", str(tmp_path / "c.png")], capsys, "no evaluation-K*.json")


def test_compare_refuses_an_evaluation_of_an_older_checkpoint(run, trained, tmp_path, capsys):
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    fails(["compare", str(run), str(trained), "--png", str(tmp_path / "c.png")], capsys,
          "scored the checkpoint of epoch 2", "evaluate")
    assert not (tmp_path / "c.png").exists()


def test_compare_refuses_a_csv_that_is_not_its_summarys(run, trained, tmp_path, capsys):
    csv_path = run / "evaluation-K10.csv"
    lines = csv_path.read_text().splitlines()
    fields = lines[1].split(",")
    fields[2] = "-1.0"  # the first image's log p(x), changed
    csv_path.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    fails(["compare", str(run), str(trained), "--png", str(tmp_path / "c.png")], capsys, "is not the one")


def test_compare_refuses_invalid_json(run, trained, tmp_path, capsys):
    (run / "evaluation-K10.json").write_text("{")
    fails(["compare", str(run), str(trained), "--png", str(tmp_path / "c.png")], capsys, "is not valid JSON")


def test_compare_needs_two_runs_and_the_same_k(run, trained, tmp_path, capsys):
    fails(["compare", str(run), "--png", str(tmp_path / "c.png")], capsys, "at least two runs")
    assert main(["evaluate", str(run), "--num-samples", "12", "--no-progress"]) == 0
    fails(["compare", str(run), str(trained), "--png", str(tmp_path / "c.png")], capsys, "different K")


def test_compare_refuses_a_subset_beside_a_full_evaluation(run, trained, tmp_path, capsys):
    for p in run.glob("evaluation-K10.*"):
        p.unlink()
    assert main(["evaluate", str(run), "--num-samples", "10", "--max-datapoints", "20", "--no-progress"]) == 0
    fails(["compare", str(run), str(trained), "--png", str(tmp_path / "c.png")], capsys, "cannot be ranked")


def test_a_density_on_binarised_images_is_not_ranked_beside_masses():
    """Before: a Gaussian on binarised images shared the Bernoulli's 'binary-dynamic' scale."""
    from pyrovae.scoring import data_scale

    assert data_scale("binary-dynamic", discrete=False)[0] == "binary-dynamic-density"
    assert data_scale("binary-dynamic", discrete=True)[0] == "binary-dynamic"
    assert data_scale("counts", discrete=False)[0] != data_scale("counts")[0]


# ------------------------------------------------------------------------------------- transactions


def test_a_failed_overwrite_leaves_the_previous_run_unchanged(run, capsys):
    """Before: a failed --overwrite destroyed the old config first."""
    before = state(run)
    fails(["train", *S, "--lr", "1e6", "--out", str(run), "--overwrite"], capsys, "diverged",
          f"{run} is unchanged")
    assert state(run) == before and no_leftovers(run.parent)


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--lr", "0"), ("--hidden", "0")])
def test_an_overwrite_refused_at_parse_time_leaves_the_previous_run_unchanged(run, capsys, flag, value):
    before = state(run)
    fails(["train", *S, flag, value, "--out", str(run), "--overwrite"], capsys, flag)
    assert state(run) == before


def test_divergence_stops_with_the_last_good_checkpoint(run, capsys):
    """Before: --lr 1e6 ended 'done' with bounds of -5e30."""
    assert main(["train", *S, "--lr", "1e6", "--epochs", "2", "--out", str(run.parent / "new")]) == 2
    err = capsys.readouterr().err
    assert "jumped to" in err and "--lr" in err and not (run.parent / "new").exists()


def test_an_interrupt_in_the_first_epoch_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """Before: a dead-end folder ('continue it with --resume' / 'not a run folder')."""
    def interrupt(self, *batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(pyrovae.Trainer, "step", interrupt)
    out = tmp_path / "run"
    err = fails(["train", *S, "--out", str(out)], capsys, "interrupted", code=130)
    assert "intact checkpoint" not in err and not out.exists() and no_leftovers(tmp_path)
    monkeypatch.undo()
    assert main(["train", *S, "--epochs", "1", "--out", str(out)]) == 0 and whole(out)


def test_an_interrupt_later_keeps_the_completed_epochs(tmp_path, capsys, monkeypatch):
    calls = {"n": 0}
    step = pyrovae.Trainer.step

    def interrupt_late(self, *batch):
        calls["n"] += 1
        if calls["n"] > 7:  # 3 steps per epoch: during epoch 3
            raise KeyboardInterrupt
        return step(self, *batch)

    monkeypatch.setattr(pyrovae.Trainer, "step", interrupt_late)
    out = tmp_path / "run"
    fails(["train", *S, "--epochs", "5", "--out", str(out)], capsys, "interrupted", code=130)
    assert whole(out) and torch.load(out / "checkpoint.pt", weights_only=True)["trainer"]["epoch"] == 2
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0 and whole(out)


def _cli(*args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "pyrovae.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_two_trainings_on_one_folder_do_not_mix(tmp_path):
    """Before: both exited 0, leaving one run's config beside the other's checkpoint."""
    out = tmp_path / "run"
    first = _cli("train", *S, "--epochs", "100000", "--out", str(out))
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:  # the first holds the lock
        time.sleep(0.2)
    second = _cli("train", *S, "--epochs", "1", "--seed", "9", "--out", str(out), "--overwrite")
    _, err = second.communicate(timeout=120)
    evaluate = _cli("evaluate", str(out), "--num-samples", "5", "--no-progress")
    _, err_evaluate = evaluate.communicate(timeout=120)
    first.send_signal(signal.SIGTERM)
    _, err_first = first.communicate(timeout=120)
    assert second.returncode == 2 and "being written by another pyrovae process" in err
    assert evaluate.returncode == 2 and "being written by another pyrovae process" in err_evaluate
    assert first.returncode == 130, err_first
    assert whole(out, just_killed=True)
    assert json.loads((out / "config.json").read_text())["seed"] == 0


KILL_DELAYS = sorted(random.Random(2026).uniform(1.0, 7.0) for _ in range(4))  # random, but the same each run


@pytest.mark.parametrize("delay", KILL_DELAYS, ids=[f"{d:.2f}s" for d in KILL_DELAYS])
def test_kill_9_at_any_point_leaves_no_run_or_a_whole_one(tmp_path, delay):
    out = tmp_path / "run"
    proc = _cli("train", *S, "--epochs", "60", "--out", str(out))
    time.sleep(delay)
    proc.kill()
    proc.wait()
    assert not out.exists() or whole(out, just_killed=True)
    # the next writer clears what the killed one left, and the run goes on (or starts again)
    args = ["--resume", str(out), "--epochs", "61"] if out.exists() else [*S, "--epochs", "1", "--out", str(out)]
    assert main(["train", *args, "--no-progress"]) == 0
    assert whole(out) and no_leftovers(tmp_path)


def kill_at_rename(module: str, when: str, target: str, args: list[str]) -> None:
    """Run the CLI in a child whose ``os.replace`` in ``module`` stops (before or after the rename)
    when the target path contains ``target``, and kill -9 it there."""
    hang = (
        f"import os, time, sys, {module} as m\n"
        "real = os.replace\n"
        "def slow(src, dst):\n"
        f"    hit = {target!r} in str(dst)\n"
        f"    if hit and {when == 'before'}:\n"
        "        print('stopped', flush=True); time.sleep(60)\n"
        "    real(src, dst)\n"
        f"    if hit and {when == 'after'}:\n"
        "        print('stopped', flush=True); time.sleep(60)\n"
        "m.os.replace = slow\n"
        "from pyrovae.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", hang], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("stopped"):
            break
    proc.kill()
    proc.wait()


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_checkpoint(run):
    before = (run / "checkpoint.pt").read_bytes()
    kill_at_rename("pyrovae.io", "before", "checkpoint.pt", ["train", "--resume", str(run), "--epochs", "4",
                                                              "--no-progress"])
    assert (run / "checkpoint.pt").read_bytes() == before and list(run.glob(".checkpoint.pt.*.tmp"))
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    assert whole(run) and no_leftovers(run.parent)


def test_sigterm_ends_training_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", *S, "--epochs", "200", "--out", str(out))
    deadline = time.time() + 60
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert whole(out) and no_leftovers(tmp_path)


@pytest.mark.parametrize("content", ["{}", "[]", '{"data_space": "grey"}'])
def test_compare_refuses_a_summary_that_is_not_an_evaluation(run, trained, tmp_path, capsys, content):
    (run / "evaluation-K10.json").write_text(content)
    fails(["compare", str(run), str(trained), "--png", str(tmp_path / "c.png")], capsys, "is not a pyrovae evaluation")


def test_compare_refuses_a_density_beside_masses_of_the_same_images(run, trained, tmp_path, capsys):
    """Before: a Gaussian density on binarised images was ranked beside Bernoulli log-masses."""
    path = run / "evaluation-K10.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "discrete_likelihood": False}))
    fails(["compare", str(run), str(trained), "--png", str(tmp_path / "c.png")], capsys, "cannot be ranked",
          "binary-dynamic-density")


def test_a_folder_with_other_files_is_never_replaced(tmp_path, capsys):
    """A run replaces its whole folder: `--out` on a folder of the user's files is refused."""
    out = tmp_path / "mine"
    (out / "older").mkdir(parents=True)
    (out / "notes.txt").write_text("precious")
    before = state(out)
    for extra_flags in ([], ["--overwrite"]):
        fails(["train", *S, "--epochs", "1", "--out", str(out), *extra_flags], capsys, "did not write",
              "notes.txt", "older")
        assert state(out) == before and (out / "older").is_dir()


def test_a_run_name_with_glob_characters_touches_no_other_run(tmp_path):
    from pyrovae.runs import RunFolder

    (tmp_path / ".a.new-123").mkdir()
    (tmp_path / ".b.old-77").mkdir()
    with RunFolder(tmp_path / "[ab]", fresh=True) as folder:
        (folder.dir / "x").write_text("1")
        folder.commit()
    assert (tmp_path / ".a.new-123").is_dir() and (tmp_path / ".b.old-77").is_dir()
    assert (tmp_path / "[ab]" / "x").read_text() == "1"


def test_a_link_to_a_run_folder_stays_a_link(run, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(run)
    assert main(["train", *S, "--epochs", "1", "--out", str(link), "--overwrite"]) == 0
    assert link.is_symlink() and whole(run) and no_leftovers(tmp_path)


def test_divergence_in_a_later_epoch_keeps_the_last_good_checkpoint(run, capsys, monkeypatch):
    step = pyrovae.Trainer.step

    def explode(self, *batch):
        loss = step(self, *batch)
        return loss * 1e6 if self.steps > 7 else loss  # in the run's 3rd epoch (3 steps per epoch)

    before = (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(pyrovae.Trainer, "step", explode)
    fails(["train", "--resume", str(run), "--epochs", "5", "--no-progress"], capsys, "jumped to",
          "keeps its checkpoint of epoch 2", "start a new run")
    assert (run / "checkpoint.pt").read_bytes() == before and whole(run)


def test_kill_9_between_the_two_renames_of_an_overwrite_loses_nothing(run, tmp_path):
    """The old folder is moved aside, then the new one moved in: killed in between, the next
    writer puts the old run back, byte for byte."""
    before = state(run)
    kill_at_rename("pyrovae.runs", "after", ".old-", ["train", *S, "--epochs", "2", "--out", str(run), "--overwrite"])
    assert not run.exists() and list(run.parent.glob(".run.old-*"))
    assert main(["evaluate", str(run), "--num-samples", "5", "--no-progress"]) == 0  # the next writer recovers
    restored = state(run)
    assert {k: v for k, v in restored.items() if k in before} == before and no_leftovers(run.parent)


def test_two_new_trainings_started_together_make_one_run(tmp_path):
    out = tmp_path / "run"
    procs = [_cli("train", *S, "--epochs", "2", "--seed", str(seed), "--out", str(out)) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "being written by another" in loser or "already holds a run" in loser
    winner = next(seed for (code, _), seed in zip(results, (1, 2)) if code == 0)
    assert whole(out) and json.loads((out / "config.json").read_text())["seed"] == winner


def test_an_unpacked_file_of_the_wrong_size_is_named(mnist_copy, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mnist_copy, root)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (root / "MNIST" / "raw" / name).write_bytes(b"\0" * 100)
    with pytest.raises(pyrovae.DataError, match="is not the unpacked MNIST file"):
        pyrovae.load_dataset("mnist", "test", root)


def test_an_infinite_khat_is_written_as_null(tmp_path):
    from pyrovae.io import write_json
    from pyrovae.plots import plot_khat

    write_json(tmp_path / "s.json", {"max_khat": float("inf"), "k": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"max_khat": None, "k": [None, 1.0]}
    plot_khat(tmp_path / "k.png", torch.tensor([float("inf"), 0.3, float("-inf"), float("nan")]))
    assert (tmp_path / "k.png").stat().st_size > 0


# ------------------------------------------------------------------------------------- Python API


@pytest.fixture(scope="module")
def digits():
    return pyrovae.load_embedded_mnist().subset(slice(0, 200)).with_space("binary-threshold").observations()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.float16, torch.float64])
def test_a_vae_takes_tensors_of_any_real_dtype(digits, dtype):
    """Before: raw torch dtype errors for int64, float16, float64 and bool tensors."""
    vae = pyrovae.VAE(latent_dim=2, hidden=(16,))
    x = digits.to(dtype)
    trainer = pyrovae.train(vae.model, vae.guide, x, x[:50], epochs=1, progress=False, verbose=False)
    assert np.isfinite(trainer.history[-1]["heldout_elbo"])
    assert pyrovae.log_marginal_likelihood(vae.model, vae.guide, x[:5], num_samples=4).log_px.shape == (5,)


def test_integer_counts_train_a_poisson_vae(digits):
    vae = pyrovae.VAE(latent_dim=2, hidden=(16,), likelihood="poisson")
    counts = (digits * 7).long()  # the integer counts the Poisson's own message asks for
    trainer = pyrovae.train(vae.model, vae.guide, counts, epochs=1, progress=False, verbose=False)
    assert np.isfinite(trainer.history[-1]["train_bound"])


def test_a_numpy_array_is_taken_by_a_vae(digits):
    vae = pyrovae.VAE(latent_dim=2, hidden=(16,))
    trainer = pyrovae.train(vae.model, vae.guide, digits.numpy(), epochs=1, progress=False, verbose=False)
    assert trainer.epoch == 1
    res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, digits[:4].numpy().astype(np.int64), num_samples=3)
    assert res.log_px.shape == (4,)


BAD_API = [
    ("complex data", lambda vae, x: pyrovae.train(vae.model, vae.guide, x.to(torch.complex64), epochs=1,
                                                   progress=False), pyrovae.DataError, "real numbers"),
    ("a list", lambda vae, x: pyrovae.train(vae.model, vae.guide, x.tolist(), epochs=1, progress=False),
     pyrovae.DataError, "must be a torch.Tensor"),
    ("no rows", lambda vae, x: pyrovae.train(vae.model, vae.guide, x[:0], epochs=1, progress=False),
     pyrovae.DataError, "empty"),
    ("rows that differ", lambda vae, x: pyrovae.train(lambda a, b: None, lambda a, b: None, (x, x[:10]),
                                                      epochs=1, progress=False), pyrovae.DataError, "share dim 0"),
    ("log p(x) of no rows", lambda vae, x: pyrovae.log_marginal_likelihood(vae.model, vae.guide, x[:0]),
     pyrovae.DataError, "no rows"),
    ("log p(x) of a list", lambda vae, x: pyrovae.log_marginal_likelihood(vae.model, vae.guide, x.tolist()),
     pyrovae.DataError, "torch.as_tensor"),
    ("num_samples=2.5", lambda vae, x: pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=2.5),
     ValueError, "whole number"),
    ("num_samples=0", lambda vae, x: pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=0),
     ValueError, "whole number"),
    ("num_samples=True", lambda vae, x: pyrovae.log_marginal_likelihood(vae.model, vae.guide, x,
                                                                        num_samples=True), ValueError, "whole number"),
    ("chunk_size=0", lambda vae, x: pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, chunk_size=0),
     ValueError, "chunk_size"),
    ("lr=0", lambda vae, x: pyrovae.Trainer(vae.model, vae.guide, lr=0), ValueError, "lr= must be positive"),
    ("lr=-1", lambda vae, x: pyrovae.Trainer(vae.model, vae.guide, lr=-1), ValueError, "lr="),
    ("clip_norm=-1", lambda vae, x: pyrovae.Trainer(vae.model, vae.guide, clip_norm=-1), ValueError, "clip_norm="),
    ("num_particles=0", lambda vae, x: pyrovae.Trainer(vae.model, vae.guide, num_particles=0), ValueError,
     "num_particles="),
    ("batch_size=0", lambda vae, x: pyrovae.train(vae.model, vae.guide, x, batch_size=0, progress=False),
     ValueError, "batch_size="),
    ("epochs=-1", lambda vae, x: pyrovae.train(vae.model, vae.guide, x, epochs=-1, progress=False), ValueError,
     "epochs="),
    ("a schedule giving nan", lambda vae, x: pyrovae.train(vae.model, vae.guide, x, epochs=1, progress=False,
                                                           schedules={"b": lambda s: float("nan")}),
     ValueError, "schedules['b'] gives nan"),
    ("wrong width", lambda vae, x: pyrovae.train(vae.model, vae.guide, x[:, :100], epochs=1, progress=False),
     pyrovae.DataError, "expects 784"),
    ("grey values for a Bernoulli", lambda vae, x: pyrovae.train(vae.model, vae.guide, x * 0.5, epochs=1,
                                                                 progress=False), pyrovae.DataError, "binary data"),
    ("a VAE given labels", lambda vae, x: pyrovae.train(vae.model, vae.guide, (x, torch.zeros(len(x))), epochs=1,
                                                        progress=False), pyrovae.DataError, "2 tensor(s)"),
]


@pytest.mark.parametrize("name", [c[0] for c in BAD_API])
def test_the_python_api_names_the_problem(digits, name):
    _, call, error, message = next(c for c in BAD_API if c[0] == name)
    vae = pyrovae.VAE(latent_dim=2, hidden=(16,))
    before = [p.detach().clone() for p in vae.parameters()]
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        call(vae, digits)
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters()))


def test_a_user_pair_with_a_dtype_mismatch_gets_a_data_error():
    dec = torch.nn.Linear(3, 3)

    def model(x):
        pyro.module("dec", dec)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(dec(x), 1.0).to_event(1), obs=x)

    with pytest.raises(pyrovae.DataError, match="fails on the first rows.*dtype"):
        pyrovae.train(model, lambda x: None, torch.zeros(10, 3, dtype=torch.float64), epochs=1, progress=False)


# ------------------------------------------------------------------------------------- properties

NUMERIC = {"--lr": float, "--lr-decay": float, "--clip-norm": float, "--max-minutes": float,
           "--batch-size": int, "--epochs": int, "--particles": int, "--latent-dim": int, "--train-size": int}


@settings(max_examples=60, deadline=None)
@given(flag=st.sampled_from(sorted(NUMERIC)), value=st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**6, 10**6).map(str), st.text(max_size=8)))
def test_any_flag_value_parses_to_a_valid_setting_or_a_one_line_error(flag, value):
    import contextlib
    import io

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(["train", f"{flag}={value}"])
    except SystemExit as done:
        assert done.code == 2 and len(err.getvalue().strip().splitlines()) == 1 and flag in err.getvalue()
        return
    parsed = getattr(args, flag[2:].replace("-", "_"))
    assert isinstance(parsed, NUMERIC[flag]) and np.isfinite(parsed) and parsed > 0


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=12))
def test_any_option_text_is_a_value_or_a_clear_refusal(text):
    import argparse

    from pyrovae.cli.common import option

    try:
        key, value = option(f"k={text}")
    except argparse.ArgumentTypeError as err:
        assert "finite" in str(err)
        return
    assert key == "k" and (value is None or isinstance(value, (bool, int, float, str, tuple)))
    for prior, name in (("mog", "components"), ("vamp", "input_range"), ("flow", "hidden_dims")):
        try:  # the value reaches a constructor checked, or is refused by name
            pyrovae.make_prior(prior, 2, **{name: value})
        except pyrovae.ConfigError as err:
            assert name in str(err)
        except ValueError as err:  # the constructor's own range check
            assert str(err)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool, torch.uint8, torch.float16]),
       rows=st.integers(0, 4))
def test_any_tensor_batch_is_accepted_or_refused_with_a_data_error(shape, dtype, rows):
    from pyrovae.data import as_tensors

    x = torch.zeros([rows, *shape], dtype=dtype)
    y = torch.zeros(max(rows - 1, 0) if shape else rows)
    for data in (x, (x, y)):
        try:
            out = as_tensors(data)
        except pyrovae.DataError:
            continue
        assert len({t.shape[0] for t in out}) == 1 and out[0].shape[0] > 0


FRAGILE = ("indep_messenger.py", "subsample_messenger.py", "grad_mode.py")  # where global state changes


def _fragile(frame) -> bool:
    name = frame.f_code.co_filename
    return name.endswith(FRAGILE) or (name.endswith("runtime.py") and frame.f_code.co_name in ("allocate", "free"))


def _clear_pyro_stack() -> None:
    from pyro.poutine import runtime

    runtime._PYRO_STACK.clear()
    runtime._DIM_ALLOCATOR._stack.clear()
    torch.set_grad_enabled(True)


def test_an_interrupt_anywhere_in_a_step_leaves_the_process_usable(request):
    """Before: Ctrl-C inside pyro.plate's entry or exit left its dimension allocated, or inside
    torch.no_grad()'s entry left gradients off, and the next training in the same process (a
    notebook's next cell) failed with 'duplicate plate' or 'does not require grad'. A
    KeyboardInterrupt is raised at each line of the code that changes that state, in turn."""
    import sys

    x = (torch.rand(64, 784) > 0.5).float()
    vae = pyrovae.VAE(latent_dim=2, hidden=(8,))
    trainer = pyrovae.Trainer(vae.model, vae.guide, jit=False)
    trainer.step(x)
    lines = {"n": 0}

    def count(frame, event, arg):
        lines["n"] += event == "line" and _fragile(frame)
        return count

    sys.settrace(count)
    try:
        trainer.step(x)
    finally:
        sys.settrace(None)
    assert lines["n"] > 20
    request.addfinalizer(_clear_pyro_stack)  # a failure here must not fail the tests after it
    for k in range(1, lines["n"] + 1):
        seen = {"n": 0}

        def interrupt(frame, event, arg, k=k, seen=seen):
            seen["n"] += event == "line" and _fragile(frame)
            if seen["n"] == k:
                sys.settrace(None)
                raise KeyboardInterrupt
            return interrupt

        sys.settrace(interrupt)
        try:
            trainer.step(x)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        assert torch.is_grad_enabled(), f"gradients left off by an interrupt at fragile line {k}"
    fresh = pyrovae.VAE(latent_dim=2, hidden=(8,))
    pyrovae.train(fresh.model, fresh.guide, x, epochs=1, progress=False, verbose=False)


def test_sigterm_during_training_stops_between_two_steps():
    """The CLI's SIGTERM handler asks the running fit to stop; it raises KeyboardInterrupt after the
    step in progress, never inside one, and outside a fit the handler interrupts at once."""
    from pyrovae.infer.trainer import request_stop

    assert request_stop() is False  # no fit runs: the caller raises at once
    x = (torch.rand(256, 784) > 0.5).float()
    vae = pyrovae.VAE(latent_dim=2, hidden=(8,))
    trainer = pyrovae.Trainer(vae.model, vae.guide, jit=False)
    step = pyrovae.Trainer.step

    def step_then_signal(self, *batch):
        loss = step(self, *batch)
        if self.steps == 3:
            assert request_stop() is True and request_stop() is False  # a second one would raise at once
        return loss

    trainer.step = step_then_signal.__get__(trainer)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(x, epochs=5, batch_size=64, progress=False, verbose=False)
    assert trainer.steps == 3 and trainer.epoch == 0
    assert request_stop() is False  # nothing left pending for the next fit
