"""Pictures of a trained model and of its evaluation, saved as PNG (atomically).

Figures are drawn on ``matplotlib.figure.Figure`` objects and rendered by Agg directly, without
pyplot: no display is needed, and the user's matplotlib backend and open figures are left
alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .io import atomic_write


def new_figure(figsize: tuple[float, float], ncols: int = 1):
    """A pyplot-free figure and its axes (one, or a row of ``ncols``)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def save_figure(fig: Figure, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def image_grid(images: torch.Tensor, image_shape: Sequence[int], ncol: int) -> np.ndarray:
    """Tile ``(N, D)`` images in ``[0, 1]`` into one ``(rows*H, ncol*W)`` array (1 px gaps)."""
    shape = tuple(image_shape)
    h, w = shape[-2:]
    imgs = images.detach().float().cpu().reshape(len(images), -1, h, w).mean(1).numpy()
    nrow = math.ceil(len(imgs) / ncol)
    grid = np.ones((nrow * (h + 1) - 1, ncol * (w + 1) - 1), dtype=np.float32)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncol)
        grid[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = img
    return grid


def _show(ax, grid: np.ndarray, title: str) -> None:
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def plot_samples(path, images: torch.Tensor, image_shape, title: str = "samples") -> None:
    ncol = math.ceil(math.sqrt(len(images)))
    fig, ax = new_figure((6, 6))
    _show(ax, image_grid(images, image_shape, ncol), title)
    save_figure(fig, path)


def plot_reconstructions(path, x: torch.Tensor, recon: torch.Tensor, image_shape) -> None:
    """Data (left) beside the decoder mean at the encoder's mean (right)."""
    ncol = math.ceil(math.sqrt(len(x)))
    fig, axes = new_figure((10, 5), ncols=2)
    _show(axes[0], image_grid(x, image_shape, ncol), "data")
    _show(axes[1], image_grid(recon.clamp(0, 1), image_shape, ncol), "reconstruction E[x | z=mean q(z|x)]")
    save_figure(fig, path)


def plot_curves(path, history: list[dict]) -> None:
    """Training bound (labelled by its objective), the true training ELBO when the objective is
    weighted, and the held-out ELBO per epoch, in nats per datapoint."""
    epochs = [r["epoch"] for r in history]
    fig, ax = new_figure((6, 4))
    objective = history[-1].get("objective", "bound") if history else "bound"
    ax.plot(epochs, [r["train_bound"] for r in history], "o-", ms=3, label=f"train {objective}")
    if any("train_elbo" in r for r in history):
        ax.plot(
            [r["epoch"] for r in history if "train_elbo" in r],
            [r["train_elbo"] for r in history if "train_elbo" in r],
            "d-", ms=3, label="train ELBO (unweighted)",
        )
    if any("heldout_elbo" in r for r in history):
        ax.plot(
            [r["epoch"] for r in history if "heldout_elbo" in r],
            [r["heldout_elbo"] for r in history if "heldout_elbo" in r],
            "s-", ms=3, label="held-out ELBO",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def write_curves(run: str | Path, history: list[dict]) -> list[str]:
    """``run/curves.png`` of a run's history (nothing before its first epoch); the names written."""
    if not history:
        return []
    plot_curves(Path(run) / "curves.png", history)
    return ["curves.png"]


def project_2d(z: torch.Tensor) -> tuple[np.ndarray, str]:
    """``z`` itself when 2-D, else its first two principal components."""
    z = z.detach().double().cpu()
    if z.shape[1] <= 2:
        return z.numpy(), "z"
    zc = z - z.mean(0)
    _, s, v = torch.linalg.svd(zc, full_matrices=False)
    share = (s[:2] ** 2).sum() / (s**2).sum()
    return (zc @ v[:2].T).numpy(), f"PCA of z ({share:.0%} of variance)"


def plot_latent(path, z_mean: torch.Tensor, labels: torch.Tensor | None) -> None:
    """Posterior means E_q[z | x], coloured by label."""
    pts, what = project_2d(z_mean)
    fig, ax = new_figure((6, 5.5))
    if labels is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.6)
    else:
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=3, alpha=0.7)
        fig.colorbar(sc, ax=ax, ticks=range(int(labels.max()) + 1), label="label")
    ax.set_title(f"posterior means, {what}", fontsize=10)
    save_figure(fig, path)


