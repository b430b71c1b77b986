"""Freeze rules after Rosenfeld & Tsotsos 2018 ("Intriguing properties of randomly weighted networks:
generalizing while learning next to nothing"): learn a fraction of each conv layer's filters, or k
filters, or only BatchNorm (and a language model's LayerNorms), or only chosen blocks, or everything but a
language model's token embedding (`embedding`); everything else keeps its random initialisation (or is
zeroed: the paper's dagger column).

The per-filter rules slice the 4-D weight (out, in, kh, kw) along one dimension, `--freeze-dim`: whole
output filters (`out`, the default), input channels (`in`), kernel rows (`kh`) or kernel columns (`kw`),
as the paper's Figure 2 compares them (whole filters do best). A dimension of size 1 (a 1x1 conv's kernel
rows) has nothing to slice: the rule learns at least one slice, so such a conv is learned whole.

DDP and DeepSpeed leave a tensor out of their buckets only when the *whole* tensor has
requires_grad=False. So a partly frozen conv is stored in two pieces (`split` mode, the default): the
learned slice is an nn.Parameter, the fixed one a buffer, and only learned bytes are sent.
`mask` mode keeps the whole weight a Parameter and zeroes the fixed slice's gradient, as the published
code does: it learns the same thing and sends every byte. The contrast is the point.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distbench.config import ConfigError, FreezeConfig, Registry
from distbench.model.contracts import CountsItsConvs, LanguageModel


@dataclass(frozen=True)
class Rule:
    """A parsed freeze spec: what the backbone learns. `kind` is the spec's name; `fraction` (fraction:P),
    `count` (filters:K) and `blocks` (blocks:a,b) its argument. Parsed once by `parse_rule`; everything that
    needs to know what a spec means asks the rule, never the text."""

    kind: str
    fraction: float | None = None
    count: int | None = None
    blocks: tuple[str, ...] = ()
    spec: str = ""  # the text it was parsed from, as the user wrote it (run ids and labels keep it)

    @property
    def per_filter(self) -> bool:
        """The rule learns some filters of every conv (fraction, filters)."""
        return self.kind in ("fraction", "filters")

    @property
    def bn_only(self) -> bool:
        return self.kind == "bn"

    @property
    def learns_everything(self) -> bool:
        """`none`, and `fraction:1.0`, which learns every filter."""
        return self.kind == "none" or (self.kind == "fraction" and self.fraction >= 1.0)

    def learned_count(self, size: int) -> int:
        """Learned slices of a weight dimension of `size` slices (filters, input channels, kernel rows or
        columns; per-filter rules only). Never 0: a dimension of size 1 is learned whole."""
        if self.kind == "fraction":  # "the first p coefficients": ceil(p x size), at least one
            return max(1, math.ceil(self.fraction * size - 1e-9))
        if self.kind == "filters":
            return min(self.count, size)
        raise ValueError(f"rule {self} is not per filter")

    def __str__(self) -> str:
        return self.spec or self.kind

    @property
    def slug(self) -> str:
        """The spec as a run-id part: fraction:0.1 -> fraction0.1, blocks:layer3,layer4 -> blockslayer3+layer4."""
        return str(self).replace(":", "").replace(",", "+")


RULES: Registry = Registry("freeze rule")
FIELD = "freeze.freeze"


def _number(arg: str, kind: type, spec: str) -> float:
    try:
        return kind(arg)
    except ValueError:
        raise ConfigError(FIELD, f"{spec!r}: {arg!r} is not a{'n integer' if kind is int else ' number'}") from None


@RULES.register("none")
def _none(arg: str | None, spec: str) -> Rule:
    return Rule("none")


@RULES.register("fraction")
def _fraction(arg: str | None, spec: str) -> Rule:
    p = _number(arg or "", float, spec)
    if not 0 < p <= 1:
        raise ConfigError(FIELD, f"{spec!r}: the fraction must be in (0, 1], got {p}")
    return Rule("fraction", fraction=p)


@RULES.register("filters")
def _filters(arg: str | None, spec: str) -> Rule:
    k = _number(arg or "", int, spec)
    if k < 1:
        raise ConfigError(FIELD, f"{spec!r}: the filter count must be >= 1, got {k}")
    return Rule("filters", count=k)


@RULES.register("bn")
def _bn(arg: str | None, spec: str) -> Rule:
    return Rule("bn")


@RULES.register("embedding")
def _embedding(arg: str | None, spec: str) -> Rule:
    """A language model with its token embedding fixed (random, or zero with --frozen-init zero), everything else
    learned: Hoffer et al.'s fixed input embeddings."""
    return Rule("embedding")


