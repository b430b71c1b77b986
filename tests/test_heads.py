import math

import pytest
import scipy.linalg
import torch

from distbench.config import UnknownName
from distbench.model.counts import param_counts, trainable
from distbench.model.heads import HEADS, build_head, cosine_scale, orthogonal_block
from distbench.model.heads.hadamard import hadamard_block


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (8, 8), (10, 4), (16, 32), (100, 64), (33, 17)])
def test_hadamard_block_equals_scipy(rows, cols):
    n = 1 << max(rows - 1, cols - 1, 1).bit_length()
    expected = torch.tensor(scipy.linalg.hadamard(n)[:rows, :cols], dtype=torch.float32)
    block = hadamard_block(rows, cols)
    assert torch.equal(block, expected)
    assert set(block.unique().tolist()) <= {-1.0, 1.0}


def test_hadamard_rows_orthogonal_when_c_le_n():
    h = hadamard_block(100, 128)
    assert torch.equal(h @ h.T, 128 * torch.eye(100))


def test_hadamard_at_100k_classes_builds_only_the_block():
    h = hadamard_block(100_000, 64, dtype=torch.bfloat16)
    assert h.shape == (100_000, 64) and h.dtype == torch.bfloat16
    # rows repeat with period 64 (documented): row i == row i mod 64
    assert torch.equal(h[64:128], h[:64])


@pytest.mark.parametrize("bias,expected", [(True, 1 + 1000), (False, 1)])
@pytest.mark.parametrize("name", ["fixed", "fixed-orthogonal"])  # fixed-fwht, fixed-srht: their own files
def test_fixed_head_trains_only_scale_and_bias(name, bias, expected):
    head = build_head(name, 64, 1000, bias=bias)
    assert sum(p.numel() for p in trainable(head)) == expected
    assert "weight" not in head.state_dict()  # non-persistent: not in checkpoints
    assert head.weight.shape == (1000, 64) and not head.weight.requires_grad


def test_learned_head_is_linear_with_bias():
    head = build_head("learned", 64, 1000)
    assert sum(p.numel() for p in trainable(head)) == 64 * 1000 + 1000


def hadamard_proj(x, scale, bias, c):
    """The authors' HadamardProj.forward (eladhoffer/fix_your_classifier, fixed_proj.py), written out:
    sz = 2^ceil(log2 max(N, C)), H = scipy's Hadamard of size sz, x / (||x|| + 1e-8) over the last
    dimension, out = -scale * linear(x, H[:C, :N]) + bias."""
    n = x.shape[-1]
    sz = 2 ** math.ceil(math.log2(max(n, c)))
    w = torch.from_numpy(scipy.linalg.hadamard(sz)).to(x.dtype)[:c, :n]
    x = x / (x.norm(2, -1, keepdim=True) + 1e-8)
    out = -scale * torch.nn.functional.linear(x, w)
    return out if bias is None else out + bias.view(1, -1)


def proj(x, w, scale, bias):
    """The authors' Proj.forward: x / ||x||, out = linear(x, W) * scale + bias (no sign, no eps)."""
    x = x / x.norm(2, -1, keepdim=True)
    out = torch.nn.functional.linear(x, w) * scale
    return out if bias is None else out + bias.view(1, -1)


