"""Cheaper parameterisations of conv weights (Zagoruyko et al.), applied in place to a backbone.

A parameterisation stores fewer (or differently shaped) learned tensors and rebuilds the conv weight
in the forward pass. Only what is stored is an nn.Parameter, so only that is communicated.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from distbench.config import Registry

PARAMS: Registry = Registry("parameterisation")


def replace_convs(
    backbone: nn.Module, take: Callable[[nn.Conv2d], bool], make: Callable[[nn.Conv2d], nn.Module]
) -> int:
    """Swap every Conv2d that `take` accepts for `make(conv)`; return how many were swapped."""
    chosen = [(n, m) for n, m in backbone.named_modules() if type(m) is nn.Conv2d and take(m)]
    for name, conv in chosen:
        backbone.set_submodule(name, make(conv))
    return len(chosen)


@PARAMS.register("none")
def _none(backbone: nn.Module) -> None:
    return None


def apply_param(name: str, backbone: nn.Module) -> None:
    PARAMS.get(name)(backbone)
