"""Chunk-parallel evaluation (``workers=``, :mod:`pyrovae.infer.parallel`): forked single-thread
workers give the estimate the loop in this process gives, for a pair of closures that could not
be pickled; a worker's error reaches the caller; a worker that dies does not leave it waiting."""

import csv
import multiprocessing
import os
import resource
import signal
import time
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_importance import make_pair

import pyrovae
from pyrovae.cli import main
from pyrovae.infer import bdmc
from pyrovae.infer.parallel import WorkerError


def _estimate(model, guide, x, workers, seed=0, **kw):
    pyro.set_rng_seed(seed)
    return pyrovae.log_marginal_likelihood(model, guide, x, workers=workers, progress=False, **kw)


def test_workers_give_the_estimate_of_the_loop_in_this_process(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=1.3)
    runs = {w: _estimate(model, guide, x, w, num_samples=500, chunk_size=1000) for w in (1, 2, 3)}  # 20 chunks
    for w in (2, 3):
        for key in ("log_px", "stderr", "ess", "khat", "elbo"):
            assert torch.allclose(getattr(runs[w], key), getattr(runs[1], key), atol=1e-9, rtol=0), (w, key)
        assert runs[w].convergence().keys() == runs[1].convergence().keys()
    err = runs[2].log_px - exact
    assert (err.abs() < 3 * runs[2].stderr + 1e-12).double().mean() >= 0.9  # and it is the right answer
    again = _estimate(model, guide, x, 2, num_samples=500, chunk_size=1000)
    assert torch.equal(again.log_px, runs[2].log_px)  # pyro.set_rng_seed makes it reproducible
    other = _estimate(model, guide, x, 2, seed=1, num_samples=500, chunk_size=1000)
    assert not torch.equal(other.log_px, runs[2].log_px)  # and the seed matters


