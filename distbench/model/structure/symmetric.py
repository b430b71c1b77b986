"""Symmetric conv weights (Hu, Zagoruyko & Komodakis 2019, "Exploring weight symmetry in deep neural
networks"), over the two channel axes, W[i, j] = W[j, i] at every spatial position (for square convs:
in == out channels, groups 1), or over the two kernel axes, W[..., a, b] = W[..., b, a] (for square
kernels larger than 1x1).

Two ways to impose a symmetry, with opposite effects on the wire:
- *triangular*: only the upper triangle including the diagonal is stored and learned, and the weight is
  rebuilt from it in the forward pass by one gather. The stored parameters, and so the gradient bytes, of
  those layers drop to (n+1)/(2n) (channel, n channels) or (k+1)/(2k) (spatial, k x k kernels).
- *average*: the full weight W is stored and learned, and the forward pass uses its symmetric part,
  (W + W^T)/2. Every parameter gets a gradient, so every byte is still sent: no saving at all.

`channel-ldl` (W = L D L^T per spatial position) is not built: it stores as many numbers as
`channel-triangular`, so it sends the same bytes, and it reaches the same symmetric weights; only the
optimisation differs, and starting it from a random dense initialisation needs an LDL^T factorisation of
that weight's symmetric part, which need not exist without pivoting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distbench.config import ConfigError
from distbench.model.structure.params import PARAMS, replace_convs


def is_square(conv: nn.Conv2d) -> bool:
    """Channel symmetry applies: in == out channels, groups 1."""
    return conv.in_channels == conv.out_channels and conv.groups == 1 and conv.padding_mode == "zeros"


def has_square_kernel(conv: nn.Conv2d) -> bool:
    """Spatial symmetry applies: a kh == kw > 1 kernel (a 1x1 kernel is symmetric already)."""
    kh, kw = conv.kernel_size
    return kh == kw > 1 and conv.padding_mode == "zeros"


def _packing(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The upper triangle (with diagonal) of an n x n matrix: its rows and columns, and for every (i, j)
    of the full matrix (flattened) the index of the packed entry it reads: W = packed[index]."""
    rows, cols = torch.triu_indices(n, n)
    index = torch.empty(n, n, dtype=torch.long)
    index[rows, cols] = torch.arange(rows.numel())
    index[cols, rows] = torch.arange(rows.numel())
    return rows, cols, index.flatten()


class SymmetricConv2d(nn.Module):
    """Channel-triangular: W[i, j] = W[j, i], the upper triangle of (out, in) slices stored."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        n = conv.out_channels
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, 1
        self.channels = n
        rows, cols, index = _packing(n)
        # packed[t] holds W[rows[t], cols[t]]; index[i * n + j] says which packed slice W[i, j] reads.
        self.register_buffer("index", index, persistent=False)
        self.weight_packed = nn.Parameter(conv.weight.detach()[rows, cols].clone())  # the upper triangle
        self.bias = conv.bias

    def weight(self) -> torch.Tensor:
        n = self.channels
        return self.weight_packed[self.index].view(n, n, *self.weight_packed.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)

    def conv_counts(self) -> tuple[int, int]:
        dense = self.channels**2 * self.weight_packed[0].numel()
        return (self.weight_packed.numel() if self.weight_packed.requires_grad else 0), dense


class SpatialSymmetricConv2d(nn.Module):
    """Spatial-triangular: W[..., a, b] = W[..., b, a], the k(k+1)/2 upper-triangle coefficients of each
    k x k kernel stored (per output filter and input channel)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        k = conv.kernel_size[0]
        rows, cols, index = _packing(k)
        self.register_buffer("index", index, persistent=False)
        self.weight_packed = nn.Parameter(conv.weight.detach()[..., rows, cols].clone())  # (out, in/g, k(k+1)/2)
        self.bias = conv.bias

    def weight(self) -> torch.Tensor:
        k = self.kernel_size[0]
        return self.weight_packed[..., self.index].unflatten(-1, (k, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def conv_counts(self) -> tuple[int, int]:
        dense = self.weight_packed.shape[:2].numel() * self.kernel_size[0] ** 2
        return (self.weight_packed.numel() if self.weight_packed.requires_grad else 0), dense


class AveragedConv2d(nn.Conv2d):
    """The full weight W learned; the forward pass uses its symmetric part over the channel axes
    ((W + W^T)/2 with W^T = W.transpose(0, 1)), the kernel axes (W.transpose(2, 3)), or both (the average
    over the four transposes: the nearest weight symmetric in both). Full bytes sent."""

    def __init__(self, conv: nn.Conv2d, channel: bool, spatial: bool) -> None:
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        self.channel, self.spatial = channel, spatial
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def symmetric_weight(self) -> torch.Tensor:
        w = self.weight
        if self.channel:
            w = (w + w.transpose(0, 1)) / 2
        if self.spatial:
            w = (w + w.transpose(2, 3)) / 2
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.symmetric_weight(), self.bias)

    def conv_counts(self) -> tuple[int, int]:
        return (self.weight.numel() if self.weight.requires_grad else 0), self.weight.numel()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, channel={self.channel}, spatial={self.spatial}"


NO_SQUARE = "the model has no square conv (in == out channels) to make symmetric"
NO_KERNEL = "the model has no conv with a square kernel larger than 1x1 to make spatially symmetric"


@PARAMS.register("channel-triangular")
@PARAMS.register("symmetric")  # its first name
def channel_triangular(backbone: nn.Module) -> None:
    if replace_convs(backbone, is_square, SymmetricConv2d) == 0:
        raise ConfigError("model.param", NO_SQUARE)


@PARAMS.register("spatial-triangular")
def spatial_triangular(backbone: nn.Module) -> None:
    if replace_convs(backbone, has_square_kernel, SpatialSymmetricConv2d) == 0:
        raise ConfigError("model.param", NO_KERNEL)


@PARAMS.register("channel-average")
def channel_average(backbone: nn.Module) -> None:
    if replace_convs(backbone, is_square, lambda c: AveragedConv2d(c, channel=True, spatial=False)) == 0:
        raise ConfigError("model.param", NO_SQUARE)


@PARAMS.register("spatial-average")
def spatial_average(backbone: nn.Module) -> None:
    if replace_convs(backbone, has_square_kernel, lambda c: AveragedConv2d(c, channel=False, spatial=True)) == 0:
        raise ConfigError("model.param", NO_KERNEL)


@PARAMS.register("spatial-channel-average")
def spatial_channel_average(backbone: nn.Module) -> None:
    """Each average on the convs it applies to: both on square convs with square kernels."""

    def make(conv: nn.Conv2d) -> AveragedConv2d:
        return AveragedConv2d(conv, channel=is_square(conv), spatial=has_square_kernel(conv))

    if replace_convs(backbone, lambda c: is_square(c) or has_square_kernel(c), make) == 0:
        raise ConfigError("model.param", f"{NO_SQUARE}, and none with a square kernel larger than 1x1")
