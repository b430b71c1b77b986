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
from distbench.runtime.checkpoint import read_latest

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
    out, ckpt = tmp_path / "runs.jsonl", tmp_path / "ckpt"
    proc = start_torchrun([*SHORT, "--checkpoint-every", "2"], out, ckpt, hold=f"save:{tmp_path}")
    wait_for(held(tmp_path, "save"), what="both ranks in the first save", proc=proc)
    # Room for `latest` and a failed record, not for the next save's model and optimizer state (about 380 KB).
    limit_file_size(workers(proc).values(), 64 * 1024)
    release(tmp_path, "save")
    code, log = finish(proc)
    assert code != 0
    (failed,) = _records(out)
    validate(failed)
    assert failed["status"] == "failed"
    said = f"StorageError: cannot save the checkpoint of step 4 in {ckpt}/step-00000004: File too large"
    # Both ranks fail alike; rank 0 records its own error or, when it learns of it first, rank 1's.
    assert f"{said}; the checkpoint of step 2 stays in force" in failed["error"], failed["error"]
    assert failed["error"].startswith(("StorageError", "rank 1 failed: StorageError")), failed["error"]
    assert not rank_tracebacks(log), log[-3000:]
    assert read_latest(ckpt)["step"] == 2
    left = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*"))
    assert not [p for p in left if p.endswith(".tmp") or p.startswith("step-00000004")], left  # space given back

    again = torchrun([*SHORT, "--checkpoint-dir", str(ckpt)], out)
    assert again.returncode == 0, again.stderr[-3000:]
    ok = again.records[-1]
    assert ok["status"] == "ok" and ok["run_id"] == failed["run_id"]
    assert ok["perf"]["resumed_from_steps"] == [2]


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
