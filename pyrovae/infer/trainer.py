r"""Stochastic variational inference for any Pyro model/guide pair.

:class:`Trainer` maximises a lower bound on :math:`\log p(x)` over minibatches, with any
objective of :mod:`pyrovae.infer.objectives` (a name, or any ``pyro.infer.ELBO`` object).

**Batches.** The data are a tensor, a tuple of tensors that share dim 0, or a data source such
as :class:`~pyrovae.data.ImageData`; every minibatch is a tuple of rows, and the trainer calls
``model(*batch)`` and ``guide(*batch)`` -- ``model(x)`` for a VAE, ``model(x, y)`` for a
conditional or semi-supervised one.

**Sign convention.** Every number we report is a *bound* in nats per datapoint: higher is
better and it sits below :math:`\log p(x)` (so it is negative for discrete data). The
optimiser minimises the loss, which is minus the bound summed over the minibatch.

**Weighted objectives.** ``poutine.scale`` factors (β, KL warm-up; set per step by
``schedules``, :mod:`pyrovae.infer.factors`) weight the training objective only: the
held-out ELBO, and ``train_elbo`` (the true ELBO on up to 2,000 training rows at the end of
each epoch, recorded when the objective is weighted), are computed without them.

The optimiser is ``torch.optim.Adam`` over every parameter the pair registers (with
``pyro.module`` or ``pyro.param``), found by one traced run: it is what ``pyro.optim.Adam``
wraps, applied once instead of once per parameter tensor, and fused (``fused=True``: one kernel
per tensor, where torch has one for the parameters' device and dtype) -- on our CPU the default
loop of a dozen elementwise passes took as long as a quarter of a step (docs/benchmarks.md).
With ``jit=True`` the loss is compiled by ``torch.jit.trace`` per input shape
(:mod:`pyrovae.infer.jit`), checked against the eager loss, and left eager with a warning where
it cannot be trusted.
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyro
import torch
from pyro import poutine

from .._text import first_line
from ..config import DEFAULTS
from ..data import DataError, ImageData, as_tensors, heldout_generator, minibatches
from .distributed import (
    World,
    all_reduce_step,
    any_rank,
    broadcast_parameters,
    current_world,
    peer_failure,
    rank_seed,
    shard,
    together,
)
from .factors import Schedule, factors, set_factor
from .handlers import cuda_devices, inspect_pair, restores_global_state, unscaled
from .importance import ContractError, guess_max_plate_nesting
from .jit import TracedLoss, rng_state, set_rng_state
from .objectives import make_objective, objective_label, sums_out_enumerated_sites

MONITOR_ROWS = 2000  # training rows on which a weighted objective's true ELBO is recorded
# a step whose loss per datapoint exceeds the median of the last DIVERGENCE_WINDOW steps by more
# than DIVERGENCE_FACTOR times its size has diverged (a learning rate far too large)
DIVERGENCE_WINDOW, DIVERGENCE_FACTOR = 50, 100.0


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss)."""


_DIVERGED = "training diverged: lower the learning rate (lr=) or clip gradients (clip_norm=)"


