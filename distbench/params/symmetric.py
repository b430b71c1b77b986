"""Channel-wise symmetric convolutions: W[i, j] = W[j, i] for every spatial position.

For a square conv (in == out == n channels, groups 1) only the upper triangle including the diagonal
is stored: n(n+1)/2 filters-slices instead of n^2, and W = triu(V) + triu(V, 1)^T is rebuilt in the
forward pass by one gather. The stored parameters, and so the gradient bytes, drop to (n+1)/(2n).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distbench.config import ConfigError
from distbench.params import PARAMS, replace_convs


def is_square(conv: nn.Conv2d) -> bool:
    return conv.in_channels == conv.out_channels and conv.groups == 1 and conv.padding_mode == "zeros"


class SymmetricConv2d(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        n = conv.out_channels
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, 1
        self.channels = n
        rows, cols = torch.triu_indices(n, n)
        # packed[t] holds W[rows[t], cols[t]]; index[i, j] says which packed slice W[i, j] reads.
        index = torch.empty(n, n, dtype=torch.long)
        index[rows, cols] = torch.arange(rows.numel())
        index[cols, rows] = torch.arange(rows.numel())
        self.register_buffer("index", index.flatten(), persistent=False)
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


@PARAMS.register("symmetric")
def symmetric(backbone: nn.Module) -> None:
    if replace_convs(backbone, is_square, SymmetricConv2d) == 0:
        raise ConfigError("model.param", "the model has no square conv (in == out channels) to make symmetric")
