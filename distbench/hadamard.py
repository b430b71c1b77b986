"""Hadamard maths for the fixed heads: Sylvester blocks, the fast Walsh–Hadamard transform (FWHT) and
seeded random sign diagonals. The heads that use them live in `distbench.heads`.

Sylvester's construction: H[i, j] = (-1)^popcount(i & j), H_2K = [[H_K, H_K], [H_K, -H_K]]. It is the
matrix scipy.linalg.hadamard returns, and so the one the authors' HadamardProj uses (Hoffer et al. 2018).
"""

from __future__ import annotations

import functools
from contextlib import nullcontext

import torch

# Radix of a stage, measured (2-core CPU, 1 thread, forward only): at 256 x 2048, radix-2 add/sub
# butterflies took 20 ms, radix 8 5.6, 16 2.1, 32 2.2, 64 4.1; at 16 x 131072, radix 2 128 ms, 16 26,
# 32 19, 64 23. Radix-2 stages with a short inner stride do not vectorise, and radix 32 needs 5x
# fewer kernels; the 32 x 32 matmuls that replace them are cheap.
RADIX = 32


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


@functools.cache
def _hadamard(r: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return hadamard_block(r, r, dtype).to(device)


def _stages(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Sylvester-ordered FWHT along the last dimension, as radix-r butterflies.

    Sylvester's H_K = H_(K/r) ⊗ H_r (Kronecker), so with the last dimension viewed as
    (K / (r inner), r, inner), each stage applies H_r along the middle axis; r = 2 would be the textbook
    a + b, a - b butterfly.
    """
    k = x.shape[-1]
    if k == 1:
        return x.clone()  # a fresh tensor, as for every other K: callers may write into it
    # In x's own dtype even under autocast, which would run these matmuls in bf16/fp16 and round
    # every stage: the transform is a sum, not a matmul worth lower precision.
    device = x.device.type
    no_autocast = torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext()
    y = x.reshape(-1, k)
    inner = 1
    with no_autocast:
        while inner < k:
            r = min(k // inner, RADIX)
            h = _hadamard(r, x.dtype, x.device)  # symmetric, so h or h.T alike
            y = y.reshape(-1, r) @ h if inner == 1 else torch.matmul(h, y.reshape(-1, r, inner))
            inner *= r
    return y.reshape(x.shape)


class _FWHT(torch.autograd.Function):
    """H is symmetric, so the vector-Jacobian product of x -> x H is g -> g H: the same transform.
    Nothing is saved for backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return _stages(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return _FWHT.apply(grad)  # through apply, so double backward works too


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh–Hadamard transform along the last dimension, Sylvester (natural) order:
    fwht(x) == x @ hadamard_block(K, K) for K = x.shape[-1], which must be a power of two.
    O(K log K) per row; differentiable."""
    k = x.shape[-1]
    if k < 1 or k & (k - 1):
        raise ValueError(f"fwht: last dimension must be a power of two, got {k}")
    return _FWHT.apply(x)


def random_signs(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A rows x cols float32 tensor of seeded random +-1 (the diagonals D_b of a randomized Hadamard
    transform). Its own generator: building a head never moves the global RNG."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (rows, cols), generator=gen).mul_(2).sub_(1).float()
