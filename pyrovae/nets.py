"""Neural networks for encoders and decoders.

Every network accepts any number of leading batch dimensions, so a decoder can be applied
to ``z`` of shape ``(particles, N, latent_dim)`` under vectorised particles. Decoders return
``P * D`` values per image, *parameter-major*: the first ``D`` are the likelihood's first
parameter for every pixel, the next ``D`` its second, and so on (see ``likelihoods``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class Tanh(nn.Module):
    r""":math:`\tanh(x) = 2\sigma(2x) - 1`, computed that way because ``torch.tanh`` costs
    ~2.1 ns per value on our CPU and this ~0.4 ns (absolute error < 2e-7): with the IWAE
    architecture it was 12% of an importance-sampling pass (docs/benchmarks.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return torch.sigmoid(2 * x) * 2 - 1
        return torch.sigmoid(2 * x).mul_(2).sub_(1)  # no autograd: reuse one buffer


def softplus(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\log(1 + e^x) = \max(x, 0) + \operatorname{log1p}(e^{-|x|})`, with the log1p taken as
    :math:`\log w - ((w - 1) - u) / w` for :math:`w = 1 + u` (Goldberg's correction: within
    1.5 ulp of the exact value, as ``F.softplus``'s 1 ulp). On our CPU ``torch.log1p`` is not
    vectorised (9 ns per value) and ``F.softplus`` calls it, so the hidden layers' softplus
    was 9% of a training step; these eleven vector passes take a third of its time at 256 x 400
    values (docs/benchmarks.md). Elsewhere (GPU: one fused kernel) it is ``F.softplus``.
    The gradient is :math:`\sigma(x)`, written by hand, and twice differentiable."""
    if x.device.type != "cpu":
        return F.softplus(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return _Softplus.apply(x)
    return _softplus_values(x)


def _softplus_values(x: torch.Tensor) -> torch.Tensor:
    u = x.abs().neg_().exp_()  # e^{-|x|} in (0, 1]
    w = u + 1
    correction = (w - 1).sub_(u).div_(w)  # the rounding of 1 + u, divided by w
    return w.log_().sub_(correction).add_(x.clamp_min(0))


class _Softplus(torch.autograd.Function):
    """:func:`softplus` with its gradient ``sigmoid(x)`` by hand (autograd through the eleven
    passes would take as many backward passes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        with torch.no_grad():
            return _softplus_values(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.sigmoid(x) * grad  # differentiable ops: double backward works


class Softplus(nn.Softplus):
    """``nn.Softplus`` computed by :func:`softplus` (the defaults ``beta=1, threshold=20``;
    other settings take ``F.softplus``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.beta != 1 or self.threshold != 20:
            return super().forward(x)
        return softplus(x)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": Tanh,
    "softplus": Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
# Keeps q(z|x) away from a zero scale, where log q blows up.
MIN_SCALE = 1e-5


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """``in_dim -> hidden[0] -> ... -> out_dim`` with ``activation`` between layers."""

    def __init__(
        self, in_dim: int, hidden: Sequence[int], out_dim: int, act: str = "softplus"
    ) -> None:
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), activation(act)]
        layers.append(nn.Linear(dims[-1], out_dim))
        super().__init__(*layers)


class GaussianHead(nn.Module):
    """Maps features to ``(loc, scale)`` of a diagonal Normal; ``scale = softplus(.) + 1e-5``."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.loc = nn.Linear(in_dim, out_dim)
        self.scale = nn.Linear(in_dim, out_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), softplus(self.scale(h)) + MIN_SCALE


class MLPEncoder(nn.Module):
    """``x -> (loc(x), scale(x))``: an MLP body and a Gaussian head."""

    def __init__(
        self, data_dim: int, hidden: Sequence[int], latent_dim: int, act: str = "softplus"
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("an MLP encoder needs at least one hidden layer")
        self.body = nn.Sequential(MLP(data_dim, hidden[:-1], hidden[-1], act), activation(act))
        self.head = GaussianHead(hidden[-1], latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x))


class MLPDecoder(MLP):
    """``z -> decoder output`` (e.g. Bernoulli logits), hidden widths mirrored from the encoder."""

    def __init__(
        self, latent_dim: int, hidden: Sequence[int], out_dim: int, act: str = "softplus"
    ) -> None:
        super().__init__(latent_dim, list(hidden)[::-1], out_dim, act)


def _conv_trunk(channels: int, act: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 32, 4, stride=2, padding=1),  # 28 -> 14
        activation(act),
        nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 14 -> 7
        activation(act),
        nn.Flatten(),
    )


class ConvEncoder(nn.Module):
    """A small conv encoder for ``(C, 28, 28)`` images given flat as ``(..., C*784)``."""

    def __init__(
        self, image_shape: Sequence[int], hidden: int, latent_dim: int, act: str = "relu"
    ) -> None:
        super().__init__()
        self.image_shape = _chw(image_shape)
        self.trunk = _conv_trunk(self.image_shape[0], act)
        self.fc = nn.Sequential(nn.Linear(64 * 7 * 7, hidden), activation(act))
        self.head = GaussianHead(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[:-1]
        h = self.fc(self.trunk(x.reshape(-1, *self.image_shape)))
        loc, scale = self.head(h)
        return loc.reshape(*batch, -1), scale.reshape(*batch, -1)


class ConvDecoder(nn.Module):
    """Mirror of :class:`ConvEncoder`: ``z -> (..., out_channels*784)``."""

    def __init__(
        self, latent_dim: int, hidden: int, out_channels: int, act: str = "relu"
    ) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden), activation(act), nn.Linear(hidden, 64 * 7 * 7),
            activation(act),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 7 -> 14
            activation(act),
            nn.ConvTranspose2d(32, out_channels, 4, stride=2, padding=1),  # 14 -> 28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).reshape(-1, 64, 7, 7)
        # (B, out_channels, 28, 28) flattens parameter-major, the layout likelihoods expect
        return self.deconv(h).reshape(*batch, -1)


def _chw(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if shape[1:] != (28, 28):
        raise ValueError(f"the conv networks take 28x28 images; got shape {shape}")
    return shape  # type: ignore[return-value]
