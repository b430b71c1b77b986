"""Backbones (images -> N features) and the Classifier that puts a head on one.

Every backbone has `num_features` (N) and `input_shape` (C, H, W). Models never talk to process
groups: wrapping for data parallelism lives in `distbench.engines`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from distbench.registry import Registry, UnknownName

BACKBONES: Registry = Registry("model")


@dataclass(frozen=True)
class Family:
    """Parametrised backbone names, e.g. "wrn-28-10"."""

    shown: str  # the pattern as users see it: wrn-<depth>-<width>
    regex: re.Pattern
    build: Callable[[re.Match], nn.Module]
    check: Callable[[re.Match], None]  # raises ValueError for a name that matches but cannot be built


FAMILIES: list[Family] = []


def register_family(shown: str, pattern: str, check: Callable[[re.Match], None] | None = None) -> Callable:
    def add(fn: Callable[[re.Match], nn.Module]) -> Callable[[re.Match], nn.Module]:
        FAMILIES.append(Family(shown, re.compile(pattern), fn, check or (lambda m: None)))
        return fn

    return add


def _family(name: str) -> tuple[Family, re.Match] | None:
    return next(((f, m) for f in FAMILIES if (m := f.regex.fullmatch(name))), None)


class Classifier(nn.Module):
    """backbone (-> N features) followed by head (N -> C)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.backbone.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def widths_taken() -> list[str]:
    return [name for name in BACKBONES.names() if takes_width(name)]


def model_names() -> list[str]:
    from distbench.models import torchvision_models

    return BACKBONES.names() + [f.shown for f in FAMILIES] + torchvision_models.names()


def check_model_name(name: str) -> None:
    """Raise UnknownName (or ValueError for a bad family member) unless `name` can be built; builds nothing."""
    if name in BACKBONES:
        return
    if found := _family(name):
        family, match = found
        family.check(match)
        return
    from distbench.models import torchvision_models

    if name not in torchvision_models.names():
        raise UnknownName(BACKBONES.miss_message(name, model_names()))


def takes_width(name: str) -> bool:
    """Whether backbone `name` takes a feature width N (`--width`): its builder has a `width` argument."""
    return name in BACKBONES and "width" in inspect.signature(BACKBONES.get(name)).parameters


def build_backbone(name: str, image_size: int | None = None, width: int | None = None) -> nn.Module:
    check_model_name(name)
    if width is not None and not takes_width(name):
        raise ValueError(f"{name} has no width to set; --width applies to: {', '.join(widths_taken())}")
    if name in BACKBONES:
        backbone = BACKBONES.get(name)(**({"width": width} if width is not None else {}))
    elif found := _family(name):
        family, match = found
        backbone = family.build(match)
    else:
        from distbench.models import torchvision_models

        backbone = torchvision_models.build(name)
    if image_size is not None:
        c, _, _ = backbone.input_shape
        backbone.input_shape = (c, image_size, image_size)
    return backbone


from distbench.models import diracnet, tiny, wrn  # noqa: E402,F401  (registration)


def build_model(cfg, freeze=None, seed: int = 0, head_dtype: torch.dtype = torch.float32) -> Classifier:
    """`cfg` is a `distbench.config.ModelConfig`, `freeze` a `FreezeConfig` (None: learn everything).
    Weights are drawn from the global RNG (seed it first); then the convs are reparameterised and frozen."""
    from distbench.freeze import FreezeSettings, apply_freeze
    from distbench.heads import build_head
    from distbench.params import apply_param

    backbone = build_backbone(cfg.model, cfg.image_size, cfg.width)
    apply_param(cfg.param, backbone)
    if freeze is not None:
        apply_freeze(backbone, FreezeSettings.from_config(freeze))
    head = build_head(
        cfg.head,
        backbone.num_features,
        cfg.num_classes,
        bias=cfg.head_bias,
        dtype=head_dtype,
        seed=seed,
        fixed_scale=cfg.head_scale,
        row_norm=cfg.head_rows,
        scale_init=cfg.head_scale_init,
    )
    return Classifier(backbone, head)
