"""Inside a step: per-rank traces (--profile-dir), bytes per bucket (comm.buckets) and per-rank compute and
wait times (perf.ranks, perf.exposed_comm_ms_direct), on real 2-rank gloo jobs under every engine."""

from __future__ import annotations

import gzip
import json
import time

import pytest
from conftest import FAST, SHORT, flags, torchrun, torchrun_many

from distbench.comm.meter import CommMeter, StepTraffic, buckets
from distbench.results import validate
from distbench.runtime.loop import rank_times

SMALL = flags(**SHORT | {"steps": 3})
ENGINES = {
    # a 0.05 MB cap splits the tiny CNN's DDP gradients into one bucket per layer pair
    "ddp": ["--bucket-cap-mb", "0.05", "--profile-dir", "{dir}", "--profile-steps", "2"],
    "fsdp": ["--backend", "fsdp"],
    "zero2": ["--backend", "deepspeed", "--zero-stage", "2"],
    "zero3": ["--backend", "deepspeed", "--zero-stage", "3"],
}


@pytest.fixture(scope="module")
def engine_records(tmp_path_factory) -> tuple[dict[str, dict], object]:
    d = tmp_path_factory.mktemp("observe")
    configs = [[*SMALL, *(a.format(dir=d / "traces") for a in args)] for args in ENGINES.values()]
    return dict(zip(ENGINES, torchrun_many(configs, d / "runs.jsonl"), strict=True)), d / "traces"


# ---------------------------------------------------------------------------------------------- pure parts
def test_buckets_attribute_each_reduction_and_sum_to_the_payload():
    step = StepTraffic({"all_reduce": 70}, 70, 2)
    step.reductions = [["all_reduce", 40, "float32", 0], ["all_reduce", 30, "float16", 1]]
    step.bucket_params = [
        {"params": 2, "first": "head.bias", "last": "head.weight"},
        {"params": 1, "first": "a", "last": "a"},
    ]
    got = buckets(step)
    assert [b["bytes"] for b in got] == [40, 30] and sum(b["bytes"] for b in got) == step.payload
    assert got[0]["first"] == "head.bias" and got[1]["dtype"] == "float16"
    # unnamed calls (no hook names them) are named from the engine's layout, where it has one per call
    step.reductions = [[op, size, dtype, -1] for op, size, dtype, _ in step.reductions]
    assert buckets(step)[0]["params"] is None
    assert buckets(step, [["x", "y"], ["z"]])[1] == {
        "op": "all_reduce",
        "bytes": 30,
        "dtype": "float16",
        "params": 1,
        "first": "z",
        "last": "z",
    }
    assert buckets(step, [["x"]])[0]["params"] is None  # a layout that does not match is not guessed from


def test_meter_splits_a_step_into_compute_wait_and_optimizer_on_the_host_clock():
    import torch

    meter = CommMeter(torch.device("cpu"))
    meter.start_step()
    time.sleep(0.02)
    meter.count("all_reduce", torch.zeros(4))
    time.sleep(0.03)
    meter.backward_done()
    time.sleep(0.01)
    step = meter.end_step()
    assert step.compute_ms is None  # nothing is read until the run of steps is over
    meter.resolve()
    assert step.compute_ms >= 20 and step.wait_ms >= 30 and step.optimizer_ms >= 10
    assert step.compute_ms < step.compute_ms + step.wait_ms + step.optimizer_ms < 1000


def test_direct_exposed_communication_is_the_wait_of_the_rank_that_computed_longest():
    # per rank, per step: (compute, wait, optimizer)
    every = [
        [(10.0, 50.0, 1.0), (10.0, 40.0, 1.0), (10.0, 60.0, 1.0)],
        [(50.0, 9.0, 1.0), (45.0, 7.0, 1.0), (55.0, 8.0, 1.0)],
    ]
    ranks, direct = rank_times(every)
    assert direct == 8.0  # rank 1 computed longest in every step: median of its waits
    assert ranks[0] == {"rank": 0, "compute_ms": 10.0, "wait_ms": 50.0, "optimizer_ms": 1.0}
    assert rank_times([[(None, None, None)], [(None, None, None)]]) == (
        [{"rank": r, "compute_ms": None, "wait_ms": None, "optimizer_ms": None} for r in (0, 1)],
        None,
    )


