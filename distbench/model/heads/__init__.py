"""Classifier heads: the last layer, N features -> C logits.

`learned` is the usual linear layer. The fixed heads follow Hoffer, Hubara & Soudry 2018 ("Fix your
classifier: the marginal value of training the last weight layer"): logits = s alpha W xhat + b, with
xhat = x / ||x||_2 over the feature (last) dimension, W a fixed C x N matrix, alpha one learned scalar (or a
fixed one, `fixed_scale`), b an optional learned bias and s a sign. Each head keeps the conventions of the
authors' reference code (eladhoffer/fix_your_classifier, fixed_proj.py):

- `fixed`, `fixed-fwht` follow `HadamardProj`: W the C x N top-left block of a Sylvester Hadamard matrix,
  s = -1, alpha = 1/sqrt(C), b ~ U(-1/sqrt(C), 1/sqrt(C)), xhat = x / (||x|| + 1e-8).
- `fixed-orthogonal` follows `Proj`: W from `nn.init.orthogonal` (orthonormal rows for C <= N, orthonormal
  columns for C > N), s = +1, alpha = 10, b = 0, xhat = x / ||x||.
- `fixed-srht` (distbench's own; no counterpart in the authors' code) keeps `HadamardProj`'s conventions
  with rows of H D_b, D_b a random sign diagonal per block of classes, so all C rows are distinct.

A fixed W is never a parameter, so DDP and DeepSpeed never reduce it: `fixed` and `fixed-orthogonal` hold it
as a non-persistent buffer rebuilt from (C, N, seed); `fixed-fwht` and `fixed-srht` hold no matrix at all.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from distbench.config import Registry
from distbench.model.heads.hadamard import (
    dense_pays,
    fwht,
    hadamard_block,
    no_autocast,
    random_signs,
    srht,
    srht_matrix,
)

log = logging.getLogger(__name__)

HEADS: Registry = Registry("head")
ROW_NORMS = ("authors", "unit")  # fixed-orthogonal's rows: as nn.init.orthogonal leaves them, or unit length


def orthogonal_block(rows: int, cols: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A seeded random (semi-)orthogonal rows x cols matrix, as `nn.init.orthogonal_` builds it.

    The QR factorisation of a Gaussian max(rows, cols) x min(rows, cols) matrix with the signs of R's
    diagonal moved into Q (so Q is Haar-distributed): for rows <= cols the rows are orthonormal, for
    rows > cols (more classes than features, where not all rows can be orthogonal) the columns are, and a
    row's norm is then about sqrt(cols / rows). Its own generator and float64 QR: building a head never
    moves the global RNG, and the matrix is the same on every rank.
    """
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(max(rows, cols), min(rows, cols), generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))
    return (q.T if rows <= cols else q).to(dtype)


class LearnedHead(nn.Linear):
    """The baseline: a learned N -> C linear layer with bias."""

    def __init__(self, in_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__(in_features, num_classes, bias=bias)


class _ScaledHead(nn.Module):
    """What every fixed head shares: sign, alpha, b and the normalisation of logits = sign * alpha * (W xhat) + b;
    each subclass computes W xhat its own way (a dense buffer, an FWHT, signed block FWHTs).

    alpha is a learned parameter of shape (1,) (as in the authors' code; DeepSpeed 0.19.8 also cannot
    broadcast 0-dim parameters), or a buffer when `fixed_scale` is given (their `fixed_scale`).
    `bias_bound` > 0 draws b from U(-bound, bound) (HadamardProj), 0 starts it at zero (Proj).
    """

    fixed_weights: tuple[str, ...] = ()  # counted as frozen weights by distbench.model.counts.param_counts

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool,
        scale_init: float,
        bias_bound: float,
        fixed_scale: float | None,
        sign: float,
        eps: float,
    ) -> None:
        super().__init__()
        self.in_features, self.num_classes, self.sign, self.eps = in_features, num_classes, sign, eps
        if fixed_scale is None:
            self.scale = nn.Parameter(torch.tensor([float(scale_init)]))
        else:
            self.register_buffer("scale", torch.tensor([float(fixed_scale)]), persistent=False)
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bias_bound, bias_bound)) if bias else None

    def extra_repr(self) -> str:
        learned = isinstance(self.scale, nn.Parameter)
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}, "
            f"scale={'learned' if learned else float(self.scale)}"
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """x / (||x|| + eps) over the last dimension. eps = 0 is the plain x / ||x|| (Proj), kept finite for
        an all-zero x (dead features) by a floor far below any real norm."""
        norm = x.norm(dim=-1, keepdim=True)
        return x / (norm + self.eps if self.eps else norm.clamp_min(1e-30))


