"""2-rank gloo runs of the freeze rules on ResNet-18: the bytes on the wire are exactly the learned
tensors' bytes, computed here from a fresh torchvision model and not from distbench's own code."""

import math

import pytest
import torchvision
from conftest import SHORT, flags, torchrun
from torch import nn

from distbench.results import validate

C = 10
COMMON = flags(model="resnet18", num_classes=C, image_size=32, **SHORT)


def learned_elements(spec: str) -> int:
    model = torchvision.models.resnet18(num_classes=C)
    head = sum(p.numel() for p in model.fc.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    per_filter = lambda m: m.weight[0].numel()  # noqa: E731
    if spec == "none":
        return sum(p.numel() for p in model.parameters())
    if spec.startswith("fraction:"):
        p = float(spec.split(":")[1])
        return sum(math.ceil(p * m.out_channels) * per_filter(m) for m in convs) + bn + head
    if spec.startswith("filters:"):
        k = int(spec.split(":")[1])
        return sum(min(k, m.out_channels) * per_filter(m) for m in convs) + bn + head
    if spec == "bn":
        return bn + head
    if spec.startswith("blocks:"):
        return sum(p.numel() for p in model.get_submodule(spec.split(":")[1]).parameters()) + head
    raise ValueError(spec)


@pytest.mark.parametrize(
    "spec,mode",
    [
        ("fraction:0.1", "split"),
        ("filters:5", "split"),
        ("bn", "split"),
        ("blocks:layer4", "split"),
        ("fraction:0.1", "mask"),
    ],
)
def test_payload_is_exactly_the_learned_tensors(tmp_path, spec, mode):
    r = torchrun([*COMMON, "--freeze", spec, "--freeze-mode", mode], tmp_path / "runs.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = r.records[0]
    validate(rec)
    payload = rec["comm"]["payload_bytes_per_step"]
    assert payload == rec["comm"]["expected_bytes_per_step"]
    if mode == "mask":  # every byte is still sent
        assert payload == 4 * learned_elements("none") == 4 * rec["params"]["total"]
    else:
        assert payload == 4 * learned_elements(spec) == 4 * rec["params"]["trainable"]
    if spec == "fraction:0.1":
        assert 0.1 <= rec["params"]["conv_learned_fraction"] < 0.11  # the same in both modes


def test_symmetric_payload_drops_by_the_analytic_amount(tmp_path):
    common = flags(model="wrn-16-2", num_classes=C, image_size=16, **SHORT)  # bytes do not depend on image size
    plain = torchrun(common, tmp_path / "runs.jsonl")
    sym = torchrun([*common, "--param", "symmetric"], tmp_path / "runs.jsonl")
    assert plain.returncode == 0 and sym.returncode == 0, sym.stderr[-3000:]
    a, b = sym.records
    from distbench.models import build_backbone

    square = [
        m for m in build_backbone("wrn-16-2").modules() if isinstance(m, nn.Conv2d) and m.in_channels == m.out_channels
    ]
    saved = sum(m.out_channels * (m.out_channels - 1) // 2 * m.weight[0, 0].numel() for m in square)
    assert a["comm"]["payload_bytes_per_step"] - b["comm"]["payload_bytes_per_step"] == 4 * saved
    assert b["comm"]["payload_bytes_per_step"] == b["comm"]["expected_bytes_per_step"]