@pytest.mark.parametrize("name", ["fixed", "fixed-fwht", "fixed-srht"])
@pytest.mark.parametrize("c,n", [(10, 16), (40, 16), (16, 16), (5, 12), (100, 24)])
@pytest.mark.parametrize("lead", [(4,), (2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_hadamard_heads_compute_the_authors_formula(name, c, n, lead, bias):
    head = build_head(name, n, c, bias=bias, dtype=torch.float64).double()
    with torch.no_grad():  # any learned values, not only the initial ones
        head.scale.fill_(0.7)
        if bias:
            head.bias.copy_(torch.linspace(-1, 1, c))
    x = torch.randn(*lead, n, dtype=torch.float64).relu()  # non-negative, as post-ReLU features are
    if name == "fixed-srht":  # the same formula with its own rows: -scale * W xhat + b
        w = head.dense_weight()
        xhat = x / (x.norm(2, -1, keepdim=True) + 1e-8)
        expected = -head.scale * xhat @ w.T + (0 if head.bias is None else head.bias)
    else:
        expected = hadamard_proj(x, head.scale, head.bias, c)
    torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("name", ["fixed", "fixed-fwht", "fixed-srht"])
def test_hadamard_heads_start_where_the_authors_do(name):
    c = 400
    head = build_head(name, 64, c)
    bound = 1 / math.sqrt(c)
    assert head.scale.shape == (1,) and math.isclose(head.scale.item(), bound, rel_tol=1e-6)
    assert head.bias.abs().max() <= bound and head.bias.std() > bound / 3  # U(-1/sqrt(C), 1/sqrt(C))
    # The sign: with non-negative features, row 0 (all ones) gives class 0 the lowest logit, not the highest.
    if name != "fixed-srht":
        x = torch.rand(8, 64)
        no_bias = build_head(name, 64, c, bias=False)
        assert (no_bias(x).argmin(1) == 0).all()


@pytest.mark.parametrize("name", ["fixed", "fixed-fwht", "fixed-srht", "fixed-orthogonal"])
def test_fixed_scale_is_held_not_learned(name):
    head = build_head(name, 32, 50, fixed_scale=2.5)
    assert [n for n, p in head.named_parameters()] == ["bias"]
    assert head.scale.item() == 2.5 and "scale" not in head.state_dict()
    x = torch.rand(3, 32)
    head(x).sum().backward()
    assert head.scale.grad is None


def test_cosine_scale_is_adacos_fixed_scale():
    """s = sqrt(2) ln(C - 1) (Zhang et al. 2019): 13.0 at 10K classes, as the issue computes it."""
    assert cosine_scale(10_001) == pytest.approx(math.sqrt(2) * math.log(10_000)) == pytest.approx(13.0, abs=0.03)
    assert cosine_scale(100_000) == pytest.approx(16.28, abs=0.01)
    assert cosine_scale(2) == pytest.approx(math.sqrt(2) * math.log(2))  # ln 1 = 0 would be no scale at all


def dense_rows(head) -> torch.Tensor:
    """The C x N matrix whose rows a fixed head's logits are alpha x (row . xhat) of."""
    if hasattr(head, "dense_weight"):
        return head.dense_weight().float()
    if hasattr(head, "weight"):
        return head.weight.float()
    return hadamard_block(head.num_classes, head.in_features)  # fixed-fwht: the fixed head's block


@pytest.mark.parametrize("name", ["fixed", "fixed-fwht", "fixed-srht", "fixed-orthogonal"])
@pytest.mark.parametrize("c,n", [(40, 64), (5000, 48)])
def test_rule_scale_makes_a_typical_row_give_the_cosine_softmax_scale(name, c, n):
    """alpha x |row| = s: held (`fixed_scale="rule"`, a buffer) or as a learned alpha's start."""
    rows = dense_rows(build_head(name, n, c)).norm(dim=1).square().mean().sqrt().item()
    held = build_head(name, n, c, fixed_scale="rule")
    start = build_head(name, n, c, scale_init="rule")
    assert held.scale.item() * rows == pytest.approx(cosine_scale(c), rel=1e-5)
    assert [p for p, _ in held.named_parameters()] == ["bias"]
    assert isinstance(start.scale, torch.nn.Parameter)
    assert start.scale.item() == pytest.approx(held.scale.item(), rel=1e-6)
    authors = build_head(name, n, c)
    assert authors.scale.item() == pytest.approx(10.0 if name == "fixed-orthogonal" else 1 / math.sqrt(c))


@pytest.mark.parametrize("c,n", [(10, 64), (64, 64), (300, 64)])
def test_orthogonal_head_follows_proj(c, n):
    head = build_head("fixed-orthogonal", n, c, dtype=torch.float64).double()
    w = head.weight
    assert head.scale.item() == 10.0 and torch.equal(head.bias, torch.zeros(c, dtype=torch.float64))
    if c <= n:  # nn.init.orthogonal: orthonormal rows ...
        torch.testing.assert_close(w @ w.T, torch.eye(c, dtype=torch.float64))
    else:  # ... or, for more rows than columns, orthonormal columns; rows about sqrt(N / C) long
        torch.testing.assert_close(w.T @ w, torch.eye(n, dtype=torch.float64))
        assert abs(w.norm(dim=1).mean().item() - math.sqrt(n / c)) < 0.1 * math.sqrt(n / c)
        assert torch.unique(w, dim=0).shape[0] == c
    with torch.no_grad():
        head.scale.fill_(3.0)
        head.bias.copy_(torch.linspace(-1, 1, c))
    x = torch.randn(2, 5, n, dtype=torch.float64)
    torch.testing.assert_close(head(x), proj(x, w, head.scale, head.bias))


def test_orthogonal_unit_rows_option():
    authors = build_head("fixed-orthogonal", 64, 300)
    unit = build_head("fixed-orthogonal", 64, 300, row_norm="unit")
    torch.testing.assert_close(unit.weight.norm(dim=1), torch.ones(300))
    torch.testing.assert_close(unit.weight, authors.weight / authors.weight.norm(dim=1, keepdim=True))


def test_orthogonal_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = orthogonal_block(20, 8, seed=1), orthogonal_block(20, 8, seed=1), orthogonal_block(20, 8, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_head_lists_valid_names():
    valid = "choose from: fixed, fixed-fwht, fixed-orthogonal, fixed-srht, learned"
    with pytest.raises(UnknownName, match=rf"unknown head 'fxied'.*{valid}"):
        HEADS.get("fxied")


def test_fixed_weight_counts_as_frozen():
    from distbench.model import Classifier
    from distbench.model.backbones import build_backbone

    backbone = build_backbone("tiny")
    learned = param_counts(Classifier(backbone, build_head("learned", 256, 50)))
    fixed = param_counts(Classifier(backbone, build_head("fixed", 256, 50)))
    assert fixed["frozen"] == 256 * 50 and learned["frozen"] == 0
    assert fixed["total"] == learned["total"] + 1  # + alpha
