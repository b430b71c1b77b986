"""A tiny CNN for fast CPU runs and CI: four conv-BN-ReLU stages on 32x32 inputs, N = 256."""

from __future__ import annotations

import torch
from torch import nn

from distbench.models import BACKBONES


def conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers, c_in = [], 3
        for i, w in enumerate(widths):
            layers.append(conv_bn(c_in, w, stride=1 if i == 0 else 2))
            c_in = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in
        self.input_shape = (3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


@BACKBONES.register("tiny")
def tiny() -> nn.Module:
    return TinyCNN()
