"""2-rank gloo runs of the freeze rules on ResNet-18 (and of the parameterisations on a WRN): the bytes on the
wire are exactly the learned tensors' bytes, computed here from a fresh torchvision model (the plain WRN) and
not from distbench's freeze or params code. All of them run in one torchrun job (conftest.torchrun_many)."""

import math

import pytest
import torchvision
from conftest import SHORT, flags, torchrun_many
from torch import nn

from distbench.results import validate

C = 10
COMMON = flags(model="resnet18", num_classes=C, image_size=32, **SHORT)


def learned_elements(spec: str, dim: str = "out") -> int:
    model = torchvision.models.resnet18(num_classes=C)
    head = sum(p.numel() for p in model.fc.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    d = ("out", "in", "kh", "kw").index(dim)  # the weight is (out, in, kh, kw)
    per_slice = lambda m: m.weight.numel() // m.weight.shape[d]  # noqa: E731
    if spec == "none":
        return sum(p.numel() for p in model.parameters())
    if spec.startswith("fraction:"):  # ceil: a size-1 dimension (1x1 kernels along kh/kw) is learned whole
        p = float(spec.split(":")[1])
        return sum(math.ceil(p * m.weight.shape[d]) * per_slice(m) for m in convs) + bn + head
    if spec.startswith("filters:"):
        k = int(spec.split(":")[1])
        return sum(min(k, m.weight.shape[d]) * per_slice(m) for m in convs) + bn + head
    if spec == "bn":
        return bn + head
    if spec.startswith("blocks:"):
        return sum(p.numel() for p in model.get_submodule(spec.split(":")[1]).parameters()) + head
    raise ValueError(spec)


RULES = [
    ("fraction:0.1", "split", "out"),
    ("filters:5", "split", "out"),
    ("bn", "split", "out"),
    ("blocks:layer4", "split", "out"),
    ("fraction:0.1", "mask", "out"),
    ("fraction:0.1", "split", "in"),
    ("fraction:0.1", "mask", "in"),
    ("fraction:0.1", "split", "kh"),
    ("filters:2", "split", "kw"),
]
WRN = "wrn-10-1"  # 3x3 convs, square (in == out) and not, and 1x1 shortcuts
PARAMS = ["channel-triangular", "spatial-triangular", "channel-average", "spatial-average", "spatial-channel-average"]


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict:
    """Every rule's and parameterisation's record, from one job."""
    rules = [[*COMMON, "--freeze", spec, "--freeze-mode", mode, "--freeze-dim", dim] for spec, mode, dim in RULES]
    wrn = flags(model=WRN, num_classes=C, image_size=16, **SHORT)  # bytes do not depend on image size
    params = [[*wrn, "--param", param] for param in PARAMS]
    out = tmp_path_factory.mktemp("freeze") / "runs.jsonl"
    found = torchrun_many([*rules, *params], out)
    return dict(zip([*RULES, *PARAMS], found, strict=True))


@pytest.mark.parametrize("spec,mode,dim", RULES)
def test_payload_is_exactly_the_learned_tensors(records, spec, mode, dim):
    rec = records[spec, mode, dim]
    validate(rec)
    payload = rec["comm"]["payload_bytes_per_step"]
    assert payload == rec["comm"]["expected_bytes_per_step"]
    if mode == "mask":  # every byte is still sent
        assert payload == 4 * learned_elements("none") == 4 * rec["params"]["total"]
    else:
        assert payload == 4 * learned_elements(spec, dim) == 4 * rec["params"]["trainable"]
    if spec == "fraction:0.1" and dim in ("out", "in"):
        assert 0.1 <= rec["params"]["conv_learned_fraction"] < 0.11  # the same in both modes


def symmetric_savings(param: str) -> int:
    """Elements a parameterisation stores fewer than the plain WRN, from the plain model's conv shapes."""
    from distbench.model.backbones import build_backbone

    convs = [m for m in build_backbone(WRN).modules() if isinstance(m, nn.Conv2d)]
    if param == "channel-triangular":  # n(n-1)/2 of the n^2 (out, in) slices are mirrored
        return sum(
            m.out_channels * (m.out_channels - 1) // 2 * m.weight[0, 0].numel()
            for m in convs
            if m.in_channels == m.out_channels
        )
    if param == "spatial-triangular":  # k(k-1)/2 of the k^2 coefficients of every k x k kernel, k > 1
        return sum(m.weight[:, :, 0, 0].numel() * k * (k - 1) // 2 for m in convs if (k := m.kernel_size[0]) > 1)
    return 0  # the averaged ones learn (and send) every element


@pytest.mark.parametrize("param", PARAMS)
def test_parameterised_payload_drops_by_the_analytic_amount(records, param):
    rec = records[param]
    validate(rec)
    from distbench.model.backbones import build_backbone

    plain = sum(p.numel() for p in build_backbone(WRN).parameters()) + (64 + 1) * C  # + the learned head
    payload = rec["comm"]["payload_bytes_per_step"]
    assert payload == rec["comm"]["expected_bytes_per_step"] == 4 * (plain - symmetric_savings(param))
