"""Compression peers: torch's own DDP comm hooks, counted by the bytes their collectives really carry."""

import pytest
from conftest import SHORT, flags, torchrun

from distbench.checks import parse_and_check
from distbench.config import ConfigError
from distbench.results import validate

SMALL = flags(steps=3, warmup_steps=3, nosync_steps=0, batch_size=8, eval_samples=16)


@pytest.fixture(scope="module")
def plain_payload(tmp_path_factory):
    r = torchrun(SMALL, tmp_path_factory.mktemp("plain") / "runs.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    return r.records[0]["comm"]["payload_bytes_per_step"]


@pytest.mark.parametrize(
    "hook,args,ratio",
    [
        ("fp16", [], 0.5),
        ("bf16", [], 0.5),
        ("powersgd", ["--powersgd-rank", "2"], None),
    ],
)
def test_measured_equals_expected_for_each_hook(tmp_path, plain_payload, hook, args, ratio):
    r = torchrun([*SMALL, "--comm-hook", hook, *args], tmp_path / "runs.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = r.records[0]
    validate(rec)
    c = rec["comm"]
    assert rec["status"] == "ok" and c["hook"] == hook
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"]
    if ratio is not None:
        assert c["payload_bytes_per_step"] == plain_payload * ratio
    else:  # P and Q of rank 2 instead of whole matrices
        assert c["payload_bytes_per_step"] < plain_payload / 20


def test_powersgd_on_resnet18_with_a_fixed_head(tmp_path):
    args = flags(
        model="resnet18",
        num_classes=1000,
        image_size=32,
        head="fixed",
        comm_hook="powersgd",
        powersgd_rank=4,
        **SHORT | {"warmup_steps": 2},
    )
    r = torchrun(args, tmp_path / "runs.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    c = r.records[0]["comm"]
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"]
    # 45 MB of gradients would make two 25 MiB buckets; PowerSGD on gloo gets one (see DDPEngine)
    assert c["buckets_per_step"] == 1 and c["bucket_cap_mb"] > 25


def test_powersgd_must_start_within_the_warmup():
    with pytest.raises(ConfigError) as e:
        parse_and_check(["--comm-hook", "powersgd", "--powersgd-start-iter", "20", "--warmup-steps", "10"])
    assert e.value.field == "dist.powersgd_start_iter"
    with pytest.raises(ConfigError, match="choose from: allreduce, bf16, fp16, powersgd"):
        parse_and_check(["--comm-hook", "int8"])
