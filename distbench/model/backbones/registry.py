"""Where backbones are found by name: single backbones (`BACKBONES`) and parametrised families
(`register_family`, e.g. "wrn-<depth>-<width>"). The backbones register themselves here; building by name is
`distbench.model.backbones.build_backbone`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from distbench.config import Registry

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
