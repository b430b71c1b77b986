import pytest
import torch
from torch import nn

from distbench.comm.expected import expected_bytes
from distbench.comm.meter import CommMeter, algbw, bus_bytes, busbw
from distbench.config import ModelConfig
from distbench.model import build_model
from distbench.model.counts import tensor_bytes


def test_expected_bytes_counts_trainable_params_in_reduced_dtype():
    m = nn.Sequential(nn.Linear(10, 20), nn.Linear(20, 3))
    assert expected_bytes(m) == (10 * 20 + 20 + 20 * 3 + 3) * 4
    m[0].weight.requires_grad_(False)
    assert expected_bytes(m) == (20 + 20 * 3 + 3) * 4
    assert expected_bytes(m, torch.float16) == (20 + 20 * 3 + 3) * 2


@pytest.mark.parametrize(
    "head,params",
    [
        ("learned", 11_689_512),  # torchvision's resnet18 at 1000 classes
        ("fixed", 11_176_512 + 1 + 1000),  # backbone + alpha + bias
    ],
)
def test_expected_bytes_resnet18(head, params):
    model = build_model(ModelConfig(model="resnet18", num_classes=1000, head=head))
    assert expected_bytes(model) == 4 * params


def test_resnet18_100k_fixed_to_learned_ratio():
    learned = expected_bytes(build_model(ModelConfig(model="resnet18", num_classes=100_000, head="learned")))
    fixed = expected_bytes(build_model(ModelConfig(model="resnet18", num_classes=100_000, head="fixed")))
    assert learned - fixed == 4 * (512 * 100_000 - 1)  # the head weight, less the learned alpha
    assert round(fixed / learned, 3) == 0.180


def test_bus_bytes_and_bandwidths():
    assert bus_bytes(1000, 1) == 0
    assert bus_bytes(1000, 2) == 1000
    assert bus_bytes(1000, 8) == 1750
    assert algbw(1e9, 0.5) == 2e9
    assert busbw(1e9, 0.5, 4) == 2e9 * 1.5


def test_meter_counts_only_bracketed_steps():
    meter = CommMeter()
    t = torch.zeros(10)
    meter.count("all_reduce", t)  # outside a step: ignored
    for _ in range(3):
        meter.start_step()
        meter.count("all_reduce", t)
        meter.count("all_reduce", torch.zeros(5, dtype=torch.float16))
        meter.count("all_gather", torch.zeros(3), payload=False)  # e.g. ZeRO's weight all-gather
        meter.end_step()
    s = meter.summary(meter.steps, world_size=4)
    assert s["payload_bytes_per_step"] == 50 and s["buckets_per_step"] == 2
    assert s["bus_bytes_per_step"] == 75 and s["collectives"] == {"all_gather": 12, "all_reduce": 50}
    assert tensor_bytes([t]) == 40


def test_bus_bytes_take_each_collective_by_its_own_factor():
    """nccl-tests' factors: an FSDP or ZeRO-3 step that reduce-scatters its payload moves half what an
    all-reduce of the same bytes does; a sharded head's all-gather input is one rank's share."""
    meter = CommMeter()
    meter.start_step()
    meter.count("reduce_scatter", torch.zeros(100))  # 400 B in: (n-1)/n of it
    meter.count("all_gather", torch.zeros(10))  # 40 B in, 160 B out at n = 4: (n-1) x 40
    meter.count("all_gather", torch.zeros(50), payload=False)  # FSDP's parameter gathers: not payload
    meter.end_step()
    s = meter.summary(meter.steps, world_size=4)
    assert s["payload_bytes_per_step"] == 440
    assert s["bus_bytes_per_step"] == 400 * 3 / 4 + 40 * 3
