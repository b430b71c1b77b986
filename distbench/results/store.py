"""Where records live: `append(path, record)` writes one whole line under a lock; `read_records` and `load`
(a pandas DataFrame with dotted columns: `comm.payload_bytes_per_step`, `config.model.head`, ...) read them
back, skipping a line that is not a record; the environment block, failed records, portable paths.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.metadata
import json
import logging
import math
import os
import platform
import socket
import subprocess
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distbench.results.schema import NULLABLE_IN_FAILED, SCHEMA, validate

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id(started_at: str, prefix: str = "") -> str:
    """A fresh id from the start time (as `now()` gives it) without colons, and 8 random hex digits."""
    return f"{prefix}{started_at.replace(':', '').replace('+0000', 'Z')}-{uuid.uuid4().hex[:8]}"


ERROR_CHARS = 2000


def bounded(text: str, limit: int = ERROR_CHARS) -> str:
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


REPOSITORY = Path(__file__).resolve().parents[2]


def portable(config: dict[str, Any]) -> dict[str, Any]:
    """`config` as a record keeps it: the output paths relative to the repository when they lie inside it, so
    committed records do not carry the path of the machine they ran on."""
    output = dict(config.get("output", {}))
    for key in ("out", "checkpoint_dir"):
        if output.get(key):
            path = Path(output[key]).resolve()
            if path.is_relative_to(REPOSITORY):
                output[key] = str(path.relative_to(REPOSITORY))
    return {**config, "output": output}


def failed_record(run_id: str, config: dict[str, Any], error: str, started_at: str) -> dict[str, Any]:
    """The record of a run that ended without results (it raised, or never started): the sections only a
    finished run can fill are null, and `error` says why, in one line of at most ERROR_CHARS characters
    (a longer one keeps its start and its end, where the cause of a chained error is)."""
    return {
        "schema": SCHEMA,
        "run_id": run_id,
        "status": "failed",
        "error": bounded(" ".join(error.split())),
        "started_at": started_at,
        "finished_at": now(),
        "config": portable(config),
        **dict.fromkeys(NULLABLE_IN_FAILED),
    }


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment(device, world_size: int, backend: str, hosts: list[str] | None = None) -> dict[str, Any]:
    import torch

    def version(package: str) -> str | None:  # from metadata: importing deepspeed would take seconds
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = device.type == "cuda"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda and backend == "nccl" else None
    return {
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "deepspeed": version("deepspeed"),
        "cuda": torch.version.cuda if cuda else None,
        "nccl": nccl,
        "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "world_size": world_size,
        "backend": backend,
        "hostname": socket.gethostname(),
        "hosts": sorted(set(hosts or [socket.gethostname()])),
        "git_sha": git_sha(),
        "python": platform.python_version(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
    }


def finite(obj: Any) -> Any:
    """JSON has no NaN or infinity: a diverged run's loss becomes null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj


def append(path: str | os.PathLike, record: dict[str, Any], check: Callable[[dict], None] | None = None) -> None:
    """Append one record as one line, whole or not at all.

    The line is built in memory and written with a single write() while holding an exclusive lock on
    the file, so concurrent writers (Slurm array tasks sharing a results file) never interleave. If the
    write fails part-way (disk full), the file is cut back to its old length: a reader never sees half
    a record, and lines already written are never touched.
    """
    record = finite(record)
    (check or validate)(record)  # other schemas (e.g. the collective benchmark's) bring their own check
    line = (json.dumps(record, allow_nan=False) + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A partial last line (a writer killed by something outside distbench, a disk that filled): end it
            # first, so this record is a line of its own and readers skip only the broken one.
            line = b"\n" + line
        try:
            rest = memoryview(line)
            while rest:  # a short write (the disk filled part-way): the next one raises the reason, ENOSPC
                written = os.write(fd, rest)
                if written == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                rest = rest[written:]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)  # also releases the lock


_REPORTED: set[tuple[str, int]] = set()


def read_records(path: str | os.PathLike, schema: str = SCHEMA) -> list[dict[str, Any]]:
    """Records of `schema` from a .jsonl file or every .jsonl file under a directory. A line that is not a
    JSON object (a partial line, a stray edit) is skipped and reported once per process, by file and line:
    one bad line must not cost the others, nor stop every array task of a sweep that reads the file."""
    path = Path(path)
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    records = []
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    problem = None if isinstance(record, dict) else "not a JSON object"
                except json.JSONDecodeError as e:
                    problem = f"not JSON ({e.msg})"
                if problem is not None:
                    if (str(file), n) not in _REPORTED:
                        _REPORTED.add((str(file), n))
                        log.warning("%s:%d: skipped, %s", file, n, problem)
                    continue
                if record.get("schema") == schema:
                    records.append(record)
    return records


def load(path: str | os.PathLike, schema: str = SCHEMA):
    """Results as a pandas DataFrame, one row per record, nested fields as dotted columns."""
    import pandas as pd

    records = read_records(path, schema)
    return pd.json_normalize(records, sep=".") if records else pd.DataFrame()
