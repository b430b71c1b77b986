"""Wide residual networks WRN-d-k for 32x32 inputs (Zagoruyko & Komodakis 2016, "Wide Residual Networks").

depth d = 6n + 4: a 3x3 conv with 16 channels, three groups of n pre-activation basic blocks of widths
16k, 32k, 64k (strides 1, 2, 2), then BN-ReLU and global average pooling, so N = 64k. A 1x1 conv
shortcut is used where the shape changes (the paper's type B(3,3) block).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from distbench.model.backbones.registry import register_family


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # The projection shortcut reads the pre-activated input, as in the authors' code.
        shortcut = x if self.shortcut is None else self.shortcut(o)
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout:
            y = F.dropout(y, p=self.dropout, training=self.training)
        return self.conv2(y) + shortcut


class WideResNet(nn.Module):
    def __init__(self, depth: int, width: int, dropout: float = 0.0) -> None:
        super().__init__()
        check_depth(depth)
        n = (depth - 4) // 6
        widths = [16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        c_in, groups = 16, []
        for w, stride in zip(widths, (1, 2, 2), strict=True):
            blocks = [BasicBlock(c_in if i == 0 else w, w, stride if i == 0 else 1, dropout) for i in range(n)]
            groups.append(nn.Sequential(*blocks))
            c_in = w
        self.layer1, self.layer2, self.layer3 = groups
        self.bn = nn.BatchNorm2d(c_in)
        self.num_features = c_in
        self.input_shape = (3, 32, 32)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)


def check_depth(depth: int) -> None:
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}")


@register_family("wrn-<depth>-<width>", r"wrn-(\d+)-(\d+)", check=lambda m: check_depth(int(m.group(1))))
def wrn(match: re.Match) -> nn.Module:
    return WideResNet(int(match.group(1)), int(match.group(2)))
