"""Data-parallel training on torch.distributed (gloo, CPU processes on this machine).

Each test starts real processes (torchrun, or ``multiprocessing`` spawn with a file store) and
joins them with a timeout, so that a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pyro
import pytest
import torch

import pyrovae
from pyrovae.data import minibatches
from pyrovae.infer import Trainer, make_objective
from pyrovae.infer.distributed import World, rank_seed, shard
from pyrovae.infer.trainer import _shares
from pyrovae.models.text import TextVAE
from pyrovae.text import bucket_minibatches, from_sentences

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TIMEOUT = 120  # seconds for a group of processes; each takes ~10 s here
ROWS, BATCH, SEED = 64, 64, 0
SENTENCES = ["a b", "b", "a a b a", "b b b", "a", "b a", "a b b", "b a a b a b"]  # lengths 1 to 6 words


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _data() -> torch.Tensor:
    """The first ROWS embedded digits, binarised once with a fixed generator."""
    return pyrovae.load_embedded_mnist().subset(slice(0, ROWS)).observations(torch.Generator().manual_seed(1))


def _vae():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    return pyrovae.VAE(latent_dim=4, hidden=(32,))


def _epoch_1_order() -> torch.Generator:
    """The generator of the trainer's batch order in epoch 1 (``seed * 100_003 + epoch``)."""
    return torch.Generator().manual_seed(SEED * 100_003 + 1)


def _text_vae():
    pyro.clear_param_store()
    pyro.set_rng_seed(SEED)
    data = from_sentences(SENTENCES)
    return data, TextVAE(len(data.vocab), 2, (8,), 6)


# ---------------------------------------------------------------- workers (run in spawned processes)


def _one_step(rank: int) -> dict:
    vae = _vae()
    trainer = Trainer(vae.model, vae.guide)
    trainer.fit(_data(), epochs=1, batch_size=BATCH, seed=SEED, progress=False, verbose=False)
    return _outcome(trainer)


def _text_step(rank: int) -> dict:
    """One step on all the sentences: the global batch cut by length (TextData.minibatches)."""
    data, vae = _text_vae()
    trainer = Trainer(vae.model, vae.guide, jit=False)
    trainer.fit(data, epochs=1, batch_size=len(SENTENCES), seed=SEED, progress=False, verbose=False)
    return _outcome(trainer)


def _outcome(trainer) -> dict:
    return {
        "params": {n: p.detach().clone() for n, p in zip(trainer.param_names, trainer.params)},
        "grads": {n: p.grad.clone() for n, p in zip(trainer.param_names, trainer.params)},
        "train_bound": trainer.history[0]["train_bound"],
        "steps": trainer.steps,
    }


