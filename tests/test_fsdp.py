"""FSDP2 (`--backend fsdp`) under real 2-rank torchrun jobs: the reduce-scatter payload and the all-gathers
are exactly what the model implies, FSDP learns what DDP learns, and a run stopped by SIGTERM and resumed
ends bit-identical to an uninterrupted one.

Run as a script under torchrun (`torchrun --nproc_per_node=2 tests/test_fsdp.py OUT.json`), this file is
the worker of the byte cases: one process group builds an engine per case (a job per case would spend
most of the test's minute starting up).
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TORCHRUN, _records, finish, flags, run_cmd, start_torchrun, torchrun, wait_for
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from distbench.comm.expected import fsdp_all_gather_bytes, fsdp_expected_bytes, shard_units
from distbench.config import ConfigError, parse_args
from distbench.model import build_model
from distbench.results import validate
from distbench.runtime.checkpoint import read_latest
from distbench.runtime.checks import parse_and_check
from distbench.runtime.engines.fsdp import mixed_precision
from distbench.runtime.optim import autocast_dtype

# name -> flags; the tiny CNN (100 classes) with each head and freeze rule whose bytes differ.
CASES = {
    "learned": [],
    "fixed": ["--head", "fixed"],  # the 100 x 256 projection is a buffer; only alpha and b are Parameters
    "split": ["--freeze", "fraction:0.5"],  # fixed filters are buffers
    "mask": ["--freeze", "fraction:0.5", "--freeze-mode", "mask"],  # every weight a Parameter, rows masked
    "bn": ["--freeze", "bn"],  # conv weights: Parameters with requires_grad False (gathered, not reduced)
    "blocks": ["--freeze", "blocks:features.3"],  # gradient reaches only the last stage and the head
    "odd": ["--num-classes", "99", "--freeze", "fraction:0.3"],  # odd rows (99 classes, 39 and 77 filters): padded
    "mixed": ["--precision", "bf16"],  # the GPU's policy (bf16 parameters, fp32 reduction), forced on the CPU
}
STEPS = 3
MIXED_PRECISION = mixed_precision


# ------------------------------------------------------------------------------------------------ worker
def _batches(rank: int, num_classes: int):
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data, as in training
    while True:
        yield torch.randn(2, 3, 32, 32, generator=gen), torch.randint(num_classes, (2,), generator=gen)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass


class _C10dCalls(TorchDispatchMode):
    """Counts the process-group ops that reach the dispatcher: an independent view of what was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _masked_weight(model: nn.Module) -> tuple[nn.Module, int]:
    conv = model.backbone.features[1][0]  # a mask-mode conv: 64 filters, 32 learned
    return conv, conv.learned_filters


