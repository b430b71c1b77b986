"""A full disk at each write a run makes: the results record, a checkpoint save. Real processes whose file size
the kernel limits (RLIMIT_FSIZE, set on the running ranks with prlimit once they are held at the write): a write
past it fails as one on a full disk does, part-way. Each ends in one line naming what could not be written and
why, with nothing written before lost and nothing half-written left, and the same command, run again once there
is room, goes on from what was kept."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from conftest import _records, finish, rank_tracebacks, start_torchrun, torchrun, wait_for, workers
from test_signals import SHORT, SHORT_TOTAL, held, release

from distbench import results
from distbench.results import validate
from distbench.runtime.checkpoint import read_latest, storage_reason

KEPT = '{"earlier": "record"}\n'


def limit_file_size(pids, size: int) -> None:
    """From now on, no file these processes write may grow past `size` bytes (a write that would is cut short,
    then refused with EFBIG: what a full disk does with ENOSPC)."""
    for pid in pids:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, size))


def limited_python(code: str, size: int) -> subprocess.CompletedProcess:
    """`python -c code` in a process that may write no file past `size` bytes."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, preexec_fn=limited, timeout=60)


def test_full_disk_a_record_that_does_not_fit_leaves_the_file_as_it_was(tmp_path):
    out = tmp_path / "runs.jsonl"
    out.write_text(KEPT)
    record = {"schema": "test", "run_id": "r", "padding": "x" * 4096}
    write = f"from distbench import results; results.append({str(out)!r}, {record!r}, check=lambda r: None)"
    p = limited_python(write, len(KEPT) + 1000)  # a partial write of the first 1,000 bytes, then the refusal
    assert p.returncode != 0 and "OSError: [Errno 27] File too large" in p.stderr, p.stderr[-2000:]
    assert out.read_text() == KEPT  # cut back to its old length, not left with half a record
    results.append(out, record, check=lambda r: None)  # with room again, the next record is whole
    assert out.read_text().startswith(KEPT) and [r["run_id"] for r in results.read_records(out, "test")] == ["r"]


def test_full_disk_at_a_checkpoint_save_is_one_line_and_the_last_checkpoint_resumes(tmp_path):
    """Rank 1's disk fills (a node-local one) after the first save: its second save fails, rank 0 records why."""
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun([*SHORT, "--checkpoint-every", "2"], out, ckpt, hold=f"save:{tmp_path}")
    wait_for(held(tmp_path, "save"), what="both ranks in the first save", proc=proc)
    limit_file_size([workers(proc)[1]], 64 * 1024)  # not room for its model and optimizer state (about 380 KB)
    release(tmp_path, "save")
    code, log = finish(proc)
    assert code != 0
    (failed,) = _records(out)
    validate(failed)
    said = f"StorageError: cannot save the checkpoint of step 4 in {ckpt}/step-00000004: File too large"
    assert failed["status"] == "failed"
    assert failed["error"].startswith(f"rank 1 failed: {said}; the checkpoint of step 2 stays in force"), failed
    assert said in log.split("rank 1 failed:")[0]  # rank 1 says it too: its disk may be its node's own
    assert not rank_tracebacks(log), log[-3000:]
    assert read_latest(ckpt)["step"] == 2
    assert not list(ckpt.rglob("*.tmp"))  # the file cut short is gone

    # The same command resumes from step 2; what the failed save completed (rank 0's part) is gone before any
    # rank writes again.
    again = start_torchrun([*SHORT, "--checkpoint-every", "2"], out, ckpt, hold=f"start-up:{tmp_path}")
    wait_for(held(tmp_path, "start-up"), what="both ranks resumed", proc=again)
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000002"]
    release(tmp_path, "start-up")
    code, log = finish(again)
    assert code == 0, log[-3000:]
    ok = _records(out)[-1]
    assert ok["status"] == "ok" and ok["run_id"] == failed["run_id"]
    assert ok["perf"]["resumed_from_steps"] == [2]


def test_full_disk_a_write_torch_makes_itself_is_named_a_storage_failure(tmp_path):
    """DeepSpeed hands torch.save a path: its C++ writer keeps no errno, only its own words."""
    code = (
        "import torch\nfrom distbench.runtime.checkpoint import storage_reason\n"
        f"try:\n    torch.save({{'x': torch.zeros(100_000)}}, {str(tmp_path / 'x.pt')!r})\n"
        "except Exception as e:\n    print(storage_reason(e))"
    )
    p = limited_python(code, 64 * 1024)
    assert p.stdout.startswith("torch could not write it ("), p.stdout + p.stderr[-2000:]
    chained = RuntimeError("unexpected pos")
    chained.__context__ = OSError(28, "No space left on device")
    assert storage_reason(chained) == "No space left on device"
    assert storage_reason(ValueError("a bug, not the disk")) is None


def test_full_disk_at_the_record_prints_it_and_the_same_command_writes_it(tmp_path):
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    out.write_text(KEPT)
    proc = start_torchrun(SHORT, out, ckpt, hold=f"record:{tmp_path}")
    wait_for(held(tmp_path, "record", ranks=(0,)), what="rank 0 about to write its record", proc=proc)
    limit_file_size([workers(proc)[0]], len(KEPT) + 200)  # a record is some 5 KB
    release(tmp_path, "record")
    code, log = finish(proc)
    assert code != 0
    assert out.read_text() == KEPT
    assert (
        f"cannot append the ok record to {out} (OSError: [Errno 27] File too large); the checkpoint of step "
        f"{SHORT_TOTAL} in {ckpt} stays in force" in log
    ), log[-3000:]
    assert not rank_tracebacks(log), log[-3000:]
    (shown,) = [json.loads(line) for line in log.splitlines() if line.startswith('{"schema"')]
    validate(shown)  # whole: the user can append it by hand

    again = torchrun([*SHORT, "--checkpoint-dir", str(ckpt)], out)
    assert again.returncode == 0, again.stderr[-3000:]
    earlier, written = again.records
    assert written["run_id"] == shown["run_id"] and written["perf"]["resumed_from_steps"] == [SHORT_TOTAL]
    assert written["accuracy"] == shown["accuracy"]  # only evaluated again, the same weights: the same figures
    assert out.read_text().startswith(KEPT) and earlier == json.loads(KEPT)


def test_full_disk_limits_are_what_a_full_disk_does(tmp_path):
    """The stand-in holds: past the limit a write is cut short, and the next one refused (EFBIG)."""
    path = tmp_path / "f"
    code = f"import os; fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT); print(os.write(fd, b'x' * 25))"
    p = limited_python(code, 10)
    assert p.stdout.strip() == "10" and os.path.getsize(path) == 10
    p = limited_python(code.replace("os.O_CREAT)", "os.O_APPEND)"), 10)
    assert "[Errno 27] File too large" in p.stderr and Path(path).stat().st_size == 10
