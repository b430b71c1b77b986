"""Dirac parameterisation (Zagoruyko & Komodakis 2017, "DiracNets: training very deep neural networks
without skip-connections"): W = diag(a) I + diag(b) W_norm, with I the Dirac delta (identity) kernel,
W_norm each filter divided by its L2 norm, a initialised to 1 and b to 0.1.

The conv weight stays a full learned tensor, and a and b add 2 x out parameters: Dirac trades no bytes
away, it is here to compare against (and to train plain deep nets without skip connections).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distbench.model.structure.params import PARAMS, replace_convs


class DiracConv2d(nn.Conv2d):
    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = False
    ) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=bias)
        self.alpha = nn.Parameter(torch.ones(c_out))
        self.beta = nn.Parameter(torch.full((c_out,), 0.1))
        delta = torch.zeros_like(self.weight)
        nn.init.dirac_(delta)  # identity over the first min(in, out) channels
        self.register_buffer("delta", delta, persistent=False)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> DiracConv2d:
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride, conv.padding, conv.bias is not None
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def dirac_weight(self) -> torch.Tensor:
        w_norm = F.normalize(self.weight.flatten(1), dim=1).view_as(self.weight)
        return self.alpha.view(-1, 1, 1, 1) * self.delta + self.beta.view(-1, 1, 1, 1) * w_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.dirac_weight(), self.bias)


def _diracable(conv: nn.Conv2d) -> bool:
    k = conv.kernel_size
    return (
        conv.groups == 1 and k[0] == k[1] and k[0] % 2 == 1 and conv.padding_mode == "zeros" and conv.dilation == (1, 1)
    )


@PARAMS.register("dirac")
def dirac(backbone: nn.Module) -> None:
    replace_convs(backbone, _diracable, DiracConv2d.from_conv)