def _train(backend: str, argv: list[str], place) -> tuple[dict, list[torch.Tensor]]:
    from torch.distributed.tensor import DTensor

    from distbench.runtime.engines import build_engine, fsdp
    from distbench.runtime.loop import run_steps

    cfg = parse_args([*argv, "--backend", backend])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.freeze, seed=0)
    param_dtype = autocast_dtype(cfg.train.precision, place.device)
    implied = fsdp_all_gather_bytes(model, place.world_size, param_dtype)  # of the plain model, before sharding
    # The GPU's policy wherever autocast is on, so that the CPU measures its bytes too.
    fsdp.mixed_precision = lambda device, amp: (amp, torch.float32) if amp is not None else (None, None)
    before = _masked_weight(model)[0].weight.detach().clone() if "mask" in argv else None
    try:
        engine = build_engine(cfg, model, place)
    finally:
        fsdp.mixed_precision = MIXED_PRECISION
    with _C10dCalls() as seen:
        steps = run_steps(engine, _batches(place.rank, cfg.model.num_classes), STEPS, _NoProgress())
    engine.close()
    params = [p.full_tensor() if isinstance(p, DTensor) else p.detach() for p in model.parameters()]
    out = {
        "payload": [s.payload for s in steps.traffic],
        "collectives": [s.bytes_by_op for s in steps.traffic],
        "calls": [s.buckets for s in steps.traffic],
        "expected": engine.expected_bytes_per_step,
        "implied_all_gather": implied,
        "c10d": {op: n // STEPS for op, n in seen.calls.items()},
        "sharded_buffers": sum(isinstance(b, DTensor) for b in model.buffers()),
        "loss": steps.loss.item(),
    }
    if before is not None:
        conv, rows = _masked_weight(model)
        after = conv.weight.full_tensor() if isinstance(conv.weight, DTensor) else conv.weight.detach()
        out["fixed_rows_kept"] = bool(torch.equal(after[rows:], before[rows:]))
        out["learned_rows_moved"] = not torch.equal(after[:rows], before[:rows])
    return out, params


def worker(path: str) -> None:
    from distbench.runtime.engines import close_distributed, init_distributed

    place = init_distributed("gloo")
    results = {}
    for name, argv in CASES.items():
        got, params = _train("fsdp", argv, place)
        if name != "mixed":  # bf16 weights cannot match DDP's fp32 ones bit for bit
            ddp, ddp_params = _train("ddp", argv, place)
            got["ddp_payload"] = ddp["payload"][-1]
            got["max_diff_to_ddp"] = max((a - b).abs().max().item() for a, b in zip(params, ddp_params, strict=True))
        results[name] = got
    if place.rank == 0:
        Path(path).write_text(json.dumps(results, indent=1))
    close_distributed()


# ---------------------------------------------------------------------------------------------- unit tests
def test_fsdp_expected_bytes_pad_dim0_to_the_world_size():
    lin = nn.Linear(3, 5)  # weight 5 x 3, bias 5
    lin.weight.requires_grad_(False)  # frozen: gathered, never reduced
    assert fsdp_expected_bytes(lin, 2) == 6 * 4  # bias: 5 rows padded to 6
    assert fsdp_expected_bytes(lin, 4) == 8 * 4
    assert fsdp_expected_bytes(lin, 5) == 5 * 4
    assert fsdp_expected_bytes(lin, 2, torch.bfloat16) == 6 * 2
    assert fsdp_expected_bytes(lin, 1) == 0  # a world of one reduces nothing
    lin.weight.requires_grad_(True)
    assert fsdp_expected_bytes(lin, 2) == (6 * 3 + 6) * 4


def test_fsdp_all_gather_bytes_follow_the_gradient_back():
    model = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(3, 3))
    assert shard_units(model) == list(model)
    shard = [(3 * 4 + 3) * 4, (2 * 5 + 2) * 4, (2 * 3 + 2) * 4]  # per rank at n = 2: ceil(d0 / 2) rows
    assert fsdp_all_gather_bytes(model, 2) == 2 * sum(shard)  # forward, then backward through every unit
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    # Gradient reaches only the last unit; its pre-backward prefetches the one before it.
    assert fsdp_all_gather_bytes(model, 2) == sum(shard) + shard[1] + shard[2]
    assert fsdp_all_gather_bytes(model, 2, torch.bfloat16) == (sum(shard) + shard[1] + shard[2]) // 2
    assert fsdp_all_gather_bytes(model, 1) == 0


def test_fsdp_refuses_comm_hooks_and_deepspeed_flags(tmp_path):
    assert parse_and_check(["--backend", "fsdp", "--out", str(tmp_path / "r.jsonl")]).dist.backend == "fsdp"
    for argv, field, text in [
        (["--backend", "fsdp", "--comm-hook", "fp16"], "dist.comm_hook", "FSDP reduce-scatters gradients itself"),
        (["--backend", "fsdp", "--zero-stage", "1"], "dist.zero_stage", "only with --backend deepspeed"),
        (["--backend", "fsdp", "--validate-comm"], "dist.validate_comm", "only with --backend deepspeed"),
    ]:
        with pytest.raises(ConfigError, match=text) as e:
            parse_and_check(argv)
        assert e.value.field == field


# ------------------------------------------------------------------------------------------ 2-rank jobs
@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("fsdp") / "cases.json"
    p = run_cmd([str(TORCHRUN), "--standalone", "--nproc_per_node=2", __file__, str(out)])
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", CASES)
def test_fsdp_payload_and_all_gathers_are_exactly_the_models(cases, case):
    c = cases[case]
    for payload, ops in zip(c["payload"], c["collectives"], strict=True):
        assert payload == c["expected"] == ops["reduce_scatter"]  # every step, the first too
        assert ops["all_gather"] == c["implied_all_gather"]
        assert set(ops) == {"reduce_scatter", "all_gather"}
    # The dispatcher's own count of process-group ops: nothing else was sent, one reduce-scatter per metered call.
    assert set(c["c10d"]) == {"_allgather_base_", "_reduce_scatter_base_"}
    assert c["c10d"]["_reduce_scatter_base_"] == c["calls"][-1]
    assert c["sharded_buffers"] == 0  # BatchNorm statistics, fixed heads' and filters' weights: never gathered
    assert c.get("max_diff_to_ddp", 0.0) == 0.0  # FSDP learns exactly what DDP learns (2 ranks: exact means)
    assert torch.isfinite(torch.tensor(c["loss"]))


