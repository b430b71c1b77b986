"""DiracNet-d-k for 32x32 inputs (Zagoruyko & Komodakis 2017): a plain stack with no skip connections,
trainable because every 3x3 conv is Dirac-parameterised, W = diag(a) I + diag(b) W_norm.

As in the authors' CIFAR definition: depth d = 6n + 4, a 3x3 stem with 16 channels, three groups of 2n
convs of widths 16k, 32k, 64k separated by 2x2 max-pooling, then BN-ReLU and global average pooling
(N = 64k). Each conv is preceded by BN-ReLU; the authors' NCReLU (which doubles the channels into every
conv) is replaced by ReLU here, which keeps the conv shapes of a WRN of the same d and k.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from distbench.model.backbones.registry import register_family
from distbench.model.backbones.wrn import check_depth
from distbench.model.structure.dirac import DiracConv2d


class DiracNet(nn.Module):
    def __init__(self, depth: int, width: int) -> None:
        super().__init__()
        check_depth(depth)
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        c_in, groups = 16, []
        for w in (16 * width, 32 * width, 64 * width):
            layers = []
            for i in range(2 * n):
                layers += [
                    nn.BatchNorm2d(c_in if i == 0 else w),
                    nn.ReLU(inplace=True),
                    DiracConv2d(c_in if i == 0 else w, w, 3, padding=1),
                ]
            groups.append(nn.Sequential(*layers))
            c_in = w
        self.layer1, self.layer2, self.layer3 = groups
        self.bn = nn.BatchNorm2d(c_in)
        self.num_features = c_in
        self.input_shape = (3, 32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.conv1(x))
        x = self.layer2(F.max_pool2d(x, 2))
        x = self.layer3(F.max_pool2d(x, 2))
        return F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)


@register_family("diracnet-<depth>-<width>", r"diracnet-(\d+)-(\d+)", check=lambda m: check_depth(int(m.group(1))))
def diracnet(match: re.Match) -> nn.Module:
    return DiracNet(int(match.group(1)), int(match.group(2)))
