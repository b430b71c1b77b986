"""Checkpoint and resume, preemption by signal, and a hung rank: real torchrun jobs, real signals.

`pytest -k "preempt or resume or rank_fail"` selects them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import _records, finish, flags, python_run, start_torchrun, wait_for, worker

from distbench.comm.meter import StepTraffic
from distbench.config import RunConfig
from distbench.results import validate
from distbench.results.curves import flat
from distbench.runtime import checkpoint
from distbench.runtime.checkpoint import Checkpoints, LoopState, read_latest
from distbench.runtime.data import Shard, build_dataset
from distbench.runtime.stop import EXIT_STOPPED, StopRequest
from distbench.runtime.timing import StepTimer

# Long enough (about 3 s of steps) that a signal sent after the first checkpoint lands mid-run. A learning
# curve point every 4 samples per class (every 25 steps: 2 ranks x 8 samples over 100 classes a step), so
# the curve too must survive the resume.
JOB_FLAGS = {"steps": 120, "warmup_steps": 3, "nosync_steps": 2, "batch_size": 8, "eval_samples": 64}
JOB_FLAGS |= {"checkpoint_every": 4, "eval_every": 4}
JOB = flags(**JOB_FLAGS)


def model_state(ckpt: Path, rank: int) -> dict[str, torch.Tensor]:
    latest = read_latest(ckpt)
    return torch.load(ckpt / latest["dir"] / f"engine-rank{rank}.pt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job run through without interruption, keeping its final checkpoint."""
    tmp = tmp_path_factory.mktemp("reference")
    code, log = finish(start_torchrun(JOB, tmp / "runs.jsonl", tmp / "ckpt"))
    assert code == 0, log[-3000:]
    (record,) = _records(tmp / "runs.jsonl")
    curve = record["accuracy"]["curve"]
    assert [p["step"] for p in curve] == [25, 50, 75, 100, 123]  # the final evaluation last
    assert [p["samples_per_class"] for p in curve] == pytest.approx([4.0, 8.0, 12.0, 16.0, 19.68])
    assert curve[-1]["top1"] == record["accuracy"]["top1"]
    return record, tmp / "ckpt"


def assert_same_run(resumed: dict, ref: dict, ckpt: Path, ref_ckpt: Path) -> None:
    validate(resumed)
    assert resumed["status"] == "ok"
    for rank in (0, 1):  # weights, optimizer state (momentum) and loss scaler, bit for bit
        a, b = model_state(ckpt, rank), model_state(ref_ckpt, rank)
        assert a["model"].keys() == b["model"].keys()
        for name in a["model"]:
            assert torch.equal(a["model"][name], b["model"][name]), name
        for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
            assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert resumed["accuracy"] == ref["accuracy"]  # final loss, top-1, top-5, eval loss: exactly
    assert resumed["comm"] == ref["comm"]  # bytes, buckets, collectives: exactly
    assert resumed["perf"]["timed_steps"] + resumed["perf"]["untimed_steps"] == ref["perf"]["timed_steps"]


