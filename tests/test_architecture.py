"""The zoo's architecture: a model added by registering it works through every CLI command; one
typed run configuration with one set of defaults; no import cycles; pictures that leave the
user's matplotlib alone; library errors in Python's words, the CLI's in flags."""

import ast
import csv
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.cli import build_parser, main
from pyrovae.cli.common import to_flags
from pyrovae.cli.train import config_from_args
from pyrovae.config import DEFAULTS, ConfigError, RunConfig
from pyrovae.models import MODELS, MixtureVAE, register_model
from pyrovae.runs import training_objective

PACKAGE = Path(pyrovae.__file__).parent
FAST = ["--train-size", "600", "--heldout-size", "100", "--batch-size", "100", "--no-progress"]


class LinearGaussian(nn.Module):
    """Probabilistic PCA on grey images, written against the zoo's protocol only."""

    data_space = "grey"

    def __init__(self, data_dim: int, image_shape, latent_dim: int = 3, noise: float = 0.3):
        super().__init__()
        self.image_shape, self.latent_dim, self.noise = tuple(image_shape), latent_dim, noise
        self.decoder, self.encoder = nn.Linear(latent_dim, data_dim), nn.Linear(data_dim, 2 * latent_dim)

    def model(self, x=None, num_datapoints=1):
        pyro.module("lg.decoder", self.decoder)
        with pyro.plate("data", x.shape[0] if x is not None else num_datapoints):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([self.latent_dim]).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), self.noise).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("lg.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            pyro.sample("z", dist.Normal(h[..., : self.latent_dim], nn.functional.softplus(h[..., self.latent_dim :]))
                        .to_event(1))

    def prepare_data(self, data):
        if isinstance(data, pyrovae.ImageData):
            return data.with_space(data.space or self.data_space)
        return data.float() if torch.is_tensor(data) else data

    def check_data(self, x, what="data"):
        if x.dim() != 2:
            raise pyrovae.DataError(f"{what} must be (N, D)")

    def write_pictures(self, run, heldout, history, seed):
        from pyrovae import plots

        plots.plot_samples(Path(run) / "samples.png", self.to_picture(self.generate(16)), self.image_shape)
        return ["samples.png"]

    @torch.no_grad()
    def generate(self, num_samples, sample=False):
        z = torch.randn(num_samples, self.latent_dim)
        mean = self.decoder(z)
        return mean + self.noise * torch.randn_like(mean) if sample else mean

    def to_picture(self, values):
        return values.clamp(0, 1)

    def report(self):
        return {"likelihood": "gaussian", "prior": "normal"}


@pytest.fixture
def registered():
    register_model("linear-gaussian", LinearGaussian, "probabilistic PCA (test)")
    yield "linear-gaussian"
    MODELS.pop("linear-gaussian")


