import copy
import json
import multiprocessing as mp

import pytest

from distbench.results import SchemaError, append, load, read_records, validate


def record(**over):
    r = {
        "schema": "distbench.run/1",
        "run_id": "r1",
        "status": "ok",
        "error": None,
        "started_at": "2026-01-01T00:00:00+00:00",
        "finished_at": "2026-01-01T00:01:00+00:00",
        "config": {"model": {"head": "fixed"}},
        "env": {
            "torch": "2",
            "torchvision": "0",
            "deepspeed": None,
            "cuda": None,
            "nccl": None,
            "device": "cpu",
            "world_size": 2,
            "backend": "gloo",
            "hostname": "h",
            "hosts": ["h"],
            "git_sha": None,
            "python": "3.11",
            "cpu_cores": 2,
        },
        "params": {
            "total": 10,
            "trainable": 4,
            "frozen": 6,
            "head_total": 5,
            "head_trainable": 1,
            "conv_learned_fraction": 0.5,
            "head_in_features": 4,
        },
        "comm": {
            "payload_bytes_per_step": 16,
            "expected_bytes_per_step": 16,
            "bus_bytes_per_step": 16.0,
            "buckets_per_step": 1,
            "hook": "allreduce",
            "collectives": {"all_reduce": 16},
            "logger_bytes_per_step": None,
            "replicas_identical": True,
            "bucket_cap_mb": 25.0,
            "buckets": [{"op": "all_reduce", "bytes": 16, "dtype": "float32", "params": 2, "first": "b", "last": "w"}],
        },
        "perf": {
            "samples_per_s": 1.0,
            "step_time_ms": {"p50": 1.0, "p90": 2.0, "mean": 1.5},
            "exposed_comm_ms": 0.1,
            "exposed_comm_ms_direct": 0.1,
            "ranks": [{"rank": r, "compute_ms": 0.6, "wait_ms": 0.1, "optimizer_ms": 0.2} for r in (0, 1)],
            "profile": None,
            "peak_memory_bytes": 100,
            "timed_steps": 4,
            "warmup_steps": 2,
            "untimed_steps": 0,
            "resumed_from_steps": [],
            "continued_from": None,
            "timed_window": "continuous",
        },
        "accuracy": {
            "top1": 0.5,
            "top5": 0.9,
            "oracle_top1": None,
            "eval_samples": 64,
            "final_loss": 1.0,
            "eval_loss": 1.1,
            "oracle_loss": None,
            "perplexity": None,
            "curve": [{"step": 6, "samples_per_class": 0.5, "top1": 0.5, "top5": 0.9, "eval_loss": 1.1}],
            "flat_at_step": None,
        },
        "data": {"skipped_images": None, "skipped_files": []},
    }
    r.update(over)
    return r


def test_valid_record_passes_and_broken_ones_name_the_field():
    validate(record())
    bad = record()
    del bad["comm"]["payload_bytes_per_step"]
    with pytest.raises(SchemaError, match=r"comm\.payload_bytes_per_step"):
        validate(bad)
    with pytest.raises(SchemaError, match="status"):
        validate(record(status="meh"))
    with pytest.raises(SchemaError, match="perf must be an object"):
        validate(record(perf=None))
    validate(record(status="failed", error="x", perf=None, comm=None, env=None, params=None, accuracy=None))


def test_fields_added_later_may_be_missing_only_from_records_written_before_them():
    old = record()
    del old["env"]["hosts"]
    for key in ("untimed_steps", "resumed_from_steps", "continued_from", "timed_window"):
        del old["perf"][key]
    validate(old, written_before=True)  # a committed record from before those fields
    with pytest.raises(SchemaError, match=r"env\.hosts"):
        validate(old)  # a record about to be written must have them
    del old["perf"]["timed_steps"]  # an original field stays required either way
    with pytest.raises(SchemaError, match=r"perf\.timed_steps"):
        validate(old, written_before=True)


def test_append_and_load_with_dotted_columns(tmp_path):
    out = tmp_path / "sub" / "runs.jsonl"
    append(out, record(run_id="a"))
    append(out, record(run_id="b", accuracy={**record()["accuracy"], "final_loss": float("nan")}, status="diverged"))
    (tmp_path / "other.jsonl").write_text(json.dumps({"schema": "distbench.commbench/1"}) + "\n")
    df = load(tmp_path)
    assert list(df["run_id"]) == ["a", "b"]
    assert df["comm.payload_bytes_per_step"].tolist() == [16, 16]
    assert df["config.model.head"].tolist() == ["fixed", "fixed"]
    assert df["accuracy.final_loss"].isna().tolist() == [False, True]  # NaN stored as null


def test_invalid_record_is_not_written(tmp_path):
    out = tmp_path / "runs.jsonl"
    append(out, record())
    before = out.read_bytes()
    with pytest.raises(SchemaError):
        append(out, record(status="nope"))
    assert out.read_bytes() == before


def _writer(path, n, tag):
    big = "x" * 200_000  # larger than a pipe buffer: interleaving would show
    for i in range(n):
        append(path, record(run_id=f"{tag}-{i}", config={"pad": big}))


def test_concurrent_appends_never_interleave(tmp_path):
    out = tmp_path / "runs.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(out, 10, t)) for t in "abc"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    recs = read_records(out)
    assert sorted(r["run_id"] for r in recs) == sorted(f"{t}-{i}" for t in "abc" for i in range(10))
    for r in recs:
        validate(copy.deepcopy(r))


def test_a_garbage_line_is_skipped_and_reported_once(tmp_path, caplog):
    out = tmp_path / "runs.jsonl"
    append(out, record(run_id="a"))
    with open(out, "a") as fh:
        fh.write("this is not json\n[1, 2]\n")
    append(out, record(run_id="b"))
    with caplog.at_level("WARNING", logger="distbench.results"):
        assert [r["run_id"] for r in read_records(out)] == ["a", "b"]
        assert list(load(out)["run_id"]) == ["a", "b"]
    reports = [r.getMessage() for r in caplog.records]
    assert reports == [f"{out}:2: skipped, not JSON (Expecting value)", f"{out}:3: skipped, not a JSON object"]


def test_a_partial_last_line_is_ended_before_the_next_record(tmp_path):
    """A writer killed mid-line by something outside distbench: the next record still gets a line of its own,
    and only the broken one is lost."""
    out = tmp_path / "runs.jsonl"
    append(out, record(run_id="a"))
    append(out, record(run_id="cut"))
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) - 200])  # the second record, cut mid-line
    append(out, record(run_id="c"))
    assert [r["run_id"] for r in read_records(out)] == ["a", "c"]
    assert out.read_bytes().endswith(b"\n") and out.read_text().count("\n") == 3
