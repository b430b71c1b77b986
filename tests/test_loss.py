"""The fused CPU cross-entropy against torch's: the same loss and gradient, in every blocking of the rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distbench.model import loss


@pytest.mark.parametrize("block", [1 << 19, 64, 7])  # one block; several rows a block; a row split over none
@pytest.mark.parametrize("rows, classes", [(5, 3), (13, 1000), (1, 50)])
def test_fused_cross_entropy_is_torchs(monkeypatch, block, rows, classes):
    monkeypatch.setattr(loss, "BLOCK_ELEMENTS", block)
    gen = torch.Generator().manual_seed(rows * classes)
    logits = (10 * torch.randn(rows, classes, generator=gen, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, classes, (rows,), generator=gen)

    mine = loss.cross_entropy(logits, target)
    (mine * 3).backward()  # a cotangent other than 1 reaches the gradient
    ours = logits.grad.clone()
    logits.grad = None
    theirs = F.cross_entropy(logits, target)
    (theirs * 3).backward()
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-12)
    torch.testing.assert_close(ours, logits.grad, rtol=1e-12, atol=1e-15)
    with torch.no_grad():
        torch.testing.assert_close(
            loss.cross_entropy(logits, target, reduction="none"), F.cross_entropy(logits, target, reduction="none")
        )
    if rows * classes <= 250:  # finite differences: one forward per logit
        assert torch.autograd.gradcheck(lambda z: loss.cross_entropy(z, target), (logits.detach().requires_grad_(),))


def test_a_second_backward_through_the_same_loss_gets_the_same_gradient():
    """The first backward turns the forward's softmax into the gradient; a second (retain_graph) recomputes it."""
    logits = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    mine = loss.cross_entropy(logits, torch.arange(6))
    first = torch.autograd.grad(mine, logits, retain_graph=True)[0]
    torch.testing.assert_close(torch.autograd.grad(mine, logits)[0], first, rtol=0, atol=0)


def test_the_mean_loss_without_a_gradient_is_torchs():
    logits, target = torch.randn(7, 300, dtype=torch.float64), torch.randint(0, 300, (7,))
    assert loss.cross_entropy(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-12)


def test_float32_stays_float32_and_keeps_torchs_tolerance():
    logits = torch.randn(64, 4096, requires_grad=True)
    target = torch.randint(0, 4096, (64,))
    mine = loss.cross_entropy(logits, target)
    assert mine.dtype == torch.float32
    mine.backward()
    ours, logits.grad = logits.grad, None
    F.cross_entropy(logits, target).backward()
    torch.testing.assert_close(ours, logits.grad)  # float32's default tolerances


def test_what_is_not_fused_is_torchs():
    """Off the CPU (here the meta device), below float32, or another reduction: torch's own function."""
    meta = torch.empty(8, 100, device="meta")
    assert loss.cross_entropy(meta, torch.zeros(8, dtype=torch.long, device="meta")).device.type == "meta"
    half = torch.randn(8, 100).bfloat16()
    target = torch.randint(0, 100, (8,))
    assert torch.equal(loss.cross_entropy(half, target), F.cross_entropy(half, target))
    full = torch.randn(8, 100)
    summed = loss.cross_entropy(full, target, reduction="sum")
    assert torch.equal(summed, F.cross_entropy(full, target, reduction="sum"))


def test_a_class_id_out_of_range_raises():
    with pytest.raises((IndexError, RuntimeError)):
        loss.cross_entropy(torch.randn(4, 10), torch.tensor([0, 1, 2, 10]))
