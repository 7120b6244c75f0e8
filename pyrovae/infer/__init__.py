"""Inference for any Pyro model/guide pair: SVI training, objectives, importance sampling.

* :mod:`.trainer` -- :class:`Trainer` and :func:`train` (minibatches, epochs, checkpoints);
* :mod:`.objectives` -- the objective registry and :class:`IWAE`;
* :mod:`.weighted` -- objectives that weight the KL: β-VAE, warm-up, capacity, free bits;
* :mod:`.jit` -- the compiled loss, checked against the eager one;
* :mod:`.distributed` -- data-parallel training on ``torch.distributed`` (torchrun);
* :mod:`.factors` -- named per-step factors (β, warm-up) and their schedules;
* :mod:`.handlers` -- the pair without training weights (:func:`unscaled`);
* :mod:`.importance` -- per-datapoint importance weights and :func:`log_marginal_likelihood`;
* :mod:`.ais` -- annealed importance sampling and BDMC (``method="ais"``, :func:`bdmc`);
* :mod:`.defensive` -- defensive importance sampling (``method="defensive"``);
* :mod:`.parallel` -- chunks of an evaluation in forked worker processes (``workers=``).
"""

from .ais import AIS, BDMC, annealing_schedule, bdmc
from .defensive import Defensive
from .distributed import World, close_distributed, init_distributed
from .factors import clear_factors, constant, cyclical, factor, factors, linear, set_factor
from .handlers import unscaled
from .importance import (
    ContractError,
    MarginalLikelihood,
    check_contract,
    log_importance_weights,
    log_marginal_likelihood,
    psis_khat,
)
from .objectives import IWAE, OBJECTIVES, make_objective, register_objective
from .parallel import WorkerError
from .trainer import Trainer, TrainingError, train
from .weighted import BetaELBO, CapacityELBO, kl_weighting

__all__ = [
    "AIS",
    "BDMC",
    "Defensive",
    "IWAE",
    "annealing_schedule",
    "bdmc",
    "BetaELBO",
    "CapacityELBO",
    "OBJECTIVES",
    "ContractError",
    "MarginalLikelihood",
    "Trainer",
    "TrainingError",
    "World",
    "WorkerError",
    "check_contract",
    "clear_factors",
    "close_distributed",
    "constant",
    "cyclical",
    "factor",
    "factors",
    "init_distributed",
    "kl_weighting",
    "linear",
    "log_importance_weights",
    "log_marginal_likelihood",
    "make_objective",
    "psis_khat",
    "register_objective",
    "set_factor",
    "train",
    "unscaled",
]
