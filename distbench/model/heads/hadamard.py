"""Hadamard maths for the fixed heads: Sylvester blocks, the fast Walsh–Hadamard transform (FWHT), seeded
random sign diagonals, and the subsampled randomized Hadamard transform (SRHT) of `fixed-srht`. The heads that
use them live in `distbench.model.heads`.

The SRHT transforms B x C values, so unlike the FWHT head (B x m) its cost grows with C, and its temporaries
would too: `srht` keeps them to one chunk of blocks at a time (the sign product, every radix stage and the
bias in the cache), writes each logit once, and differentiates by the same transform of the logits'
gradient (H is symmetric) rather than by saved stages. On CUDA the `fast-hadamard-transform` kernel (the
`gpu` extra) replaces the radix stages when it is installed.

Sylvester's construction: H[i, j] = (-1)^popcount(i & j), H_2K = [[H_K, H_K], [H_K, -H_K]]. It is the
matrix scipy.linalg.hadamard returns, and so the one the authors' HadamardProj uses (Hoffer et al. 2018).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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


def no_autocast(device: torch.device):
    """In the working dtype even under autocast, which would run the stages' matmuls in bf16/fp16 and round
    every stage: the transform is a sum, not a matmul worth lower precision."""
    kind = device.type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else nullcontext()


def _stages(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Sylvester-ordered FWHT along the last dimension, as radix-r butterflies.

    Sylvester's H_K = H_(K/r) ⊗ H_r (Kronecker), so with the last dimension viewed as
    (K / (r inner), r, inner), each stage applies H_r along the middle axis; r = 2 would be the textbook
    a + b, a - b butterfly.
    """
    k = x.shape[-1]
    if k == 1:
        return x.clone()  # a fresh tensor, as for every other K: callers may write into it
    y = x.reshape(-1, k)
    inner = 1
    with no_autocast(x.device):
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


# ------------------------------------------------------------------------ the SRHT of many blocks at once
# Bytes of one chunk's working tensor (two are live), and the radix of its stages. On the CPU a chunk is small
# enough that the sign product, every stage and the bias run in the cache, so only the logits (forward) and
# their gradient (backward) travel to and from memory, and large enough that the ~10 calls per chunk cost
# little. Measured (2-core CPU, 2 threads, forward+backward, m = 2048, medians of 6 to 12 interleaved calls):
# at 1M classes, batch 64, radix 32 took 303 ms with 1 MB chunks, 259 with 4 MB, 233 with 8, 223 with 16,
# 357 with 64 MB; radix 16 with 16 MB chunks took 7% less than radix 32 with 8 MB (241 against 260 ms at
# 1M; minima 100 against 106 ms at 100K classes, batch 256): in the cache a stage costs its arithmetic, and
# radix-16 stages (16, 16, 8 for m = 2048) do 40 multiply-adds per value where radix 32 (32, 32, 2) does 66.
# On CUDA, large enough to fill the device, and still a small share of B x C at a million classes.
CHUNK_BYTES = {"cpu": 16 << 20, "cuda": 256 << 20}
SRHT_RADIX = 16
KERNEL_MAX = 32768  # the largest size fast-hadamard-transform 1.1.0 accepts


