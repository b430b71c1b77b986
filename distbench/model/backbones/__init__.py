"""Backbones: images -> N features, found by name (a registry, parametrised families such as
`wrn-<depth>-<width>`, and torchvision's classification models with their classifier removed).

Every backbone has `num_features` (N) and `input_shape` (C, H, W).
"""

from __future__ import annotations

import inspect

from torch import nn

from distbench.config import UnknownName
from distbench.model.backbones.registry import BACKBONES, FAMILIES, _family


def widths_taken() -> list[str]:
    return [name for name in BACKBONES.names() if takes_width(name)]


def model_names() -> list[str]:
    from distbench.model.backbones import torchvision_models

    return BACKBONES.names() + [f.shown for f in FAMILIES] + torchvision_models.names()


def check_model_name(name: str) -> None:
    """Raise UnknownName (or ValueError for a bad family member) unless `name` can be built; builds nothing."""
    if name in BACKBONES:
        return
    if found := _family(name):
        family, match = found
        family.check(match)
        return
    from distbench.model.backbones import torchvision_models

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
        from distbench.model.backbones import torchvision_models

        backbone = torchvision_models.build(name)
    if image_size is not None:
        c, _, _ = backbone.input_shape
        backbone.input_shape = (c, image_size, image_size)
    return backbone


from distbench.model.backbones import diracnet, tiny, wrn  # noqa: E402,F401  (registration)
