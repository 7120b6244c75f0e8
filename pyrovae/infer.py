r"""Stochastic variational inference for any Pyro model/guide pair.

:class:`Trainer` maximises a lower bound on :math:`\log p(x)` over minibatches:

* ``"elbo"`` -- :math:`E_q[\log p(x, z) - \log q(z \mid x)]` by Pyro's ``Trace_ELBO``
  (reparameterised gradients; score-function terms for non-reparameterisable sites);
* ``"meanfield"`` -- the same bound by ``TraceMeanField_ELBO``, with
  :math:`\mathrm{KL}(q \,\|\, p)` in closed form where Pyro has a formula (Monte Carlo otherwise);
* ``"iwae"`` -- the importance-weighted bound :math:`\mathcal{L}_K` (:class:`~pyrovae.importance.IWAE`).

``num_particles`` > 1 averages (ELBO) or importance-weights (IWAE) that many samples, vectorised
under one plate.

**Sign convention.** Every number we report is a *bound* in nats per datapoint: higher is
better and it sits below :math:`\log p(x)` (so it is negative for discrete data). The
optimiser minimises the loss, which is minus the bound summed over the minibatch.

The optimiser is ``torch.optim.Adam`` over every parameter the pair registers (with
``pyro.module`` or ``pyro.param``), found by one traced run: it is what ``pyro.optim.Adam``
wraps, applied once instead of once per parameter tensor. With ``jit=True`` the loss is
compiled by ``torch.jit.trace`` per input shape, which removes Pyro's per-step Python cost;
the compiled loss is checked against the eager one on the same random numbers and the
trainer falls back to eager (with a warning) if they differ.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from .data import DataError, ImageData, check_observations, heldout_generator, minibatches
from .importance import IWAE, guess_max_plate_nesting

OBJECTIVES = ("elbo", "meanfield", "iwae")


class _TraceMeanField(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` whose loss ``torch.jit.trace`` can compile.

    Pyro's returns ``loss + (surrogate - surrogate.item())``; under a trace ``loss`` becomes a
    tensor and ``.item()`` a constant, so the compiled value is wrong (the gradient is not).
    The surrogate alone has the same value and gradient, as in Pyro's ``JitTraceMeanField_ELBO``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._differentiable_loss_particle(model_trace, guide_trace)[1] / self.num_particles
        return loss


def make_objective(
    name: str, num_particles: int = 1, max_plate_nesting: int | None = None
) -> Any:
    """The Pyro ELBO object (or :class:`IWAE`) for ``name``, particles vectorised."""
    if num_particles < 1:
        raise ValueError("num_particles must be >= 1")
    if name == "iwae":
        return IWAE(num_particles, max_plate_nesting=max_plate_nesting)
    cls = {"elbo": Trace_ELBO, "meanfield": _TraceMeanField}.get(name)
    if cls is None:
        raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
    return cls(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=max_plate_nesting if max_plate_nesting is not None else float("inf"),
    )


class _JitLoss:
    """``fn(*tensors)`` compiled by ``torch.jit.trace``, one graph per input shape.

    The parameters are passed as explicit inputs so that the traced graph reads the live
    tensors (which the optimiser updates in place) instead of baking them in as constants.
    A trace freezes Python control flow, so each graph is checked against the eager loss,
    on the same random numbers, on the tracing input and again on the next input of that
    shape (data-dependent branches show up there); on a mismatch it warns and stays eager.
    """

    VERIFY_CALLS = 2

    def __init__(self, fn: Callable, params: list[torch.Tensor]) -> None:
        self.fn, self.params = fn, params
        self.graphs: dict[tuple, Callable] = {}
        self.checks: dict[tuple, int] = {}
        self.failed = False

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.fn(*tensors)
        key = tuple((t.shape, t.dtype, t.device) for t in tensors)
        if key not in self.graphs:
            self.graphs[key] = self._trace(tensors)
            self.checks[key] = 0
        graph = self.graphs[key]
        if graph is not None and self.checks[key] < self.VERIFY_CALLS:
            self.checks[key] += 1
            self._verify(graph, tensors)
        out = None if graph is None or self.failed else self._run(graph, tensors)
        return self.fn(*tensors) if out is None else out

    def _run(self, graph, tensors) -> torch.Tensor | None:
        """The compiled loss, or ``None`` (and eager from now on) when the graph fails,
        e.g. on a shape the trace froze."""
        try:
            return graph(*self.params, *tensors)
        except RuntimeError as err:
            self._give_up(f"the jit-traced loss failed ({err}). Training without jit.")
            return None

    def _give_up(self, message: str) -> None:
        warnings.warn(message, stacklevel=5)
        self.failed = True

    def _trace(self, tensors) -> Callable | None:
        n = len(self.params)

        def flat(*inputs):
            return self.fn(*inputs[n:])

        # Tracing runs the loss once; fork the generator so that compiling (e.g. after a
        # resume) does not shift the random numbers training sees.
        with warnings.catch_warnings(), pyro.validation_enabled(False), poutine.block(), \
                torch.random.fork_rng(devices=_devices(tensors[0])):
            warnings.simplefilter("ignore")  # Pyro's tracer warnings and jit's deprecation notice
            try:
                return torch.jit.trace(flat, (*self.params, *tensors), check_trace=False)
            except Exception as err:  # a pair tracing cannot follow: stay eager
                failure = err
        # outside the block above, which silences warnings, so that the user sees this one
        self._give_up(f"jit tracing failed, training without it ({failure})")
        return None

    def _verify(self, graph, tensors) -> None:
        """Give up on ``graph`` unless it matches the eager loss on the same random numbers."""
        with torch.random.fork_rng(devices=_devices(tensors[0])), torch.no_grad():
            state = _rng_state(tensors[0])
            with poutine.block():
                eager = self.fn(*tensors)
            _set_rng_state(tensors[0], state)
            compiled = self._run(graph, tensors)
        if compiled is not None and not torch.allclose(eager, compiled, rtol=1e-4, atol=1e-3):
            self._give_up(
                "the jit-traced loss differs from the eager one on the same random numbers "
                f"({compiled.item():.6g} vs {eager.item():.6g}); the model or guide probably has "
                "data-dependent Python control flow. Training without jit."
            )


class TrainingError(RuntimeError):
    """Training diverged (non-finite loss)."""


_DIVERGED = "training diverged: lower the learning rate (--lr) or clip gradients (--clip-norm)"


class Trainer:
    """SVI with minibatches, epochs, a progress bar and held-out bounds, for any pair.

    :param model, guide: Pyro functions ``model(x)``, ``guide(x)`` (the first argument is a
        minibatch of rows of the data).
    :param objective: ``"elbo"``, ``"meanfield"`` or ``"iwae"``.
    :param num_particles: samples per datapoint (vectorised).
    :param lr: Adam's learning rate; ``lr_decay`` multiplies it after every epoch.
    :param clip_norm: clip the global gradient norm to this value (``None``: no clipping).
    :param jit: compile the loss with ``torch.jit.trace`` (see the module docstring).
    :param check_data: a callable that raises :class:`~pyrovae.data.DataError` on bad data
        (e.g. ``VAE.check_data``); called on all data before training starts.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        *,
        objective: str = "elbo",
        num_particles: int = 1,
        lr: float = 1e-3,
        lr_decay: float = 1.0,
        clip_norm: float | None = None,
        jit: bool = False,
        max_plate_nesting: int | None = None,
        check_data: Callable[[torch.Tensor, str], None] | None = None,
    ) -> None:
        self.model, self.guide = model, guide
        self.objective_name, self.num_particles = objective, num_particles
        self.objective = make_objective(objective, num_particles, max_plate_nesting)
        self.lr, self.lr_decay, self.clip_norm, self.jit = lr, lr_decay, clip_norm, jit
        self.max_plate_nesting = max_plate_nesting
        self.check_data = check_data
        self.param_names: list[str] = []
        self.params: list[torch.Tensor] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._loss: Callable | None = None
        self.epoch = 0
        self.history: list[dict[str, float]] = []

    # ---------------------------------------------------------------- set-up

    def setup(self, x: torch.Tensor) -> None:
        """Find the pair's parameters on one batch and build the optimiser (done once)."""
        if self.optimizer is not None:
            return
        with torch.random.fork_rng(_devices(x)):  # leave the random numbers to training
            self._setup(x)

    def _setup(self, x: torch.Tensor) -> None:
        if self.max_plate_nesting is None:
            self.max_plate_nesting = guess_max_plate_nesting(self.model, self.guide, x)
            self.objective = make_objective(
                self.objective_name, self.num_particles, self.max_plate_nesting
            )
        with poutine.trace(param_only=True) as capture:
            self.objective.differentiable_loss(self.model, self.guide, x)
        store = pyro.get_param_store()
        self.param_names = list(capture.trace.nodes)
        self.params = [store.get_param(n).unconstrained() for n in self.param_names]
        if not self.params:
            raise ValueError("the model and guide register no parameters (pyro.module/param)")
        self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, self.lr_decay)

        def loss(*tensors):
            return self.objective.differentiable_loss(self.model, self.guide, *tensors)

        self._loss = _JitLoss(loss, self.params) if self.jit else loss

    # ---------------------------------------------------------------- steps and epochs

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One gradient step on the minibatch ``x``; returns the (detached) loss tensor."""
        self.setup(x)
        try:
            loss = self._loss(x)
        except ValueError as err:  # distribution validation meets NaN parameters
            if all(torch.isfinite(p).all() for p in self.params):
                raise
            raise TrainingError(f"parameters became NaN/inf ({err}); {_DIVERGED}") from None
        if not torch.isfinite(loss):
            raise TrainingError(f"the loss became {loss.item()}; {_DIVERGED}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        return loss.detach()

    def evaluate(
        self,
        x: torch.Tensor,
        objective: str = "elbo",
        num_particles: int = 1,
        batch_size: int = 1000,
        seed: int = 0,
    ) -> float:
        """A bound (default: the ELBO) in nats per datapoint on ``x``, with a fixed seed.

        Uses its own random numbers (``seed``) and leaves the global generator as it was, so
        evaluating does not change the course of training.
        """
        bound = make_objective(objective, num_particles, self.max_plate_nesting)
        total = 0.0
        with torch.random.fork_rng(devices=_devices(x)), torch.no_grad():
            pyro.set_rng_seed(seed)
            for xb in x.split(batch_size):
                total += bound.loss(self.model, self.guide, xb)
        return -total / x.shape[0]

    def fit(
        self,
        data: torch.Tensor | ImageData,
        heldout: torch.Tensor | ImageData | None = None,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        seed: int = 0,
        device: torch.device | str | None = None,
        progress: bool = True,
        verbose: bool = True,
        callback: Callable[[Trainer, dict[str, float]], None] | None = None,
        max_seconds: float | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``self.epoch == epochs`` (continues a resumed trainer), or until the
        first epoch end after ``max_seconds`` of wall time, for fixed compute budgets.

        ``data`` is a tensor of observations or an :class:`~pyrovae.data.ImageData`, whose
        random data spaces (dynamic binarisation, dequantisation) are redrawn every epoch
        from a generator seeded by ``(seed, epoch)``, so a resumed run sees the same data.
        The held-out set is drawn once with a fixed seed. After each epoch, ``callback``
        gets the trainer and that epoch's metrics (e.g. to write a checkpoint). ``progress``
        shows a bar per epoch, ``verbose`` prints one line of metrics per epoch.
        """
        device = torch.device(device) if device is not None else None
        heldout_x = None
        if heldout is not None:
            heldout_x = _observe(heldout, heldout_generator(seed), device)
            self._check(heldout_x, "held-out data")
        start_epoch = self.epoch + 1
        first = _observe(data, _epoch_generator(seed, start_epoch), device)
        self._check(first, "training data")
        if self.epoch == 0 and not self.history:
            pyro.set_rng_seed(seed)
        from tqdm.auto import tqdm

        began = time.perf_counter()
        for epoch in range(start_epoch, epochs + 1):
            if max_seconds is not None and time.perf_counter() - began >= max_seconds:
                break
            x = first if epoch == start_epoch else _observe(data, _epoch_generator(seed, epoch), device)
            order_gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
            steps = math.ceil(x.shape[0] / batch_size)
            bar = tqdm(
                total=steps, disable=not progress, desc=f"epoch {epoch}/{epochs}", leave=False
            )
            start, total = time.perf_counter(), torch.zeros((), dtype=torch.float64)
            for i, xb in enumerate(minibatches(x, batch_size, order_gen)):
                try:
                    loss = self.step(xb)
                except TrainingError as err:
                    raise TrainingError(f"epoch {epoch}, step {i + 1}: {err}") from None
                total += loss.double().cpu()
                if i % 20 == 19 or i == steps - 1:
                    bar.set_postfix(loss=f"{total.item() / min(x.shape[0], (i + 1) * batch_size):.2f}")
                bar.update(1)
            bar.close()
            train_bound = -total.item() / x.shape[0]
            self.scheduler.step()
            self.epoch = epoch
            record = {
                "epoch": epoch,
                "train_bound": train_bound,
                "seconds": time.perf_counter() - start,
                "lr": self.optimizer.param_groups[0]["lr"],
            }
            if heldout_x is not None:
                record["heldout_elbo"] = self.evaluate(heldout_x, seed=seed)
            self.history.append(record)
            if verbose:
                tqdm.write(_format_record(record, self.objective_name))
            if callback is not None:
                callback(self, record)
        return self.history

    def _check(self, x: torch.Tensor, what: str) -> None:
        """Data checks before any step: shapes and finiteness, ``check_data``, then one
        validated run of the pair on a few rows, so that e.g. grey values under a Bernoulli
        likelihood are reported here rather than from inside torch mid-training."""
        check_observations(x, what=what)
        if self.check_data is not None:
            self.check_data(x, what)
        rows = x[:16]
        with pyro.validation_enabled(True), poutine.block(), torch.no_grad(), \
                torch.random.fork_rng(_devices(x)):
            try:
                guide_trace = poutine.trace(self.guide).get_trace(rows)
                model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace))
                model_trace.get_trace(rows).compute_log_prob()
            except ValueError as err:
                lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()][:2]
                reason = " ".join(lines).split(", but found invalid values")[0]
                raise DataError(
                    f"the model rejects the {what}: {reason}. Check that the data lie in the "
                    "support of the likelihood (e.g. binarise images for a Bernoulli)"
                ) from None

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Parameters by name, optimiser and schedule state, epoch, history and RNG state."""
        if self.optimizer is None:
            raise RuntimeError("nothing to save before the first step (call setup(x))")
        return {
            "params": {n: p.detach().clone() for n, p in zip(self.param_names, self.params)},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": [dict(r) for r in self.history],
            "rng": torch.get_rng_state(),
            "rng_device": _rng_state(self.params[0]) if self.params[0].is_cuda else None,
        }

    def load_state_dict(self, state: dict[str, Any], x: torch.Tensor) -> None:
        """Restore :meth:`state_dict` output; ``x`` is a batch used to find the parameters."""
        self.setup(x)
        missing = set(self.param_names) - set(state["params"])
        if missing:
            raise ValueError(f"checkpoint lacks parameters {sorted(missing)}")
        with torch.no_grad():
            for name, p in zip(self.param_names, self.params):
                p.copy_(state["params"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = [dict(r) for r in state["history"]]
        torch.set_rng_state(state["rng"].cpu())  # a checkpoint mapped to a GPU moves it
        if state.get("rng_device") is not None and self.params[0].is_cuda:
            _set_rng_state(self.params[0], state["rng_device"].cpu())


def train(
    model: Callable,
    guide: Callable,
    data: torch.Tensor | ImageData,
    heldout: torch.Tensor | ImageData | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    verbose: bool = True,
    device: torch.device | str | None = None,
    callback: Callable[[Trainer, dict[str, float]], None] | None = None,
    **trainer_options,
) -> Trainer:
    """Fit any model/guide pair by SVI; ``trainer_options`` go to :class:`Trainer`.

    Returns the trainer, whose ``history`` holds per-epoch metrics in nats per datapoint.
    """
    trainer = Trainer(model, guide, **trainer_options)
    trainer.fit(
        data, heldout, epochs=epochs, batch_size=batch_size, seed=seed, device=device,
        progress=progress, verbose=verbose, callback=callback,
    )
    return trainer


def _observe(data, generator, device) -> torch.Tensor:
    if isinstance(data, ImageData):
        return data.observations(generator, device=device)
    if not torch.is_tensor(data):
        raise DataError(f"data must be a torch.Tensor or ImageData, got {type(data).__name__}")
    return data.to(device) if device is not None else data


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _devices(x: torch.Tensor) -> list[int]:
    return [x.device.index or 0] if x.is_cuda else []


def _rng_state(x: torch.Tensor) -> torch.Tensor:
    """The state of the generator that draws ``x``'s device's random numbers."""
    return torch.cuda.get_rng_state(x.device) if x.is_cuda else torch.get_rng_state()


def _set_rng_state(x: torch.Tensor, state: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.set_rng_state(state, x.device)
    else:
        torch.set_rng_state(state)


def _format_record(r: dict[str, float], objective: str) -> str:
    text = f"epoch {r['epoch']:>4}  train {objective} {r['train_bound']:9.3f}"
    if "heldout_elbo" in r:
        text += f"  held-out elbo {r['heldout_elbo']:9.3f}"
    return text + f"  nats/datapoint  ({r['seconds']:.1f} s)"
