import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distbench.comm.expected import expected_bytes
from distbench.config import ConfigError, FreezeConfig, ModelConfig, parse_args
from distbench.model import build_model
from distbench.model.backbones import build_backbone
from distbench.model.counts import param_counts, trainable
from distbench.model.structure.dirac import DiracConv2d
from distbench.model.structure.freeze import (
    DIMS,
    FreezeSettings,
    SplitConv2d,
    apply_freeze,
    conv_learned_fraction,
    parse_rule,
)
from distbench.model.structure.symmetric import SymmetricConv2d
from distbench.runtime.checks import check_structure


def backbone_pair(spec, seed=0, **kw):
    """The same randomly initialised resnet18 backbone twice: one split, one masked."""
    torch.manual_seed(seed)
    base = build_backbone("resnet18", image_size=32)
    split, mask = copy.deepcopy(base), copy.deepcopy(base)
    apply_freeze(split, FreezeSettings(parse_rule(spec), "split", **kw))
    apply_freeze(mask, FreezeSettings(parse_rule(spec), "mask", **kw))
    return base, split, mask


def test_split_forward_equals_the_unmodified_module():
    base, split, _ = backbone_pair("fraction:0.1")
    assert any(isinstance(m, SplitConv2d) for m in split.modules())
    x = torch.randn(4, 3, 32, 32)
    base.eval(), split.eval()
    assert torch.allclose(base(x), split(x), atol=1e-5)


def test_split_gradient_equals_masked_gradient_and_fixed_rows_get_none():
    _, split, mask = backbone_pair("fraction:0.25")
    x = torch.randn(4, 3, 32, 32)
    split(x).square().sum().backward()
    mask(x).square().sum().backward()
    for (name, s), m in zip(split.named_modules(), mask.modules(), strict=True):
        if isinstance(s, SplitConv2d):
            k = s.weight_learned.shape[0]
            assert k == math.ceil(0.25 * s.out_channels)
            # equal up to float32 summation order (two convs + concat vs one conv)
            diff = (s.weight_learned.grad - m.weight.grad[:k]).norm() / m.weight.grad[:k].norm()
            assert diff < 1e-5, name
            assert torch.count_nonzero(m.weight.grad[k:]) == 0  # masked: zeros, but still a full tensor
            assert s.weight_fixed.grad is None


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fixed_slice_is_bit_identical_after_training(optimizer):
    _, split, _ = backbone_pair("filters:3")
    fixed_before = {n: b.clone() for n, b in split.named_buffers() if n.endswith("weight_fixed")}
    learned_before = {n: p.clone() for n, p in split.named_parameters() if n.endswith("weight_learned")}
    params = trainable(split)
    opt = (
        torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        if optimizer == "sgd"
        else torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)
    )
    for _ in range(3):
        opt.zero_grad()
        split(torch.randn(4, 3, 32, 32)).square().mean().backward()
        opt.step()
    for n, b in split.named_buffers():
        if n in fixed_before:
            assert torch.equal(b, fixed_before[n]), n
    assert any(not torch.equal(p, learned_before[n]) for n, p in split.named_parameters() if n in learned_before)


def test_zero_init_zeroes_fixed_weights():
    _, split, mask = backbone_pair("fraction:0.5", frozen_init="zero")
    for m in split.modules():
        if isinstance(m, SplitConv2d):
            assert torch.count_nonzero(m.weight_fixed) == 0 and torch.count_nonzero(m.weight_learned) > 0
    for m in mask.modules():
        if isinstance(m, nn.Conv2d):
            assert torch.count_nonzero(m.weight[m.learned_filters :]) == 0
    torch.manual_seed(0)
    b = build_backbone("resnet18", image_size=32)
    apply_freeze(b, FreezeSettings(parse_rule("bn"), frozen_init="zero"))
    assert all(torch.count_nonzero(m.weight) == 0 for m in b.modules() if isinstance(m, nn.Conv2d))
    assert all(m.weight.requires_grad for m in b.modules() if isinstance(m, nn.BatchNorm2d))


def test_split_and_mask_learn_the_same_fraction_but_send_different_bytes():
    _, split, mask = backbone_pair("fraction:0.1")
    assert conv_learned_fraction(split) == conv_learned_fraction(mask) < 0.11
    assert expected_bytes(mask) == 4 * sum(p.numel() for p in mask.parameters())
    assert expected_bytes(split) < 0.15 * expected_bytes(mask)
    assert param_counts(split)["total"] == param_counts(mask)["total"]


def test_bn_frozen_freezes_batchnorm_of_partly_frozen_layers():
    _, split, _ = backbone_pair("fraction:0.1", bn="frozen")
    assert not any(p.requires_grad for m in split.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())