def test_compiled_pass_in_workers_gives_the_eager_estimate(lingauss):
    """Each forked worker compiles (or inherits) the graph; its chunks draw the eager pass's numbers.
    float64 data: not to float64 precision, the trace records d log(2 pi) in float32."""
    W, b, x, _, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=1.3)
    eager = _estimate(model, guide, x, 1, num_samples=100, chunk_size=200, jit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager would warn
        compiled = _estimate(model, guide, x, 2, num_samples=100, chunk_size=200, jit=True)
    assert torch.allclose(compiled.log_px, eager.log_px, atol=1e-6, rtol=0)


def test_a_fallback_in_the_workers_is_shown_once_in_the_caller():
    """Every worker gives up on compiling this pair; the caller sees one warning, not one per worker."""
    x = torch.linspace(-2, 2, 40, dtype=torch.float64)[:, None]

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=x.dtype), 1.0).to_event(1))
            scale = 1.0 if float(x.sum()) > 0 else 3.0  # control flow on the data: not compiled
            pyro.sample("x", dist.Normal(z, scale).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.8).to_event(1))

    eager = _estimate(model, guide, x, 1, num_samples=20, chunk_size=40, jit=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = _estimate(model, guide, x, 2, num_samples=20, chunk_size=40, jit=True)
    fallbacks = [w for w in caught if "Evaluating without jit" in str(w.message)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    assert torch.allclose(compiled.log_px, eager.log_px, atol=1e-12, rtol=0)


def test_ais_and_bdmc_in_workers_equal_the_loop_in_this_process(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=1.3)
    ais = {w: _estimate(model, guide, x, w, method="ais", num_steps=8, num_samples=4, chunk_size=40)
           for w in (1, 2)}  # 10 rows per chunk, 4 chunks
    assert torch.allclose(ais[2].log_px, ais[1].log_px, atol=1e-9, rtol=0)
    assert torch.allclose(ais[2].extras["acceptance"], ais[1].extras["acceptance"], atol=1e-12, rtol=0)
    bounds = {}
    for w in (1, 2):
        pyro.set_rng_seed(3)
        bounds[w] = bdmc(model, guide, x[:20], num_steps=8, num_samples=4, chunk_size=20, workers=w, progress=False)
    assert torch.equal(bounds[2].x, bounds[1].x)
    for side in ("lower", "upper"):
        assert torch.allclose(getattr(bounds[2], side).log_px, getattr(bounds[1], side).log_px, atol=1e-9, rtol=0)


def test_an_error_in_a_worker_reaches_the_caller_and_the_next_call_works(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    bad = x[7, 0].item()

    def picky_guide(x):
        if (x[:, 0] == bad).any():  # only in the chunk of row 7, which runs in a worker
            raise ValueError("row 7 is refused")
        guide(x)

    with pytest.raises(ValueError, match="row 7 is refused"):
        _estimate(model, picky_guide, x, 2, num_samples=50, chunk_size=50)
    res = _estimate(model, guide, x, 2, num_samples=50, chunk_size=50)
    assert torch.allclose(res.log_px, exact, atol=1e-9, rtol=0)  # exact posterior: every weight is p(x)


def test_a_worker_that_dies_raises_instead_of_leaving_the_caller_waiting(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    parent, bad = os.getpid(), x[7, 0].item()

    def dying_guide(x):
        if os.getpid() != parent and (x[:, 0] == bad).any():
            os._exit(1)  # as if killed for memory
        guide(x)

    with pytest.raises(WorkerError, match="workers=1"):
        _estimate(model, dying_guide, x, 2, num_samples=50, chunk_size=50)


def test_automatic_workers_fork_only_when_the_rest_is_slow(lingauss, tmp_path):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov, shift=0.3, widen=1.3)
    log, delay = tmp_path / "pids", {"s": 0.0}

    def slow_guide(x):
        time.sleep(delay["s"])
        with log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        guide(x)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pids = {}
        # 2 chunks, the second one quick; or 20 chunks of 0.1 s or more
        for seconds, chunk_size in ((0.0, 10_000), (0.1, 1000)):
            log.write_text("")
            delay["s"] = seconds
            res = _estimate(model, slow_guide, x, None, num_samples=500, chunk_size=chunk_size)
            pids[seconds] = set(log.read_text().split())
    finally:
        torch.set_num_threads(threads)
    assert pids[0.0] == {str(os.getpid())} and len(pids[0.1]) == 3  # this process (first chunk), 2 workers
    serial = _estimate(model, guide, x, 1, num_samples=500, chunk_size=1000)
    assert torch.allclose(res.log_px, serial.log_px, atol=1e-9, rtol=0)


def test_an_interrupt_ends_the_workers_at_once(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    parent = os.getpid()

    def stuck_guide(x):
        if os.getpid() != parent:
            time.sleep(60)  # a long chunk (AIS) in every worker
        guide(x)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(2)  # Ctrl-C while the workers run
    began = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            _estimate(model, stuck_guide, x, 2, num_samples=50, chunk_size=50)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    while multiprocessing.active_children() and time.perf_counter() - began < 10:
        time.sleep(0.1)
    assert not multiprocessing.active_children() and time.perf_counter() - began < 10


def test_many_chunks_fit_in_a_small_file_descriptor_limit(lingauss):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    x = x.repeat(10, 1)  # 400 rows, one chunk each, 9 result tensors a chunk: 3,600 if each kept a descriptor
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(512, hard), hard))
    try:
        res = _estimate(model, guide, x, 2, num_samples=30, chunk_size=30)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert torch.allclose(res.log_px, exact.repeat(10), atol=1e-9, rtol=0)


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_whole_number(lingauss, workers):
    W, b, x, exact, post_cov = lingauss
    model, guide = make_pair(W, b, post_cov)
    with pytest.raises(ValueError, match="workers must be a whole number"):
        _estimate(model, guide, x, workers, num_samples=5)


def test_evaluate_command_gives_the_same_numbers_with_workers(tmp_path):
    run = tmp_path / "run"
    fast = ["--train-size", "600", "--heldout-size", "60", "--batch-size", "100", "--no-progress"]
    assert main(["train", "--epochs", "1", "--latent-dim", "2", "--hidden", "32", "--out", str(run), *fast]) == 0
    values = {}
    for w in ("1", "2"):
        assert main(["evaluate", str(run), "--num-samples", "100", "--workers", w, "--no-progress"]) == 0
        with (run / "evaluation-K100.csv").open() as f:
            values[w] = [float(r["log_px"]) for r in csv.DictReader(f)]
    assert len(values["1"]) == 60
    assert values["2"] == pytest.approx(values["1"], abs=1e-4)  # float32 products on 1 thread or 2
