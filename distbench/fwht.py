"""The fixed Hadamard head without its C x N matrix: logits from a fast Walsh–Hadamard transform.

`FWHTHead` computes the same logits as `FixedHead` with W = `hadamard_block(C, N)` (Hoffer et al. 2018),
logits = alpha * W xhat + b, in O(B (C + N + m log m)) time and no stored weight, where m is
2^ceil(log2 min(C, N)). The reduction from the full transform of size K = 2^ceil(log2 max(C, N)) to one of
size m uses only the Kronecker structure of Sylvester's construction, H[i, j] = (-1)^popcount(i & j):
- for j < m, H[i, j] depends only on i mod m, so output i >= m repeats output i mod m;
- for i < m, H[i, j] = H[i, j mod m], so inputs j and j + m can be summed before the transform.
"""

from __future__ import annotations

import functools
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from distbench.heads import hadamard_block

# Radix of a stage, measured (2-core CPU, 1 thread, forward only): at 256 x 2048, radix-2 add/sub
# butterflies took 20 ms, radix 8 5.6, 16 2.1, 32 2.2, 64 4.1; at 16 x 131072, radix 2 128 ms, 16 26,
# 32 19, 64 23. Radix-2 stages with a short inner stride do not vectorise, and radix 32 needs 5x
# fewer kernels; the 32 x 32 matmuls that replace them are cheap.
RADIX = 32


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


class FWHTHead(nn.Module):
    """logits = alpha * H xhat + b with H the C x N Sylvester Hadamard block, computed by an FWHT.

    Same parameters, initialisation and logits as `FixedHead` over `hadamard_block(C, N)`, but holds no
    matrix (no buffer at all), so `fixed_weights` is empty.

    Works in float32 (float64 for float64 input), whatever the input dtype or autocast: every stage of the
    transform rounds its output to the working dtype, where the dense head's one bf16 matmul accumulates
    in float32 and rounds once. The cost is small: the working tensor is B x m, and the B x C logits are
    float32 anyway because alpha and b are (the dense head's are too).
    """

    fixed_weights = ()  # nothing frozen to count: the transform has no weights

    def __init__(self, in_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.block = 1 << (min(in_features, num_classes) - 1).bit_length()  # m = 2^ceil(log2 min(C, N))
        init = 1.0 / math.sqrt(num_classes)
        self.scale = nn.Parameter(torch.tensor([init]))  # shape (1,), as FixedHead
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-init, init)) if bias else None
        self.eps = 1e-8

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n, c = self.block, self.in_features, self.num_classes
        lead = x.shape[:-1]
        x = x.reshape(-1, n).to(torch.promote_types(x.dtype, torch.float32))
        xhat = x / (x.norm(dim=1, keepdim=True) + self.eps)
        # Inputs j and j + m meet the same column of H's first m rows: fold N onto m (zero-padding first).
        if n > m:
            xhat = F.pad(xhat, (0, -n % m)).view(len(xhat), -(-n // m), m).sum(1)
        elif n < m:
            xhat = F.pad(xhat, (0, m - n))
        # alpha scales the B x m transform rather than the B x C logits: one pass over them fewer each
        # way, and alpha's gradient becomes a reduction over B x m.
        y = self.scale * fwht(xhat)
        return _TileAddBias.apply(y, self.bias, c).view(*lead, c)


class _TileAddBias(torch.autograd.Function):
    """out[:, i] = y[:, i mod m] + b[i] for i < C, written once into a contiguous B x C tensor.

    The same through autograd (expand, add, reshape, slice) costs the B x C logits two more passes:
    slicing C from ceil(C/m) m makes backward zero-fill and copy a padded gradient. Here backward
    reads the gradient twice: once for b, once for y.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, y: torch.Tensor, bias: torch.Tensor | None, c: int
    ) -> torch.Tensor:
        rows, m = y.shape
        full = c // m * m
        out = torch.empty(rows, c, dtype=torch.result_type(y, bias) if bias is not None else y.dtype, device=y.device)
        blocks = out[:, :full].view(rows, c // m, m)
        if bias is None:
            blocks.copy_(y.unsqueeze(1).expand_as(blocks))
            out[:, full:].copy_(y[:, : c - full])
        else:
            torch.add(y.unsqueeze(1), bias[:full].view(-1, m), out=blocks)
            torch.add(y[:, : c - full], bias[full:], out=out[:, full:])
        ctx.m = m
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        rows, c = grad.shape
        m = ctx.m
        full = c // m * m
        grad_y = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_y = grad[:, :full].reshape(rows, c // m, m).sum(1)
            grad_y[:, : c - full] += grad[:, full:]
        if ctx.needs_input_grad[1]:
            grad_bias = grad.sum(0)
        return grad_y, grad_bias, None
