"""DeepSpeed ZeRO 0-3 under real 2-rank torchrun jobs: the same records as DDP, the same payload."""

import json
import os
import shutil
import signal
import sys

import pytest
from conftest import RUN, _records, finish, flags, run_cmd, start_torchrun, torchrun, torchrun_many, wait_for

from distbench.config import parse_args
from distbench.model import build_model
from distbench.results import validate
from distbench.runtime.checks import parse_and_check

pytest.importorskip("deepspeed")

SMALL = ["--steps", "2", "--warmup-steps", "1", "--batch-size", "4", "--eval-samples", "16"]
CASES = {
    "learned": ["--head", "learned"],
    "fixed+freeze": ["--head", "fixed", "--freeze", "fraction:0.5"],
}


@pytest.fixture(scope="module")
def ddp_payload(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "runs.jsonl"
    payload = {}
    for name, args in CASES.items():
        r = torchrun([*SMALL, *args, "--nosync-steps", "0"], out)
        assert r.returncode == 0, r.stderr[-3000:]
        payload[name] = r.records[-1]["comm"]["payload_bytes_per_step"]
    return payload


def trainable_numels(case: str) -> list[int]:
    """Element counts of the trainable parameters of CASES[case]'s model, built here as the run builds it."""
    import torch

    cfg = parse_args(CASES[case])
    model = build_model(cfg.model, cfg.freeze, seed=cfg.train.seed, head_dtype=torch.float32)
    return [p.numel() for p in model.parameters() if p.requires_grad]


def test_every_engine_takes_the_same_step(tmp_path):
    """DDP, FSDP2 and ZeRO 0-3 from the same weights and batches end on the same weights: the same training loss
    and held-out loss after two SGD steps (momentum on, a step large enough that a clipped or rescaled gradient
    shows). DeepSpeed clips the gradient norm at 1.0 by default; distbench turns that off, as DDP does not clip."""
    base = [*SMALL, "--lr", "0.5", "--momentum", "0.9", "--nosync-steps", "0"]
    engines = {"ddp": [], "fsdp": ["--backend", "fsdp"]}
    engines |= {f"zero{z}": ["--backend", "deepspeed", "--zero-stage", str(z)] for z in range(4)}
    records = torchrun_many([[*base, *args] for args in engines.values()], tmp_path / "runs.jsonl")
    ddp = records[0]["accuracy"]
    for name, rec in zip(engines, records, strict=True):
        a = rec["accuracy"]
        assert rec["status"] == "ok", name
        assert a["final_loss"] == pytest.approx(ddp["final_loss"], rel=1e-4), name
        assert a["eval_loss"] == pytest.approx(ddp["eval_loss"], rel=1e-4), name


# The default tier takes each stage once (stage 1 with a language model in tests/test_lm.py), the rest of the
# matrix is slow: every case is a 2-rank DeepSpeed job of about 10 s.
@pytest.mark.parametrize(
    "stage,case",
    [
        (0, "learned"),
        pytest.param(1, "learned", marks=pytest.mark.slow),
        pytest.param(2, "learned", marks=pytest.mark.slow),
        (2, "fixed+freeze"),
        pytest.param(0, "fixed+freeze", marks=pytest.mark.slow),
        pytest.param(3, "learned", id="zero3-learned", marks=pytest.mark.slow),
        pytest.param(3, "fixed+freeze", id="zero3-fixed+freeze"),
    ],
)
def test_zero_stages_match_ddp_and_the_comms_logger(tmp_path, ddp_payload, stage, case):
    # ZeRO-3 records the order it fetches parameters in during step 0 and checks it across ranks (broadcasts)
    # at the start of step 1; from step 2 on every step sends the same bytes.
    warmup = ["--warmup-steps", "2"] if stage == 3 else []
    r = torchrun(
        [*SMALL, *warmup, *CASES[case], "--backend", "deepspeed", "--zero-stage", str(stage), "--validate-comm"],
        tmp_path / "runs.jsonl",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = r.records[0]
    validate(rec)
    c = rec["comm"]
    assert rec["status"] == "ok", rec["error"]
    assert c["hook"] == f"deepspeed-zero{stage}"
    assert c["replicas_identical"] is True
    assert c["logger_bytes_per_step"] == sum(c["collectives"].values())  # --validate-comm agrees
    numels = trainable_numels(case)
    # ZeRO-3's reduce-scatter pads every gradient to a multiple of n = 2 elements: the fixed head's 1-element
    # scale costs 4 bytes more than DDP sends. Stages 0-2 send exactly DDP's bytes.
    padding = 4 * sum(n % 2 for n in numels) if stage == 3 else 0
    assert padding == (4 if stage == 3 and case == "fixed+freeze" else 0)
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"] == ddp_payload[case] + padding
    if stage == 3:
        assert c["collectives"]["reduce_scatter"] == c["payload_bytes_per_step"]
        # Each trainable parameter's partition, ceil(numel / 2) elements, is gathered once a step: the tiny
        # model fits one prefetch bucket, so a parameter fetched for forward stays for backward; persistent
        # ones (< 1e5 elements) are gathered after the step instead. Buffers (the fixed head's 100 x 256
        # matrix, the split convs' fixed filters) are never gathered: they would add bytes here.
        assert c["collectives"]["all_gather"] == 4 * sum(-(-n // 2) for n in numels)
        assert "broadcast" not in c["collectives"]
    elif stage >= 1:  # ZeRO gathers each rank's updated partition: half the trainable bytes at n = 2
        assert c["collectives"]["all_gather"] >= c["payload_bytes_per_step"] // 2
    else:
        assert "all_gather" not in c["collectives"]
    assert rec["perf"]["exposed_comm_ms"] is None  # DeepSpeed forbids steps without sync


def test_zero3_reduced_bytes_pads_each_gradient_to_the_world_size():
    import torch

    from distbench.comm.expected import zero3_reduced_bytes

    assert zero3_reduced_bytes([1, 2, 5], 2, torch.float32) == (2 + 2 + 6) * 4
    assert zero3_reduced_bytes([1, 2, 5], 4, torch.bfloat16) == (4 + 4 + 8) * 2
    assert zero3_reduced_bytes([4, 8], 4, torch.float32) == 12 * 4  # multiples of n: the plain gradient bytes
    # {"reduce_scatter": false}: buckets are all-reduced unpadded, but a gradient larger than the bucket
    # still goes through the padded reduce-scatter
    assert zero3_reduced_bytes([1, 5], 2, torch.float32, reduce_scatter=False, bucket=4) == (1 + 6) * 4


def test_zero3_all_reduce_path_refetching_and_uneven_evaluation(tmp_path, ddp_payload):
    """ZeRO-3 without its reduce-scatter, parameter cache and persistent parameters: the payload is an
    unpadded all-reduce (DDP's bytes exactly), every partition is gathered for forward and again for
    backward, and evaluation, which gathers too, ends although one rank holds one batch more (9 and 8
    held-out samples in batches of 4)."""
    f = tmp_path / "ds.json"
    zero = {"reduce_scatter": False, "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 0}
    f.write_text(json.dumps({"zero_optimization": {**zero, "stage3_param_persistence_threshold": 0}}))
    case = "fixed+freeze"
    args = [*SMALL, "--warmup-steps", "2", "--eval-samples", "17", "--pg-timeout-s", "20", *CASES[case]]
    r = torchrun(
        [*args, "--backend", "deepspeed", "--zero-stage", "3", "--deepspeed-config", str(f), "--validate-comm"],
        tmp_path / "runs.jsonl",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = r.records[0]
    c = rec["comm"]
    assert rec["status"] == "ok" and rec["accuracy"]["eval_samples"] == 17
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"] == ddp_payload[case]
    assert "reduce_scatter" not in c["collectives"] and c["logger_bytes_per_step"] == sum(c["collectives"].values())
    assert c["collectives"]["all_gather"] == 2 * 4 * sum(-(-n // 2) for n in trainable_numels(case))


def free_port() -> int:
    """A port nothing listens on now: a fixed one collides with another run of the suite on the machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # DeepSpeed's own launcher, the alternative to torchrun (which the default tier runs it under)
def test_deepspeed_launcher(tmp_path):
    launcher = shutil.which("deepspeed", path=os.path.dirname(sys.executable))
    out = tmp_path / "runs.jsonl"
    cmd = [
        launcher,
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        str(RUN),
        "--out",
        str(out),
        *SMALL,
        "--backend",
        "deepspeed",
        "--zero-stage",
        "1",
    ]
    p = run_cmd(cmd, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (rec,) = _records(out)
    assert rec["status"] == "ok" and rec["env"]["world_size"] == 2
    assert rec["comm"]["payload_bytes_per_step"] == rec["comm"]["expected_bytes_per_step"]


def test_user_config_overlay_and_bad_values(tmp_path):
    import torch

    from distbench.config import ConfigError, parse_args
    from distbench.runtime.engines import Place
    from distbench.runtime.engines.deepspeed import deepspeed_config

    f = tmp_path / "ds.json"
    f.write_text('{"zero_optimization": {"reduce_bucket_size": 1234}, "optimizer": {"type": "AdamW"}}')
    cfg = parse_args(["--backend", "deepspeed", "--zero-stage", "2", "--deepspeed-config", str(f)])
    conf = deepspeed_config(cfg, Place(0, 2, 0, torch.device("cpu"), "gloo"))
    assert conf["zero_optimization"] == {**conf["zero_optimization"], "stage": 2, "reduce_bucket_size": 1234}
    assert conf["train_micro_batch_size_per_gpu"] == 32 and conf["train_batch_size"] == 64
    assert conf["optimizer"]["params"]["torch_adam"] is True  # no JIT build of fused Adam
    for argv, field in [
        (["--backend", "deepspeed", "--zero-stage", "4"], "dist.zero_stage"),
        (["--zero-stage", "1"], "dist.zero_stage"),
        (["--backend", "deepspeed", "--deepspeed-config", str(tmp_path / "no.json")], "dist.deepspeed_config"),
    ]:
        with pytest.raises(ConfigError) as e:
            parse_and_check(argv)
        assert e.value.field == field


@pytest.mark.slow
def test_zero2_reduce_to_owner_path(tmp_path, ddp_payload):
    """With use_multi_rank_bucket_allreduce off, ZeRO-2 reduces each slice to its owning rank: the payload
    then goes out as `reduce` calls, one per owner, and is still exactly the gradient bytes."""
    f = tmp_path / "ds.json"
    f.write_text('{"zero_optimization": {"use_multi_rank_bucket_allreduce": false}}')
    r = torchrun(
        [*SMALL, "--backend", "deepspeed", "--zero-stage", "2", "--deepspeed-config", str(f), "--validate-comm"],
        tmp_path / "runs.jsonl",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    c = r.records[0]["comm"]
    assert c["collectives"]["reduce"] == c["payload_bytes_per_step"] == ddp_payload["learned"]
    assert c["buckets_per_step"] == 2 and c["logger_bytes_per_step"] == sum(c["collectives"].values())


RESUMABLE = flags(steps=60, warmup_steps=3, batch_size=8, eval_samples=64, checkpoint_every=4)


def test_resume_deepspeed_zero2_after_sigterm_ends_identical(tmp_path):
    """DeepSpeed saves through its own checkpoint API (ZeRO-2 optimizer partitions included): a run
    stopped by SIGTERM and resumed ends with the uninterrupted run's loss, accuracy and bytes."""
    args = [*RESUMABLE, "--backend", "deepspeed", "--zero-stage", "2", "--validate-comm"]
    code, log = finish(start_torchrun(args, tmp_path / "ref.jsonl", tmp_path / "ref"))
    assert code == 0, log[-3000:]
    proc = start_torchrun(args, tmp_path / "runs.jsonl", tmp_path / "ckpt")
    wait_for((tmp_path / "ckpt" / "latest").exists, what="the first checkpoint", proc=proc)
    proc.send_signal(signal.SIGTERM)
    finish(proc, timeout=120)
    assert not (tmp_path / "runs.jsonl").exists()
    code, log = finish(start_torchrun(args, tmp_path / "runs.jsonl", tmp_path / "ckpt"))
    assert code == 0, log[-3000:]
    (want,), (got,) = _records(tmp_path / "ref.jsonl"), _records(tmp_path / "runs.jsonl")
    validate(got)
    assert got["status"] == "ok" and len(got["perf"]["resumed_from_steps"]) == 1
    assert got["accuracy"] == want["accuracy"] and got["comm"] == want["comm"]