def hadamard_kernel(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The CUDA kernel of `fast-hadamard-transform` (the `gpu` extra) for the rows of x, or None where the
    radix stages must do: a CPU tensor (never imported there), float64 (the kernel has float32, fp16 and bf16),
    a size above KERNEL_MAX, or the package missing. Its `hadamard_transform(x, scale)` is
    F.linear(x, scipy.linalg.hadamard(K)) * scale: Sylvester order, the same H as here."""
    if not x.is_cuda or x.dtype != torch.float32 or x.shape[-1] > KERNEL_MAX:
        return None
    return _load_kernel()


@functools.cache  # a failed import is not cached by Python: looked up once, not once per chunk
def _load_kernel() -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from fast_hadamard_transform import hadamard_transform
    except ImportError:
        return None
    return hadamard_transform


def _transform_rows(x: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
    """H x for every row of the contiguous (rows, m) x, by the CUDA kernel or by `_stages`'s radix stages (of
    SRHT_RADIX) written alternately into `spare` and x (so nothing is allocated); returns whichever holds it."""
    kernel = hadamard_kernel(x)
    if kernel is not None:
        return kernel(x)
    m = x.shape[-1]
    src, dst = x, spare
    inner = 1
    while inner < m:
        r = min(m // inner, SRHT_RADIX)
        h = _hadamard(r, x.dtype, x.device)
        if inner == 1:
            torch.mm(src.view(-1, r), h, out=dst.view(-1, r))
        else:
            torch.matmul(h, src.view(-1, r, inner), out=dst.view(-1, r, inner))
        src, dst = dst, src
        inner *= r
    return src


def _chunks(rows: int, signs: torch.Tensor, dtype: torch.dtype, chunk_blocks: int | None):
    """(first block, last block + 1, working tensor, spare) per chunk of blocks; the two tensors are allocated
    once and reused, each (rows, blocks in chunk, m)."""
    blocks, m = signs.shape
    if chunk_blocks is None:
        per_block = max(rows, 1) * m * torch.empty((), dtype=dtype).element_size()
        chunk_blocks = max(1, CHUNK_BYTES.get(signs.device.type, CHUNK_BYTES["cuda"]) // per_block)
    chunk_blocks = min(chunk_blocks, blocks)
    work = torch.empty(rows * chunk_blocks * m, dtype=dtype, device=signs.device)
    spare = torch.empty_like(work)
    for start in range(0, blocks, chunk_blocks):
        stop = min(start + chunk_blocks, blocks)
        size = rows * (stop - start) * m
        yield start, stop, work[:size].view(rows, stop - start, m), spare[:size]


def _srht(
    u: torch.Tensor, signs: torch.Tensor, bias: torch.Tensor | None, c: int, chunk_blocks: int | None
) -> torch.Tensor:
    """out[:, b m + i] = (H (D_b u))[i] + bias for b m + i < C, chunk by chunk: the sign product, the stages
    and the bias all run on one chunk's working tensor, and each chunk writes only its own (at most C) columns."""
    rows, m = u.shape
    out = torch.empty(rows, c, dtype=u.dtype if bias is None else torch.result_type(u, bias), device=u.device)
    for start, stop, work, spare in _chunks(rows, signs, u.dtype, chunk_blocks):
        # D_b u as its own pass: 6 ms of the 1M-class forward's ~120. Folding D_b into the first stage instead
        # (diag(d) H_r per group of r inputs per block) would build r times as many entries as it saves.
        torch.mul(u.unsqueeze(1), signs[start:stop], out=work)
        y = _transform_rows(work.view(-1, m), spare.view(-1, m)).view(rows, (stop - start) * m)
        lo, hi = start * m, min(stop * m, c)
        if bias is None:
            out[:, lo:hi].copy_(y[:, : hi - lo])
        else:
            torch.add(y[:, : hi - lo], bias[lo:hi], out=out[:, lo:hi])
    return out


def _srht_adjoint(
    g: torch.Tensor, signs: torch.Tensor, want_u: bool, want_bias: bool, chunk_blocks: int | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(sum_b D_b H g_b, column sums of g): the adjoint of `_srht` in u and bias (H is symmetric, D_b
    diagonal). Each chunk copies its columns of g into the working tensor (zeros past column C) and sums its
    rows for the bias there, while they are in the cache."""
    rows, c = g.shape
    m = signs.shape[1]
    grad_u = torch.zeros(rows, m, dtype=g.dtype, device=g.device) if want_u else None
    grad_bias = torch.empty(c, dtype=g.dtype, device=g.device) if want_bias else None
    for start, stop, work, spare in _chunks(rows, signs, g.dtype, chunk_blocks):
        lo, hi = start * m, min(stop * m, c)
        flat = work.view(rows, -1)
        flat[:, : hi - lo].copy_(g[:, lo:hi])
        if want_bias:
            torch.sum(flat[:, : hi - lo], 0, out=grad_bias[lo:hi])
        if want_u:
            flat[:, hi - lo :].zero_()
            z = _transform_rows(work.view(-1, m), spare.view(-1, m)).view(rows, stop - start, m)
            grad_u += z.mul_(signs[start:stop]).sum(1)
    return grad_u, grad_bias


class _SRHT(torch.autograd.Function):
    """(u, bias) -> `_srht`, differentiated by `_SRHTAdjoint`, whose own derivative is this function again:
    the two are each other's adjoints, so double backward (gradgradcheck) needs nothing more. Nothing is saved
    but the signs; no B x C tensor besides the logits lives past the forward."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        u: torch.Tensor,
        signs: torch.Tensor,
        bias: torch.Tensor | None,
        c: int,
        chunk_blocks: int | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(signs)
        ctx.chunk_blocks = chunk_blocks
        with no_autocast(u.device):
            return _srht(u, signs, bias, c, chunk_blocks)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):
        (signs,) = ctx.saved_tensors
        want_u, _, want_bias = ctx.needs_input_grad[:3]
        grad_u, grad_bias = _SRHTAdjoint.apply(grad, signs, want_u, want_bias, ctx.chunk_blocks)
        return grad_u, None, grad_bias, None, None


