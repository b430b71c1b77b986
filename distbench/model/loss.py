"""The training loss: softmax cross-entropy, fused on the CPU.

At many classes the loss is a large share of a CPU step. torch's `cross_entropy` is `log_softmax`, which writes
B x C log-probabilities, then `nll_loss`, whose backward writes a B x C one-hot gradient that `log_softmax`'s
backward reads back with its output: about three passes over B x C memory each way. Here the forward writes the
softmax once, a block of rows at a time small enough to stay in the cache between its passes (max, exp, sum,
divide), and the backward scales it in place into the gradient and subtracts the one-hot: one pass, where a
backward from the logits takes the exp again over memory long out of the cache. Against torch's: 1.80x and 1.83x at
128 x 100K and 1024 x 32K (one thread, `benchmarks/cross_entropy.py`); against the earlier fusion, whose backward
took the exp again: 1.16x at 1024 x 32K and 1.33x at 1024 x 8K on a quiet machine, 1.37x at 32K with the other
core busy, as a 2-rank job keeps it. On CUDA, and for dtypes below float32, torch's own kernels stand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Elements of one block of rows (fp32: 2 MB; a row longer than this is a block of its own). Measured (2-core CPU,
# quiet, 1 thread, forward+backward, medians of 9): at 1024 x 32K, 2^15: 145 ms, 2^17: 137, 2^19: 135, 2^21: 128;
# at 128 x 100K, 48, 48, 49, 48 (torch: 225 and 90). Flat from 2^17 on; a block stays well inside the cache.
BLOCK_ELEMENTS = 1 << 19


def _blocks(rows: int, cols: int):
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    return ((i, min(i + step, rows)) for i in range(0, rows, step))


def _softmax_and_logsumexp(logits: torch.Tensor, probs: torch.Tensor | None) -> torch.Tensor:
    """Each row's logsumexp; with `probs` (B x C), its softmax written there too."""
    lse = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
    for lo, hi in _blocks(*logits.shape):
        if probs is None:
            torch.logsumexp(logits[lo:hi], 1, out=lse[lo:hi])
            continue
        z, e = logits[lo:hi], probs[lo:hi]
        top = torch.amax(z, 1, keepdim=True)
        torch.sub(z, top, out=e).exp_()
        total = e.sum(1, keepdim=True)
        e.div_(total)
        torch.add(top.squeeze(1), total.log_().squeeze(1), out=lse[lo:hi])
    return lse


class _FusedCrossEntropy(torch.autograd.Function):
    """mean_i (logsumexp(z_i) - z_i[y_i]); its gradient (softmax(z_i) - onehot(y_i)) / B, made in the forward's
    softmax buffer. A second backward through the same graph (retain_graph, gradcheck) computes the softmax again
    from the logits, which are kept: the peak is the logits and one B x C buffer, as torch's."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.empty_like(logits) if ctx.needs_input_grad[0] else None  # no backward: the logsumexp alone
        lse = _softmax_and_logsumexp(logits, probs)
        ctx.save_for_backward(logits, target)
        ctx.probs = probs  # on ctx, not saved: saved tensors may not change, and this one becomes the gradient
        return (lse - logits.gather(1, target[:, None]).squeeze(1)).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logits, target = ctx.saved_tensors
        probs, ctx.probs = ctx.probs, None  # the gradient owns it now
        if probs is None:  # a second backward
            probs = torch.empty_like(logits)
            _softmax_and_logsumexp(logits, probs)
        scale = grad / logits.shape[0]
        out = probs.mul_(scale)
        out[torch.arange(len(target), device=out.device), target] -= scale
        return out, None


def _fused(logits: torch.Tensor) -> bool:
    return logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64) and logits.dim() == 2


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """`F.cross_entropy(logits, target, reduction=reduction)` for B x C logits and B class ids (reduction "mean"
    or "none"), fused on the CPU; elsewhere, or for other shapes, torch's."""
    if not _fused(logits) or reduction not in ("mean", "none"):
        return F.cross_entropy(logits, target, reduction=reduction)
    if reduction == "mean":
        return _FusedCrossEntropy.apply(logits, target)
    if logits.requires_grad and torch.is_grad_enabled():  # per-sample losses to differentiate: torch's
        return F.cross_entropy(logits, target, reduction="none")
    return _softmax_and_logsumexp(logits, None) - logits.gather(1, target[:, None]).squeeze(1)
