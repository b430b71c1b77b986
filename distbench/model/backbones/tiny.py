"""Tiny CNNs for fast CPU runs, CI and the large-class study: four conv-BN-ReLU stages on 32x32 inputs.

`tiny` has stages N/8, N/4, N/2, N (N = 256 by default: 32, 64, 128, 256); `tiny-wide` the same N with its
three hidden stages twice as wide (N/4, N/2, N), about 2.5 times the parameters: the two let a study vary
the feature width N and the body's capacity separately (`--width N`)."""

from __future__ import annotations

import torch
from torch import nn

from distbench.model.backbones.registry import BACKBONES


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


def stage_widths(width: int, hidden: int) -> tuple[int, ...]:
    """Stages ending at N = `width`, the hidden three at `hidden` x (N/8, N/4, N/2), at least 4 channels."""
    return (*(max(4, hidden * width >> k) for k in (3, 2, 1)), width)


@BACKBONES.register("tiny")
def tiny(width: int = 256) -> nn.Module:
    return TinyCNN(stage_widths(width, 1))


@BACKBONES.register("tiny-wide")
def tiny_wide(width: int = 256) -> nn.Module:
    return TinyCNN(stage_widths(width, 2))