def plot_manifold(path, decode_mean, image_shape, n: int = 20, span: float = 0.95) -> None:
    """Decoder means over an ``n x n`` grid of Normal quantiles in a 2-D latent space."""
    q = torch.linspace((1 - span) / 2, (1 + span) / 2, n, dtype=torch.float64)
    g = torch.distributions.Normal(0.0, 1.0).icdf(q).float()
    zz = torch.stack(torch.meshgrid(g, g.flip(0), indexing="xy"), -1).reshape(-1, 2)
    fig, ax = new_figure((7, 7))
    _show(ax, image_grid(decode_mean(zz), image_shape, n), "decoder mean over the latent plane")
    save_figure(fig, path)


def plot_khat(path, khat: torch.Tensor) -> None:
    """Histogram of PSIS k-hat per datapoint with the 0.5 and 0.7 thresholds (k-hat is NaN
    below 25 samples, and -inf for equal weights: those are counted, not drawn)."""
    k = khat.cpu().numpy()
    finite = k[np.isfinite(k)]
    fig, ax = new_figure((6, 4))
    if finite.size:
        ax.hist(finite, bins=50, color="0.4")
    for t, c in ((0.5, "tab:orange"), (0.7, "tab:red")):
        ax.axvline(t, color=c, ls="--", label=f"k = {t}: {np.mean(k > t):.1%} above")
    if finite.size < k.size:
        ax.set_title(f"{k.size - finite.size} of {k.size} datapoints without a finite k-hat "
                     "(fewer than 25 samples, or equal weights)", fontsize=9)
    ax.set_xlabel("Pareto k-hat of the importance weights")
    ax.set_ylabel("datapoints")
    ax.legend()
    save_figure(fig, path)


def plot_compare(path, table: list[dict]) -> None:
    """Mean test log p(x) per run (best on top) with ±2 s.e., and each run's difference to the
    best with ±2 *paired* s.e., in the style of ArviZ's ``plot_compare``."""
    names = [r["run"] for r in table][::-1]
    y = np.arange(len(names))
    fig, ax = new_figure((7, 0.5 * len(names) + 1.5))
    means = np.array([r["nats_per_image"] for r in table][::-1])
    ax.errorbar(means, y, xerr=2 * np.array([r["se"] for r in table][::-1]), fmt="o", color="k",
                mfc="white", capsize=3, label="log p(x) ± 2 s.e.")
    best = table[0]["nats_per_image"]
    diffs = best + np.array([r["diff"] for r in table][::-1])
    ax.errorbar(diffs[:-1], y[:-1] - 0.2, xerr=2 * np.array([r["diff_se"] for r in table][::-1])[:-1],
                fmt="^", color="tab:blue", capsize=3, label="best + Δ ± 2 paired s.e.")
    ax.axvline(best, color="0.6", ls="--", lw=1)
    ax.set_yticks(y, names)
    ax.set_xlabel(f"test log p(x), nats per image ({table[0]['scale']} scale, K = {table[0]['num_samples']})")
    ax.legend(loc="lower left", fontsize=8)
    save_figure(fig, path)


def plot_rows(path, rows: Sequence[torch.Tensor], row_labels: Sequence[str], image_shape, title: str = "",
              col_labels: Sequence[str] | None = None) -> None:
    """One row of images per entry of ``rows`` (each ``(n, D)`` in ``[0, 1]``), labelled on the
    left: completions beside their input and truth, samples per class or component, traversals."""
    ncol = max(len(r) for r in rows)
    h, w = tuple(image_shape)[-2:]
    fig, ax = new_figure((0.55 * ncol + 1.2, 0.55 * len(rows) + 0.6))
    grid = np.ones((len(rows) * (h + 1) - 1, ncol * (w + 1) - 1), dtype=np.float32)
    for i, row in enumerate(rows):
        part = image_grid(row.clamp(0, 1), image_shape, ncol)
        grid[i * (h + 1) : i * (h + 1) + h, : part.shape[1]] = part
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([i * (h + 1) + h / 2 for i in range(len(rows))], list(row_labels), fontsize=8)
    if col_labels is not None:
        ax.set_xticks([j * (w + 1) + w / 2 for j in range(len(col_labels))], list(col_labels), fontsize=8)
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=10)
    save_figure(fig, path)
