r"""Chunk-parallel evaluation: chunks of datapoints in forked single-thread worker processes.

An estimate of :math:`\log p(x_i)` depends on row :math:`i` alone, so the chunks of rows that
:func:`~pyrovae.infer.log_marginal_likelihood` walks through can run side by side. On a CPU,
one torch thread per chunk in each of :math:`W` processes uses the cores better than :math:`W`
threads inside every operation: the matrix products scale with threads either way, the
elementwise passes and Pyro's per-trace Python work less (5–22% faster on our 2-core CPU,
docs/benchmarks.md).

* The workers are **forked**, so the model, the guide (a user's closures), their parameters and
  the data reach them as they are in the caller's memory, without pickling; only the
  per-datapoint summaries travel back.
* By default (``workers=None``) the first chunk runs in the caller's process and is timed; the
  rest go to one worker per torch thread only if they would take more than a second at its
  pace, so small evaluations never pay for a fork.
* Chunk :math:`j` draws its random numbers from its own seed, ``base + j``, where ``base`` is
  drawn once from torch's global generator: the estimate is the same for any number of
  workers (up to the float rounding of a product computed on one thread or two), and
  ``pyro.set_rng_seed`` makes it reproducible as before.
* A worker that fails raises its error in the caller; a worker that dies (killed, out of
  memory) raises :class:`WorkerError` at once instead of leaving the caller waiting; Ctrl-C
  stops the workers. The warnings a worker raises are shown in the caller, each message once,
  under the caller's warning filters.
"""

from __future__ import annotations

import multiprocessing
import pickle
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import numpy as np
import torch

from ..memory import reuse_freed_memory
from .handlers import cuda_devices

T = TypeVar("T")
MIN_PARALLEL_SECONDS = 1.0  # below about this much work, forking costs more than it saves
_JOB: tuple | None = None


class WorkerError(RuntimeError):
    """An evaluation worker process died before returning its chunk."""


def _worker_count(workers: int | None, num_chunks: int, tensors: tuple) -> int | None:
    """``workers`` checked and capped at the number of chunks; for ``None`` (automatic), ``1`` where
    forking is not an option (CUDA tensors, a ``torch.distributed`` process, no fork, one torch
    thread or one chunk), else ``None``: decided after timing the first chunk."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a whole number >= 1 or None (automatic), not {workers!r}")
        if workers > 1 and cuda_devices(tensors):
            raise ValueError("workers > 1 runs chunks in forked CPU processes; with CUDA tensors pass workers=1")
        if workers > 1 and not fork_available():
            raise ValueError("workers > 1 needs the 'fork' start method, which this platform lacks; pass workers=1")
        return max(1, min(workers, num_chunks))
    if cuda_devices(tensors) or not fork_available() or min(torch.get_num_threads(), num_chunks) < 2:
        return 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return 1  # a rank's cores are its own; forking a process in a collective group is not safe
    return None


def fork_available() -> bool:
    """Whether worker processes can be forked here (not on Windows, not inside a daemon process)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def map_chunks(fn: Callable[[int, object], T], num_chunks: int, *, workers: int | None, tensors: tuple = (),
               bar=None, units: Callable[[int], int] = lambda j: 1) -> list[T]:
    """``[fn(j, bar) for j in range(num_chunks)]``, each call seeded from its own chunk seed; the
    caller's random stream advances by one draw (``tensors``: the data, for their CUDA devices).

    With ``workers > 1`` the calls run in that many forked single-thread processes and get
    ``bar=None``; the progress bar then advances by ``units(j)`` as chunk ``j`` comes back. With
    ``workers=None`` the first chunk runs here, and the rest go to one worker per torch thread if
    they would take more than ``MIN_PARALLEL_SECONDS`` (1 s) at its pace, else here too.
    A ``workers`` that is not a whole number >= 1, or > 1 where forking is impossible, is refused
    before any chunk runs.
    """
    workers = _worker_count(workers, num_chunks, tensors)
    base = int(torch.randint(0, 2**62, ()).item())
    devices = cuda_devices(tensors)
    with torch.random.fork_rng(devices=devices):
        out, todo = [], range(num_chunks)
        if workers is None:
            began = time.perf_counter()
            out.append(_call(fn, 0, base, devices, bar))
            todo = range(1, num_chunks)
            slow = (time.perf_counter() - began) * len(todo) >= MIN_PARALLEL_SECONDS
            workers = min(torch.get_num_threads(), len(todo)) if slow else 1
        if workers > 1:
            return out + _in_workers(fn, todo, workers, base, bar, units)
        return out + [_call(fn, j, base, devices, bar) for j in todo]


def _call(fn, j: int, base: int, devices: list[int], bar):
    _seed(base + j, devices)
    return fn(j, bar)


def _seed(seed: int, devices: list[int]) -> None:
    # the generators in use only: torch.manual_seed also queues a seed for every CUDA and XPU
    # device, recording a stack trace each time, ~3 ms -- as long as a chunk of IS takes
    torch.default_generator.manual_seed(seed)
    for d in devices:
        torch.cuda.default_generators[d].manual_seed(seed)


def _in_workers(fn, chunks: range, workers: int, base: int, bar, units) -> list:
    context = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        # Python >= 3.12 warns on any fork of a process with threads (torch's pool); the
        # workers only run torch on one thread of their own and never touch those threads
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=((fn, base),))
        try:
            futures = {pool.submit(_run_chunk, j): j for j in chunks}
            out, shown = {}, set()
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    j = futures[future]
                    result, caught = future.result()
                    out[j] = _tensors(result)
                    _show_once(caught, shown)
                    if bar is not None:
                        bar.update(units(j))
            pool.shutdown()
            return [out[j] for j in chunks]
        except BrokenProcessPool as e:
            _stop(pool)
            raise WorkerError(
                "an evaluation worker process died (killed, or out of memory?); pass workers=1 to "
                "evaluate in this process, or a smaller chunk_size"
            ) from e
        except BaseException:
            _stop(pool)
            raise


def _stop(pool: ProcessPoolExecutor) -> None:
    # a running chunk (minutes of AIS) would otherwise finish first; Python < 3.14 has no public
    # way to end the workers, and shutdown() drops its list of them, so take it before
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()


def _start_worker(job: tuple) -> None:
    global _JOB
    _JOB = job
    torch.set_num_threads(1)
    reuse_freed_memory()  # the worker's own heap, gone with it: no fresh pages for each chunk's tensors


def _run_chunk(j: int):
    """Chunk ``j``'s result and the warnings it raised, which the caller shows (each worker's
    stderr would show every worker's copy, and the caller's warning filters would not see them)."""
    fn, base = _JOB
    _seed(base + j, [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _arrays(fn(j, None))
    return result, [(str(w.message), _sendable(w.category), w.filename, w.lineno) for w in caught]


def _sendable(category: type[Warning]) -> type[Warning]:
    try:
        pickle.dumps(category)
        return category
    except Exception:  # a class defined in a function: its message still reaches the caller
        return UserWarning


def _show_once(caught: list, shown: set) -> None:
    for message, category, filename, lineno in caught:
        if (message, category) not in shown:
            shown.add((message, category))
            warnings.warn_explicit(message, category, filename, lineno)


# Results travel back as numpy arrays, pickled by value: torch's own reduction of a tensor hands
# its storage over as a file descriptor, and about seven of them per chunk stayed open in the
# caller (an evaluation of 3,761 sentences reached the 20,000-descriptor limit and failed).
def _arrays(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_arrays(v) for v in obj)
    return obj


def _tensors(obj):
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors(v) for v in obj)
    return obj