# ------------------------------------------------------------------------------------------ 2-rank jobs
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_records_buckets_summing_to_the_payload_and_each_ranks_times(engine_records, engine):
    rec = engine_records[0][engine]
    validate(rec)
    c, perf = rec["comm"], rec["perf"]
    assert rec["status"] == "ok" and c["buckets"]
    assert sum(b["bytes"] for b in c["buckets"]) == c["payload_bytes_per_step"] == c["expected_bytes_per_step"]
    assert {b["dtype"] for b in c["buckets"]} == {"float32"}
    assert [r["rank"] for r in perf["ranks"]] == [0, 1]
    for r in perf["ranks"]:
        assert r["compute_ms"] > 0 and r["wait_ms"] >= 0 and r["optimizer_ms"] >= 0
        assert r["compute_ms"] + r["wait_ms"] + r["optimizer_ms"] < 3 * perf["step_time_ms"]["p90"]
    assert perf["exposed_comm_ms_direct"] >= 0


def test_ddp_and_fsdp_name_each_buckets_parameters(engine_records):
    ddp, fsdp = (engine_records[0][e]["comm"]["buckets"] for e in ("ddp", "fsdp"))
    assert len(ddp) > 2  # the small cap splits the gradients
    # backward reaches the head first: its bucket (DDP) and group (FSDP) are reduced first
    assert {ddp[0]["first"], ddp[0]["last"]} == {"head.weight", "head.bias"}
    assert {fsdp[0]["first"], fsdp[0]["last"]} == {"head.weight", "head.bias"}
    for b in ddp + fsdp:
        assert b["params"] >= 1 and b["first"] and b["last"]


def test_profile_dir_writes_a_trace_per_rank_that_hta_can_read(engine_records):
    records, traces = engine_records
    assert records["ddp"]["perf"]["profile"] == {"dir": str(traces), "steps": 2}
    assert records["fsdp"]["perf"]["profile"] is None  # unprofiled runs say so
    for rank in (0, 1):
        trace = json.loads(gzip.decompress((traces / f"rank-{rank}.json.gz").read_bytes()))
        assert trace["distributedInfo"]["rank"] == rank and trace["distributedInfo"]["world_size"] == 2
        names = {e["name"] for e in trace["traceEvents"] if e.get("ph") == "X"}
        assert {"ProfilerStep#1", "ProfilerStep#2", "forward", "backward", "optimizer"} <= names
        assert {f"bucket {i} reduction" for i in range(len(records["ddp"]["comm"]["buckets"]))} <= names


def test_a_rank_slowed_on_purpose_shows_as_the_slow_rank(tmp_path):
    """Rank 1 spends 0.2 s more per step before its forward (DISTBENCH_SLOW_RANK, tests only): its compute
    time grows by that much, and rank 0, done first, waits for it inside the all-reduce."""
    r = torchrun([*FAST, "--nosync-steps", "0"], tmp_path / "runs.jsonl", env={"DISTBENCH_SLOW_RANK": "1:0.2"})
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = r.records
    fast, slow = rec["perf"]["ranks"]
    assert slow["compute_ms"] > fast["compute_ms"] + 150
    assert fast["wait_ms"] > slow["wait_ms"] + 150
    assert rec["perf"]["exposed_comm_ms_direct"] == pytest.approx(slow["wait_ms"], abs=100)


@pytest.mark.slow  # two 100K-class jobs (25 s): a check of the two measures' agreement, as the benchmarks are
def test_direct_exposed_communication_agrees_with_the_no_sync_differential(tmp_path):
    """Where communication dominates (learned head at 100K classes: 205 MB per step, 2 ranks) the two
    measures agree when the all-reduce cannot overlap the backward (one bucket, sent at its end): both then
    time the whole all-reduce. With DDP's default buckets the head's gradient is sent while the backbone's
    backward still runs; on a CPU gloo's threads and the kernel's loopback copies share the cores with that
    backward and slow it, which the differential counts as communication and the direct measure as compute
    (this machine: 90 vs 204 ms). So there the direct measure is the smaller, and still of the same order.
    Both are medians of step times on shared cores, so the bounds leave room for a loaded machine (CI has
    measured 0.58 for one bucket); a measure that misses the all-reduce (near zero) or counts it twice is
    outside them. Which rank's wait is taken is the unit test's above."""
    args = flags(num_classes=100_000, steps=16, warmup_steps=2, nosync_steps=16, batch_size=8, eval_samples=8)
    one_bucket, overlapped = torchrun_many([[*args, "--bucket-cap-mb", "1000"], args], tmp_path / "runs.jsonl")
    assert one_bucket["comm"]["buckets_per_step"] == 1 and overlapped["comm"]["buckets_per_step"] > 1
    ratios = {}
    for name, rec in (("one bucket", one_bucket), ("overlapped", overlapped)):
        differential, direct = rec["perf"]["exposed_comm_ms"], rec["perf"]["exposed_comm_ms_direct"]
        assert differential > 0 and direct > 0, (name, differential, direct)
        ratios[name] = direct / differential
    assert 2 / 5 < ratios["one bucket"] < 5 / 2, ratios
    assert 1 / 6 < ratios["overlapped"] < 3 / 2, ratios