@RULES.register("blocks")
def _blocks(arg: str | None, spec: str) -> Rule:
    names = tuple(n for n in (arg or "").split(",") if n)
    if not names:
        raise ConfigError(FIELD, f"{spec!r}: name at least one submodule, e.g. blocks:layer4")
    return Rule("blocks", blocks=names)


@functools.cache
def parse_rule(spec: str) -> Rule:
    """'fraction:0.1' -> Rule. Unknown names raise UnknownName, bad arguments ConfigError."""
    name, _, arg = spec.partition(":")
    return dataclasses.replace(RULES.get(name)(arg or None, spec), spec=spec)


# ------------------------------------------------------------------------------------------ split convs
DIMS = ("out", "in", "kh", "kw")  # --freeze-dim: the weight dimension (0, 1, 2, 3) a per-filter rule slices


class SplitConv2d(nn.Module):
    """A Conv2d whose weight is sliced along `dim`: the first k slices learned (a Parameter), the rest
    fixed (a buffer). Either way the fixed slice gets no weight gradient at all.

    `dim` 0 (whole filters): the two filter groups run as two convolutions and the outputs are concatenated
    (`benchmarks/split_forward.py` measured this against rebuilding the weight with torch.cat: see
    benchmarks/README.md); the bias is split with its filters.
    `dim` 1, 2, 3 (input channels, kernel rows, kernel columns): every filter is partly learned, so the bias
    stays a learned Parameter whole. Input channels (groups 1): two convolutions on the two input-channel
    groups, summed (the bias added once). `benchmarks/split_forward.py --dim in` measured this against
    rebuilding the weight with torch.cat and running one conv: the two convs were faster on this project's
    2-core CPU (rebuilt / summed 1.1 to 1.3 at 10% and at 50% learned), as they compute the weight
    gradient of the learned channels only. Kernel rows and columns, and input channels of grouped convs,
    rebuild the weight with torch.cat and run one conv (padding spans a kernel cut; channel groups would
    have to be cut group by group).
    """

    fixed_weights = ("weight_fixed", "bias_fixed")  # counted as frozen weights; never broadcast by DDP

    def __init__(self, conv: nn.Conv2d, learned: int, dim: int = 0) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.dim = dim
        if conv.groups != 1 and dim == 0:
            raise ConfigError(FIELD, "grouped convolutions cannot be split by filter (try --freeze-dim in, kh or kw)")
        if conv.padding_mode != "zeros":
            raise ConfigError(FIELD, f"padding mode {conv.padding_mode!r} is not supported when splitting")
        w = conv.weight.detach()
        self.weight_learned = nn.Parameter(w.narrow(dim, 0, learned).clone())
        self.register_buffer("weight_fixed", w.narrow(dim, learned, w.shape[dim] - learned).clone())
        self.register_buffer("bias_fixed", None)
        if conv.bias is None:
            self.bias_learned = None
        elif dim == 0:
            self.bias_learned = nn.Parameter(conv.bias.detach()[:learned].clone())
            self.bias_fixed = conv.bias.detach()[learned:].clone()
        else:
            self.bias_learned = nn.Parameter(conv.bias.detach().clone())

    def conv_counts(self) -> tuple[int, int]:
        learned = self.weight_learned.numel() if self.weight_learned.requires_grad else 0
        return learned, self.weight_learned.numel() + self.weight_fixed.numel()

    def weight(self) -> torch.Tensor:
        """The whole weight, as the unsplit conv held it."""
        return torch.cat([self.weight_learned, self.weight_fixed], dim=self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if self.dim == 1 and self.groups == 1:
            k = self.weight_learned.shape[1]
            learned = F.conv2d(x[:, :k], self.weight_learned, self.bias_learned, *args)
            return learned + F.conv2d(x[:, k:], self.weight_fixed, None, *args)
        if self.dim != 0:
            return F.conv2d(x, self.weight(), self.bias_learned, *args)
        learned = F.conv2d(x, self.weight_learned, self.bias_learned, *args)
        fixed = F.conv2d(x, self.weight_fixed, self.bias_fixed, *args)
        return torch.cat([learned, fixed], dim=1)


def _mask_gradient(param: nn.Parameter, learned: int, dim: int = 0) -> None:
    """Zero the fixed slice's gradient (along `dim`), as the published code does. The hook runs before DDP's
    post-accumulate hooks, so the zeros are what DDP all-reduces: every byte still goes out."""
    mask = torch.zeros_like(param, dtype=torch.bool)
    mask.narrow(dim, 0, learned).fill_(True)
    param.register_hook(lambda g: g * mask)


# ----------------------------------------------------------------------------------------- applying rules
@dataclass(frozen=True)
class FreezeSettings:
    rule: Rule
    mode: str = "split"  # split | mask
    bn: str = "learned"  # BatchNorm affine of partly frozen layers: learned | frozen
    frozen_init: str = "random"  # random | zero
    dim: str = "out"  # the weight dimension per-filter rules slice: out | in | kh | kw

    def __post_init__(self) -> None:
        if self.dim not in DIMS:
            raise ConfigError("freeze.freeze_dim", f"unknown value {self.dim!r}; choose from: {', '.join(DIMS)}")
        if self.dim != "out" and not self.rule.per_filter:
            raise ConfigError("freeze.freeze_dim", f"applies only to fraction:P and filters:K, not {self.rule}")

    @classmethod
    def from_config(cls, cfg: FreezeConfig) -> FreezeSettings:
        return cls(parse_rule(cfg.freeze), cfg.freeze_mode, cfg.bn, cfg.frozen_init, cfg.freeze_dim)

    @property
    def slug(self) -> str:
        return slug(self.rule, self.dim)


def slug(rule: Rule, dim: str = "out") -> str:
    """A rule as a run-id part, with the dimension where it is not `out`: fraction0.1, fraction0.1-in."""
    return rule.slug + (f"-{dim}" if dim != "out" else "")


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm)


