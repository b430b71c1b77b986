"""A signal at any moment of a run, and Ctrl-C: real torchrun jobs, real signals.

Each job ends with exactly one of: the ok record, a resumable checkpoint, or a failed record naming the signal
and the phase. No test sleeps to reach a moment: the job is held at a named point (DISTBENCH_HOLD, see
distbench.runtime.stop.hold) or the test waits for something the job shows (its handler installed, a checkpoint).
`pytest -k signal` selects them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import _records, catches, finish, flags, rank_tracebacks, start_torchrun, wait_for, workers

from distbench.results import validate
from distbench.runtime.checkpoint import read_latest
from distbench.runtime.stop import SAME_REQUEST_S

# Runs until a signal ends it (100,000 steps); 8-sample batches, 64 held-out samples = 4 batches per rank.
ENDLESS = flags(steps=100_000, warmup_steps=2, nosync_steps=2, batch_size=8, eval_samples=64)
ENDLESS_TOTAL = 100_002
SHORT = flags(steps=4, warmup_steps=2, nosync_steps=2, batch_size=8, eval_samples=64)
SHORT_TOTAL = 6


def held(directory: Path, point: str, ranks=(0, 1)):
    """A predicate: every rank in `ranks` waits at `point`."""
    return lambda: all((directory / f"{point}.rank{r}").exists() for r in ranks)


def noted(directory: Path, point: str, name: str, rank: int = 0):
    """A predicate: rank `rank`, held at `point`, has noted signal `name`."""
    return (directory / f"{point}.rank{rank}.{name}").exists


def release(directory: Path, point: str) -> None:
    (directory / f"{point}.go").touch()


def only_failed_record(out: Path) -> dict:
    (record,) = _records(out)
    validate(record)
    assert record["status"] == "failed"
    return record


def test_signal_in_start_up_imports_leaves_a_failed_record(tmp_path):
    """SIGTERM to torchrun (a shell's kill, scancel) as soon as the ranks have run their first lines, while
    they import torch: the job ends at once with a failed record and no traceback from the ranks."""
    out = tmp_path / "runs.jsonl"
    proc = start_torchrun(ENDLESS, out)
    wait_for(
        lambda: len(w := workers(proc)) == 2 and all(catches(pid, signal.SIGTERM) for pid in w.values()),
        what="both ranks' signal handlers",
        proc=proc,
    )
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc, timeout=60)
    assert code != 0
    record = only_failed_record(out)
    assert record["error"] == "stopped by SIGTERM during start-up: no --checkpoint-dir, so nothing to resume from"
    assert not rank_tracebacks(log), log[-3000:]


@pytest.mark.parametrize("point", ["process-group", "start-up"])
def test_signal_later_in_start_up_leaves_a_failed_record(tmp_path, point):
    """After the process group has formed, and once the model, data and engine are built (the last moment
    of start-up): still one failed record, in one line, however the main thread is occupied."""
    out = tmp_path / "runs.jsonl"
    proc = start_torchrun(ENDLESS, out, hold=f"{point}:{tmp_path}")
    wait_for(held(tmp_path, point), what=f"both ranks at {point}", proc=proc)
    proc.send_signal(signal.SIGTERM)
    code, log = finish(proc, timeout=60)  # nobody releases the hold: a stop in start-up does not wait for it
    assert code != 0
    record = only_failed_record(out)
    assert record["error"].startswith("stopped by SIGTERM during start-up")
    assert record["run_id"] and not record["run_id"].startswith("failed-")  # the run's own id, known by now
    assert not rank_tracebacks(log), log[-3000:]
    assert log.count("stopped by SIGTERM") == 1  # one line per job: rank 0's


def test_signal_in_training_without_checkpoints_records_the_stop(tmp_path):
    out = tmp_path / "runs.jsonl"
    proc = start_torchrun(ENDLESS, out, hold=f"training:{tmp_path}")
    wait_for(held(tmp_path, "training"), what="both ranks in training", proc=proc)
    proc.send_signal(signal.SIGTERM)
    wait_for(noted(tmp_path, "training", "SIGTERM", 0), what="the signal noted", proc=proc)
    release(tmp_path, "training")
    code, log = finish(proc)
    assert code != 0
    record = only_failed_record(out)
    assert record["error"].startswith("stopped by SIGTERM during training, after step ")
    assert record["error"].endswith(f" of {ENDLESS_TOTAL}: no --checkpoint-dir, so nothing to resume from")
    assert not rank_tracebacks(log), log[-3000:]


@pytest.mark.parametrize("checkpoints", [False, True], ids=["no-checkpoint-dir", "checkpoint-dir"])
def test_signal_in_evaluation(tmp_path, checkpoints):
    """Without --checkpoint-dir: a failed record naming evaluation. With it: the end-of-training checkpoint
    stays in force and the same command finishes the run by evaluating only."""
    out, ckpt = tmp_path / "runs.jsonl", (tmp_path / "ckpt" if checkpoints else None)
    proc = start_torchrun(SHORT, out, ckpt, hold=f"evaluation:{tmp_path}")
    wait_for(held(tmp_path, "evaluation"), what="both ranks in evaluation", proc=proc)
    proc.send_signal(signal.SIGTERM)
    wait_for(noted(tmp_path, "evaluation", "SIGTERM", 0), what="the signal noted", proc=proc)
    release(tmp_path, "evaluation")
    code, log = finish(proc)
    assert code != 0 and not rank_tracebacks(log), log[-3000:]
    where = f"stopped by SIGTERM during evaluation, after step {SHORT_TOTAL} of {SHORT_TOTAL}"
    if not checkpoints:
        assert only_failed_record(out)["error"] == f"{where}: no --checkpoint-dir, so nothing to resume from"
        return
    assert not out.exists()
    assert read_latest(ckpt)["reason"] == "end" and f"{where}: saved to {ckpt}" in log
    code, log = finish(start_torchrun(SHORT, out, ckpt))
    assert code == 0, log[-3000:]
    (record,) = _records(out)
    assert record["status"] == "ok" and record["perf"]["resumed_from_steps"] == [SHORT_TOTAL]


def test_signal_during_a_save_stops_on_that_checkpoint(tmp_path):
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun([*ENDLESS, "--checkpoint-every", "2"], out, ckpt, hold=f"save:{tmp_path}")
    wait_for(held(tmp_path, "save"), what="both ranks saving", proc=proc)
    proc.send_signal(signal.SIGTERM)
    wait_for(noted(tmp_path, "save", "SIGTERM", 0), what="the signal noted", proc=proc)
    release(tmp_path, "save")
    code, log = finish(proc)
    assert code != 0 and not out.exists()
    latest = read_latest(ckpt)
    assert (latest["step"], latest["reason"]) == (2, "every 2 steps")  # the save finished; no other followed
    assert f"stopped by SIGTERM during checkpoint save, after step 2 of {ENDLESS_TOTAL}: saved to" in log


def test_signal_after_the_record_is_written_keeps_the_ok_record(tmp_path):
    """SIGTERM to every rank (as Slurm delivers it) while rank 0 writes the record: the run is complete, its
    ok record is written, and the job succeeds."""
    out = tmp_path / "runs.jsonl"
    proc = start_torchrun(SHORT, out, hold=f"record:{tmp_path}")
    wait_for(held(tmp_path, "record", ranks=(0,)), what="rank 0 about to write", proc=proc)
    for pid in workers(proc).values():
        os.kill(pid, signal.SIGTERM)
    wait_for(noted(tmp_path, "record", "SIGTERM", 0), what="the signal noted", proc=proc)
    release(tmp_path, "record")
    code, log = finish(proc)
    assert code == 0, log[-3000:]
    (record,) = _records(out)
    assert record["status"] == "ok"
    assert "(SIGTERM came after the run had finished: its record is written)" in log


def test_signal_ctrl_c_to_every_process_saves_without_a_traceback(tmp_path):
    """SIGINT to torchrun and to each rank at once (what `kill -INT` of the whole job does; a terminal's
    Ctrl-C reaches torchrun, which passes it on): once, not twice, and no KeyboardInterrupt anywhere."""
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun(ENDLESS, out, ckpt, hold=f"training:{tmp_path}")
    wait_for(held(tmp_path, "training"), what="both ranks in training", proc=proc)
    for pid in [proc.pid, *workers(proc).values()]:
        os.kill(pid, signal.SIGINT)
    wait_for(noted(tmp_path, "training", "SIGINT", 1), what="the signal noted", proc=proc)
    release(tmp_path, "training")
    code, log = finish(proc)
    assert code != 0 and not out.exists()
    assert "KeyboardInterrupt" not in log and not rank_tracebacks(log), log[-3000:]
    assert read_latest(ckpt)["reason"] == "SIGINT"
    assert "stopped by SIGINT during training" in log and "run the same command again to resume" in log


def test_signal_a_second_ctrl_c_stops_at_once_and_keeps_the_previous_checkpoint(tmp_path):
    """Ctrl-C twice in a terminal: torchrun passes the first on as SIGINT and the second as SIGTERM. The ranks
    are held in their second save, after writing their files: they end at once, and `latest` still names the
    first checkpoint."""
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun([*ENDLESS, "--checkpoint-every", "2"], out, ckpt, hold=f"save#2:{tmp_path}")
    wait_for(held(tmp_path, "save"), what="both ranks in their second save", proc=proc)
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: noted(tmp_path, "save", "SIGINT", 0)() and noted(tmp_path, "save", "SIGINT", 1)(), proc=proc)
    time.sleep(SAME_REQUEST_S + 0.1)  # the definition of a second Ctrl-C: not a repeat of the first
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, log = finish(proc, timeout=60)
    assert time.monotonic() - started < 20  # at once, not after torchrun's 30 s
    assert code != 0 and not out.exists()  # the checkpoint is the trace
    latest = read_latest(ckpt)
    assert (latest["step"], latest["reason"]) == (2, "every 2 steps")
    assert "stopped at once by a second SIGTERM (after SIGINT) during checkpoint save" in log, log[-3000:]
    assert "the checkpoint of step 2 stays in force" in log


def test_signal_peer_stopped_during_a_save_ends_the_job_within_the_timeout(tmp_path):
    """SIGSTOP to rank 1 while it saves (its files written, `latest` not yet moved): rank 0 gives up after
    --pg-timeout-s with a failed record, and the previous checkpoint stays the one `latest` names."""
    out, ckpt, timeout_s = tmp_path / "runs.jsonl", tmp_path / "ckpt", 5
    args = [*ENDLESS, "--checkpoint-every", "2", "--pg-timeout-s", str(timeout_s)]
    proc = start_torchrun(args, out, ckpt, hold=f"save@1#2:{tmp_path}")
    wait_for(held(tmp_path, "save", ranks=(1,)), what="rank 1 in its second save", proc=proc)
    stopped = workers(proc)[1]
    os.kill(stopped, signal.SIGSTOP)
    started = time.monotonic()
    release(tmp_path, "save")
    try:
        # torchrun then SIGKILLs the stopped rank 30 s after rank 0 has failed; the test need not wait for that.
        wait_for(lambda: out.exists() and out.read_text().endswith("\n"), timeout=timeout_s + 90, what="the record")
        took = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGKILL)
    finish(proc, timeout=90)
    assert took < timeout_s + 30, f"{took:.0f} s"
    record = only_failed_record(out)
    assert f"did not answer within --pg-timeout-s {timeout_s} s" in record["error"]
    latest = read_latest(ckpt)
    assert (latest["step"], latest["reason"]) == (2, "every 2 steps")
    assert json.loads((ckpt / "latest").read_text())["dir"] == "step-00000002"
