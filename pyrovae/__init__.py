"""pyrovae: variational autoencoders as Pyro model/guide pairs, with honest log p(x)."""

from .data import DataError, ImageData, from_tensor, load_dataset, load_embedded_mnist, load_train_test
from .importance import (
    IWAE,
    ContractError,
    MarginalLikelihood,
    log_importance_weights,
    log_marginal_likelihood,
)
from .infer import Trainer, TrainingError, train
from .likelihoods import Likelihood, make_likelihood
from .models import VAE
from .priors import Prior, make_prior
from .scoring import ComparisonError, compare

__version__ = "0.1.0"
__all__ = [
    "IWAE",
    "VAE",
    "ComparisonError",
    "ContractError",
    "DataError",
    "ImageData",
    "Likelihood",
    "MarginalLikelihood",
    "Prior",
    "Trainer",
    "TrainingError",
    "compare",
    "from_tensor",
    "load_dataset",
    "load_embedded_mnist",
    "load_train_test",
    "log_importance_weights",
    "log_marginal_likelihood",
    "make_likelihood",
    "make_prior",
    "train",
]