# SIGUSR1 to every process of the job, as Slurm delivers it, is tests/test_slurm.py's preempt test.
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_preempt_then_resume_ends_bit_identical(tmp_path, reference, sig):
    """A signal to the launcher (SIGTERM: torchrun passes it on) or to every rank: every rank saves at one
    step boundary and exits 75; the same command resumes and ends exactly where the uninterrupted run
    ended."""
    ref, ref_ckpt = reference
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun(JOB, out, ckpt)
    wait_for((ckpt / "latest").exists, what="the first checkpoint", proc=proc)
    if sig == signal.SIGTERM:
        proc.send_signal(sig)
    else:
        for rank in (0, 1):
            os.kill(worker(proc, rank), sig)
    code, log = finish(proc)
    latest = read_latest(ckpt)
    stopped_at = latest["step"]
    assert 0 < stopped_at < 123
    # On a loaded machine the signal may land during the next periodic save: the run then stops on that
    # checkpoint (saved for its period) instead of saving again one step later.
    phase = "checkpoint save" if latest["reason"] == "every 4 steps" else "training"
    if phase == "training":
        assert latest["reason"] == sig.name, log[-3000:]
    assert f"stopped by {sig.name} during {phase}, after step {stopped_at} of 123" in log, log[-3000:]
    assert code != 0
    if sig == signal.SIGUSR1:  # torchrun itself was not signalled: it reports its workers' exit code
        assert f"exitcode  : {EXIT_STOPPED}" in log, log[-3000:]
    assert not out.exists()  # nothing recorded for a run that will resume

    code, log = finish(start_torchrun(JOB, out, ckpt))
    assert code == 0, log[-3000:]
    (record,) = _records(out)
    assert record["perf"]["resumed_from_steps"] == [stopped_at]
    assert record["run_id"] == latest["run_id"]  # one run, one id, over both processes
    window = "split" if stopped_at > 3 else "continuous"
    assert record["perf"]["timed_window"] == window
    assert record["perf"]["untimed_steps"] == (1 if stopped_at >= 3 else 0)
    assert_same_run(record, ref, ckpt, ref_ckpt)


def test_resume_after_a_crash_starts_from_the_last_checkpoint(tmp_path, reference):
    """SIGKILL (no chance to save): the rerun resumes from the last periodic checkpoint."""
    ref, ref_ckpt = reference
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun(JOB, out, ckpt)
    wait_for(lambda: (read_latest(ckpt) or {}).get("step", 0) >= 8, what="the second checkpoint", proc=proc)
    for rank in (0, 1):
        os.kill(worker(proc, rank), signal.SIGKILL)
    code, log = finish(proc)
    assert code != 0 and not out.exists()
    saved = read_latest(ckpt)
    assert saved["reason"] == "every 4 steps" and saved["step"] % 4 == 0

    code, log = finish(start_torchrun(JOB, out, ckpt))
    assert code == 0, log[-3000:]
    (record,) = _records(out)
    assert record["perf"]["resumed_from_steps"] == [saved["step"]]
    assert_same_run(record, ref, ckpt, ref_ckpt)


def copy_checkpoint(source: Path, ckpt: Path) -> Path:
    ckpt.mkdir()
    for item in source.iterdir():
        if item.is_dir():
            subprocess.run(["cp", "-r", str(item), str(ckpt)], check=True)
        else:
            (ckpt / item.name).write_bytes(item.read_bytes())
    return ckpt


def test_resume_at_the_end_only_evaluates(tmp_path, reference):
    """The finished run's checkpoint, as if it had been stopped during evaluation (its record unwritten)."""
    ref, ref_ckpt = reference
    ckpt = copy_checkpoint(ref_ckpt, tmp_path / "ckpt")
    latest = read_latest(ckpt)
    assert latest.pop("recorded") == str(ref_ckpt.parent / "runs.jsonl")
    (ckpt / "latest").write_text(json.dumps(latest))
    code, log = finish(start_torchrun(JOB, tmp_path / "runs.jsonl", ckpt))
    assert code == 0, log[-3000:]
    (record,) = _records(tmp_path / "runs.jsonl")
    assert record["perf"]["resumed_from_steps"] == [123]
    assert record["accuracy"] == ref["accuracy"] and record["comm"] == ref["comm"]
    assert record["perf"]["step_time_ms"] == ref["perf"]["step_time_ms"]  # the window came from the checkpoint


def test_resume_of_a_recorded_run_says_so_and_appends_nothing(tmp_path, reference):
    """The same command again after the run finished: nothing to run, nothing appended, exit 0."""
    _, ref_ckpt = reference
    ckpt = copy_checkpoint(ref_ckpt, tmp_path / "ckpt")
    out = tmp_path / "runs.jsonl"
    out.write_text("")
    code, log = finish(start_torchrun(JOB, out, ckpt))
    assert code == 0, log[-3000:]
    assert out.read_text() == ""
    assert log.count("is already complete in") == 1 and "nothing to do" in log


