"""pyrovae: variational autoencoders as Pyro model/guide pairs, with honest log p(x)."""

from . import diagnostics
from ._version import __version__
from .config import ConfigError, RunConfig
from .data import DataError, ImageData, from_tensor, load_dataset, load_embedded_mnist, load_train_test
from .infer import (
    IWAE,
    BetaELBO,
    CapacityELBO,
    ContractError,
    MarginalLikelihood,
    Trainer,
    TrainingError,
    cyclical,
    factor,
    linear,
    log_importance_weights,
    log_marginal_likelihood,
    set_factor,
    train,
    unscaled,
)
from .likelihoods import Likelihood, make_likelihood
from .memory import reuse_freed_memory
from .models import MODELS, VAE, build_model, register_model
from .priors import Prior, make_prior
from .runs import build_trainer, load_model, load_run_data
from .scoring import ComparisonError, compare

__all__ = [
    "__version__",
    "IWAE",
    "BetaELBO",
    "MODELS",
    "CapacityELBO",
    "VAE",
    "ComparisonError",
    "ConfigError",
    "ContractError",
    "DataError",
    "ImageData",
    "Likelihood",
    "MarginalLikelihood",
    "Prior",
    "RunConfig",
    "Trainer",
    "TrainingError",
    "build_model",
    "build_trainer",
    "compare",
    "diagnostics",
    "cyclical",
    "factor",
    "from_tensor",
    "linear",
    "load_dataset",
    "load_embedded_mnist",
    "load_model",
    "load_run_data",
    "load_train_test",
    "log_importance_weights",
    "log_marginal_likelihood",
    "make_likelihood",
    "make_prior",
    "register_model",
    "reuse_freed_memory",
    "set_factor",
    "train",
    "unscaled",
]