def test_blocks_rule_learns_only_named_blocks_and_the_head_follows_head():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="resnet18", num_classes=10), FreezeConfig(freeze="blocks:layer4"))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in model.named_parameters() if n.startswith(("backbone.layer4.", "head."))}


def test_symmetric_halves_square_convs_and_is_symmetric():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(model="wrn-16-2", num_classes=10))
    torch.manual_seed(0)
    sym = build_model(ModelConfig(model="wrn-16-2", num_classes=10, param="symmetric"))
    square = [m for m in plain.modules() if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels]
    saved = sum(m.out_channels * (m.out_channels - 1) // 2 * m.weight[0, 0].numel() for m in square)
    assert expected_bytes(plain) - expected_bytes(sym) == 4 * saved
    convs = [m for m in sym.modules() if isinstance(m, SymmetricConv2d)]
    assert len(convs) == len(square) > 0
    for m in convs:
        w = m.weight()
        assert torch.equal(w, w.transpose(0, 1))
    x = torch.randn(2, 32, 8, 8)
    c = convs[0]
    assert torch.allclose(c(x), F.conv2d(x, c.weight(), None, c.stride, c.padding), atol=1e-6)


def test_dirac_starts_near_identity():
    conv = DiracConv2d(8, 8, 3, padding=1)
    assert torch.equal(conv.alpha, torch.ones(8)) and torch.allclose(conv.beta, torch.full((8,), 0.1))
    x = torch.randn(2, 8, 6, 6)
    w_norm = conv.weight / conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(conv(x), x + 0.1 * F.conv2d(x, w_norm, padding=1), atol=1e-5)


def test_diracnet_has_no_skip_connections_and_trains():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="diracnet-10-1", num_classes=10))
    convs = [m for m in model.modules() if isinstance(m, DiracConv2d)]
    assert len(convs) == 6  # 3 groups x 2n, n = 1
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 10
    # Trains: a few steps on one batch lower its loss.
    opt = torch.optim.SGD(trainable(model), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    # No skip connection: silence one conv in the middle (W = 0) and nothing of the input gets past it.
    with torch.no_grad():
        convs[3].alpha.zero_()
        convs[3].beta.zero_()
    model.eval()
    a, b = model(x[:1]), model(torch.randn(1, 3, 32, 32) * 5)
    torch.testing.assert_close(a, b)


def test_counts_table_agrees_with_expected_bytes():
    from distbench.perfmodel.counts import table

    text = table(["tiny"], 10)
    rows = {line.split(" | ")[1]: line for line in text.splitlines()[2:]}
    assert "does not apply" in rows["param channel-triangular"]
    assert rows["param spatial-average"].endswith("| 1.000 |")  # averaged: every byte sent
    torch.manual_seed(0)
    full = expected_bytes(build_model(ModelConfig(num_classes=10)))
    assert f"| {full:,} | 1.000 |" in rows["none"] and f"| {full:,} | 1.000 |" in rows["fraction:0.1 (mask)"]


# ------------------------------------------------------------------------------------ --freeze-dim in/kh/kw
def learned_slice(conv: nn.Conv2d, rule: str, dim: int) -> int:
    """The learned slices along `dim`, computed here from the spec (at least one: a size-1 dim is whole)."""
    n = conv.weight.shape[dim]
    kind, _, arg = rule.partition(":")
    return max(1, math.ceil(float(arg) * n - 1e-9)) if kind == "fraction" else min(int(arg), n)


@pytest.mark.parametrize("dim", ["in", "kh", "kw"])
def test_split_along_dim_matches_the_dense_conv_and_the_masked_gradient(dim):
    d = DIMS.index(dim)
    base, split, mask = backbone_pair("fraction:0.25", dim=dim)
    x = torch.randn(4, 3, 32, 32)
    base.eval(), split.eval(), mask.eval()  # BatchNorm statistics are not what is compared here
    torch.testing.assert_close(split(x), base(x), atol=1e-5, rtol=1e-4)
    split(x).square().sum().backward()
    mask(x).square().sum().backward()
    n_split = 0
    for (name, s), b, m in zip(split.named_modules(), base.modules(), mask.modules(), strict=True):
        if not isinstance(b, nn.Conv2d):
            continue
        k = learned_slice(b, "fraction:0.25", d)
        assert m.weight.grad.narrow(d, k, b.weight.shape[d] - k).count_nonzero() == 0, name  # masked, still sent
        if k == b.weight.shape[d]:  # a 1x1 kernel along kh/kw: nothing to split, learned whole
            assert type(s) is nn.Conv2d and s.weight.requires_grad and dim in ("kh", "kw"), name
            continue
        n_split += 1
        assert isinstance(s, SplitConv2d) and s.weight_fixed.grad is None and not s.weight_fixed.requires_grad
        assert torch.equal(s.weight(), b.weight)  # the same weight, in two pieces
        want = m.weight.grad.narrow(d, 0, k)
        assert s.weight_learned.shape == want.shape, name
        # equal up to float32 summation order; layer4 sees 1x1 maps at 32x32, so a kernel row may get zeros
        assert (s.weight_learned.grad - want).norm() <= 1e-5 * want.norm() + 1e-8, name
    assert n_split > 0
    assert conv_learned_fraction(split) == conv_learned_fraction(mask)


@pytest.mark.parametrize("dim", ["in", "kh", "kw"])
def test_fixed_slice_along_dim_never_changes_and_only_learned_bytes_are_expected(dim):
    torch.manual_seed(0)
    base = build_backbone("resnet18", image_size=32)
    convs = [m for m in base.modules() if isinstance(m, nn.Conv2d)]
    split = copy.deepcopy(base)
    apply_freeze(split, FreezeSettings(parse_rule("filters:1"), "split", dim=dim))
    d = DIMS.index(dim)
    learned = sum(learned_slice(c, "filters:1", d) * c.weight.numel() // c.weight.shape[d] for c in convs)
    others = sum(p.numel() for m in base.modules() if not isinstance(m, nn.Conv2d) for p in m.parameters(False))
    assert expected_bytes(split) == 4 * (learned + others)
    assert conv_learned_fraction(split) == learned / sum(c.weight.numel() for c in convs)
    assert param_counts(split)["total"] == param_counts(base)["total"]
    fixed_before = {n: b.clone() for n, b in split.named_buffers() if n.endswith("weight_fixed")}
    assert fixed_before
    opt = torch.optim.AdamW(trainable(split), lr=0.01, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        split(torch.randn(2, 3, 32, 32)).square().mean().backward()
        opt.step()
    for n, b in split.named_buffers():
        if n in fixed_before:
            assert torch.equal(b, fixed_before[n]), n


def test_zero_init_along_in_zeroes_the_fixed_input_channels():
    torch.manual_seed(0)
    mask = build_backbone("resnet18", image_size=32)
    apply_freeze(mask, FreezeSettings(parse_rule("fraction:0.5"), "mask", frozen_init="zero", dim="in"))
    for m in mask.modules():
        if isinstance(m, nn.Conv2d):
            dim, k = m.learned_slice
            assert dim == 1 and not hasattr(m, "learned_filters")  # learned_filters: whole-filter rows only
            assert m.weight[:, k:].count_nonzero() == 0 and m.weight[:, :k].count_nonzero() > 0


@pytest.mark.parametrize("groups", [2, 8])  # grouped and depthwise
@pytest.mark.parametrize("dim", ["in", "kh", "kw"])
def test_grouped_convs_split_along_in_kh_kw(groups, dim):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=True)
    net = nn.Sequential(conv)
    dense = copy.deepcopy(net)
    apply_freeze(net, FreezeSettings(parse_rule("fraction:0.5"), "split", dim=dim))
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(net(x), dense(x))
    if groups == 8 and dim == "in":  # one input channel per group: learned whole
        assert type(net[0]) is nn.Conv2d
    else:
        assert isinstance(net[0], SplitConv2d) and net[0].bias_learned.shape == (8,)  # biases stay learned


def test_grouped_conv_by_filter_and_bad_dims_are_one_line_errors():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, groups=2))
    with pytest.raises(ConfigError, match="grouped convolutions cannot be split by filter") as e:
        apply_freeze(net, FreezeSettings(parse_rule("fraction:0.5"), "split"))
    assert e.value.field == "freeze.freeze"
    with pytest.raises(ConfigError, match="applies only to fraction:P and filters:K") as e:
        FreezeSettings.from_config(FreezeConfig(freeze="bn", freeze_dim="in"))
    assert e.value.field == "freeze.freeze_dim"
    with pytest.raises(ConfigError, match="choose from: in, kh, kw, out") as e:
        FreezeConfig(freeze="fraction:0.1", freeze_dim="depth")
    assert e.value.field == "freeze.freeze_dim"
    cfg = parse_args(["--backend", "fsdp", "--freeze", "fraction:0.5", "--freeze-mode", "mask", "--freeze-dim", "kh"])
    with pytest.raises(ConfigError, match="masks whole filters only") as e:
        check_structure(cfg)
    assert e.value.field == "freeze.freeze_dim"


def test_slug_names_the_dimension_unless_it_is_out():
    assert FreezeSettings.from_config(FreezeConfig(freeze="fraction:0.1")).slug == "fraction0.1"
    assert FreezeSettings.from_config(FreezeConfig(freeze="fraction:0.1", freeze_dim="in")).slug == "fraction0.1-in"