class Trainer:
    """SVI with minibatches, epochs, a progress bar and held-out bounds, for any pair.

    :param model, guide: Pyro functions called as ``model(*batch)``, ``guide(*batch)``.
    :param objective: a name (``"elbo"``, ``"meanfield"``, ``"enum"``, ``"iwae"``, see
        :data:`~pyrovae.infer.objectives.OBJECTIVES`) or an objective object, e.g.
        ``pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)`` or ``RenyiELBO(alpha=0.5)``.
    :param num_particles: samples per datapoint (vectorised) for a named objective.
    :param lr: Adam's learning rate; ``lr_decay`` multiplies it after every epoch.
    :param clip_norm: clip the global gradient norm to this value (``None``: no clipping).
    :param jit: compile the loss with ``torch.jit.trace`` (see :mod:`pyrovae.infer.jit`).
    :param check_data: ``check_data(*batch, what=...)`` raising
        :class:`~pyrovae.data.DataError` on bad data; called before training starts.
    :param prepare_data: maps an :class:`~pyrovae.data.ImageData` to the data source the pair
        observes (e.g. its likelihood's data space).
    :param schedules: ``{name: schedule}``; before each step, factor ``name`` is set to
        ``schedule(step)`` (:mod:`pyrovae.infer.factors`).
    :param distributed: train data-parallel over the initialised ``torch.distributed`` process
        group (:mod:`pyrovae.infer.distributed`): ``None`` whenever one of more than one
        process is initialised, ``False`` never (independent trainers in each process), ``True`` always (an
        error without a group).

    When ``model`` is a method of an object with ``check_data`` / ``prepare_data`` (a
    :class:`~pyrovae.VAE`), those are used unless given.

    Example:

    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyrovae.infer import Trainer
    >>> pyro.clear_param_store()
    >>> def model(x):
    ...     loc = pyro.param("loc", torch.zeros(()))
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(loc, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))
    >>> trainer = Trainer(model, guide, lr=0.05)
    >>> x = torch.full((64,), 2.0)
    >>> losses = [trainer.step(x).item() for _ in range(50)]  # minus the ELBO, summed over the batch
    >>> losses[-1] < losses[0], round(pyro.param("loc").item(), 1)  # the prior's mean: the guide's, x/2
    (True, 1.0)
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *,
        objective: Any = "elbo",
        num_particles: int = DEFAULTS.particles,
        lr: float = DEFAULTS.lr,
        lr_decay: float = DEFAULTS.lr_decay,
        clip_norm: float | None = DEFAULTS.clip_norm,
        jit: bool = DEFAULTS.jit,
        max_plate_nesting: int | None = None,
        check_data: Callable[..., None] | None = None,
        prepare_data: Callable[[ImageData], Any] | None = None,
        schedules: Mapping[str, Schedule] | None = None,
        distributed: bool | None = None,
    ) -> None:
        _require(lr > 0, f"lr= must be positive, not {lr}")
        _require(lr_decay > 0, f"lr_decay= must be positive, not {lr_decay}")
        _require(clip_norm is None or clip_norm > 0, f"clip_norm= must be positive or None, not {clip_norm}")
        _require(num_particles >= 1, f"num_particles= must be >= 1, not {num_particles}")
        if hasattr(objective, "differentiable_loss") or hasattr(objective, "loss_and_grads"):
            _require(num_particles == 1, "num_particles= is for named objectives; an objective object has its own")
        self.model, self.guide = model, guide
        # a bound method's object (a pyrovae model class): its data checks, chunk size, held-out metrics
        self._owner = getattr(model, "__self__", None)
        self.check_data = check_data or getattr(self._owner, "check_data", None)
        self.prepare_data = prepare_data or getattr(self._owner, "prepare_data", None)
        self.objective_spec, self.num_particles = objective, num_particles
        self.objective = make_objective(objective, num_particles, max_plate_nesting)
        self.objective_name = objective_label(self.objective, objective)
        self.lr, self.lr_decay, self.clip_norm, self.jit = lr, lr_decay, clip_norm, jit
        self.max_plate_nesting = max_plate_nesting
        self.schedules = dict(schedules or {})
        self.distributed = distributed
        self.world: World | None = None  # the data-parallel processes, found at set-up
        self._agreed_stop = False
        self.param_names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._loss: Callable | None = None
        self._eager_reason: str | None = None
        self.enumerated: list[str] = []
        self.epoch = 0
        self.steps = 0
        self.history: list[dict[str, Any]] = []
        self._collapse = None  # pyrovae.diagnostics.CollapseMonitor, made at the first held-out epoch end

    # ---------------------------------------------------------------- set-up

    def setup(self, *batch: torch.Tensor) -> None:
        """Find the pair's parameters on one batch and build the optimiser (done once)."""
        if self.optimizer is not None:
            return
        batch = _as_batch(batch)
        with torch.random.fork_rng(cuda_devices(batch)):  # leave the random numbers to training
            self._setup(batch)

    def _setup(self, batch: tuple[torch.Tensor, ...]) -> None:
        self._apply_schedules()
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(self.model, self.guide, *batch)
            if isinstance(self.objective_spec, str):
                self.objective = make_objective(self.objective_spec, self.num_particles, self.max_plate_nesting)
        self.enumerated = inspect_pair(self.model, self.guide, *batch).enumerated
        if self.enumerated and not sums_out_enumerated_sites(self.objective):
            raise ContractError(
                f"model site(s) {self.enumerated} are marked for enumeration, which objective "
                f"{self.objective_name!r} ignores: it would sample them from the prior, and its "
                "'ELBO' would not be a bound. Use objective='enum' (TraceEnum_ELBO) or 'iwae'"
            )
        differentiable = hasattr(self.objective, "differentiable_loss")
        with poutine.trace(param_only=True) as capture:
            if differentiable:
                self.objective.differentiable_loss(self.model, self.guide, *batch)
            else:
                self.objective.loss(self.model, self.guide, *batch)
        store = pyro.get_param_store()
        self.param_names = list(capture.trace.nodes)
        self.params = [store.get_param(n).unconstrained() for n in self.param_names]
        if not self.params:
            raise ValueError("the model and guide register no parameters (pyro.module/param)")
        self._join_world()
        self.optimizer = _adam(self.params, self.lr)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, self.lr_decay)
        if not differentiable:  # e.g. RenyiELBO: Pyro computes the gradients itself
            self._loss = None
            if self.jit:
                self._eager_reason = (
                    f"jit=True needs an objective with differentiable_loss; {type(self.objective).__name__} "
                    "has only loss_and_grads, so it trains eagerly"
                )
                warnings.warn(self._eager_reason, stacklevel=4)
            return

        def loss(*tensors):
            return self.objective.differentiable_loss(self.model, self.guide, *tensors)

        self._loss = TracedLoss(loss, self.params) if self.jit else loss

    def _find_world(self) -> World | None:
        """The data-parallel processes this trainer trains with (``None``: this one alone)."""
        if self.distributed is False:
            return None
        world = current_world()
        if world is None and self.distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError(
                    "distributed=True needs a torch.distributed process group: run under torchrun and call "
                    "pyrovae.infer.init_distributed() (or torch.distributed.init_process_group) first"
                )
        return world

    def _join_world(self) -> None:
        """Find the data-parallel process group and start from rank 0's parameters."""
        self.world = self._find_world()
        if self.world is not None:
            broadcast_parameters(self.world, self.params)

    @property
    def compiled(self) -> bool:
        """Whether steps run the jit-compiled loss (``jit=True`` and no fallback to eager)."""
        return isinstance(self._loss, TracedLoss) and not self._loss.failed

    @property
    def jit_fallback(self) -> str | None:
        """Why the loss is not compiled although ``jit=True`` (the warning's text), or ``None``."""
        return self._loss.reason if isinstance(self._loss, TracedLoss) else self._eager_reason

    def _apply_schedules(self) -> None:
        for name, schedule in self.schedules.items():
            value = float(schedule(self.steps))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"schedules[{name!r}] gives {value} at step {self.steps}; a factor must be >= 0")
            set_factor(name, value)

    # ---------------------------------------------------------------- steps and epochs

    @restores_global_state
    def step(self, *batch: torch.Tensor) -> torch.Tensor:
        """One gradient step on a minibatch (a tensor, several tensors, or a tuple of them);
        returns the (detached) loss tensor."""
        batch = _as_batch(batch)
        self.setup(*batch)
        self._apply_schedules()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world is not None:
            return self._step_together(batch)
        try:
            if self._loss is not None:
                loss = self._loss(*batch)
                self._check_finite(loss)
                loss.backward()
            else:
                loss = torch.tensor(self.objective.loss_and_grads(self.model, self.guide, *batch))
                self._check_finite(loss)
        except ValueError as err:  # distribution validation meets NaN parameters
            if all(torch.isfinite(p).all() for p in self.params):
                raise
            raise TrainingError(f"parameters became NaN/inf ({err}); {_DIVERGED}") from None
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.steps += 1
        return loss.detach()

    def _step_together(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """A data-parallel step: this process's share of the global batch forward and backward,
        then one all-reduce of gradients, loss, failure flags and stop requests, so that every
        process takes the same decision (fail, stop, step) at the same step. Returns the global
        loss (summed over all processes' rows)."""
        error: BaseException | None = None
        loss = torch.zeros(())
        try:
            if batch[0].shape[0] == 0:
                pass  # an empty share of a last batch smaller than the world: zero gradients
            elif self._loss is not None:
                loss = self._loss(*batch)
                loss.backward()
            else:
                loss = torch.tensor(self.objective.loss_and_grads(self.model, self.guide, *batch))
        except Exception as err:  # told to the other processes before it is raised
            error = err
        reduced = all_reduce_step(self.world, self.params, loss, error is not None, _stop_requested)
        if error is not None:
            if isinstance(error, ValueError) and not all(torch.isfinite(p).all() for p in self.params):
                raise TrainingError(f"parameters became NaN/inf ({error}); {_DIVERGED}") from None
            raise error
        if reduced.failed_ranks:
            raise peer_failure(reduced.failed_ranks, self.world, "in this step")
        self._agreed_stop = reduced.stop
        self._check_finite(reduced.loss)
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.steps += 1
        return reduced.loss

    @staticmethod
    def _check_divergence(loss: float, recent: deque) -> None:
        """Stop when the loss per datapoint jumps far above its running median: divergence that
        has not (yet) reached inf or NaN, e.g. a learning rate far too large."""
        if recent:
            median = statistics.median(recent)
            if loss - median > DIVERGENCE_FACTOR * max(abs(median), 1.0):
                raise TrainingError(
                    f"the loss per datapoint jumped to {loss:.4g}, over {DIVERGENCE_FACTOR:g} times its running "
                    f"median {median:.4g}; {_DIVERGED}"
                )
        recent.append(loss)

    @staticmethod
    def _check_finite(loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {loss.item()}; {_DIVERGED}")

    def default_bound(self, batch: tuple[torch.Tensor, ...] | None = None) -> str:
        """The held-out bound: ``enum`` when the model has enumerated sites, else ``elbo``
        (looked up on ``batch`` before the trainer is set up)."""
        enumerated = self.enumerated
        if self.optimizer is None and batch is not None:
            enumerated = inspect_pair(self.model, self.guide, *(t[:16] for t in batch)).enumerated
        return "enum" if enumerated else "elbo"

    def evaluate(
        self,
        data,
        objective: Any = None,
        num_particles: int = 1,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> float:
        """A bound (default :meth:`default_bound`) in nats per datapoint on ``data``, of the
        unweighted model (``poutine.scale`` factors dropped), with a fixed seed.

        ``data`` is a tensor, a tuple of tensors or a data source (observed with the held-out
        generator of ``seed``). Uses its own random numbers and leaves the global generator
        as it was, so evaluating does not change the course of training.
        """
        batch = as_tensors(self._prepare(data, heldout=True), heldout_generator(seed), what="evaluation data")
        return self._bound(batch, objective or self.default_bound(batch), num_particles, batch_size, seed)

    def _bound(self, batch: tuple[torch.Tensor, ...], objective, num_particles: int, batch_size: int, seed: int):
        """:meth:`evaluate` of a batch already prepared and checked (the per-epoch bounds)."""
        bound = make_objective(objective, num_particles, self.max_plate_nesting)
        model, guide = unscaled(self.model), unscaled(self.guide)
        # a model whose passes are large (text: a softmax over the vocabulary per token) names its chunk size
        pairs = getattr(self._owner, "evaluation_chunk_size", None)
        if pairs is not None:
            batch_size = min(batch_size, max(1, pairs // num_particles))
        total = 0.0
        with torch.random.fork_rng(devices=cuda_devices(batch)), torch.no_grad():
            pyro.set_rng_seed(seed)
            for part in minibatches(batch, batch_size, shuffle=False):
                total += bound.loss(model, guide, *part)
        return -total / batch[0].shape[0]

    @restores_global_state
    def fit(
        self,
        data,
        heldout=None,
        *,
        epochs: int = DEFAULTS.epochs,
        batch_size: int = DEFAULTS.batch_size,
        seed: int = DEFAULTS.seed,
        device: torch.device | str | None = None,
        progress: bool = True,
        verbose: bool = True,
        callback: Callable[[Trainer, dict[str, Any]], None] | None = None,
        max_seconds: float | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``self.epoch == epochs`` (continues a resumed trainer), or until the
        first epoch end after ``max_seconds`` of wall time, for fixed compute budgets.

        ``data`` is a tensor, a tuple of tensors sharing dim 0, or a data source such as
        :class:`~pyrovae.data.ImageData`, whose random data spaces (dynamic binarisation,
        dequantisation) are redrawn every epoch from a generator seeded by ``(seed, epoch)``,
        so a resumed run sees the same data. The held-out set is drawn once with a fixed seed.
        After each epoch, ``callback`` gets the trainer and that epoch's metrics (e.g. to write
        a checkpoint). ``progress`` shows a bar per epoch, ``verbose`` prints a line per epoch.

        In a ``torch.distributed`` process group (:mod:`pyrovae.infer.distributed`) every process
        calls ``fit`` with the same arguments: ``batch_size`` is the *global* batch, shared out
        over the processes, the gradients are summed, the metrics are those of all processes'
        rows, and only rank 0 shows progress and prints; ``callback`` runs on every process
        (write files on rank 0 only, ``trainer.world.main``).
        """
        _require(batch_size >= 1, f"batch_size= must be >= 1, not {batch_size}")
        _require(epochs >= 0, f"epochs= must be >= 0, not {epochs}")
        if self.optimizer is None:
            self.world = self._find_world()
        if self.world is not None:
            _require(batch_size >= self.world.size,
                     f"batch_size= is the global batch, shared out over the {self.world.size} processes; it must "
                     f"be at least {self.world.size}, not {batch_size}")
            progress, verbose = progress and self.world.main, verbose and self.world.main
        device = torch.device(device) if device is not None else None
        source = self._prepare(data)
        heldout_batch = None
        if heldout is not None:
            heldout_batch = as_tensors(self._prepare(heldout, heldout=True), heldout_generator(seed), device,
                                       "held-out data")
            self._check(heldout_batch, "held-out data")
        start_epoch = self.epoch + 1
        first = as_tensors(source, _epoch_generator(seed, start_epoch), device, "training data")
        self._check(first, "training data")
        if self.epoch == 0 and not self.history:
            pyro.set_rng_seed(seed)
        # the next epoch's redraw (dynamic binarisation: 47 M uniforms for MNIST) runs in a thread
        # beside this epoch's steps, as a DataLoader worker would; it holds one more copy of the data
        with _stoppable(), ThreadPoolExecutor(1, thread_name_prefix="pyrovae-redraw") as redraws:
            return self._fit_epochs(source, first, heldout_batch, start_epoch, epochs, batch_size, seed, device,
                                    progress, verbose, callback, max_seconds, redraws)

    def _fit_epochs(self, source, first, heldout_batch, start_epoch, epochs, batch_size, seed, device, progress,
                    verbose, callback, max_seconds, redraws) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        fresh = getattr(source, "fresh_each_epoch", False)
        upcoming = None  # the next epoch's data, drawing
        began = time.perf_counter()
        recent: deque[float] = deque(maxlen=DIVERGENCE_WINDOW)  # per-datapoint losses of the last steps
        world = self.world
        for epoch in range(start_epoch, epochs + 1):
            late = max_seconds is not None and time.perf_counter() - began >= max_seconds
            if late if world is None else any_rank(world, late):  # all processes stop, or none
                break
            batch = upcoming.result() if epoch != start_epoch and fresh else first
            upcoming = None
            if isinstance(self._loss, TracedLoss):
                self._loss.recheck()  # a callback may have changed a number the graph froze
            order_gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            n = batch[0].shape[0]
            steps = math.ceil(n / batch_size)
            bar = tqdm(total=steps, disable=not progress, desc=f"epoch {epoch}/{epochs}", leave=False)
            start, total = time.perf_counter(), torch.zeros((), dtype=torch.float64)
            if fresh and epoch < epochs:  # the same values as drawn then: seeded by (seed, epoch + 1)
                upcoming = redraws.submit(as_tensors, source, _epoch_generator(seed, epoch + 1), device)
            batches = getattr(source, "minibatches", minibatches)  # a source's own batching (text: by length)
            parts = ((part, part[0].shape[0]) for part in batches(batch, batch_size, order_gen))
            if world is not None:  # every process its own noise, from (seed, epoch, rank): resumable with any world
                pyro.set_rng_seed(rank_seed(seed, epoch, world.rank))
                parts = _shares(parts, world)
            for i, (part, rows) in enumerate(parts):
                try:
                    loss = self.step(*part)
                    loss = loss.double().cpu()
                    self._check_divergence(loss.item() / rows, recent)  # the global loss: the same decision
                except TrainingError as err:
                    raise TrainingError(f"epoch {epoch}, step {i + 1}: {err}") from None
                total += loss
                if world is None:
                    _stop_if_requested()
                elif self._agreed_stop:  # a stop request that the step's all-reduce told every process
                    _stop(now=True)
                if i % 20 == 19 or i == steps - 1:
                    bar.set_postfix(loss=f"{total.item() / min(n, (i + 1) * batch_size):.2f}")
                bar.update(1)
            bar.close()
            if upcoming is not None:
                upcoming.exception()  # drawn within the epoch: callbacks and held-out bounds run alone
            self.scheduler.step()
            self.epoch = epoch
            record: dict[str, Any] = {
                "epoch": epoch,
                "objective": self.objective_name,
                "train_bound": -total.item() / n,
                "seconds": time.perf_counter() - start,
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            if self._weighted(batch):
                record["objective"] += ", weighted"
                record["train_elbo"] = self._bound(tuple(t[:MONITOR_ROWS] for t in batch), self.default_bound(), 1,
                                                   1000, seed)
            if heldout_batch is not None:
                record["heldout_elbo"] = self._bound(heldout_batch, self.default_bound(), 1, 1000, seed)
                record.update(self._heldout_metrics(heldout_batch, seed))
                record.update(self._active_units(heldout_batch, seed))
            self.history.append(record)
            if verbose:
                tqdm.write(_format_record(record))
            if callback is not None:
                with together(world, f"in the callback after epoch {epoch}"):
                    callback(self, record)
            if world is None:
                _stop_if_requested()
            elif any_rank(world, _stop_requested):
                _stop(now=True)
        return self.history

    def _heldout_metrics(self, batch: tuple[torch.Tensor, ...], seed: int) -> dict[str, float]:
        """The owner's ``heldout_metrics(*batch)`` (e.g. a classifier's accuracy), with its own
        random numbers so that it leaves the course of training unchanged."""
        metrics = getattr(self._owner, "heldout_metrics", None)
        if metrics is None:
            return {}
        with torch.random.fork_rng(devices=cuda_devices(batch)), torch.no_grad():
            pyro.set_rng_seed(seed)
            return {k: float(v) for k, v in metrics(*batch).items()}

    def _active_units(self, batch: tuple[torch.Tensor, ...], seed: int) -> dict[str, int]:
        """``{"active_units": count}`` on up to 1,000 held-out rows, warning at posterior collapse
        (:class:`pyrovae.diagnostics.CollapseMonitor`: one guide pass, its own random numbers);
        ``{}`` for a guide without continuous reparameterised latent sites in the data plate."""
        from ..diagnostics import CollapseMonitor  # here: the diagnostics module is built on this package

        if self._collapse is None:
            self._collapse = CollapseMonitor()
        if self.world is not None and not self.world.main:  # the same warning from every process: rank 0's
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self._collapse.check(self.guide, batch, self.epoch, seed)
        return self._collapse.check(self.guide, batch, self.epoch, seed)

    def _weighted(self, batch) -> bool:
        """Whether the objective is not the ELBO: a schedule, a ``poutine.scale`` != 1, or an
        objective that says so (``weighted = True``, e.g. a capacity objective)."""
        if self.schedules or getattr(self.objective, "weighted", False):
            return True
        return bool(inspect_pair(self.model, self.guide, *(t[:16] for t in batch)).scaled)

    def _prepare(self, data, heldout: bool = False):
        """The owner's ``prepare_data`` (data space, dtypes, labels) for images and single tensors;
        ``heldout=True`` is passed on to a ``prepare_data`` that takes it (a semi-supervised model
        observes the training set's few labels, and scores held-out data by ``p(x)``)."""
        if self.prepare_data is not None and (
            isinstance(data, (ImageData, np.ndarray)) or torch.is_tensor(data)
        ):
            return prepare(self.prepare_data, data, heldout)
        return data

    def _check(self, batch: tuple[torch.Tensor, ...], what: str) -> None:
        """Data checks before any step: ``check_data``, the pair's signature against the batch,
        then one validated run of the pair on a few rows, so that e.g. grey values under a
        Bernoulli likelihood are reported here rather than from inside torch mid-training."""
        rows = tuple(t[:16] for t in batch)
        for role, fn in (("model", self.model), ("guide", self.guide)):
            _check_signature(fn, role, rows, what)
        if self.check_data is not None:
            self.check_data(*batch, what=what)
        with pyro.validation_enabled(True), poutine.block(), torch.no_grad(), \
                torch.random.fork_rng(cuda_devices(batch)):
            try:
                guide_trace = poutine.trace(self.guide).get_trace(*rows)
                model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace))
                model_trace.get_trace(*rows).compute_log_prob()
            except ValueError as err:
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()][:2]
                reason = " ".join(lines).split(", but found invalid values")[0]
                raise DataError(
                    f"the model rejects the {what}: {reason}. Check that the data lie in the "
                    "support of the likelihood (e.g. binarise images for a Bernoulli)"
                ) from None
            except RuntimeError as err:  # torch's size and dtype errors inside the pair
                raise DataError(
                    f"the model/guide pair fails on the first rows of the {what}: {first_line(err)}. Check the "
                    "tensors' shapes and dtypes against what the model and guide expect"
                ) from None

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Parameters by name, optimiser and schedule state, epoch, step, factors, history and
        RNG state: plain tensors and containers, for ``torch.load(weights_only=True)``."""
        if self.optimizer is None:
            raise RuntimeError("nothing to save before the first step (call setup(batch))")
        return {
            "params": {n: p.detach().clone() for n, p in zip(self.param_names, self.params)},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "steps": self.steps,
            "factors": {n: t.detach().clone() for n, t in factors().items()},
            "history": [dict(r) for r in self.history],
            "rng": torch.get_rng_state(),
            "rng_device": rng_state(self.params[0]) if self.params[0].is_cuda else None,
        }

    def load_state_dict(self, state: dict[str, Any], *batch: torch.Tensor) -> None:
        """Restore :meth:`state_dict` output; ``batch`` is used to find the parameters."""
        self.setup(*batch)
        missing = set(self.param_names) - set(state["params"])
        if missing:
            raise ValueError(f"checkpoint lacks parameters {sorted(missing)}")
        with torch.no_grad():
            for name, p in zip(self.param_names, self.params):
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.steps = int(state.get("steps", 0))
        for name, value in state.get("factors", {}).items():
            set_factor(name, float(value))
        self.history = [dict(r) for r in state["history"]]
        torch.set_rng_state(state["rng"].cpu())  # a checkpoint mapped to a GPU moves it
        if state.get("rng_device") is not None and self.params[0].is_cuda:
            set_rng_state(self.params[0], state["rng_device"].cpu())


_running_fits = 0
_stop_requested = False


def request_stop() -> bool:
    """Ask the running :meth:`Trainer.fit` to stop after its current step, raising
    ``KeyboardInterrupt`` there (the command line's SIGTERM handler calls this). An interrupt
    raised at an arbitrary bytecode can land inside a context manager's entry and leave global
    state half-changed; between two steps nothing is. Returns ``False`` when no fit runs or a stop
    is already pending, so that the caller interrupts at once instead."""
    global _stop_requested
    if _running_fits == 0 or _stop_requested:
        return False
    _stop_requested = True
    return True


def _stop_if_requested() -> None:
    _stop(_stop_requested)


def _stop(now: bool) -> None:
    global _stop_requested
    if now:
        _stop_requested = False
        raise KeyboardInterrupt


def _shares(parts, world: World):
    """``(this process's rows, global batch size)`` of each ``(global minibatch, size)``: every
    process draws the same global batches, as one process would, and keeps its own share."""
    for part, rows in parts:
        yield tuple(shard(t, world) for t in part), rows


class _stoppable:
    """While a fit runs, :func:`request_stop` defers to it."""

    def __enter__(self) -> None:
        global _running_fits
        _running_fits += 1

    def __exit__(self, *exc) -> None:
        global _running_fits, _stop_requested
        _running_fits -= 1
        if _running_fits == 0:
            _stop_requested = False


def train(
    model: Callable,
    guide: Callable,
    data,
    heldout=None,
    *,
    epochs: int = DEFAULTS.epochs,
    batch_size: int = DEFAULTS.batch_size,
    seed: int = DEFAULTS.seed,
    progress: bool = True,
    verbose: bool = True,
    device: torch.device | str | None = None,
    callback: Callable[[Trainer, dict[str, Any]], None] | None = None,
    max_seconds: float | None = None,
    **trainer_options,
) -> Trainer:
    """Fit any model/guide pair by SVI; ``trainer_options`` go to :class:`Trainer`.

    ``data`` and ``heldout``: a tensor, a tuple of tensors sharing dim 0 (``model(x, y)``),
    or an :class:`~pyrovae.data.ImageData`. Returns the trainer, whose ``history`` holds
    per-epoch metrics in nats per datapoint.

    Example:

    >>> import pyro, pyro.distributions as dist, torch, pyrovae
    >>> pyro.clear_param_store()
    >>> def model(x):
    ...     loc = pyro.param("loc", torch.zeros(()))
    ...     with pyro.plate("data", x.shape[0]):
    ...         z = pyro.sample("z", dist.Normal(loc, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", x.shape[0]):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))
    >>> x = torch.randn(200, generator=torch.Generator().manual_seed(0)) + 3.0
    >>> trainer = pyrovae.train(model, guide, x[:150], x[150:], epochs=2, batch_size=50, progress=False,
    ...                         verbose=False)
    >>> trainer.epoch, len(trainer.history), "heldout_elbo" in trainer.history[-1]
    (2, 2, True)
    """
    trainer = Trainer(model, guide, **trainer_options)
    trainer.fit(
        data, heldout, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
        progress=progress, verbose=verbose, callback=callback, max_seconds=max_seconds,
    )
    return trainer


def _adam(params: list[torch.Tensor], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused where torch has the kernel for these parameters (CPU and CUDA
    floating tensors): the same update, rounded differently in the last bits (a checkpoint
    remembers which one it used, so a resumed run continues with the same)."""
    if all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, ValueError):  # a torch without the kernel for this device or dtype
            pass
    return torch.optim.Adam(params, lr=lr)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _as_batch(batch: tuple) -> tuple[torch.Tensor, ...]:
    """``step(x)``, ``step(x, y)`` and ``step((x, y))`` all give ``(x, ...)``."""
    if len(batch) == 1 and isinstance(batch[0], (tuple, list)):
        batch = tuple(batch[0])
    if not batch:
        raise DataError("a batch needs at least one tensor")
    return batch


def _check_signature(fn: Callable, role: str, rows: tuple, what: str) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables have none
        return
    try:
        signature.bind(*rows)
    except TypeError as err:
        name = getattr(fn, "__qualname__", role)
        raise DataError(
            f"the {what} gives {len(rows)} tensor(s) per batch, but the {role} {name}{signature} "
            f"cannot take them ({err}). Pass data with one tensor per positional argument: a "
            "tuple (x, y), or ImageData.with_labels() for model(x, y)"
        ) from None


def prepare(prepare_data: Callable, data, heldout: bool = False):
    """``prepare_data(data, heldout=heldout)``, or ``prepare_data(data)`` for one without that keyword."""
    try:
        takes = "heldout" in inspect.signature(prepare_data).parameters
    except (TypeError, ValueError):
        takes = False
    return prepare_data(data, heldout=heldout) if takes else prepare_data(data)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _format_record(r: dict[str, Any]) -> str:
    text = f"epoch {r['epoch']:>4}  train {r['objective']} {r['train_bound']:9.3f}"
    if "train_elbo" in r:
        text += f"  train elbo {r['train_elbo']:9.3f}"
    if "heldout_elbo" in r:
        text += f"  held-out elbo {r['heldout_elbo']:9.3f}"
    return text + f"  nats/datapoint  ({r['seconds']:.1f} s)"