def test_fsdp_bytes_follow_what_is_trained(cases):
    """Measured (as the previous test holds): fixed heads and split filters cut the payload; masking sends
    everything; frozen Parameters are still gathered; padding costs exactly the rows it adds."""
    learned = cases["learned"]
    assert cases["mask"]["expected"] == learned["expected"]  # a masked gradient is still sent
    assert cases["split"]["expected"] < learned["expected"] and cases["fixed"]["expected"] < learned["expected"]
    assert cases["bn"]["implied_all_gather"] == learned["implied_all_gather"]  # frozen weights gathered
    assert cases["bn"]["expected"] < cases["split"]["expected"]
    # Padding: every dim 0 of the tiny CNN is even, so at n = 2 FSDP sends what DDP sends; the fixed head's
    # alpha (one row) is padded to two, 99 classes to 100 (256 weights and a bias), 39 and 77 filters to 40 and 78.
    assert learned["expected"] == learned["ddp_payload"] == 1_658_384
    assert cases["fixed"]["expected"] == cases["fixed"]["ddp_payload"] + 4
    assert cases["odd"]["expected"] == cases["odd"]["ddp_payload"] + (257 + 64 * 9 + 128 * 9) * 4
    # Mixed precision: gradients still reduced in fp32; only the head (the one unit without a BatchNorm) is
    # gathered in bf16, twice per step: half of its 2 x 25,700 fp32 shard bytes saved.
    assert cases["mixed"]["expected"] == learned["expected"]
    assert cases["mixed"]["implied_all_gather"] == learned["implied_all_gather"] - 51_400


def test_fsdp_mask_mode_keeps_the_fixed_rows(cases):
    """FSDP2 drops the mask's gradient hook with the original Parameter; the engine masks the sharded
    gradient instead: the fixed filters stay as initialised, the learned ones move."""
    assert cases["mask"]["fixed_rows_kept"] and cases["mask"]["learned_rows_moved"]


def _all_gather_of(argv: list[str], world_size: int = 2) -> int:
    cfg = parse_args(argv)
    return fsdp_all_gather_bytes(build_model(cfg.model, cfg.freeze), world_size)


RESUMABLE = [*flags(steps=24, warmup_steps=3, batch_size=4, eval_samples=32, checkpoint_every=4), "--backend", "fsdp"]


def test_fsdp_record_and_resume_after_sigterm_end_bit_identical(tmp_path):
    code, log = finish(start_torchrun(RESUMABLE, tmp_path / "ref.jsonl", tmp_path / "ref"))
    assert code == 0, log[-3000:]
    (want,) = _records(tmp_path / "ref.jsonl")
    validate(want)
    c = want["comm"]
    assert want["status"] == "ok" and c["hook"] == "fsdp2" and c["replicas_identical"] is True
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"] == c["collectives"]["reduce_scatter"]
    assert c["collectives"]["all_gather"] == _all_gather_of([])  # the default tiny CNN
    assert want["perf"]["exposed_comm_ms"] is None  # no steps without sync under FSDP

    proc = start_torchrun(RESUMABLE, tmp_path / "runs.jsonl", tmp_path / "ckpt")
    wait_for((tmp_path / "ckpt" / "latest").exists, what="the first checkpoint", proc=proc)
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc, timeout=120)
    assert code != 0 and "stopped by SIGTERM" in log, log[-3000:]
    assert not (tmp_path / "runs.jsonl").exists()
    code, log = finish(start_torchrun(RESUMABLE, tmp_path / "runs.jsonl", tmp_path / "ckpt"))
    assert code == 0, log[-3000:]
    (got,) = _records(tmp_path / "runs.jsonl")
    validate(got)
    assert got["status"] == "ok" and len(got["perf"]["resumed_from_steps"]) == 1
    ckpt = tmp_path / "ckpt"
    assert read_latest(ckpt)["step"] == read_latest(tmp_path / "ref")["step"] == 27  # both saved at the end
    assert got["accuracy"] == want["accuracy"] and got["comm"] == want["comm"]
    for rank in (0, 1):  # each rank's shards, momentum and BatchNorm statistics, bit for bit
        a, b = (torch.load(d / read_latest(d)["dir"] / f"engine-rank{rank}.pt") for d in (ckpt, tmp_path / "ref"))
        assert a["model"].keys() == b["model"].keys()
        for name in a["model"]:
            assert torch.equal(a["model"][name], b["model"][name]), name
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
            assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fsdp_gpu_mixed_precision_bytes(tmp_path):
    """On GPU: bf16 parameters where a unit holds no BatchNorm (the tiny CNN's head), fp32 reduce-scatters."""
    n = torch.cuda.device_count()
    r = torchrun([*flags(steps=4, warmup_steps=2, batch_size=8, eval_samples=64), "--backend", "fsdp"],
                 tmp_path / "runs.jsonl", nproc=n, gpu=True)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rec = r.records[0]
    validate(rec)
    c = rec["comm"]
    assert rec["status"] == "ok" and rec["env"]["backend"] == "nccl"
    assert c["payload_bytes_per_step"] == c["expected_bytes_per_step"]
    cfg = parse_args([])
    model = build_model(cfg.model, cfg.freeze)
    assert c["expected_bytes_per_step"] == fsdp_expected_bytes(model, n, torch.float32)
    assert c["collectives"].get("all_gather", 0) == fsdp_all_gather_bytes(model, n, torch.bfloat16)


if __name__ == "__main__":
    worker(sys.argv[1])
