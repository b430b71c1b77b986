"""Backbones: images -> N features, found by name (a registry, parametrised families such as
`wrn-<depth>-<width>`, and torchvision's classification models with their classifier removed), and the
language models (`gpt-*`): token ids -> N features at every position.

Every backbone has `num_features` (N) and `input_shape` ((C, H, W), or (T,) for a language model).
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


def takes(name: str, option: str) -> bool:
    """Whether backbone `name`'s builder has argument `option` (width, seq_len, vocab_size)."""
    return name in BACKBONES and option in inspect.signature(BACKBONES.get(name)).parameters


def takes_width(name: str) -> bool:
    """Whether backbone `name` takes a feature width N (`--width`)."""
    return takes(name, "width")


def is_language_model(name: str) -> bool:
    """Whether backbone `name` reads token ids (its builder takes the vocabulary size): `gpt-*`."""
    return takes(name, "vocab_size")


def build_backbone(
    name: str,
    image_size: int | None = None,
    width: int | None = None,
    vocab_size: int | None = None,
    seq_len: int | None = None,
) -> nn.Module:
    """Backbone `name`; a language model's vocabulary is the class count (`vocab_size`), its context `seq_len`."""
    check_model_name(name)
    if width is not None and not takes_width(name):
        raise ValueError(f"{name} has no width to set; --width applies to: {', '.join(widths_taken())}")
    if image_size is not None and is_language_model(name):
        raise ValueError(f"{name} reads token ids, not images; --image-size applies to the image models")
    if seq_len is not None and not takes(name, "seq_len"):
        raise ValueError(f"{name} reads no sequences; --seq-len applies to the language models (gpt-*)")
    if name in BACKBONES:
        given = {"width": width, "vocab_size": vocab_size, "seq_len": seq_len}
        backbone = BACKBONES.get(name)(**{k: v for k, v in given.items() if v is not None and takes(name, k)})
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


from distbench.model.backbones import diracnet, gpt, tiny, wrn  # noqa: E402,F401  (registration)