def test_a_finished_run_given_more_steps_goes_on_from_its_checkpoint(tmp_path, reference):
    """The finished, recorded run's checkpoint, and the same command with more --steps: it goes on from step 123
    as a run of its own (its own id, naming the run it continued) and ends bit-identical to the longer run
    started from scratch, so nothing trained depends on --steps. How a line that is not yet flat is continued
    instead of run again. (No periodic saves in the longer runs: where a run saves is no part of what it trains.)"""
    ref, ref_ckpt = reference
    longer = flags(**JOB_FLAGS | {"steps": 200, "checkpoint_every": 0})
    straight = finish(start_torchrun(longer, tmp_path / "straight.jsonl", tmp_path / "straight"))
    ckpt = copy_checkpoint(ref_ckpt, tmp_path / "ckpt")
    code, log = finish(start_torchrun(longer, tmp_path / "runs.jsonl", ckpt))
    assert code == 0 and straight[0] == 0, log[-3000:] + straight[1][-3000:]
    assert f"continuing run {ref['run_id']} from {ckpt} at step 123, to 203" in log, log[-3000:]
    (record,), (whole,) = _records(tmp_path / "runs.jsonl"), _records(tmp_path / "straight.jsonl")
    assert record["run_id"] != ref["run_id"] and record["perf"]["continued_from"] == ref["run_id"]
    assert whole["perf"]["continued_from"] is None
    assert record["perf"]["resumed_from_steps"] == [123]
    assert [p for p in record["accuracy"]["curve"] if p["step"] < 123] == ref["accuracy"]["curve"][:-1]
    assert_same_run(record, whole, ckpt, tmp_path / "straight")

    # The same command again: that longer run is complete, and it is the one said to be.
    code, log = finish(start_torchrun(longer, tmp_path / "runs.jsonl", ckpt))
    assert code == 0 and f"run {record['run_id']} is already complete" in log, log[-3000:]
    assert len(_records(tmp_path / "runs.jsonl")) == 1


