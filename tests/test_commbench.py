"""The collective benchmark (distbench.perfmodel.commbench): its records, sizes and flags, and real gloo runs."""

import copy
import sys

import numpy as np
import pytest
from conftest import ROOT, TORCHRUN, run_cmd

from distbench.perfmodel import commbench, costmodel
from distbench.results import SchemaError, environment, load, read_records

COMMBENCH = ROOT / "launch" / "commbench.py"


def good_record(**over) -> dict:
    import torch

    r = {
        "schema": commbench.SCHEMA,
        "run_id": "r1",
        "op": "all_reduce",
        "impl": "all_reduce",
        "bytes": 4096,
        "dtype": "float32",
        "world_size": 2,
        "backend": "gloo",
        "device": "cpu",
        "iters": 1,
        "warmup": 0,
        "repeats": 2,
        "time_us": 100.0,
        "time_us_min": 90.0,
        "time_us_windows": [90.0, 110.0],
        "algbw_bytes_per_s": 4.096e7,
        "busbw_bytes_per_s": 4.096e7,
        "started_at": "2026-01-01T00:00:00+00:00",
        "env": environment(torch.device("cpu"), 2, "gloo"),
    }
    r.update(over)
    return r


def test_validate_commbench_names_the_broken_field():
    commbench.validate_commbench(good_record())
    missing = good_record()
    del missing["busbw_bytes_per_s"]
    with pytest.raises(SchemaError, match="missing field busbw_bytes_per_s"):
        commbench.validate_commbench(missing)
    with pytest.raises(SchemaError, match="bytes has type str"):
        commbench.validate_commbench(good_record(bytes="4K"))
    with pytest.raises(SchemaError, match="time_us must be"):
        commbench.validate_commbench(good_record(time_us=float("nan")))
    with pytest.raises(SchemaError, match="op 'all_to_all'"):
        commbench.validate_commbench(good_record(op="all_to_all"))
    with pytest.raises(SchemaError, match="schema"):
        commbench.validate_commbench(good_record(schema="distbench.run/1"))
    env = copy.deepcopy(good_record())
    del env["env"]["backend"]
    with pytest.raises(SchemaError, match=r"env\.backend"):
        commbench.validate_commbench(env)


def test_gloo_reduce_scatter_is_labelled_as_what_runs():
    assert commbench.OPS.get("reduce_scatter").impl("gloo") == "all_reduce+slice"
    assert commbench.OPS.get("reduce_scatter").impl("nccl").startswith("reduce_scatter")


def test_sizes_follow_nccl_tests():
    assert commbench.message_sizes(1024, 8192) == [1024, 2048, 4096, 8192]
    assert commbench.message_sizes(1000, 9000, 3) == [1000, 3000, 9000]
    assert commbench.parse_args(["--min-bytes", "1K", "--max-bytes", "4M"]).sizes[-1] == 4 << 20
    assert commbench.element_count("all_reduce", 4096, 3) == 1024
    assert commbench.element_count("all_gather", 4096, 3) == 1023  # every rank's chunk equal
    assert commbench.element_count("reduce_scatter", 4, 8) == 8  # at least one element per rank


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--min-bytes", "-4"], "--min-bytes"),
        (["--min-bytes", "1Q"], "--min-bytes"),
        (["--min-bytes", "4K", "--max-bytes", "1K"], "--max-bytes"),
        (["--factor", "1"], "--factor"),
        (["--iters", "0"], "--iters"),
        (["--ops", "all_reduc"], "did you mean 'all_reduce'"),
        (["--dist-backend", "mpi"], "--dist-backend"),
        (["--backend", "mpi"], "--dist-backend"),  # the old spelling still reaches the same flag
    ],
)
def test_bad_flags_name_themselves(args, flag):
    with pytest.raises(commbench.ArgsError, match=flag):
        commbench.parse_args(args)


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "bench.jsonl"
    p = run_cmd([sys.executable, str(COMMBENCH), "--min-bytes", "0", "--out", str(out)], timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert lines == ["commbench.py: error: --min-bytes must be at least 4 (one float32), got 0"], p.stderr
    assert not out.exists()


# ----------------------------------------------------------------------------------- the real thing
def _commbench(out, repeats: int):
    """2 gloo ranks, all_reduce at 4 KiB..4 MiB, `repeats` one-call windows per size: its records, checked."""
    cmd = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node=2",
        str(COMMBENCH),
        *("--ops", "all_reduce", "--min-bytes", "4K", "--max-bytes", "4M"),
        *("--iters", "1", "--warmup", "5", "--repeats", str(repeats), "--out", str(out)),
    ]
    p = run_cmd(cmd, timeout=240)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "busbw(GB/s)" in p.stderr  # rank 0's table

    df = load(out, schema="distbench.commbench/1")
    assert len(df) == 11 and df.run_id.nunique() == 1  # rank 0 alone writes, one record per size
    assert df.bytes.tolist() == [4 << 10 << k for k in range(11)]
    for record in read_records(out, schema=commbench.SCHEMA):
        commbench.validate_commbench(record)
        assert record["world_size"] == 2 and record["backend"] == "gloo" and len(record["time_us_windows"]) == repeats
        assert record["busbw_bytes_per_s"] == pytest.approx(record["algbw_bytes_per_s"])  # 2(n-1)/n = 1 at n = 2
    return df


def test_commbench_on_real_gloo_ranks_writes_records_the_fit_reads(tmp_path):
    """The default tier: real collectives measured, one valid record per size, and a fit with a positive
    latency and bandwidth. How well the fit predicts is a timing question, for the slow tier (below)."""
    df = _commbench(tmp_path / "bench.jsonl", repeats=20)
    model = costmodel.fit(df, time_field="time_us_min")
    assert model.alpha > 0 and model.beta > 0


@pytest.mark.slow
def test_model_fitted_on_real_gloo_measurements_predicts_every_size(tmp_path):
    """The acceptance test, on a quiet machine: every prediction within 0.75x..1.33x of its measurement.

    Shared machines (2 cores, other jobs) make any timing band flaky, hence the slow tier. The run takes many
    one-call windows (200 rounds over the sizes, in shuffled order, so a busy spell slows every size alike) and
    the fit uses each size's fastest window. Other processes can only add time to a window, so the fastest is
    the estimate of the collective's own cost, which is what the model describes; the median also carries how
    long calls get preempted, which grows with the call and bends the largest sizes off the line.
    """
    df = _commbench(tmp_path / "bench.jsonl", repeats=200)
    model = costmodel.fit(df, time_field="time_us_min")
    measured = df.time_us_min.to_numpy()
    ratio = model.allreduce_time(df.bytes.to_numpy(), 2) * 1e6 / measured
    table = ", ".join(f"{b >> 10}K: {m:.0f} us x{r:.2f}" for b, m, r in zip(df.bytes, measured, ratio, strict=True))
    fitted = f"alpha {model.alpha * 1e6:.1f} us, beta {model.beta / 1e9:.3f} GB/s"
    assert np.all((ratio >= 0.75) & (ratio <= 1.33)), f"{fitted}; measured, predicted / measured: {table}"