class _SRHTAdjoint(torch.autograd.Function):
    """g -> `_srht_adjoint`; its derivative is `_SRHT` with the bias's cotangent as the bias."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        g: torch.Tensor,
        signs: torch.Tensor,
        want_u: bool,
        want_bias: bool,
        chunk_blocks: int | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        ctx.save_for_backward(signs)
        ctx.chunk_blocks, ctx.shape = chunk_blocks, g.shape
        with no_autocast(g.device):
            return _srht_adjoint(g, signs, want_u, want_bias, chunk_blocks)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_u: torch.Tensor | None, grad_bias: torch.Tensor | None):
        (signs,) = ctx.saved_tensors
        rows, c = ctx.shape
        if grad_u is None:  # only the bias's gradient was differentiated: its adjoint is a broadcast
            grad_u = torch.zeros(rows, signs.shape[1], dtype=grad_bias.dtype, device=grad_bias.device)
        return _SRHT.apply(grad_u, signs, grad_bias, c, ctx.chunk_blocks), None, None, None, None


def srht_matrix(signs: torch.Tensor, num_classes: int, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """The num_classes x in_features matrix W of `srht`'s transform: srht(u, signs, None, C) equals
    u[:, :in_features] @ W.T when u's other columns are zero (the head's padding). Row b m + i is the first
    in_features entries of row i of H D_b; built from the cached m x m H in one pass."""
    m = signs.shape[1]
    h = _hadamard(m, dtype, signs.device)
    return (h.unsqueeze(0) * signs.to(dtype).unsqueeze(1)).view(-1, m)[:num_classes, :in_features]


# ------------------------------------------------------------------- the same logits as one matrix product
# Where N is small the transform's O(B C log m) arithmetic is not what costs: its calls per chunk, the sign
# product and the copies are, while a product with the C x N matrix itself, B C N multiply-adds, runs at the
# BLAS's full rate. Measured by benchmarks/srht_paths.py (2-core CPU, 1 thread, forward + backward of the head,
# 1,024 rows, 8K classes; the record in benchmarks/data), transform against dense: 221 against 26 ms at N = 64
# (the language-model study; its m = 64 leaves a radix-4 stage of 65K tiny products), 96 / 50 at 128, 86 / 77 at
# 256, 93 / 127 at 512, 112 / 262 at 1,024; at the image study's 256 x 128 x 100K, 253 / 195. So the product
# up to N = 256. The matrix is rebuilt by every forward (a pass over C x N, about 2% of the product) and freed
# after backward, so the head still holds no C x N tensor between steps and nothing that DDP, a checkpoint or
# the byte counts would see; DENSE_MAX_BYTES caps the one it builds.
DENSE_MAX_FEATURES = 256
DENSE_MAX_BYTES = 64 << 20


def dense_pays(in_features: int, num_classes: int) -> bool:
    """Whether `fixed-srht` computes its logits as one product with its float32 C x N matrix (small N, a
    matrix of at most DENSE_MAX_BYTES) rather than by `srht`'s transform; the logits are the same."""
    return in_features <= DENSE_MAX_FEATURES and num_classes * in_features * 4 <= DENSE_MAX_BYTES


def srht(
    u: torch.Tensor,
    signs: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_classes: int | None = None,
    chunk_blocks: int | None = None,
) -> torch.Tensor:
    """The subsampled randomized Hadamard transform of the rows of u (B x m, m a power of two) against every
    block of `signs` (blocks x m, entries +-1): out[:, b m + i] = (H (D_b u))[i] + bias[b m + i] for the first
    `num_classes` (default blocks x m) columns, H = hadamard_block(m, m), D_b = diag(signs[b]).

    O(B C log m) work and no tensor of B x C but the output (and, in backward, its gradient): blocks are
    transformed `chunk_blocks` at a time (default: what fits CHUNK_BYTES). In u's dtype (float32 or float64)
    even under autocast; differentiable twice in u and bias."""
    blocks, m = signs.shape
    c = blocks * m if num_classes is None else num_classes
    if u.dim() != 2 or u.shape[1] != m or m & (m - 1) or not (blocks - 1) * m < c <= blocks * m:
        raise ValueError(f"srht: u of shape {tuple(u.shape)}, signs {tuple(signs.shape)}, {c} classes")
    if chunk_blocks is not None and chunk_blocks < 1:
        raise ValueError(f"srht: chunk_blocks must be positive, got {chunk_blocks}")
    return _SRHT.apply(u, signs, bias, c, chunk_blocks)
