"""The symmetric parameterisations (--param) as modules: exact symmetry, forward passes equal to a dense conv
with the symmetric weight, gradients, and what each stores (so what DDP sends)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distbench.comm.expected import expected_bytes
from distbench.config import ConfigError, ModelConfig
from distbench.model import build_model
from distbench.model.backbones import build_backbone
from distbench.model.counts import trainable
from distbench.model.structure.freeze import conv_learned_fraction
from distbench.model.structure.params import apply_param
from distbench.model.structure.symmetric import AveragedConv2d, SpatialSymmetricConv2d, SymmetricConv2d


def convs(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def built(model: str, param: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(model=model, num_classes=10, param=param))


def test_symmetric_is_an_alias_of_channel_triangular():
    a, b = built("wrn-10-1", "symmetric"), built("wrn-10-1", "channel-triangular")
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_spatial_triangular_stores_the_upper_triangle_and_is_exactly_symmetric():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    sym = SpatialSymmetricConv2d(conv)
    assert sym.weight_packed.shape == (6, 4, 6) and sym.conv_counts() == (6 * 4 * 6, 6 * 4 * 9)
    w = sym.weight()
    assert torch.equal(w, w.transpose(2, 3))
    rows, cols = torch.triu_indices(3, 3)
    assert torch.equal(w[..., rows, cols], conv.weight.detach()[..., rows, cols])  # the init's upper triangle
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(sym(x), F.conv2d(x, w, conv.bias, padding=1))
    # Gradient: the packed coefficient (a, b) gets dL/dW[a, b] + dL/dW[b, a] (once on the diagonal).
    dense = w.detach().clone().requires_grad_(True)
    F.conv2d(x, dense, conv.bias, padding=1).square().sum().backward()
    sym(x).square().sum().backward()
    g = dense.grad
    want = torch.where(rows == cols, g[..., rows, cols], g[..., rows, cols] + g[..., cols, rows])
    torch.testing.assert_close(sym.weight_packed.grad, want)


def test_channel_triangular_gradient_folds_the_two_halves():
    torch.manual_seed(0)
    sym = SymmetricConv2d(nn.Conv2d(5, 5, 3, padding=1, bias=False))
    x = torch.randn(2, 5, 6, 6)
    dense = sym.weight().detach().clone().requires_grad_(True)
    F.conv2d(x, dense, padding=1).square().sum().backward()
    sym(x).square().sum().backward()
    rows, cols = torch.triu_indices(5, 5)
    g = dense.grad
    fold = (rows == cols).view(-1, 1, 1)
    want = torch.where(fold, g[rows, cols], g[rows, cols] + g[cols, rows])
    torch.testing.assert_close(sym.weight_packed.grad, want)


@pytest.mark.parametrize(
    "channel,spatial", [(True, False), (False, True), (True, True)], ids=["channel", "spatial", "both"]
)
def test_averaged_convs_learn_every_element_and_are_symmetric_in_the_forward_pass(channel, spatial):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1, bias=True)
    avg = AveragedConv2d(conv, channel=channel, spatial=spatial)
    assert torch.equal(avg.weight, conv.weight) and avg.conv_counts() == (6 * 6 * 9, 6 * 6 * 9)
    assert not torch.equal(avg.weight, avg.weight.transpose(0, 1))  # the parameter itself is not symmetric
    w = avg.symmetric_weight()
    assert torch.equal(w, w.transpose(0, 1)) == channel
    assert torch.equal(w, w.transpose(2, 3)) == spatial
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(avg(x), F.conv2d(x, w, conv.bias, padding=1))
    avg(x).square().sum().backward()
    assert avg.weight.grad.shape == avg.weight.shape and avg.weight.grad.count_nonzero() == avg.weight.numel()
    # The gradient of the symmetrised weight is symmetric too: the average is a projection.
    g = avg.weight.grad
    assert torch.allclose(g, g.transpose(0, 1) if channel else g.transpose(2, 3), atol=1e-6)


@pytest.mark.parametrize("param", ["channel-triangular", "spatial-triangular"])
def test_triangular_weights_stay_exactly_symmetric_after_training(param):
    model = built("wrn-10-1", param)
    kind = SymmetricConv2d if param == "channel-triangular" else SpatialSymmetricConv2d
    axes = (0, 1) if param == "channel-triangular" else (2, 3)
    opt = torch.optim.SGD(trainable(model), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.arange(4)).backward()
        opt.step()
    for m in convs(model, kind):
        w = m.weight()
        assert torch.equal(w, w.transpose(*axes))


def square_kernels(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in convs(model, nn.Conv2d) if m.kernel_size[0] == m.kernel_size[1] > 1]


def test_bytes_triangular_save_and_averaged_do_not():
    torch.manual_seed(0)
    plain = build_backbone("wrn-10-1")
    full = expected_bytes(plain)
    k = 3
    spatial_saved = sum(m.weight[:, :, 0, 0].numel() * k * (k - 1) // 2 for m in square_kernels(plain))
    square = [m for m in convs(plain, nn.Conv2d) if m.in_channels == m.out_channels]
    channel_saved = sum(m.out_channels * (m.out_channels - 1) // 2 * m.weight[0, 0].numel() for m in square)
    for param, saved in [
        ("spatial-triangular", spatial_saved),
        ("channel-triangular", channel_saved),
        ("channel-average", 0),
        ("spatial-average", 0),
        ("spatial-channel-average", 0),
    ]:
        b = copy.deepcopy(plain)
        apply_param(param, b)
        assert expected_bytes(b) == full - 4 * saved, param
        assert (conv_learned_fraction(b) < 1) == (saved > 0), param
    both = copy.deepcopy(plain)
    apply_param("spatial-channel-average", both)
    avg = convs(both, AveragedConv2d)
    assert len(avg) == len(square_kernels(plain))  # every 3x3 conv; the 1x1 shortcuts are symmetric already
    assert sum(m.channel for m in avg) == len(square) and all(m.spatial for m in avg)


@pytest.mark.parametrize(
    "param,net",
    [
        ("channel-triangular", nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3))),
        ("channel-average", nn.Sequential(nn.Conv2d(3, 8, 3))),
        ("spatial-triangular", nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, (3, 1)))),
        ("spatial-average", nn.Sequential(nn.Conv2d(8, 8, 1))),
        ("spatial-channel-average", nn.Sequential(nn.Conv2d(3, 8, 1))),
    ],
)
def test_a_parameterisation_that_fits_no_conv_names_model_param(param, net):
    with pytest.raises(ConfigError) as e:
        apply_param(param, net)
    assert e.value.field == "model.param"
