import pytest
import torch

from distbench.model.counts import param_counts, trainable
from distbench.model.heads import FWHTHead, build_head
from distbench.model.heads.hadamard import fwht, hadamard_block

# (C, N): C < N, C > N, C == N, non-powers of two on either side
SHAPES = [(10, 64), (100, 64), (1000, 48), (64, 64), (3, 5), (5, 3), (1, 7), (7, 1)]


@pytest.mark.parametrize("k", [1, 2, 8, 64, 1024])
def test_fwht_equals_hadamard_matmul(k):
    x = torch.randn(3, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    torch.testing.assert_close(fwht(x), x @ hadamard_block(k, k, torch.float64))


def test_fwht_leaves_input_alone_and_keeps_leading_dims():
    x = torch.randn(2, 3, 16)
    before = x.clone()
    y = fwht(x)
    assert torch.equal(x, before) and y.shape == x.shape
    torch.testing.assert_close(fwht(y), 16 * x)  # H H = K I


@pytest.mark.parametrize("k", [0, 3, 48])
def test_fwht_rejects_non_powers_of_two(k):
    with pytest.raises(ValueError, match="power of two"):
        fwht(torch.zeros(2, k))


def test_fwht_gradient_is_the_transform():
    x = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fwht, (x,))
    assert torch.autograd.gradgradcheck(fwht, (x,))


def _pair(c: int, n: int, bias: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A dense fixed head and an FWHT head with the same alpha and b, both in float64."""
    dense = build_head("fixed", n, c, bias=bias, dtype=torch.float64).double()
    fast = build_head("fixed-fwht", n, c, bias=bias).double()
    with torch.no_grad():
        fast.scale.copy_(dense.scale)
        if bias:
            fast.bias.copy_(dense.bias)
    return dense, fast


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("c,n", SHAPES)
def test_fwht_head_matches_fixed_head_forward_and_backward(c, n, bias):
    dense, fast = _pair(c, n, bias)
    x = torch.randn(6, n, dtype=torch.float64, generator=torch.Generator().manual_seed(c * n))
    g = torch.randn(6, c, dtype=torch.float64, generator=torch.Generator().manual_seed(c + n))
    grads = []
    for head in (dense, fast):
        xi = x.clone().requires_grad_(True)
        out = head(xi)
        assert out.shape == (6, c)
        out.backward(g)
        grads.append((out.detach(), xi.grad, *(p.grad for p in head.parameters())))
    assert len(grads[0]) == len(grads[1]) == (4 if bias else 3)  # logits, x, alpha[, b]
    for d, f in zip(*grads, strict=True):
        torch.testing.assert_close(f, d)


@pytest.mark.parametrize("c,n", [(100, 64), (10, 64)])
def test_fwht_head_float32_and_bf16_inputs(c, n):
    dense, fast = _pair(c, n, bias=True)
    x = torch.randn(4, n)
    expected = dense(x.double())
    out32 = fast.float()(x)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), expected, rtol=1e-5, atol=1e-6)
    # bf16 features: the transform runs in float32, so only the input rounding is left
    out16 = fast(x.bfloat16())
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, dense(x.bfloat16().double()).float(), rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # matmuls would run in bf16 if autocast reached them
        out_autocast = fast(x)
    assert out_autocast.dtype == torch.float32
    torch.testing.assert_close(out_autocast, out32)


@pytest.mark.parametrize("bias,expected", [(True, 1 + 1000), (False, 1)])
def test_fwht_head_trains_only_scale_and_bias_and_holds_no_matrix(bias, expected):
    head = build_head("fixed-fwht", 48, 1000, bias=bias)
    assert isinstance(head, FWHTHead)
    assert (head.in_features, head.num_classes) == (48, 1000)
    assert sum(p.numel() for p in trainable(head)) == expected
    assert list(head.buffers()) == [] and head.fixed_weights == ()
    assert all(t.numel() <= 1000 for t in head.state_dict().values())


def test_fwht_head_counts_no_frozen_weights():
    from distbench.model import Classifier
    from distbench.model.backbones import build_backbone

    counts = param_counts(Classifier(build_backbone("tiny"), build_head("fixed-fwht", 256, 50)))
    assert counts["head_total"] == counts["head_trainable"] == 1 + 50
    assert counts["frozen"] == 0


def test_fwht_head_init_matches_fixed_head():
    torch.manual_seed(0)
    fast = build_head("fixed-fwht", 64, 100)
    torch.manual_seed(0)
    dense = build_head("fixed", 64, 100)
    assert torch.equal(fast.scale, dense.scale) and torch.equal(fast.bias, dense.bias)
