"""The `fixed-srht` head (SRHTHead): C distinct, nearly orthogonal rows of H D_b without a C x N matrix.

Every check compares against a C x N matrix built here from its definition (class c in block b = c // m
uses row c mod m of H D_b, H = hadamard_block(m, m), D_b = diag(signs[b]), first N columns), not only
against the head's own dense_weight()."""

import copy
import math
import sys
import time
import types

import pytest
import torch
from torch.func import functional_call

from distbench.model import heads
from distbench.model.counts import fixed_weights, param_counts, trainable
from distbench.model.heads import SRHTHead, build_head, hadamard
from distbench.model.heads.hadamard import hadamard_block, random_signs, srht


def block_size(n: int) -> int:
    """m = 2^ceil(log2 N)."""
    return 2 ** math.ceil(math.log2(n)) if n > 1 else 1


def srht_rows(signs: torch.Tensor, n: int, classes: torch.Tensor) -> torch.Tensor:
    """Rows `classes` of the head's C x N matrix, float64, by definition: W[c, j] = H[c mod m, j] D_(c div m)[j]."""
    m = signs.shape[1]
    h = hadamard_block(m, m, torch.float64)
    return h[classes % m, :n] * signs.double()[classes // m, :n]


def srht_weight(head: SRHTHead) -> torch.Tensor:
    return srht_rows(head.signs, head.in_features, torch.arange(head.num_classes))


def dense_logits(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """-alpha * xhat W^T + b, xhat = x / (||x||_2 + 1e-8) over the last dimension."""
    xhat = x / (x.norm(2, -1, keepdim=True) + 1e-8)
    out = -scale * (xhat @ w.T)
    return out if bias is None else out + bias


@pytest.fixture(params=["transform", "dense"])
def path(request, monkeypatch):
    """Run a head-level check on each of forward's two paths (`hadamard.dense_pays` picks one per shape)."""
    monkeypatch.setattr(heads, "dense_pays", lambda n, c: request.param == "dense")
    return request.param


def test_dense_pays_for_small_features_and_a_bounded_matrix():
    for n, c, dense in [
        (64, 8192, True),  # the language-model study at 8K
        (64, 262_144, True),  # 64 MiB exactly: the cap
        (64, 262_145, False),
        (128, 100_000, True),  # the image study's N = 128 at 100K classes
        (hadamard.DENSE_MAX_FEATURES, 100, True),
        (hadamard.DENSE_MAX_FEATURES + 1, 100, False),
        (2048, 1000, False),
    ]:
        assert hadamard.dense_pays(n, c) is dense, (n, c)
        assert build_head("fixed-srht", n, c).dense is dense


# (N, C): non-powers of two for both; C < m, C = m, C > m, C = 10 m + 3, C >> m; N = 1 (m = 1) and N = m
SHAPES = [
    (12, 5),
    (12, 16),
    (12, 163),
    (12, 1000),
    (24, 37),
    (24, 32),
    (24, 323),
    (100, 5),
    (100, 128),
    (100, 1000),
    (100, 1283),
    (16, 37),
    (64, 64),
    (1, 5),
]


def test_block_size_and_signs_shape():
    for n, c in SHAPES:
        head = build_head("fixed-srht", n, c)
        m = block_size(n)
        assert isinstance(head, SRHTHead) and head.block == m
        assert head.signs.shape == (-(-c // m), m) and head.signs.dtype == torch.float32
        assert set(head.signs.unique().tolist()) <= {-1.0, 1.0}


@pytest.mark.parametrize("n,c", SHAPES)
def test_dense_weight_matches_the_definition(n, c):
    head = build_head("fixed-srht", n, c, seed=n + c)
    w = srht_weight(head)
    assert w.shape == (c, n)
    assert head.dense_weight().dtype == torch.float64
    assert torch.equal(head.dense_weight(), w)
    # by hand for a few entries, no indexing tricks: block 1 (when there is one), row 3 mod m, column j
    m = head.block
    if c > m + 3 and m > 3:
        for j in range(min(n, 5)):
            expected = (-1) ** bin(3 & j).count("1") * head.signs[1, j].item()
            assert w[m + 3, j].item() == expected


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(7,), (2, 3)])
@pytest.mark.parametrize("n,c", SHAPES)
def test_srht_head_matches_dense_forward_and_backward(n, c, lead, bias, path):
    head = build_head("fixed-srht", n, c, bias=bias, seed=c).double()
    assert head.dense is (path == "dense")
    gen = torch.Generator().manual_seed(n * c)
    with torch.no_grad():  # learned values, not the initial ones
        head.scale.fill_(0.7)
        if bias:
            head.bias.copy_(torch.randn(c, dtype=torch.float64, generator=gen))
    w = srht_weight(head)
    x = torch.randn(*lead, n, dtype=torch.float64, generator=gen)
    g = torch.randn(*lead, c, dtype=torch.float64, generator=gen)

    xh = x.clone().requires_grad_(True)
    out = head(xh)
    assert out.shape == (*lead, c) and out.dtype == torch.float64
    out.backward(g)

    xd = x.clone().requires_grad_(True)
    scale = head.scale.detach().clone().requires_grad_(True)
    b = head.bias.detach().clone().requires_grad_(True) if bias else None
    expected = dense_logits(xd, w, scale, b)
    expected.backward(g)

    torch.testing.assert_close(out.detach(), expected.detach())
    torch.testing.assert_close(xh.grad, xd.grad)
    torch.testing.assert_close(head.scale.grad, scale.grad)
    if bias:
        torch.testing.assert_close(head.bias.grad, b.grad)
    else:
        assert head.bias is None


def test_srht_head_gradcheck(path):
    head = build_head("fixed-srht", 5, 19, seed=3).double()  # m = 8, three blocks, the last partial
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    scale = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    bias = torch.randn(19, dtype=torch.float64, generator=gen, requires_grad=True)

    def f(x, scale, bias):
        return functional_call(head, {"scale": scale, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(f, (x, scale, bias))
    assert torch.autograd.gradgradcheck(f, (x, scale, bias))


# Rows are +-1 vectors of length N: at most 2^N distinct, and rows of different blocks coincide with probability
# about 2^-N per pair (m / 2^m per pair of blocks for N = m), so about C^2 / 2^(N+1) repeats: 122 at N = 12 and
# C = 1000, none to expect here.
@pytest.mark.parametrize("n,c", [(64, 5000), (48, 2000), (24, 1000)])
def test_rows_are_distinct_for_any_number_of_classes(n, c):
    w = srht_weight(build_head("fixed-srht", n, c))
    assert c > 10 * block_size(n)
    assert torch.unique(w, dim=0).shape[0] == c
    # the plain Hadamard block repeats with period m: the SRHT's point
    assert torch.unique(hadamard_block(c, n), dim=0).shape[0] == block_size(n)


def test_rows_within_a_block_are_orthogonal():
    n = m = 64
    c = 3 * m + 5  # three full blocks and a partial one
    w = srht_weight(build_head("fixed-srht", n, c, seed=5))
    for start in range(0, c, m):
        wb = w[start : start + m]
        torch.testing.assert_close(wb @ wb.T, m * torch.eye(len(wb), dtype=torch.float64), rtol=0, atol=0)


def test_rows_across_blocks_are_nearly_orthogonal():
    n = m = 256
    blocks = 8
    w = srht_weight(build_head("fixed-srht", n, blocks * m, seed=1))
    cos = (w @ w.T) / m  # every row has norm sqrt(m)
    same_block = torch.block_diag(*[torch.ones(m, m, dtype=torch.bool)] * blocks)
    across = cos[~same_block].abs()
    assert across.numel() == blocks * (blocks - 1) * m * m
    mean, worst = across.mean().item(), across.max().item()
    # for random signs |cos| is about |N(0, 1/m)|: mean sqrt(2 / (pi m)) ~ 0.05 here
    assert 0.3 / math.sqrt(m) < mean < 3 / math.sqrt(m), mean
    assert worst < 0.7, worst


def test_signs_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_head("fixed-srht", 24, 500, seed=1, bias=False)
    b = build_head("fixed-srht", 24, 500, seed=1, bias=False)
    c = build_head("fixed-srht", 24, 500, seed=2, bias=False)
    assert torch.equal(torch.get_rng_state(), before)  # with no bias nothing is drawn from the global RNG
    assert torch.equal(a.signs, b.signs) and not torch.equal(a.signs, c.signs)
    # the signs do not depend on the global RNG either
    torch.manual_seed(7)
    d = build_head("fixed-srht", 24, 500, seed=1, bias=False)
    assert torch.equal(a.signs, d.signs)
    # with a bias, the global RNG moves exactly as for the other Hadamard heads: only b is drawn from it
    for other in ("fixed-fwht", "fixed"):
        torch.manual_seed(0)
        srht = build_head("fixed-srht", 24, 500, seed=1)
        after_srht = torch.get_rng_state()
        torch.manual_seed(0)
        ref = build_head(other, 24, 500)
        assert torch.equal(torch.get_rng_state(), after_srht)
        assert torch.equal(srht.bias, ref.bias) and torch.equal(srht.scale, ref.scale)


def test_signs_are_a_non_persistent_buffer(path):
    head = build_head("fixed-srht", 24, 100)
    assert [name for name, _ in head.named_buffers()] == ["signs"]
    assert sorted(head.state_dict()) == ["bias", "scale"]
    assert head.fixed_weights == () and list(fixed_weights(head)) == []
    # a checkpoint restores into a head built from the same seed and gives the same logits
    other = build_head("fixed-srht", 24, 100)
    other.load_state_dict(head.state_dict())
    x = torch.randn(3, 24)
    assert torch.equal(other(x), head(x))


@pytest.mark.parametrize("bias,expected", [(True, 1 + 1000), (False, 1)])
def test_srht_head_trains_only_scale_and_bias(bias, expected):
    head = build_head("fixed-srht", 48, 1000, bias=bias)
    assert sum(p.numel() for p in trainable(head)) == expected
    counts = param_counts(head)
    assert counts["total"] == counts["trainable"] == expected and counts["frozen"] == 0


def test_a_million_classes_hold_no_class_by_feature_matrix():
    c, n = 1_000_000, 2048
    t = time.perf_counter()
    head = build_head("fixed-srht", n, c)
    built = time.perf_counter() - t
    assert built < 10, built  # the C x N float32 matrix alone would be 8.2 GB
    assert head.signs.shape == (-(-c // n), n)
    held = [*head.parameters(), *head.buffers()]
    assert sum(t.numel() for t in held) < 3 * c
    assert sum(p.numel() for p in trainable(head)) == c + 1
    assert max(t.numel() for t in held) < 2 * c  # nothing close to C x N
    # a forward pass still gives every class its own row: spot-check classes across blocks
    x = torch.randn(2, n)
    out = head(x)
    assert out.shape == (2, c) and out.dtype == torch.float32
    classes = torch.tensor([0, 1, n - 1, n, n + 1, 2 * n + 17, 123_457, c - n, c - 1])
    w = srht_rows(head.signs, n, classes)
    expected = dense_logits(x.double(), w, head.scale.double(), head.bias.double()[classes])
    torch.testing.assert_close(out[:, classes].double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,c", [(100, 1000), (64, 64), (12, 5)])
def test_srht_head_float32_and_bf16_inputs(n, c, path):
    head = build_head("fixed-srht", n, c, seed=4)
    with torch.no_grad():
        head.scale.fill_(0.7)
    ref = copy.deepcopy(head).double()
    x = torch.randn(4, n)
    out32 = head(x)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref(x.double()), rtol=1e-5, atol=1e-6)
    # bf16 features: the transform runs in float32, so only the input rounding is left
    out16 = head(x.bfloat16())
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, ref(x.bfloat16().double()).float(), rtol=1e-5, atol=1e-6)
    # under autocast the transform's matmuls must not drop to bf16: the same as float32, gradients too
    xa = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_autocast = head(xa)
    assert out_autocast.dtype == torch.float32
    torch.testing.assert_close(out_autocast, out32)
    g = torch.randn(4, c)
    out_autocast.backward(g)
    xr = x.double().requires_grad_(True)
    ref(xr).backward(g.double())
    assert xa.grad.dtype == torch.float32
    torch.testing.assert_close(xa.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 12), (2, 0, 12)])
def test_empty_batch(shape, path):
    assert build_head("fixed-srht", 12, 37)(torch.zeros(shape)).shape == (*shape[:-1], 37)


# ------------------------------------------------------------------------------ the chunked transform (hadamard.srht)
def full_weight(signs: torch.Tensor) -> torch.Tensor:
    """The (blocks m) x m matrix of rows H D_b, float64: srht(u, signs) == u @ full_weight(signs).T."""
    blocks, m = signs.shape
    return srht_rows(signs, m, torch.arange(blocks * m))


@pytest.mark.parametrize("chunk_blocks", [None, 1, 2, 3, 5])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("m,c", [(8, 3), (8, 8), (8, 19), (8, 24), (8, 40), (1, 4), (16, 163)])
def test_srht_matches_dense_in_any_chunking(m, c, bias, chunk_blocks):
    """C < m, C = m, a partial last block, whole blocks; chunks of 1, 2, 3 and 5 blocks put the last chunk's
    end on and off the last block, and past it (5 > blocks for the small C)."""
    gen = torch.Generator().manual_seed(m * c)
    signs = random_signs(-(-c // m), m, seed=c)
    u = torch.randn(5, m, dtype=torch.float64, generator=gen)
    b = torch.randn(c, dtype=torch.float64, generator=gen) if bias else None
    g = torch.randn(5, c, dtype=torch.float64, generator=gen)
    w = full_weight(signs)[:c]

    leaves = [u.clone().requires_grad_(True), *([b.clone().requires_grad_(True)] if bias else [])]
    out = srht(leaves[0], signs, leaves[1] if bias else None, c, chunk_blocks)
    out.backward(g)
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    expected = ref_leaves[0] @ w.T + (ref_leaves[1] if bias else 0)
    expected.backward(g)

    assert out.shape == (5, c) and out.is_contiguous()
    torch.testing.assert_close(out.detach(), expected.detach())
    for mine, ref in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(mine.grad, ref.grad)


def test_srht_head_across_chunk_boundaries(monkeypatch):
    """The head's transform path with chunks of two blocks (a float64 row of one block: 16 x 8 bytes), the last
    chunk one partial block: forward and backward as the dense C x N matrix, leading dims kept."""
    n, c = 12, 163  # m = 16: ten whole blocks and three classes of an eleventh
    monkeypatch.setitem(hadamard.CHUNK_BYTES, "cpu", 2 * 6 * 16 * 8)
    head = build_head("fixed-srht", n, c, seed=2).double()
    head.dense = False
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        head.bias.copy_(torch.randn(c, dtype=torch.float64, generator=gen))
    x = torch.randn(2, 3, n, dtype=torch.float64, generator=gen)
    g = torch.randn(2, 3, c, dtype=torch.float64, generator=gen)
    xh, xd = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = head(xh)
    out.backward(g)
    scale, b = (head.scale.detach().clone().requires_grad_(True), head.bias.detach().clone().requires_grad_(True))
    expected = dense_logits(xd, srht_weight(head), scale, b)
    expected.backward(g)
    torch.testing.assert_close(out.detach(), expected.detach())
    torch.testing.assert_close(xh.grad, xd.grad)
    torch.testing.assert_close(head.scale.grad, scale.grad)
    torch.testing.assert_close(head.bias.grad, b.grad)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n,c", [(12, 163), (100, 5), (64, 128)])
def test_srht_head_with_a_fixed_scale_matches_dense(n, c, bias, path):
    head = build_head("fixed-srht", n, c, bias=bias, fixed_scale=2.5, seed=1).double()
    assert "scale" not in dict(head.named_parameters())
    x = torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(c))
    g = torch.randn(4, c, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    xh, xd = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = head(xh)
    out.backward(g)
    b = head.bias.detach().clone().requires_grad_(True) if bias else None
    expected = dense_logits(xd, srht_weight(head), torch.tensor([2.5], dtype=torch.float64), b)
    expected.backward(g)
    torch.testing.assert_close(out.detach(), expected.detach())
    torch.testing.assert_close(xh.grad, xd.grad)
    if bias:
        torch.testing.assert_close(head.bias.grad, b.grad)


@pytest.mark.parametrize("bias", [True, False])
def test_srht_gradcheck_across_chunks(bias):
    """Three blocks of 8, the last partial, in chunks of two: first and second derivatives in u and b."""
    gen = torch.Generator().manual_seed(5)
    signs = random_signs(3, 8, seed=4)
    u = torch.randn(3, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(19, dtype=torch.float64, generator=gen, requires_grad=True)
    inputs = (u, b) if bias else (u,)

    def f(u, b=None):
        return srht(u, signs, b, 19, chunk_blocks=2)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_srht_keeps_nothing_class_sized_for_backward(path):
    """The transform's backward recomputes it from the logits' gradient: what the forward saves is the signs
    and the B x m input's own graph, not a B x C product or transform stage. The dense path saves its C x N
    matrix (capped by DENSE_MAX_BYTES), never B x C either."""
    b, n, c = 4, 64, 20_000
    head = build_head("fixed-srht", n, c)
    saved = []
    x = torch.randn(b, n, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = head(x)
    assert out.shape == (b, c)
    if path == "dense":
        assert max(saved) == c * n and b * c not in saved, saved
    else:
        assert max(saved) <= head.signs.numel() < b * c, saved
    out.backward(torch.randn(b, c))
    assert x.grad.shape == (b, n) and head.bias.grad.shape == (c,)


def test_srht_rejects_inconsistent_shapes():
    signs = random_signs(3, 8, seed=0)
    for u, c, chunk in [
        (torch.zeros(2, 7), 20, None),  # u is not m wide
        (torch.zeros(2, 2, 8), 20, None),  # not a matrix
        (torch.zeros(2, 8), 16, None),  # C fits in two blocks
        (torch.zeros(2, 8), 25, None),  # C needs four
        (torch.zeros(2, 8), 20, 0),
    ]:
        with pytest.raises(ValueError, match="srht"):
            srht(u, signs, None, c, chunk)


@pytest.fixture
def fake_kernel(monkeypatch):
    """A `fast_hadamard_transform` module whose kernel counts its calls; the kernel lookup is forgotten before
    and after, so no other test sees it."""
    calls = []
    module = types.ModuleType("fast_hadamard_transform")

    def hadamard_transform(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x @ hadamard_block(x.shape[-1], x.shape[-1], x.dtype).to(x.device) * scale

    module.hadamard_transform = hadamard_transform
    monkeypatch.setitem(sys.modules, "fast_hadamard_transform", module)
    hadamard._load_kernel.cache_clear()
    yield hadamard_transform, calls
    hadamard._load_kernel.cache_clear()


def test_the_cpu_takes_the_radix_stages_even_with_the_kernel_installed(fake_kernel):
    kernel, calls = fake_kernel
    assert hadamard._load_kernel() is kernel  # installed and importable
    x = torch.randn(4, 2048)
    assert hadamard.hadamard_kernel(x) is None and hadamard.hadamard_kernel(x.double()) is None
    head = build_head("fixed-srht", 100, 1000)
    head.dense = False
    xr = torch.randn(3, 100, requires_grad=True)
    head(xr).backward(torch.randn(3, 1000))
    assert calls == [] and xr.grad is not None


def test_without_the_package_no_kernel_is_chosen(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_hadamard_transform", None)  # import raises ImportError
    hadamard._load_kernel.cache_clear()
    try:
        assert hadamard._load_kernel() is None
    finally:
        hadamard._load_kernel.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("n,c", [(2048, 100_000), (100, 1000), (12, 163), (5, 3)])
def test_srht_head_on_cuda_uses_the_kernel_and_matches_dense(n, c):
    pytest.importorskip("fast_hadamard_transform", reason="the gpu extra (fast-hadamard-transform) is not installed")
    hadamard._load_kernel.cache_clear()
    head = build_head("fixed-srht", n, c, seed=3)
    head.dense = False  # the transform, whose kernel this checks (the dense path is a plain matmul)
    with torch.no_grad():
        head.scale.fill_(0.7)
    x = torch.randn(8, n, generator=torch.Generator().manual_seed(c))
    g = torch.randn(8, c, generator=torch.Generator().manual_seed(n))
    ref = copy.deepcopy(head).double()
    xd = x.double().requires_grad_(True)
    expected = ref(xd)
    expected.backward(g.double())

    cuda = head.cuda()
    assert hadamard.hadamard_kernel(torch.zeros(1, cuda.block, device="cuda")) is not None
    assert hadamard.hadamard_kernel(torch.zeros(1, cuda.block, device="cuda", dtype=torch.float64)) is None
    xc = x.cuda().requires_grad_(True)
    out = cuda(xc)
    out.backward(g.cuda())
    torch.testing.assert_close(out.double().cpu(), expected.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(xc.grad.double().cpu(), xd.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cuda.scale.grad.double().cpu(), ref.scale.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cuda.bias.grad.double().cpu(), ref.bias.grad, rtol=1e-4, atol=1e-5)
    # float64 takes the radix stages on CUDA, against the same reference
    out64 = copy.deepcopy(ref).cuda()(x.double().cuda())
    torch.testing.assert_close(out64.cpu(), expected.detach())