def _latest(tmp_path: Path, step: int, **fields: object) -> Path:
    """A checkpoint directory whose `latest` names a run "r" of the default configuration at `step` (only
    its `latest`: refusals come before anything is loaded)."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    latest = {"step": step, "dir": f"step-{step:08d}", "reason": "end", "world_size": 1, "run_id": "r", **fields}
    (ckpt / "latest").write_text(json.dumps({**latest, "config": RunConfig().to_dict()}))
    return ckpt


def _refused(args: list[str], tmp_path: Path, flag: str) -> str:
    """The one error line of run.py given `args`, which must name `flag`, exit 2 and write nothing."""
    r = python_run(args, tmp_path / "runs.jsonl", timeout=60)
    assert r.returncode == 2 and not (tmp_path / "runs.jsonl").exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"run.py: error: {flag}"), r.stderr
    return lines[0]


def test_resume_refuses_to_shorten_a_run_past_its_checkpoint(tmp_path):
    """A checkpoint at a step beyond the end that --steps gives: one line naming --steps, exit 2, nothing run."""
    said = _refused(["--checkpoint-dir", str(_latest(tmp_path, 1000))], tmp_path, "--steps")
    assert "at step 1,000, past the 210" in said and "not shortened" in said


def test_rank_fail_a_hung_rank_ends_the_job_within_the_timeout(tmp_path):
    """A stopped rank (SIGSTOP: a stuck read, a GPU hang): rank 0 gives up after --pg-timeout-s and records
    why; without the flag gloo would wait 30 minutes. torchrun then SIGKILLs the stopped rank 30 s later (on a
    worker's failure it ignores its own --shutdown-timeout): that is torchrun's, and the test does it itself
    once the record is there rather than wait."""
    out, ckpt, timeout_s = tmp_path / "runs.jsonl", tmp_path / "ckpt", 5
    args = flags(steps=100_000, warmup_steps=1, batch_size=8, eval_samples=64, pg_timeout_s=timeout_s)
    proc = start_torchrun([*args, "--checkpoint-every", "2"], out, ckpt)
    wait_for((ckpt / "latest").exists, what="the training loop", proc=proc)  # a checkpoint: both ranks are stepping
    hung = worker(proc, 1)
    os.kill(hung, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: out.exists() and out.read_text().endswith("\n"), timeout=timeout_s + 90, what="the record")
        took = time.monotonic() - stopped
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGKILL)
    code, _ = finish(proc, timeout=90)
    assert code != 0
    assert took < timeout_s + 15, f"{took:.0f} s"
    (record,) = _records(out)
    validate(record)
    assert record["status"] == "failed"
    assert f"did not answer within --pg-timeout-s {timeout_s} s" in record["error"]


def _vote_worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist

    from distbench.runtime.engines import StopVote

    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    vote = StopVote(timeout_s=2)
    vote(False)  # issued by both ranks
    if rank == 1:
        time.sleep(60)  # hung: never votes again
        os._exit(0)
    vote(False)  # waits for the first vote (done) and issues a second, which rank 1 never joins
    started = time.monotonic()
    try:
        vote(False)
        error = ""
    except Exception as e:  # whatever gloo raises: its message is checked
        error = str(e)
    Path(out).write_text(json.dumps({"took": time.monotonic() - started, "error": error}))
    os._exit(0)


def test_rank_fail_the_stop_vote_gives_up_on_a_hung_peer_within_the_timeout(tmp_path):
    """The vote runs on a group of its own, which would default to gloo's 30 minutes: a rank waiting on a
    stopped peer's vote must give up within the run's timeout like any gradient all-reduce."""
    ctx = torch.multiprocessing.get_context("spawn")
    out = tmp_path / "rank0.json"
    procs = [ctx.Process(target=_vote_worker, args=(r, str(tmp_path / "store"), str(out))) for r in range(2)]
    for p in procs:
        p.start()
    procs[0].join(timeout=60)
    for p in procs:
        p.kill()
        p.join()
    assert out.exists(), "rank 0 still waited on the hung peer's vote after 60 s"
    result = json.loads(out.read_text())
    assert "timed out" in result["error"].lower() or "timeout" in result["error"].lower(), result["error"]
    assert result["took"] < 10


# ------------------------------------------------------------------------------------------- in process
def test_resume_data_stream_starts_where_it_left_off():
    cfg = RunConfig().data
    for name, classes in (("synthetic", 100), ("digits", 10)):
        cfg = RunConfig(data=type(cfg)(dataset=name)).data
        ds = build_dataset(cfg, classes, (3, 32, 32), 4, Shard(1, 2, torch.device("cpu")), 0)
        whole = list(itertools.islice(ds.train(), 60))  # digits: over an epoch boundary
        for start in (0, 1, 7, 45):
            tail = list(itertools.islice(ds.train(start=start), 60 - start))
            assert all(
                torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[start:], tail, strict=True)
            )


def test_step_timer_restart_leaves_the_gap_out():
    timer = StepTimer(torch.device("cpu"))
    timer.mark()
    time.sleep(0.002)
    timer.mark()  # step 1: ~2 ms
    time.sleep(0.05)  # between steps: not a step
    timer.restart()
    timer.mark()  # step 2: ~0 ms
    ms = timer.times_ms()
    assert len(ms) == 2 and ms[0] >= 2 and ms[1] < 20


def test_stop_request_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    request = StopRequest()
    with request.installed():
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.signal == "SIGUSR1"
    assert signal.getsignal(signal.SIGTERM) is before


class _Engine:
    """The engine's side of a checkpoint, a tensor standing in for its state."""

    def __init__(self, value: float) -> None:
        self.value = torch.tensor([value])

    def save_checkpoint(self, directory: Path) -> None:
        checkpoint.atomic_save(self.value, directory / "engine-rank0.pt")

    def load_checkpoint(self, directory: Path) -> None:
        self.value = torch.load(directory / "engine-rank0.pt")


def test_resume_checkpoints_replace_each_other_whole(tmp_path):
    store = Checkpoints(tmp_path, 0, 1, torch.device("cpu"), RunConfig().to_dict(), barrier=lambda: None)
    state = LoopState(
        run_id="r", started_at="t", step=4, timed_ms=[1.0], traffic=[StepTraffic({"all_reduce": 8}, 8, 1)]
    )
    store.save(_Engine(1.0), state, "every 4 steps")
    assert read_latest(tmp_path)["curve_end"] is None  # no curve yet
    state.step = 8
    state.curve = [{"step": 8, "samples_per_class": 0.5, "top1": 0.25, "top5": 0.5, "eval_loss": 2.0}]
    torch.manual_seed(123)
    store.save(_Engine(2.0), state, "SIGTERM")
    assert read_latest(tmp_path)["curve_end"] == state.curve[-1]  # for `sweep list`
    next_draw = torch.rand(1)  # what the run would have drawn next
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000008"]  # the older one removed
    # A save that dies before `latest` moves on leaves the previous checkpoint in force.
    (tmp_path / "step-00000012").mkdir()
    (tmp_path / "step-00000012" / "engine-rank0.pt").write_bytes(b"half a file")
    engine = _Engine(0.0)
    loaded = store.load(engine)
    assert engine.value.item() == 2.0 and loaded.step == 8 and loaded.resumed_from == [8]
    assert loaded.traffic == state.traffic and loaded.timed_ms == [1.0]
    assert read_latest(tmp_path)["reason"] == "SIGTERM"
    assert torch.equal(torch.rand(1), next_draw)  # the RNG is back where the save left it
    # Saved again at the step it resumed at (a stop before its first step): the engine's files, which may be
    # links into another run's checkpoint, are left as they are; the loop's state is saved anew.
    engine_file = tmp_path / "step-00000008" / "engine-rank0.pt"
    before = engine_file.stat().st_ino
    engine.value = torch.tensor([9.0])  # were it saved, this would show
    store.save(engine, loaded, "SIGINT")
    assert engine_file.stat().st_ino == before and torch.load(engine_file).item() == 2.0
    assert read_latest(tmp_path)["reason"] == "SIGINT"


# A task the tiny CNN learns in a few dozen steps (8 classes), evaluated every 8 samples per class (every 4
# steps), capped at 100 steps: --until-flat ends it well before (at step 64 on the reference machine).
FLAT_JOB = flags(num_classes=8, steps=100, warmup_steps=3, nosync_steps=2, batch_size=8, eval_samples=64,
                 checkpoint_every=4, eval_every=8)  # fmt: skip
RULE = flags(until_flat=0.02)


def test_flat_judges_a_doubling_on_top1_and_loss():
    def curve(points):
        return [{"samples_per_class": s, "top1": t, "eval_loss": e} for s, t, e in points]

    classes = 100_000  # ln C = 11.5: 0.01 of it is 0.115 nats
    before_take_off = curve([(4, 0.0002, 11.34), (8, 0.0003, 9.84)])  # top-1 at chance, the loss falling
    assert not flat(before_take_off, 0.01, classes)
    plateau = curve([(8, 0.01, 9.84), (12, 0.44, 3.73), (16, 0.961, 0.208), (20, 0.991, 0.050), (40, 0.995, 0.03)])
    assert flat(plateau, 0.01, classes)  # 20 -> 40: +0.004 top-1, -0.02 nats
    assert not flat(plateau[:-1], 0.01, classes)  # 8 -> 20: taking off
    assert not flat([*plateau[:-1], curve([(32, 0.995, 0.03)])[0]], 0.01, classes)  # 16 -> 32: +0.034
    # A slow steady rise: each neighbour gains 0.5 points, each doubling 5: not flat however often it evaluates.
    slow = curve([(s, 0.5 + 0.00125 * s, 1.0 - 0.001 * s) for s in range(40, 164, 4)])
    assert not any(flat(slow[:i], 0.01, 100) for i in range(1, len(slow) + 1))
    assert not flat(curve([(4, 0.9, 0.1)]), 0.01, classes)  # one point: nothing to compare
    dip = curve([(10, 0.99, 0.05), (20, 0.991, 0.05), (40, 0.95, 0.05)])  # unstable: top-1 fell 4 points
    assert not flat(dip, 0.01, classes)
    done = curve([(50, 1.0, 0.001), (100, 1.0, 0.001), (150, 1.0, 0.001)])  # at 100% from its first point
    assert not flat(done[:2], 0.01, 1024) and flat(done, 0.01, 1024)  # a curve of three points, not two


@pytest.fixture(scope="module")
def flat_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flat")
    code, log = finish(start_torchrun(FLAT_JOB + RULE, tmp / "runs.jsonl", tmp / "ckpt"))
    assert code == 0, log[-3000:]
    (record,) = _records(tmp / "runs.jsonl")
    return record, tmp / "ckpt"


def test_progress_of_a_run_that_may_end_flat_counts_to_its_cap(caplog, monkeypatch):
    """The progress line of a run under --until-flat says its step count and time left are at most."""
    import sys

    from distbench.runtime.engines.base import Place
    from distbench.runtime.loop import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)  # the log line, not a bar (pytest -s on a terminal)
    place = Place(0, 1, 0, torch.device("cpu"), "gloo")
    with caplog.at_level("INFO", logger="distbench"):
        for capped in (False, True):
            with Progress(place, 10, 4, every_s=0.0, capped=capped) as progress:
                progress.update()
    lines = [r.getMessage() for r in caplog.records if "samples/s" in r.getMessage()]
    assert lines[0].startswith("step 1 of 10,") and lines[1].startswith("step 1 of at most 10,"), lines
    assert "at most" not in lines[0] and lines[1].endswith("min left") and "at most" in lines[1].split(",")[-1]