class FixedHead(_ScaledHead):
    """logits = sign * alpha * W xhat + b with W a fixed C x N buffer (Hoffer et al. 2018, eq. 2)."""

    fixed_weights = ("weight",)

    def __init__(self, weight: torch.Tensor, **conventions) -> None:
        super().__init__(weight.shape[1], weight.shape[0], **conventions)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xhat = self.normalize(x)
        # alpha W xhat = W (alpha xhat): scaling the B x N input instead of the B x C logits saves two
        # passes over them (forward, and alpha's gradient).
        logits = F.linear((self.sign * self.scale) * xhat, self.weight.to(xhat.dtype))
        return logits if self.bias is None else logits + self.bias


Scale = float | str | None  # a held alpha: a number, "rule", or None (learned)


def cosine_scale(num_classes: int) -> float:
    """The logit scale s a cosine-softmax classifier needs at C classes: the fixed scale of AdaCos (Zhang et
    al., CVPR 2019, "fixed AdaCos"), s = sqrt(2) ln(C - 1), which keeps the true class's probability from
    saturating low while the cosines are still near 0. It grows with C: 6.5 at 100 classes, 13.0 at 10K,
    16.3 at 100K (for C = 2, where ln 1 = 0, C - 1 is taken as 2). CosFace's bound (Wang et al. 2018,
    s >= (C-1)/C ln((C-1) P / (1-P))) grows the same way."""
    return math.sqrt(2) * math.log(max(num_classes - 1, 2))


def with_scale(conventions: dict, num_classes: int, row_norm: float, fixed_scale: Scale, scale_init: str) -> dict:
    """`conventions` with alpha resolved. A logit is alpha x |row| x cos, so `rule` means alpha = s / |row|
    (s = cosine_scale(C), |row| the RMS norm of the head's rows): `fixed_scale` "rule" holds alpha there,
    `scale_init` "rule" starts a learned alpha there; otherwise the head's own conventions stand."""
    rule = cosine_scale(num_classes) / row_norm
    return {
        **conventions,
        "fixed_scale": rule if fixed_scale == "rule" else fixed_scale,
        "scale_init": rule if scale_init == "rule" else conventions["scale_init"],
    }


def hadamard_proj(num_classes: int, bias: bool) -> dict:
    """The conventions of the authors' HadamardProj."""
    init = 1.0 / math.sqrt(num_classes)
    return {"bias": bias, "scale_init": init, "bias_bound": init, "sign": -1.0, "eps": 1e-8}


@HEADS.register("learned")
def learned(in_features: int, num_classes: int, bias: bool = True) -> nn.Module:
    return LearnedHead(in_features, num_classes, bias=bias)


def warn_shared_rows(head: str, in_features: int, num_classes: int) -> None:
    """Row i of the C x N Hadamard block depends only on i mod 2^ceil(log2 N): past that many classes,
    classes share a direction and differ only by bias. Bytes are unaffected; accuracy is capped."""
    distinct = 1 << max(in_features - 1, 1).bit_length()
    if num_classes > distinct:
        log.warning(
            "%s head: %d classes > %d distinct Hadamard rows for %d features; classes that share a row differ "
            "only by their bias (use fixed-srht: distinct, nearly orthogonal rows and no C x N matrix)",
            head,
            num_classes,
            distinct,
            in_features,
        )


@HEADS.register("fixed")
def fixed_hadamard(
    in_features: int,
    num_classes: int,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    fixed_scale: Scale = None,
    scale_init: str = "authors",
) -> nn.Module:
    warn_shared_rows("fixed", in_features, num_classes)
    weight = hadamard_block(num_classes, in_features, dtype)
    rows = math.sqrt(in_features)  # every row is N entries of +-1
    return FixedHead(weight, **with_scale(hadamard_proj(num_classes, bias), num_classes, rows, fixed_scale, scale_init))


@HEADS.register("fixed-orthogonal")
def fixed_orthogonal(
    in_features: int,
    num_classes: int,
    bias: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    fixed_scale: Scale = None,
    row_norm: str = "authors",
    scale_init: str = "authors",
) -> nn.Module:
    """Proj's conventions. row_norm 'unit' rescales every row to length 1: for C > N Proj's rows have
    length about sqrt(N / C) (0.05 at 100K classes and N = 256), which caps every logit at 10 x that
    until alpha has grown; with unit rows a logit is alpha x a cosine for any C."""
    if row_norm not in ROW_NORMS:
        raise ValueError(f"unknown row norm {row_norm!r}; choose from: {', '.join(ROW_NORMS)}")
    weight = orthogonal_block(num_classes, in_features, seed, torch.float64)
    if row_norm == "unit":
        weight = F.normalize(weight, dim=1)
    conventions = {"scale_init": 10.0, "bias_bound": 0.0, "sign": 1.0, "eps": 0.0}
    # RMS row norm, exactly: unit rows; orthonormal rows (C <= N); orthonormal columns (C > N), whose squared
    # Frobenius norm N spreads over C rows
    rows = 1.0 if row_norm == "unit" else math.sqrt(min(in_features, num_classes) / num_classes)
    return FixedHead(weight.to(dtype), bias=bias, **with_scale(conventions, num_classes, rows, fixed_scale, scale_init))


