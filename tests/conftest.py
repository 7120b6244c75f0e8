import importlib.util
import os
from pathlib import Path

import pyro
import pytest
import torch

import pyrovae


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with empty param and factor stores and a fixed seed."""
    pyro.clear_param_store()
    pyrovae.infer.clear_factors()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()
    pyrovae.infer.clear_factors()


@pytest.fixture(scope="session")
def embedded():
    return pyrovae.load_embedded_mnist()


@pytest.fixture(scope="session")
def binary_split(embedded):
    """9,000 training / 1,000 held-out embedded digits, held-out binarised once."""
    train, heldout = embedded.split(1000, seed=0)
    x_heldout = heldout.observations(torch.Generator().manual_seed(1))
    return train, x_heldout


@pytest.fixture(scope="session")
def mnist_dir():
    """Folder with full MNIST in torchvision's layout ($PYROVAE_DATA, or ../shared/data)."""
    candidates = [os.environ.get("PYROVAE_DATA"), Path(__file__).parents[2] / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists():
            return Path(c)
    pytest.skip("full MNIST not available (set PYROVAE_DATA)")


@pytest.fixture
def lingauss():
    """``(W, b, x, exact log p(x), posterior covariance)`` of the linear-Gaussian pair of test_importance."""
    from test_importance import linear_gaussian

    return linear_gaussian()


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)``: the module of ``examples/<name>.py``, its ``main`` not yet run."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_example", Path(__file__).parents[1] / "examples" /
                                                      f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
