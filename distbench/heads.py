"""Classifier heads: the last layer, N features -> C logits.

`learned` is the usual linear layer. The fixed heads follow Hoffer, Hubara & Soudry 2018 ("Fix your
classifier: the marginal value of training the last weight layer"): logits = alpha * W xhat + b, with
xhat = x / ||x||_2, W a fixed C x N matrix, alpha one learned scalar and b an optional learned bias.
W is a non-persistent buffer: it is never a parameter, so DDP and DeepSpeed never reduce it, and it
is rebuilt from (C, N, seed) instead of being stored in checkpoints.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from distbench.registry import Registry

log = logging.getLogger(__name__)

HEADS: Registry = Registry("head")


def hadamard_block(rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The top-left rows x cols block of a Sylvester Hadamard matrix, entries +-1.

    H[i, j] = (-1)^popcount(i & j). Built bit by bit, so memory is O(rows x cols) and the full
    2^k x 2^k square (131072^2 entries at 100K classes) is never materialised.
    """
    period = 1 << max(cols - 1, 1).bit_length()
    if rows > period:  # row i depends only on i mod 2^ceil(log2 cols): build one period and repeat it
        return hadamard_block(period, cols, dtype).repeat(-(-rows // period), 1)[:rows]
    i = torch.arange(rows)
    j = torch.arange(cols)
    odd = torch.zeros(rows, cols, dtype=torch.bool)
    for bit in range(max(rows - 1, cols - 1, 1).bit_length()):
        odd ^= ((i >> bit) & 1).bool()[:, None] & ((j >> bit) & 1).bool()[None, :]
    return (1 - 2 * odd.to(torch.int8)).to(dtype)


def orthogonal_block(rows: int, cols: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows of a seeded random (semi-)orthogonal matrix, each of norm sqrt(cols).

    For rows <= cols the rows are orthonormal before scaling. For rows > cols at most `cols` rows can
    be orthogonal, so the columns are orthonormal instead (W^T W = I) and each row is then rescaled.
    The norm sqrt(cols) matches a Hadamard row, so both fixed heads start from the same alpha.
    Uses its own generator: building a head never moves the global RNG.
    """
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))  # make the factorisation unique (Haar-distributed q)
    w = q.T if rows <= cols else q
    w = F.normalize(w, dim=1) * math.sqrt(cols)
    return w.to(dtype)


class LearnedHead(nn.Linear):
    """The baseline: a learned N -> C linear layer with bias."""

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, **_: object) -> None:
        super().__init__(in_features, num_classes, bias=bias)


class FixedHead(nn.Module):
    """logits = alpha * W xhat + b with W fixed (Hoffer et al. 2018, eq. 2).

    alpha starts at 1/sqrt(C) and b at U(-1/sqrt(C), 1/sqrt(C)), as in the authors' code.
    """

    fixed_weights = ("weight",)  # counted as frozen weights by distbench.comm.param_counts

    def __init__(self, weight: torch.Tensor, bias: bool = True) -> None:
        super().__init__()
        num_classes, self.in_features = weight.shape
        self.num_classes = num_classes
        self.register_buffer("weight", weight, persistent=False)
        init = 1.0 / math.sqrt(num_classes)
        # Shape (1,), as in the authors' code; DeepSpeed 0.19.8 also cannot broadcast 0-dim parameters.
        self.scale = nn.Parameter(torch.tensor([init]))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-init, init)) if bias else None
        self.eps = 1e-8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xhat = x / (x.norm(dim=1, keepdim=True) + self.eps)
        logits = self.scale * F.linear(xhat, self.weight.to(xhat.dtype))
        return logits if self.bias is None else logits + self.bias


@HEADS.register("learned")
def learned(in_features: int, num_classes: int, bias: bool = True, **_: object) -> nn.Module:
    return LearnedHead(in_features, num_classes, bias=bias)


def warn_shared_rows(head: str, in_features: int, num_classes: int) -> None:
    """Row i of the C x N Hadamard block depends only on i mod 2^ceil(log2 N): past that many classes,
    classes share a direction and differ only by bias. Bytes are unaffected; accuracy is capped."""
    distinct = 1 << max(in_features - 1, 1).bit_length()
    if num_classes > distinct:
        log.warning(
            "%s head: %d classes > %d distinct Hadamard rows for %d features; classes that share a row differ "
            "only by their bias (use fixed-orthogonal for distinct rows)",
            head,
            num_classes,
            distinct,
            in_features,
        )


@HEADS.register("fixed")
def fixed_hadamard(
    in_features: int, num_classes: int, bias: bool = True, dtype: torch.dtype = torch.float32, **_: object
) -> nn.Module:
    warn_shared_rows("fixed", in_features, num_classes)
    return FixedHead(hadamard_block(num_classes, in_features, dtype), bias=bias)


@HEADS.register("fixed-orthogonal")
def fixed_orthogonal(
    in_features: int,
    num_classes: int,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **_: object,
) -> nn.Module:
    return FixedHead(orthogonal_block(num_classes, in_features, seed, dtype), bias=bias)


@HEADS.register("fixed-fwht")
def fixed_fwht(in_features: int, num_classes: int, bias: bool = True, **_: object) -> nn.Module:
    """The `fixed` head's logits from a fast Walsh–Hadamard transform: no C x N matrix is built or stored."""
    from distbench.fwht import FWHTHead  # here: distbench.fwht imports hadamard_block from this module

    warn_shared_rows("fixed-fwht", in_features, num_classes)  # the same logits as `fixed`, the same cap
    return FWHTHead(in_features, num_classes, bias=bias)


def build_head(
    name: str,
    in_features: int,
    num_classes: int,
    *,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> nn.Module:
    return HEADS.get(name)(in_features, num_classes, bias=bias, dtype=dtype, seed=seed)
