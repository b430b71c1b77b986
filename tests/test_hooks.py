"""Compression peers: torch's own DDP comm hooks, counted by the bytes their collectives really carry."""

import pytest
from conftest import SHORT, flags, torchrun_many

from distbench.config import ConfigError
from distbench.results import validate
from distbench.runtime.checks import parse_and_check

SMALL = flags(steps=3, warmup_steps=3, nosync_steps=0, batch_size=8, eval_samples=16)


HOOKS = [("fp16", [], 0.5), ("bf16", [], 0.5), ("powersgd", ["--powersgd-rank", "2"], None)]
RESNET_POWERSGD = flags(
    model="resnet18",
    num_classes=1000,
    image_size=32,
    head="fixed",
    comm_hook="powersgd",
    powersgd_rank=4,
    **SHORT | {"warmup_steps": 2},
)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> dict:
    """The plain all-reduce, each hook, and PowerSGD on ResNet-18, from one job."""
    configs = [SMALL, *([*SMALL, "--comm-hook", hook, *args] for hook, args, _ in HOOKS), RESNET_POWERSGD]
    found = torchrun_many(configs, tmp_path_factory.mktemp("hooks") / "runs.jsonl")
    return dict(zip(["allreduce", *(h for h, _, _ in HOOKS), "resnet-powersgd"], found, strict=True))


@pytest.mark.parametrize("hook,args,ratio", HOOKS)
def test_measured_equals_expected_for_each_hook(records, hook, args, ratio):
    rec, plain_payload = records[hook], records["allreduce"]["comm"]["payload_bytes_per_step"]
    validate(rec)
    c = rec["comm"]
    assert rec["status"] == "ok" and c["hook"] == hook
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"]
    # each bucket's entries say what the hook really sent: the compressed dtype, summing to the payload
    assert sum(b["bytes"] for b in c["buckets"]) == c["payload_bytes_per_step"]
    assert {b["dtype"] for b in c["buckets"]} == {{"fp16": "float16", "bf16": "bfloat16"}.get(hook, "float32")}
    if ratio is not None:
        assert c["payload_bytes_per_step"] == plain_payload * ratio
    else:  # P and Q of rank 2 instead of whole matrices
        assert c["payload_bytes_per_step"] < plain_payload / 20


def test_powersgd_on_resnet18_with_a_fixed_head(records):
    c = records["resnet-powersgd"]["comm"]
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"]
    # 45 MB of gradients would make two 25 MiB buckets; PowerSGD on gloo gets one (see DDPEngine)
    assert c["buckets_per_step"] == 1 and c["bucket_cap_mb"] > 25


def test_powersgd_must_start_within_the_warmup():
    with pytest.raises(ConfigError) as e:
        parse_and_check(["--comm-hook", "powersgd", "--powersgd-start-iter", "20", "--warmup-steps", "10"])
    assert e.value.field == "dist.powersgd_start_iter"
    with pytest.raises(ConfigError, match="choose from: allreduce, bf16, fp16, powersgd"):
        parse_and_check(["--comm-hook", "int8"])