# ------------------------------------------------------------------------------------- transform heads
class FWHTHead(_ScaledHead):
    """The `fixed` head's logits from a fast Walsh–Hadamard transform, without its C x N matrix.

    The reduction from the full transform of size K = 2^ceil(log2 max(C, N)) to one of size
    m = 2^ceil(log2 min(C, N)) uses only the Kronecker structure of Sylvester's construction:
    - for j < m, H[i, j] depends only on i mod m, so output i >= m repeats output i mod m;
    - for i < m, H[i, j] = H[i, j mod m], so inputs j and j + m can be summed before the transform.
    O(B (C + N + m log m)) time, no weights (so `fixed_weights` is empty).

    Works in float32 (float64 for float64 input), whatever the input dtype or autocast: every stage of the
    transform rounds its output to the working dtype, where the dense head's one bf16 matmul accumulates
    in float32 and rounds once. The cost is small: the working tensor is B x m, and the B x C logits are
    float32 anyway because alpha and b are (the dense head's are too).
    """

    def __init__(self, in_features: int, num_classes: int, **conventions) -> None:
        super().__init__(in_features, num_classes, **conventions)
        self.block = 1 << (min(in_features, num_classes) - 1).bit_length()  # m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n, c = self.block, self.in_features, self.num_classes
        lead = x.shape[:-1]
        xhat = self.normalize(x.reshape(-1, n).to(torch.promote_types(x.dtype, torch.float32)))
        # Inputs j and j + m meet the same column of H's first m rows: fold N onto m (zero-padding first).
        if n > m:
            xhat = F.pad(xhat, (0, -n % m)).view(len(xhat), -(-n // m), m).sum(1)
        elif n < m:
            xhat = F.pad(xhat, (0, m - n))
        # alpha scales the B x m transform rather than the B x C logits: one pass over them fewer each
        # way, and alpha's gradient becomes a reduction over B x m.
        y = (self.sign * self.scale) * fwht(xhat)
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


class SRHTHead(_ScaledHead):
    """A fixed head with C distinct, nearly orthogonal rows for any C and no C x N matrix: a subsampled
    randomized Hadamard transform (Ailon & Chazelle 2006).

    Features are zero-padded to m = 2^ceil(log2 N). Class c lies in block b = c div m and uses row c mod m
    of H D_b: H the m x m Sylvester matrix, D_b a seeded random +-1 diagonal. Rows in one block are
    orthogonal (for N = m; nearly so after padding); rows of different blocks have |cos| of order
    1/sqrt(m), and coincide only if the first N entries of D_b D_b' are those of a row of H (probability
    at most m / 2^N per pair of blocks: nil at N = 512, not for a toy N of 12). Every
    block has its own D_b, block 0 too: without it row 0 would be all ones, and non-negative (post-ReLU)
    features would single out class 0 at initialisation.

    logits[:, b m + i] = -alpha (H (D_b xhat))[i] + b, so one FWHT of size m per block: O(B (N + C log m))
    work, done by `hadamard.srht` a chunk of blocks at a time so that its temporaries stay far below
    B x C (the logits and their gradient are the only B x C tensors of a forward+backward). The only tensor
    held that grows with C besides b is D (ceil(C/m) x m signs, a non-persistent buffer rebuilt from the
    seed). The conventions are HadamardProj's, so only the rows differ from `fixed`.
    """

    def __init__(self, in_features: int, num_classes: int, seed: int = 0, **conventions) -> None:
        super().__init__(in_features, num_classes, **conventions)
        self.block = 1 << max(in_features - 1, 0).bit_length()  # m
        blocks = -(-num_classes // self.block)
        self.register_buffer("signs", random_signs(blocks, self.block, seed), persistent=False)
        # How forward computes the same logits: a product with the C x N matrix, rebuilt per step, where N is
        # small (hadamard.dense_pays), else the transform. An attribute, so tests and benchmarks can force either.
        self.dense = dense_pays(in_features, num_classes)

    def dense_weight(self) -> torch.Tensor:
        """The C x N matrix the head implies, float64 (for tests and inspection)."""
        return srht_matrix(self.signs, self.num_classes, self.in_features, torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, n, c = self.block, self.in_features, self.num_classes
        lead = x.shape[:-1]
        xhat = self.normalize(x.reshape(-1, n).to(torch.promote_types(x.dtype, torch.float32)))
        # alpha on the B x N input rather than the B x C output: the same logits, one pass fewer.
        u = (self.sign * self.scale) * xhat
        if self.dense:
            # In u's dtype even under autocast, as `srht` is: both paths give the same logits to rounding.
            with no_autocast(u.device):
                w = srht_matrix(self.signs, c, n, u.dtype)
                logits = F.linear(u, w, None if self.bias is None else self.bias.to(u.dtype))
        else:
            # b goes in with the transform, so each logit is written once and b's gradient is summed per chunk.
            logits = srht(F.pad(u, (0, m - n)), self.signs, self.bias, c)
        return logits.view(*lead, c)


@HEADS.register("fixed-fwht")
def fixed_fwht(
    in_features: int,
    num_classes: int,
    bias: bool = True,
    fixed_scale: Scale = None,
    scale_init: str = "authors",
) -> nn.Module:
    warn_shared_rows("fixed-fwht", in_features, num_classes)  # the same logits as `fixed`, the same cap
    conventions = with_scale(hadamard_proj(num_classes, bias), num_classes, math.sqrt(in_features), fixed_scale,
                             scale_init)  # fmt: skip
    return FWHTHead(in_features, num_classes, **conventions)


@HEADS.register("fixed-srht")
def fixed_srht(
    in_features: int,
    num_classes: int,
    bias: bool = True,
    seed: int = 0,
    fixed_scale: Scale = None,
    scale_init: str = "authors",
) -> nn.Module:
    # A row is the first N entries of a row of H D_b, each +-1: its norm is sqrt(N), padding or not.
    conventions = with_scale(hadamard_proj(num_classes, bias), num_classes, math.sqrt(in_features), fixed_scale,
                             scale_init)  # fmt: skip
    return SRHTHead(in_features, num_classes, seed=seed, **conventions)


class TiedHead(nn.Module):
    """A language model's output layer tied to its input embedding (GPT-2; Press & Wolf 2017): logits = x E^T
    with E the V x N token embedding, one parameter used twice. Its gradient (both uses summed) is sent once,
    so a tied head saves the V x N of an untied one, not the embedding's own."""

    def __init__(self, embedding: nn.Embedding, bias: bool = True) -> None:
        super().__init__()
        self.embedding = embedding  # the backbone's: registered here too, counted once (parameters() dedups)
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.embedding.weight, self.bias)


@HEADS.register("tied")
def tied(in_features: int, num_classes: int, bias: bool = True, embedding: nn.Embedding | None = None) -> nn.Module:
    """GPT-2's head is `tied` with --no-head-bias; the default learns a bias of V, as the other heads do."""
    if embedding is None:
        raise ValueError("a tied head reuses the token embedding of a language model (--model gpt-*)")
    if tuple(embedding.weight.shape) != (num_classes, in_features):
        raise ValueError(
            f"the embedding is {tuple(embedding.weight.shape)}, the head needs ({num_classes}, {in_features})"
        )
    return TiedHead(embedding, bias)


@HEADS.register("sharded")
def sharded(in_features: int, num_classes: int, bias: bool = True) -> nn.Module:
    from distbench.model.heads.sharded import ShardedHead

    return ShardedHead(in_features, num_classes, bias=bias)


def head_options(name: str) -> frozenset[str]:
    """The options head `name` takes, as its builder declares them (its keyword arguments): the checks refuse
    a setting for a head that does not take it, and `build_head` hands each head only its own."""
    params = inspect.signature(HEADS.get(name)).parameters
    return frozenset(params) - {"in_features", "num_classes"}


def heads_taking(option: str) -> list[str]:
    return [name for name in HEADS.names() if option in head_options(name)]


def build_head(name: str, in_features: int, num_classes: int, **options: object) -> nn.Module:
    """Head `name` mapping N = `in_features` to C = `num_classes` logits. `options` may name any head's options
    (bias, dtype, seed; the fixed heads' fixed_scale: alpha held, "rule" for the cosine-softmax scale, and
    scale_init: where a learned alpha starts; fixed-orthogonal's row_norm): each head gets those it takes."""
    own = head_options(name)
    return HEADS.get(name)(in_features, num_classes, **{k: v for k, v in options.items() if k in own})
