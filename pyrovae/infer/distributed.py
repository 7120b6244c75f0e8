r"""Data-parallel training on ``torch.distributed``: one process per core or GPU, one model each.

Launch with the launcher torch ships (``torchrun``); :class:`~pyrovae.infer.Trainer` finds the
process group and trains data-parallel, ``pyrovae train`` joins the group torchrun describes::

    torchrun --standalone --nproc_per_node 2 -m pyrovae train --epochs 20      # 2 CPU processes, gloo
    torchrun --standalone --nproc_per_node 4 -m pyrovae train --device cuda    # 4 GPUs, nccl

**The batch is global.** ``batch_size`` is the number of rows of one optimisation step over
all processes together: every process draws the same per-epoch permutation
(``_epoch_generator``/order seeds of ``(seed, epoch)``), cuts it into the same global batches
and takes its own contiguous share of each (:func:`shard`, sizes differing by at most one row).
The loss is *summed* over rows, and gradients are *summed* over processes, so one step is the
gradient of the same global minibatch's loss as in one process: the learning rate needs no
rescaling for the number of processes, a run's data order does not depend on it, and a run
can be resumed with any number of processes. What differs is the noise: each process draws
its own (seeded by :func:`rank_seed` from ``(seed, epoch, rank)`` at every epoch start, so a
resumed distributed run repeats the uninterrupted one with the same number of processes).

**Agreement.** A collective that one process never reaches blocks the others until the
backend's timeout (30 minutes). So every decision to stop is taken together: each step's one
all-reduce carries, beside the gradients, the loss (a NaN on any process makes the global loss
NaN on all), a failure flag per process (an exception in one process's forward pass) and the
stop request (SIGTERM); epoch starts agree on the time budget, epoch ends on the callback's
success and on stop requests (:func:`together`). Every process then raises at the same point;
the ones that did not fail name the process that did.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` (> 1) data-parallel processes."""

    rank: int
    size: int

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints, and writes run folders and checkpoints."""
        return self.rank == 0


def current_world() -> World | None:
    """The initialised default process group as a :class:`World`; ``None`` without one, or with
    a group of one process (which trains exactly as without)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return World(dist.get_rank(), size) if size > 1 else None


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(timeout_minutes: float = 30.0) -> World | None:
    """Join the process group that torchrun describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``); ``None`` when not launched
    as one of several processes. Already initialised: that group.

    The backend is gloo for CPU tensors and, where CUDA is available, nccl for GPU tensors
    (``"cpu:gloo,cuda:nccl"``); each process then uses GPU ``LOCAL_RANK``, so that
    ``device="cuda"`` means its own GPU.
    """
    if not launched():
        return current_world()
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; install a build with it to use torchrun")
    global _joined
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        _joined = True
    return current_world()


_joined = False  # whether init_distributed made the group (and close_distributed may end it)


def close_distributed() -> None:
    """Leave the process group that :func:`init_distributed` joined; a group the caller made
    itself is the caller's to end."""
    global _joined
    if _joined and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _joined = False


def shard(rows: torch.Tensor, world: World) -> torch.Tensor:
    """This process's contiguous share of the rows of one global batch (shares differ by at most
    one row; a batch smaller than the world leaves some processes none)."""
    return rows.tensor_split(world.size)[world.rank]


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of process ``rank``'s noise in ``epoch`` (< 2**32, for numpy too): distinct per
    process, so that the processes do not draw the same noise for different rows."""
    digest = hashlib.sha256(f"pyrovae:{seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@dataclass
class StepResult:
    """The outcome of one step's all-reduce: the global loss and who failed or asked to stop."""

    loss: torch.Tensor
    failed_ranks: list[int]
    stop: bool


def all_reduce_step(world: World, params: list[torch.Tensor], loss: torch.Tensor, failed: bool,
                    stop: bool) -> StepResult:
    """Sum the gradients of ``params`` (in place) and the losses over all processes, in one
    all-reduce that also carries each process's failure flag and stop request.

    A process whose forward pass failed contributes zero gradients; a parameter without a
    gradient (an empty share) contributes zeros.
    """
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    device = params[0].device
    flags = torch.zeros(world.size + 2, dtype=dtype, device=device)
    flags[0] = loss.detach().to(device, dtype) if not failed else 0.0
    flags[1] = float(stop)
    flags[2 + world.rank] = float(failed)
    grads = [
        p.grad.reshape(-1).to(dtype) if p.grad is not None and not failed else torch.zeros(p.numel(), dtype=dtype,
                                                                                            device=device)
        for p in params
    ]
    buffer = torch.cat([*grads, flags])
    dist.all_reduce(buffer)
    offset = 0
    for p in params:
        chunk = buffer[offset:offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
    flags = buffer[offset:].cpu()
    return StepResult(flags[0].to(loss.dtype), [r for r in range(world.size) if flags[2 + r] > 0], bool(flags[1] > 0))


def any_rank(world: World, flag: bool) -> bool:
    """Whether ``flag`` holds on any process (every process gets the same answer)."""
    t = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_parameters(world: World, params: list[torch.Tensor]) -> None:
    """Give every process rank 0's parameter values (the same start, however each built its model)."""
    with torch.no_grad():
        for p in params:
            dist.broadcast(p, src=0)


def from_main(world: World | None, value):
    """Rank 0's ``value`` on every process (e.g. a run folder named after the time it started,
    which the processes would otherwise each name after their own clock)."""
    if world is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def failed_ranks(world: World, failed: bool) -> list[int]:
    """The ranks that report ``failed`` (one all-reduce; the same list on every process)."""
    t = torch.zeros(world.size, device=_collective_device())
    t[world.rank] = float(failed)
    dist.all_reduce(t)
    return [r for r in range(world.size) if t[r] > 0]


def peer_failure(ranks: list[int], world: World, what: str) -> Exception:
    """The error a process raises when other processes failed (their own errors are in their output)."""
    from .trainer import TrainingError  # here: the trainer imports this module

    who = "process" if len(ranks) == 1 else "processes"
    return TrainingError(
        f"rank {world.rank}: {who} {', '.join(map(str, ranks))} of {world.size} failed {what} (its error is in "
        "its own output); all processes stop"
    )


@contextlib.contextmanager
def together(world: World | None, what: str) -> Iterator[None]:
    """Run a block on every process and end all of them if it fails on any: a process whose
    block raises reports it before re-raising, the others raise :func:`peer_failure` instead of
    walking into a collective that the failed one never reaches. No-op outside a process group."""
    if world is None:
        yield
        return
    try:
        yield
    except Exception:
        failed_ranks(world, True)
        raise
    ranks = failed_ranks(world, False)
    if ranks:
        raise peer_failure(ranks, world, what)


def _collective_device() -> torch.device:
    """Where small control tensors live: the GPU for an nccl-only group, else the CPU (gloo)."""
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
