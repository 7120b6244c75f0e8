r"""Scores on one footing, and the comparison of runs by paired differences.

**One scale.** A likelihood scores data in its own data space (:mod:`pyrovae.data`). To put
models side by side, each estimate of :math:`\log p(x)` is mapped to a log-*mass* on a named
scale, in nats per image, with bits per dimension :math:`-\log_2 P / D` beside it:

* ``8-bit`` -- the original images :math:`k \in \{0..255\}^D`. A continuous density on
  dequantised data :math:`x = (k + u)/256`, :math:`u \sim U(0,1)^D`, gives
  :math:`\log P(k) \ge E_u[\log p(x)] - D \log 256` (Theis et al. 2016, *A note on the
  evaluation of generative models*): the density is converted to a mass by the volume of a
  grey level. A categorical model over :math:`L` levels (``256 % L == 0``) spreads each level
  uniformly over its :math:`256/L` grey values: :math:`\log P(k) = \log P(\ell) - D \log(256/L)`.
* ``binary-dynamic`` / ``binary-threshold`` -- log-masses of binarised images (a different
  data set: never compared with 8-bit scores);
* ``grey-density`` -- a density on :math:`k/255` without dequantisation: not a mass, so it is
  comparable only with other ``grey-density`` runs of the same data;
* ``counts`` -- log-masses of count vectors (bag of words).

**Comparison.** For runs scored on the same test points with the same scale, the difference
of two models is estimated by the mean of the per-datapoint differences
:math:`d_i = \log \hat p_A(x_i) - \log \hat p_B(x_i)`, with the *paired* standard error
:math:`\mathrm{sd}(d)/\sqrt{N}` -- much smaller than the errors of the two means, because the
test points' difficulty cancels (as ``elpd_diff`` and ``dse`` in ArviZ's ``compare``).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import file_fingerprint

GREY_LEVELS = 256


class ComparisonError(ValueError):
    """Runs that cannot be ranked against each other (different data, scales or K)."""


def data_scale(
    data_space: str, levels: int | None = None, discrete: bool = True, scales: dict[str, str] | None = None
) -> tuple[str, float]:
    """``(scale, offset per dimension in nats)`` that maps a score in ``data_space`` to a log-mass.

    A density (``discrete=False``) fitted to binarised images, levels or counts is no mass of
    them: it gets a scale of its own (``binary-dynamic-density``, ...), never ranked with masses.
    ``scales`` (a model's ``report()["scales"]``) names the scale of a score that is no density
    on its space (a cross-entropy of grey values), so that it is ranked only with its like.
    """
    if scales and data_space in scales:
        return scales[data_space], 0.0
    if data_space == "dequantized":
        return "8-bit", -math.log(GREY_LEVELS)
    if data_space == "grey":
        return "grey-density", 0.0
    if not discrete:
        return f"{data_space}-density", 0.0
    if data_space == "levels":
        levels = levels or GREY_LEVELS
        if GREY_LEVELS % levels:
            return f"levels-{levels}", 0.0
        return "8-bit", -math.log(GREY_LEVELS // levels)
    return data_space, 0.0  # binary spaces, counts: already log-masses


def bits_per_dim(nats_per_image: float, data_dim: int) -> float:
    r""":math:`-\log_2 P / D` from a log-mass in nats per image."""
    return -nats_per_image / (data_dim * math.log(2))


def on_scale(
    log_px: float, data_dim: int, data_space: str, levels: int | None = None, discrete: bool = True,
    scales: dict[str, str] | None = None,
) -> dict[str, float | str]:
    """Nats per image and bits per dimension of ``log_px`` on the scale of :func:`data_scale`."""
    scale, offset = data_scale(data_space, levels, discrete, scales)
    nats = log_px + data_dim * offset
    return {"scale": scale, "nats_per_image": nats, "bits_per_dim": bits_per_dim(nats, data_dim)}


@dataclass
class Scored:
    """One run's per-datapoint estimates on its scale."""

    name: str
    log_px: np.ndarray  # on the scale, nats per image
    stderr: np.ndarray
    khat: np.ndarray
    summary: dict

    @classmethod
    def from_result(
        cls, name: str, res, data_space: str, *, levels: int | None = None, dataset: str = "",
        heldout_seed: int | None = None, likelihood: str = "", prior: str = "", discrete: bool = True,
    ) -> Scored:
        """From a :class:`~pyrovae.infer.MarginalLikelihood` of ``(N, D)`` data in ``data_space``."""
        data_dim = res.extras.get("data_dim")
        if data_dim is None:
            raise ValueError("the result does not record the data dimension; pass data from log_marginal_likelihood")
        scale, offset = data_scale(data_space, levels, discrete)
        summary = {
            **res.summary(), "scale": scale, "dataset": dataset, "data": dataset, "heldout_seed": heldout_seed,
            "data_dim": data_dim, "data_space": data_space, "levels": levels,
            "likelihood": likelihood, "prior": prior,
        }
        return cls(name, res.log_px.numpy() + data_dim * offset, res.stderr.numpy(), res.khat.numpy(), summary)

    @property
    def key(self) -> tuple:
        """What must agree between runs for their scores to be compared."""
        s = self.summary
        return (s["scale"], s["dataset"], s.get("data"), s["heldout_seed"], s["num_datapoints"], s["data_dim"])


_SUMMARY_KEYS = ("data_space", "data_dim", "num_samples", "num_datapoints", "dataset", "heldout_seed")
_EVALUATION = re.compile(r"^evaluation-(?:(defensive|ais-T\d+)-)?K(\d+)(?:-first(\d+))?\.json$")
METHODS = ("is", "defensive", "ais")


def evaluation_name(num_samples: int, subset: int | None, method: str = "is", num_steps: int | None = None) -> str:
    """``evaluation-K5000`` for importance sampling of the whole held-out set, ``-first100`` for a
    subset (which never takes the place of a fuller evaluation), ``evaluation-defensive-K5000``
    and ``evaluation-ais-T1000-K16`` (T steps, K chains) for the other methods."""
    label = {"is": "", "defensive": "defensive-"}.get(method, f"ais-T{num_steps}-")
    return f"evaluation-{label}K{num_samples}" + (f"-first{subset}" if subset else "")


def _method_of(label: str | None) -> tuple[str, int | None]:
    if label is None:
        return "is", None
    if label == "defensive":
        return "defensive", None
    return "ais", int(label[len("ais-T"):])


def evaluations(run: str | Path, method: str | None = "is") -> list[tuple[int, int | None, Path]]:
    """``(K, subset or None, path)`` of every evaluation summary by ``method`` in a run folder
    (``method=None``: by any method)."""
    return [e[:3] for e in _evaluations(run, method)]


def _evaluations(run: str | Path, method: str | None) -> list[tuple[int, int | None, Path, int, str]]:
    found = []
    for path in Path(run).glob("evaluation-*.json"):
        m = _EVALUATION.match(path.name)
        if m:
            name, steps = _method_of(m.group(1))
            if method is None or name == method:
                found.append((int(m.group(2)), int(m.group(3)) if m.group(3) else None, path, steps or 0, name))
    return found


def load_scored(run: str | Path, num_samples: int | None = None, method: str = "is") -> Scored:
    """Read a run's evaluation by ``method`` (``.json`` and ``.csv``): the whole held-out set before
    a subset, then the most AIS steps, then the largest K (or ``num_samples``). Refuses an
    evaluation of another checkpoint than the run's, and a summary whose CSV is not the one it
    was written with."""
    run = Path(run)
    if method not in METHODS:
        raise ComparisonError(f"method must be one of {METHODS}, not {method!r}")
    found = [e for e in _evaluations(run, method) if num_samples is None or e[0] == num_samples]
    if not found:
        pattern = {"is": "evaluation-K*.json", "defensive": "evaluation-defensive-K*.json"}.get(
            method, "evaluation-ais-T*-K*.json")
        what = f"{pattern}" + (f" with K = {num_samples}" if num_samples else "")
        fix = f"pyrovae evaluate {run} --method {method}" + (f" --num-samples {num_samples}" if num_samples else "")
        others = sorted({e[4] for e in _evaluations(run, None)})
        hint = f" (it has evaluations by {', '.join(others)}: pass --method)" if others else ""
        raise ComparisonError(f"{run}: no {what}{hint}; run `{fix}` first")
    k, subset, path, _, _ = max(found, key=lambda e: (e[1] is None, e[3], e[0], e[1] or 0))
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ComparisonError(f"{path} is not valid JSON ({err}); run `pyrovae evaluate {run}` again") from None
    missing = [k for k in _SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise ComparisonError(f"{path} is not a pyrovae evaluation (it lacks {missing}); run `pyrovae evaluate {run}`")
    summary.setdefault("method", "is")  # evaluations before pyrovae 0.3 were all importance sampling
    _check_current(run, path, summary)
    scale, offset = data_scale(summary["data_space"], summary.get("levels"), summary.get("discrete_likelihood", True),
                               summary.get("scales"))
    summary["scale"] = scale
    csv_path = path.with_suffix(".csv")
    recorded = summary.get("csv_fingerprint")
    if not csv_path.exists() or (recorded is not None and recorded != file_fingerprint(csv_path)):
        raise ComparisonError(f"{csv_path} is missing or is not the one {path.name} was written with; evaluate again")
    try:
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        log_px = np.array([float(r["log_px"]) for r in rows]) + summary["data_dim"] * offset
        stderr, khat = np.array([float(r["stderr"]) for r in rows]), np.array([float(r["khat"]) for r in rows])
    except (KeyError, TypeError, ValueError) as err:
        raise ComparisonError(f"{csv_path} is not a pyrovae evaluation table ({type(err).__name__}: {err})") from None
    if len(rows) != summary["num_datapoints"]:
        raise ComparisonError(f"{csv_path} has {len(rows)} rows but {path.name} counts {summary['num_datapoints']}")
    return Scored(name=run.name, log_px=log_px, stderr=stderr, khat=khat, summary=summary)


def _check_current(run: Path, path: Path, summary: dict) -> None:
    stamp = summary.get("checkpoint_fingerprint")
    checkpoint = run / "checkpoint.pt"
    if stamp is None or not checkpoint.exists():
        return  # pyrovae 0.1 evaluations carry no stamp; a copied evaluation has no checkpoint
    if file_fingerprint(checkpoint) != stamp:
        raise ComparisonError(
            f"{path} scored the checkpoint of epoch {summary.get('checkpoint_epoch')}, but {run} now holds "
            f"another (trained further, or overwritten); run `pyrovae evaluate {run}` again"
        )


def compare(runs: list[str | Path] | list[Scored], num_samples: int | None = None, method: str = "is") -> list[dict]:
    """Rank runs by mean test :math:`\\log p(x)` with paired standard errors of the differences.

    Returns one dict per run, best first: ``nats_per_image``, ``se`` (over the data),
    ``bits_per_dim``, ``diff`` (to the best, ≤ 0), ``diff_se`` (paired), ``mc_se`` of the
    difference, ``khat_over_0.7``. Raises :class:`ComparisonError` when the runs were scored
    on different data, scales, test points, methods (importance sampling, defensive, AIS with
    its number of steps) or numbers of samples: estimators with different biases are not ranked.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.scoring import Scored
    >>> x = torch.bernoulli(torch.full((6, 4), 0.5), generator=torch.Generator().manual_seed(0))
    >>> scored = []
    >>> for name, latent_dim in [("small", 1), ("large", 3)]:
    ...     vae = pyrovae.VAE(data_dim=4, latent_dim=latent_dim, hidden=[8], image_shape=(2, 2), name=name)
    ...     res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=10)
    ...     scored.append(Scored.from_result(name, res, "binary-dynamic", dataset="toy"))
    >>> best, other = pyrovae.compare(scored)
    >>> bool(best["diff"] == 0.0 and other["diff"] <= 0.0 < other["diff_se"])
    True
    >>> {"run", "nats_per_image", "se", "diff", "diff_se"} <= set(best)
    True
    """
    scored = [r if isinstance(r, Scored) else load_scored(r, num_samples, method) for r in runs]
    if len(scored) < 2:
        raise ComparisonError("compare needs at least two runs")
    keys = {s.key for s in scored}
    if len(keys) > 1:
        lines = "\n".join(
            f"  {s.name}: scale {s.key[0]}, data {s.key[1]}, held-out seed {s.key[3]}, {s.key[4]} points"
            for s in scored
        )
        raise ComparisonError(
            "these runs are scored on different data or scales and cannot be ranked against each "
            f"other (e.g. binarised vs grey-level images):\n{lines}\nevaluate them on the same data "
            "space (a continuous likelihood on --data-space dequantized and a categorical one on "
            "--data-space levels share the 8-bit scale)"
        )
    methods = {(s.summary.get("method", "is"), s.summary.get("num_steps")) for s in scored}
    if len(methods) > 1:
        lines = "\n".join(f"  {s.name}: {_describe_method(s.summary)}" for s in scored)
        raise ComparisonError(
            "these runs are scored by different estimators of log p(x), whose biases differ, so they are "
            f"not ranked against each other:\n{lines}\nevaluate them all with one `pyrovae evaluate --method`"
        )
    ks = {s.summary["num_samples"] for s in scored}
    if len(ks) > 1:
        raise ComparisonError(f"the runs were evaluated with different K {sorted(ks)}; pass one --num-samples")
    scored.sort(key=lambda s: -s.log_px.mean())
    best = scored[0]
    n = len(best.log_px)
    table = []
    for s in scored:
        d = s.log_px - best.log_px
        table.append({
            "run": s.name,
            "likelihood": s.summary.get("likelihood", ""),
            "prior": s.summary.get("prior", ""),
            "scale": s.summary["scale"],
            "nats_per_image": s.log_px.mean(),
            "se": s.log_px.std(ddof=1) / math.sqrt(n),
            "bits_per_dim": bits_per_dim(s.log_px.mean(), s.summary["data_dim"]),
            "diff": d.mean(),
            "diff_se": d.std(ddof=1) / math.sqrt(n) if s is not best else 0.0,
            "mc_se": math.sqrt(np.sum(s.stderr**2 + best.stderr**2)) / n if s is not best else 0.0,
            "khat_over_0.7": float(np.mean(s.khat > 0.7)) if not np.isnan(s.khat).any() else math.nan,
            "num_samples": s.summary["num_samples"],
            "num_datapoints": n,
            "method": _describe_method(s.summary),
        })
    return table


def _share(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.0%}"


def _describe_method(summary: dict) -> str:
    method = summary.get("method", "is")
    if method == "ais":
        return f"AIS, T = {summary.get('num_steps')}, {summary['num_samples']} chains"
    return {"is": "importance sampling", "defensive": "defensive importance sampling"}[method] + \
        f", K = {summary['num_samples']}"


def format_table(table: list[dict]) -> str:
    """The comparison as a Markdown table."""
    first = table[0]
    lines = [
        f"log p(x) on the `{first['scale']}` scale, {first['num_datapoints']:,} test points, "
        f"{first['method']}; Δ and its paired s.e. are to the best run.",
        "",
        "| rank | run | likelihood | prior | nats/image | s.e. | bits/dim | Δ | s.e.(Δ) | k̂ > 0.7 |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(table, 1):
        lines.append(
            f"| {i} | {r['run']} | {r['likelihood']} | {r['prior']} | {r['nats_per_image']:.2f} | "
            f"{r['se']:.2f} | {r['bits_per_dim']:.4f} | {r['diff']:.2f} | {r['diff_se']:.2f} | "
            f"{_share(r['khat_over_0.7'])} |"
        )
    return "\n".join(lines)


def format_comparison(scored: list[Scored]) -> str:
    """Tables of :func:`compare`, one per scale; a run alone on its scale is listed, not ranked."""
    groups: dict[tuple, list[Scored]] = {}
    for s in scored:
        groups.setdefault(s.key, []).append(s)
    parts = []
    for group in groups.values():
        if len(group) > 1:
            parts.append(format_table(compare(group)))
        else:
            s = group[0]
            nats = float(s.log_px.mean())
            parts.append(
                f"{s.name}: {nats:.2f} nats/image, {bits_per_dim(nats, s.summary['data_dim']):.4f} "
                f"bits/dim on the `{s.summary['scale']}` scale -- alone on that scale, so not ranked"
            )
    if len(groups) > 1:
        parts.insert(0, "Runs on different data scales are shown apart and never ranked against each other.")
    return "\n\n".join(parts)


def fit_and_score(
    name: str,
    vae,
    train,
    test,
    *,
    epochs: int = 10,
    num_samples: int = 1000,
    seed: int = 0,
    progress: bool = False,
    **trainer_options,
) -> Scored:
    """Train ``vae`` on ``train`` and score test log p(x) on its scale (for comparisons).

    ``train`` and ``test`` are :class:`~pyrovae.data.ImageData`, observed in the likelihood's
    data space (``vae.prepare_data``); the test observations are drawn once with ``seed``
    (binarisation or dequantisation noise), so runs with the same seed and space see the same
    test points.
    """
    import pyro

    from .data import heldout_generator, heldout_seed
    from .infer import log_marginal_likelihood
    from .infer import train as train_pair

    test = vae.prepare_data(test)
    pyro.set_rng_seed(seed)
    x_test = test.observations(heldout_generator(seed))
    train_pair(vae.model, vae.guide, train, x_test, epochs=epochs, seed=seed, progress=progress, verbose=False,
               **trainer_options)
    pyro.set_rng_seed(seed)
    res = log_marginal_likelihood(vae.model, vae.guide, x_test, num_samples=num_samples, progress=progress,
                                  khat_warn_share=1.0)
    return Scored.from_result(
        name, res, test.space, levels=test.levels, dataset=test.name, heldout_seed=heldout_seed(seed),
        likelihood=vae.likelihood.name, prior=vae.prior.name, discrete=vae.likelihood.discrete,
    )