def test_until_flat_ends_the_run_at_its_first_flat_point(flat_reference):
    record, _ = flat_reference
    validate(record)
    assert record["status"] == "ok"
    at, curve = record["accuracy"]["flat_at_step"], record["accuracy"]["curve"]
    assert at is not None and 3 < at < 103, at  # ended before its cap
    steps = [p["step"] for p in curve]
    assert steps == sorted(set(steps)) and steps[-1] == at  # the final evaluation once, last
    assert flat(curve, 0.02, 8) and not any(flat(curve[:i], 0.02, 8) for i in range(1, len(curve)))
    assert record["accuracy"]["top1"] == curve[-1]["top1"]
    assert record["perf"]["timed_steps"] == at - 3  # the timed window ends where the run did


def test_a_stop_rule_added_on_resume_ends_where_it_would_have(tmp_path, flat_reference):
    """A line started without --until-flat, stopped, and resumed with it (how a running study takes the rule):
    the resume is allowed, and the record is the one the rule gives from the start."""
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun(FLAT_JOB, out, ckpt, hold=f"save:{tmp_path}")  # held in its first save (step 4)
    wait_for(lambda: all((tmp_path / f"save.rank{r}").exists() for r in (0, 1)), what="both ranks saving", proc=proc)
    proc.send_signal(signal.SIGTERM)
    wait_for((tmp_path / "save.rank0.SIGTERM").exists, what="the signal noted", proc=proc)
    (tmp_path / "save.go").touch()
    code, log = finish(proc)
    stopped_at = read_latest(ckpt)["step"]
    assert code != 0 and not out.exists(), log[-3000:]
    ref, _ = flat_reference
    assert stopped_at == 4 < ref["accuracy"]["flat_at_step"]

    code, log = finish(start_torchrun(FLAT_JOB + RULE, out, ckpt))
    assert code == 0, log[-3000:]
    (record,) = _records(out)
    assert record["perf"]["resumed_from_steps"] == [stopped_at]
    assert record["accuracy"] == ref["accuracy"]  # curve, flat_at_step, top-1, losses: exactly
    assert record["comm"] == ref["comm"]


