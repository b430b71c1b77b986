import math

import pytest
import scipy.linalg
import torch

from distbench.comm import param_counts, trainable
from distbench.heads import HEADS, FixedHead, build_head, hadamard_block, orthogonal_block
from distbench.registry import UnknownName


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
@pytest.mark.parametrize("name", ["fixed", "fixed-orthogonal"])  # fixed-fwht: tests/test_fwht.py
def test_fixed_head_trains_only_scale_and_bias(name, bias, expected):
    head = build_head(name, 64, 1000, bias=bias)
    assert sum(p.numel() for p in trainable(head)) == expected
    assert "weight" not in head.state_dict()  # non-persistent: not in checkpoints
    assert head.weight.shape == (1000, 64) and not head.weight.requires_grad


def test_learned_head_is_linear_with_bias():
    head = build_head("learned", 64, 1000)
    assert sum(p.numel() for p in trainable(head)) == 64 * 1000 + 1000


def test_fixed_head_logits_follow_the_formula():
    torch.manual_seed(0)
    head = build_head("fixed", 16, 10)
    x = torch.randn(4, 16)
    xhat = x / x.norm(dim=1, keepdim=True)
    expected = head.scale * xhat @ hadamard_block(10, 16).T + head.bias
    assert torch.allclose(head(x), expected, atol=1e-6)
    assert math.isclose(head.scale.item(), 1 / math.sqrt(10), rel_tol=1e-6)


@pytest.mark.parametrize("rows,cols", [(10, 64), (64, 64), (300, 64)])
def test_orthogonal_block(rows, cols):
    w = orthogonal_block(rows, cols, seed=3).double()
    assert torch.allclose(w.norm(dim=1), torch.full((rows,), math.sqrt(cols), dtype=torch.float64))
    if rows <= cols:
        assert torch.allclose(w @ w.T / cols, torch.eye(rows, dtype=torch.float64), atol=1e-6)  # float32 rounding
    else:  # C > N: at most N rows can be orthogonal; the rows are at least all distinct
        assert torch.unique(w, dim=0).shape[0] == rows


def test_orthogonal_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = orthogonal_block(20, 8, seed=1), orthogonal_block(20, 8, seed=1), orthogonal_block(20, 8, seed=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_unknown_head_lists_valid_names():
    valid = "choose from: fixed, fixed-fwht, fixed-orthogonal, learned"
    with pytest.raises(UnknownName, match=rf"unknown head 'fxied'.*{valid}"):
        HEADS.get("fxied")


def test_fixed_weight_counts_as_frozen():
    from distbench.models import Classifier, build_backbone

    backbone = build_backbone("tiny")
    learned = param_counts(Classifier(backbone, build_head("learned", 256, 50)))
    fixed = param_counts(Classifier(backbone, build_head("fixed", 256, 50)))
    assert fixed["frozen"] == 256 * 50 and learned["frozen"] == 0
    assert fixed["total"] == learned["total"] + 1  # + alpha
    assert isinstance(build_head("fixed", 256, 50), FixedHead)