def _nan_on_rank_1(rank: int) -> dict:
    """Rank 1's parameters become NaN after epoch 1; every process must stop at epoch 2, step 1."""
    vae = _vae()

    def poison(trainer, record):
        if rank == 1:
            with torch.no_grad():
                trainer.params[0].fill_(float("nan"))

    trainer = Trainer(vae.model, vae.guide)
    trainer.fit(_data(), epochs=3, batch_size=BATCH // 2, seed=SEED, progress=False, verbose=False, callback=poison)
    return {}


def _callback_fails_on_rank_0(rank: int) -> dict:
    """Rank 0's callback (where the CLI writes checkpoints) fails, as on a full disk."""
    vae = _vae()

    def write(trainer, record):
        if rank == 0:
            raise OSError("No space left on device")

    Trainer(vae.model, vae.guide).fit(_data(), epochs=3, batch_size=BATCH, seed=SEED, progress=False, verbose=False,
                                      callback=write)
    return {}


WORKERS = {"one_step": _one_step, "text_step": _text_step, "nan_on_rank_1": _nan_on_rank_1,
           "callback_fails": _callback_fails_on_rank_0}


def _worker(rank: int, size: int, store: str, jobs: list[str], out: str) -> None:
    """Run ``jobs`` one after the other in one process group (a failure that all processes
    agreed on leaves the group usable); exit with status 3 if any failed."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=size, timeout=datetime.timedelta(seconds=60)
    )
    failed = False
    try:
        for job in jobs:
            try:
                torch.save(WORKERS[job](rank), Path(out) / f"rank{rank}.{job}.pt")
            except Exception as err:
                failed = True
                text = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
                (Path(out) / f"rank{rank}.{job}.err").write_text(text)
    finally:
        torch.distributed.destroy_process_group()
    sys.exit(3 if failed else 0)


def _spawn(jobs: list[str], tmp_path: Path, size: int = 2) -> list[int]:
    """Run ``jobs`` on ``size`` gloo processes; their exit codes (a hang fails the test)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, size, str(tmp_path / "store"), jobs, str(tmp_path)))
             for r in range(size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"ranks {hung} hung"
    return [p.exitcode for p in procs]


# ---------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One pair of gloo processes runs every job in turn (starting processes is the slow part):
    ``(folder of their outputs, exit codes)``."""
    out = tmp_path_factory.mktemp("ranks")
    return out, _spawn(["one_step", "text_step", "nan_on_rank_1", "callback_fails"], out)


def test_shares_cover_each_global_batch_once_in_the_single_process_order():
    """The processes' shares of a global batch, put together, are the batch one process trains
    on (same permutation, same cut), so data order does not depend on the number of processes."""
    x = torch.arange(103.0)[:, None]
    single = [b[0][:, 0] for b in minibatches((x,), 16, torch.Generator().manual_seed(7))]
    for size in (1, 2, 3, 5):
        shares = [list(_shares(((b, len(b[0])) for b in minibatches((x,), 16, torch.Generator().manual_seed(7))),
                               World(r, size))) for r in range(size)]
        for i, batch in enumerate(single):
            parts = [shares[r][i][0][0][:, 0] for r in range(size)]
            assert torch.equal(torch.cat(parts), batch)
            assert all(shares[r][i][1] == batch.shape[0] for r in range(size))  # the global rows
            assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1


def test_distributed_true_without_a_process_group_names_the_fix():
    vae = _vae()
    trainer = Trainer(vae.model, vae.guide, distributed=True)
    with pytest.raises(RuntimeError, match="init_distributed"):
        trainer.fit(_data(), epochs=1, batch_size=BATCH, progress=False, verbose=False)


def test_one_data_parallel_step_equals_the_single_process_step(two_ranks):
    """Two gloo processes, one global batch of 64 rows (32 each): the parameters after the step
    equal those of one process that sums the two shares' gradients, each share with the noise
    of its rank; and they are not those of a step on one share alone (the test can fail)."""
    out, _ = two_ranks
    assert not list(out.glob("*.one_step.err")), [p.read_text() for p in out.glob("*.one_step.err")]
    results = [torch.load(out / f"rank{r}.one_step.pt") for r in range(2)]

    x = _data()
    order = torch.randperm(ROWS, generator=_epoch_1_order())
    shares = [x[idx] for idx in order.tensor_split(2)]
    _check_against_one_process(results, _vae, shares, x[:2], ROWS)


def test_a_data_parallel_step_on_sentences_batched_by_length_equals_the_single_process_step(two_ranks):
    """Text: the global batch is the length-sorted sentences trimmed to the longest, and each
    process takes its contiguous share of it; one step equals one process's step on the shares."""
    out, _ = two_ranks
    assert not list(out.glob("*.text_step.err")), [p.read_text() for p in out.glob("*.text_step.err")]
    results = [torch.load(out / f"rank{r}.text_step.pt") for r in range(2)]
    data, _ = _text_vae()
    (batch,) = bucket_minibatches(data.tokens, len(SENTENCES), _epoch_1_order())
    shares = [shard(batch[0], World(r, 2)) for r in range(2)]
    assert shares[0].shape == shares[1].shape and not torch.equal(shares[0], shares[1])
    _check_against_one_process(results, lambda: _text_vae()[1], shares, data.tokens[:2], len(SENTENCES))


def _check_against_one_process(results, build, shares, probe, rows):
    """The processes' parameters and gradients after their step equal one process's step that
    sums the gradients of the shares, each share with the noise of its rank; they are not those
    of a step on one share alone (so the check can fail)."""
    names = sorted(results[0]["params"])
    objective = make_objective("elbo", 1, 1)

    def reference(ranks):
        model = build()
        with torch.random.fork_rng():
            objective.differentiable_loss(model.model, model.guide, probe)  # registers the parameters
        params = [pyro.get_param_store().get_param(n).unconstrained() for n in names]
        total = 0.0
        for r in ranks:
            pyro.set_rng_seed(rank_seed(SEED, 1, r))
            loss = objective.differentiable_loss(model.model, model.guide, shares[r])
            loss.backward()
            total += loss.item()
        grads = {n: p.grad.clone() for n, p in zip(names, params)}
        torch.optim.Adam(params, lr=1e-3, fused=True).step()  # the trainer's optimiser
        return {n: p.detach().clone() for n, p in zip(names, params)}, grads, total

    params, grads, total = reference([0, 1])
    for r in range(2):
        assert results[r]["steps"] == 1
        for n in names:
            assert torch.allclose(results[r]["params"][n], params[n], rtol=0, atol=1e-6), n
            assert torch.allclose(results[r]["grads"][n], grads[n], rtol=1e-4, atol=1e-4), n
        assert results[r]["train_bound"] == pytest.approx(-total / rows, rel=1e-5)
    for n in names:  # the processes agree exactly
        assert torch.equal(results[0]["params"][n], results[1]["params"][n])
    alone, _, _ = reference([0])  # what a step without the all-reduce would give
    assert any(not torch.allclose(results[0]["params"][n], alone[n], rtol=0, atol=1e-6) for n in names)


def test_a_failure_on_one_rank_ends_all_ranks_with_a_clear_error(two_ranks):
    """NaN parameters on rank 1 (a step fails there), then a failing callback on rank 0 (a full
    disk where the CLI writes checkpoints): every process raises at the same point, the others
    naming the one that failed, and exits with an error; none hangs in a collective."""
    out, codes = two_ranks
    assert codes == [3, 3]  # both processes exit with an error status
    jobs = ["nan_on_rank_1", "callback_fails"]
    text = {(r, job): (out / f"rank{r}.{job}.err").read_text() for r in range(2) for job in jobs}
    first = {key: t.splitlines()[0] for key, t in text.items()}
    assert first[1, "nan_on_rank_1"].startswith("TrainingError: epoch 2, step 1: parameters became NaN/inf")
    assert "diverged: lower the learning rate" in text[1, "nan_on_rank_1"]
    assert first[0, "nan_on_rank_1"] == (
        "TrainingError: epoch 2, step 1: rank 0: process 1 of 2 failed in this step (its error is in its own "
        "output); all processes stop"
    )
    assert first[0, "callback_fails"] == "OSError: No space left on device"
    assert first[1, "callback_fails"] == (
        "TrainingError: rank 1: process 0 of 2 failed in the callback after epoch 1 (its error is in its own "
        "output); all processes stop"
    )


def test_torchrun_resumes_a_run_on_two_processes_and_trains_two_epochs_into_its_folder(tmp_path, capsys):
    """A run of one epoch in one process, continued by ``torchrun --nproc_per_node 2 -m pyrovae
    train --resume`` for two more: another world size, the checkpoint read by both processes,
    every file written by rank 0 alone, one line per epoch printed."""
    from pyrovae.cli import main

    run = tmp_path / "run"
    small = ["--dataset", "embedded", "--train-size", "256", "--heldout-size", "100", "--hidden", "16",
             "--latent-dim", "2", "--batch-size", "64", "--no-progress"]
    assert main(["train", *small, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, "-m", "pyrovae", "train", "--resume", str(run), "--epochs", "3", "--no-progress"],
                          capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("resuming") == 1 and "data-parallel over 2 processes" in done.stdout
    assert [done.stdout.count(f"epoch    {e} ") for e in (2, 3)] == [1, 1]  # rank 0 prints; rank 1 is silent
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]  # no staging folder left
    assert {"checkpoint.pt", "config.json", "metrics.csv"} <= {p.name for p in run.iterdir()}
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 4
    assert torch.load(run / "checkpoint.pt", weights_only=True)["trainer"]["epoch"] == 3