def test_a_resume_judges_the_curve_by_the_rule_in_force(tmp_path, flat_reference):
    """The run that ended on a flat curve, resumed from its end checkpoint (its record unwritten) without the
    rule: it trains on to its --steps, its curve the same up to the flat point and longer after it."""
    ref, ref_ckpt = flat_reference
    ckpt = copy_checkpoint(ref_ckpt, tmp_path / "ckpt")
    latest = read_latest(ckpt)
    latest.pop("recorded")
    (ckpt / "latest").write_text(json.dumps(latest))
    code, log = finish(start_torchrun(FLAT_JOB, tmp_path / "runs.jsonl", ckpt))
    assert code == 0, log[-3000:]
    (record,) = _records(tmp_path / "runs.jsonl")
    at, curve = ref["accuracy"]["flat_at_step"], record["accuracy"]["curve"]
    assert record["perf"]["resumed_from_steps"] == [at] and record["accuracy"]["flat_at_step"] is None
    assert curve[-1]["step"] == 103 and [p for p in curve if p["step"] <= at] == ref["accuracy"]["curve"]


def test_a_stop_during_a_curve_evaluation_resumes_with_that_point(tmp_path, flat_reference):
    """A signal while the second curve point is evaluated: the run saves that step without the point, and the
    resume evaluates it before training on, so the curve, and where the stop rule ends the run, are the ones
    of the run that was never stopped."""
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun(FLAT_JOB + RULE, out, ckpt, hold=f"curve-point#2:{tmp_path}")
    wait_for(lambda: all((tmp_path / f"curve-point.rank{r}").exists() for r in (0, 1)), what="both ranks held",
             proc=proc)  # fmt: skip
    proc.send_signal(signal.SIGTERM)
    wait_for((tmp_path / "curve-point.rank0.SIGTERM").exists, what="the signal noted", proc=proc)
    (tmp_path / "curve-point.go").touch()
    code, log = finish(proc)
    ref, _ = flat_reference
    second = ref["accuracy"]["curve"][1]["step"]
    assert code != 0 and f"stopped by SIGTERM during evaluation, after step {second} of 103" in log, log[-3000:]
    assert read_latest(ckpt)["step"] == second and not out.exists()

    code, log = finish(start_torchrun(FLAT_JOB + RULE, out, ckpt))
    assert code == 0, log[-3000:]
    (record,) = _records(out)
    assert record["perf"]["resumed_from_steps"] == [second]
    assert record["accuracy"] == ref["accuracy"]


def test_a_continuation_under_the_id_of_the_run_it_continues_is_refused(tmp_path):
    """Given more --steps, the run is a run of its own: the id of the run it goes on from would write a second
    record of that id. One line naming --run-id, exit 2, nothing run."""
    args = ["--steps", "500", "--run-id", "r", "--checkpoint-dir", str(_latest(tmp_path, 4, recorded="x"))]
    assert "r is the run whose checkpoint this one" in _refused(args, tmp_path, "--run-id")


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    args = ["--lr", "0.1", "--checkpoint-dir", str(_latest(tmp_path, 4))]
    assert "train.lr" in _refused(args, tmp_path, "--checkpoint-dir")