def apply_freeze(backbone: nn.Module, settings: FreezeSettings) -> None:
    """Freeze parts of `backbone` in place. The head is left alone: it follows --head."""
    rule = settings.rule
    if rule.kind == "none":
        return
    if rule.per_filter:
        _freeze_filters(backbone, settings)
        return
    if rule.bn_only:  # BatchNorm, GroupNorm and LayerNorm: a language model's norms too
        learn = [m for m in backbone.modules() if _is_bn(m)]
    elif rule.kind == "embedding":
        if not isinstance(backbone, LanguageModel):
            raise ConfigError(FIELD, "'embedding' fixes a language model's token embedding: use --model gpt-*")
        fixed = {id(p) for p in backbone.token_embedding.parameters()}
        learn = [m for m in backbone.modules() if not any(id(p) in fixed for p in m.parameters(recurse=False))]
    else:
        children = dict(backbone.named_modules())
        missing = [b for b in rule.blocks if b not in children or b == ""]
        if missing:
            top = ", ".join(n for n, m in backbone.named_children() if any(True for _ in m.parameters()))
            raise ConfigError(FIELD, f"no submodule {missing[0]!r} in the model; top-level blocks: {top}")
        learn = [children[b] for b in rule.blocks]
    # a module's own parameters, or (blocks:) all under it
    keep = {id(p) for m in learn for p in m.parameters(recurse=rule.kind == "blocks")}
    for m in backbone.modules():
        for p in m.parameters(recurse=False):
            if id(p) not in keep:
                p.requires_grad_(False)
                if settings.frozen_init == "zero" and not _is_bn(m):
                    p.data.zero_()


def _freeze_filters(backbone: nn.Module, settings: FreezeSettings) -> None:
    convs = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(FIELD, "the model has no conv layer to freeze filters of")
    dim = DIMS.index(settings.dim)
    for name, conv in convs:
        n = conv.weight.shape[dim]
        k = settings.rule.learned_count(n)
        if settings.frozen_init == "zero":
            with torch.no_grad():
                conv.weight.narrow(dim, k, n - k).zero_()
                if conv.bias is not None and dim == 0:
                    conv.bias[k:].zero_()
        if settings.mode == "split":
            if k < n:
                backbone.set_submodule(name, SplitConv2d(conv, k, dim))
        else:
            conv.learned_slice = (dim, k)
            _mask_gradient(conv.weight, k, dim)
            if dim == 0:  # the FSDP engine masks these rows of the sharded gradient itself
                conv.learned_filters = k
                if conv.bias is not None:
                    _mask_gradient(conv.bias, k)
    if settings.bn == "frozen":
        for m in backbone.modules():
            if _is_bn(m):
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)


def conv_learned_fraction(model: nn.Module) -> float:
    """Learned conv-weight elements / the elements of the same convs stored densely (1.0 without convs).

    It describes what is learned, not what is sent: a masked conv counts only its learned slice, like
    its split twin. Split and reparameterised convs report through their own `conv_counts()`."""
    learned = total = 0
    for m in model.modules():
        if isinstance(m, CountsItsConvs):
            n_learned, t = m.conv_counts()
        elif isinstance(m, nn.Conv2d):
            t = m.weight.numel()
            dim, k = getattr(m, "learned_slice", (0, m.out_channels))
            n_learned = t * k // m.weight.shape[dim] if m.weight.requires_grad else 0
        else:
            continue
        learned, total = learned + n_learned, total + t
    return learned / total if total else 1.0