def test_a_registered_model_trains_evaluates_and_samples_from_the_cli(registered, tmp_path):
    run = tmp_path / "lg"
    args = ["train", "--model", registered, "--latent-dim", "2", "--epochs", "2", "--out", str(run), *FAST]
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == registered and config["model_options"] == {"latent_dim": 2, "noise": 0.3}
    assert config["data_space"] == "grey" and config["data_dim"] == 784
    assert main(["evaluate", str(run), "--num-samples", "30", "--max-datapoints", "40", "--no-progress"]) == 0
    summary = json.loads((run / "evaluation-K30-first40.json").read_text())
    assert summary["model"] == registered and summary["scale"] == "grey-density"
    assert len(list(csv.DictReader((run / "evaluation-K30-first40.csv").open()))) == 40
    assert main(["sample", str(run), "--num", "9", "--draws", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_an_option_the_model_lacks_is_refused_by_name(registered, tmp_path, capsys):
    run = tmp_path / "bad"
    assert main(["train", "--model", registered, "--arch", "conv", "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert "has no option(s) ['arch']" in err and "latent_dim" in err and not run.exists()


def test_run_config_round_trips_and_reads_version_0_1_configs(tmp_path):
    config = RunConfig(dataset="mnist", model_options={"latent_dim": 5, "hidden": [64, 32]}, epochs=3, lr=3e-4)
    config.save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json") == config
    old = {"dataset": "embedded", "data_space": "binary-dynamic", "latent_dim": 2, "hidden": [64],
           "likelihood": "bernoulli", "prior": "normal", "epochs": 2, "data_dim": 784, "image_shape": [28, 28]}
    read = RunConfig.from_dict(old)
    assert read.model == "vae" and read.model_options == {"latent_dim": 2, "hidden": [64], "likelihood": "bernoulli",
                                                          "prior": "normal"}
    with pytest.raises(ConfigError, match="unknown configuration keys.*'latnt_dim'"):
        RunConfig.from_dict({"model_options": {}, "latnt_dim": 3})
    with pytest.raises(ConfigError, match="batch_size=0"):
        RunConfig(batch_size=0)


def test_build_model_takes_its_dimensions_from_the_data():
    images = torch.randint(0, 256, (20, 3 * 8 * 8), dtype=torch.uint8)
    data = pyrovae.from_tensor(images.reshape(20, 3, 8, 8))
    config = RunConfig(model_options={"latent_dim": 2, "hidden": [8]})
    vae = pyrovae.build_model(config, data)
    assert vae.data_dim == 192 and config.data_dim == 192 and config.image_shape == [3, 8, 8]
    assert config.data_space == "binary-dynamic" and config.model_options["activation"] == "softplus"


def test_the_config_records_the_space_and_levels_the_model_observes(embedded):
    options = {"latent_dim": 2, "likelihood": "categorical", "likelihood_options": {"levels": 8}, "prior": "vamp"}
    config = RunConfig(model_options=options)
    vae = pyrovae.build_model(config, embedded)
    assert (config.data_space, config.levels) == ("levels", 8)
    assert vae.prior.input_range == (0.0, 7.0) and vae.prepare_data(embedded).levels == 8
    python = pyrovae.VAE(**options)  # the same model built directly, as the README does
    assert python.prior.input_range == vae.prior.input_range
    assert python.likelihood.levels == vae.likelihood.levels and python.data_space == vae.data_space
    with pytest.raises(pyrovae.DataError, match="has 8 levels but .* quantised to 16"):
        pyrovae.build_model(RunConfig(data_space="levels", levels=16, model_options=options), embedded)


def test_the_cli_python_and_the_config_share_one_set_of_defaults():
    args = build_parser().parse_args(["train"])
    from_cli = config_from_args(args)
    for name in ("dataset", "data_space", "levels", "model", "objective", "particles", "epochs", "batch_size",
                 "lr", "lr_decay", "clip_norm", "jit", "seed", "device", "model_options"):
        assert getattr(from_cli, name) == getattr(DEFAULTS, name), name
    trainer_defaults = inspect.signature(pyrovae.Trainer).parameters
    for name, field in (("num_particles", "particles"), ("lr", "lr"),
                        ("lr_decay", "lr_decay"), ("clip_norm", "clip_norm"), ("jit", "jit")):
        assert trainer_defaults[name].default == getattr(DEFAULTS, field), name
    # the config names no objective (the model's own): for a VAE that is the trainer's default
    assert DEFAULTS.objective is None
    assert training_objective(pyrovae.VAE(hidden=(8,)), DEFAULTS) == trainer_defaults["objective"].default == "elbo"
    assert training_objective(MixtureVAE(hidden=(8,)), DEFAULTS) == "enum"
    train_defaults = inspect.signature(pyrovae.train).parameters
    for name in ("epochs", "batch_size", "seed"):
        assert train_defaults[name].default == getattr(DEFAULTS, name), name


def test_a_model_without_the_protocol_cannot_join_and_required_options_are_asked_for(registered):
    class Half(nn.Module):
        def __init__(self, data_dim, image_shape, classes):
            super().__init__()

        def model(self, x):
            pass

    with pytest.raises(TypeError, match=r"lacks \['guide', 'data_space', 'prepare_data'"):
        register_model("half", Half, "incomplete")
    assert "half" not in MODELS

    class NeedsClasses(LinearGaussian):
        def __init__(self, data_dim, image_shape, classes, latent_dim=3):
            super().__init__(data_dim, image_shape, latent_dim)
            self.classes = classes

    register_model("needs-classes", NeedsClasses, "test")
    try:
        with pytest.raises(ConfigError, match=r"needs the option\(s\) \['classes'\]"):
            pyrovae.build_model(RunConfig(model="needs-classes"), pyrovae.load_embedded_mnist().subset(slice(0, 10)))
        model = pyrovae.build_model(RunConfig(model="needs-classes", model_options={"classes": 10}),
                                    pyrovae.load_embedded_mnist().subset(slice(0, 10)))
        assert model.classes == 10
    finally:
        MODELS.pop("needs-classes")


def _module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _module_imports(path: Path) -> set[str]:
    """Package modules imported at module level (not inside functions) by the file at ``path``."""
    name, is_package = _module_name(path)
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - (node.level - 1)])
            found.add(f"{base}.{node.module}" if node.module else base)
            if not node.module:  # `from . import a, b`: the submodules themselves
                found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pyrovae"))
    return {m for m in found if m != name}


def test_no_module_level_import_cycles_and_cli_commands_share_only_common():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        modules[_module_name(path)[0]] = _module_imports(path)

    def visit(node, stack):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(node):], node]))
        for nxt in modules.get(node, ()):
            visit(nxt, [*stack, node])

    for name in modules:
        visit(name, [])
    for command in ("train", "sample", "evaluate", "compare", "diagnose"):
        siblings = {m for m in modules[f"pyrovae.cli.{command}"] if m.startswith("pyrovae.cli")}
        assert siblings <= {"pyrovae.cli.common"}, (command, siblings)


def test_pictures_leave_the_users_matplotlib_backend_alone(tmp_path):
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "import torch, pyrovae.plots as plots\n"
        f"plots.plot_khat({str(tmp_path / 'k.png')!r}, torch.rand(50))\n"
        "import sys; assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


def test_library_errors_name_python_arguments_and_the_cli_names_flags(tmp_path, capsys):
    assert to_flags("lower the learning rate (lr=) or clip gradients (clip_norm=)") == \
        "lower the learning rate (--lr) or clip gradients (--clip-norm)"
    assert to_flags("use objective='elbo' or 'iwae'; batch_size=0") == "use --objective elbo or 'iwae'; --batch-size 0"
    run = tmp_path / "r"
    assert main(["train", "--batch-size", "0", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "argument --batch-size: must be at least 1, got 0" in err and "Traceback" not in err and not run.exists()
    w = nn.Parameter(torch.tensor(0.0))

    def model(x):
        pyro.module("w", nn.ParameterList([w]))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).expand([3]).to_event(1), obs=x)

    with pytest.raises(pyrovae.TrainingError, match=r"\(lr=\).*\(clip_norm=\)"):
        pyrovae.train(model, lambda x: None, torch.ones(50, 3), epochs=3, lr=1e30, progress=False, verbose=False)
