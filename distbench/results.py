"""The `distbench.run/1` results schema: one JSON object per line, appended whole by rank 0.

`append(path, record)` writes a record atomically; `load(path_or_dir)` returns a pandas DataFrame with
dotted columns (`comm.payload_bytes_per_step`, `config.model.head`, ...); `validate(record)` is the
machine check that the tests and the loader use.
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)

SCHEMA = "distbench.run/1"
STATUSES = ("ok", "failed", "diverged")
Number = (int, float)

# The shape of a record: section -> {field: allowed types}. Sections other than the top level may be
# null in a failed record. New fields are added, never renamed; a breaking change bumps the version.
SPEC: dict[str, Any] = {
    "schema": str,
    "run_id": str,
    "status": str,
    "error": (str, type(None)),
    "started_at": str,
    "finished_at": str,
    "config": dict,
    "env": {
        "torch": str,
        "torchvision": (str, type(None)),
        "deepspeed": (str, type(None)),
        "cuda": (str, type(None)),
        "nccl": (str, type(None)),
        "device": str,
        "world_size": int,
        "backend": str,
        "hostname": str,  # rank 0's
        "hosts": list,  # every rank's host, sorted, each once: two entries for a two-node run
        "git_sha": (str, type(None)),
        "python": str,
        "cpu_cores": int,  # CPU cores rank 0 may run on (its affinity): ranks beyond them share cores
    },
    "params": {
        "total": int,
        "trainable": int,
        "frozen": int,
        "head_total": int,
        "head_trainable": int,
        "conv_learned_fraction": Number,
        "head_in_features": int,  # N: the features the head maps to C logits
    },
    "comm": {
        "payload_bytes_per_step": Number,
        "expected_bytes_per_step": Number,
        "bus_bytes_per_step": Number,
        "buckets_per_step": Number,
        "hook": str,
        "collectives": dict,
        "logger_bytes_per_step": (int, float, type(None)),
        "replicas_identical": bool,
        "bucket_cap_mb": (int, float, type(None)),
    },
    "perf": {
        "samples_per_s": Number,
        "step_time_ms": dict,
        "exposed_comm_ms": (int, float, type(None)),
        "peak_memory_bytes": int,
        "timed_steps": int,
        "warmup_steps": int,
        "untimed_steps": int,  # timed-window steps left out: the first (cold) step after each resume
        "resumed_from_steps": list,  # the step each resume began at; [] for a run that ran through
        "timed_window": str,  # continuous, or split (its steps ran in more than one process)
    },
    "accuracy": {
        "top1": Number,
        "top5": Number,
        "oracle_top1": (int, float, type(None)),  # Bayes-optimal top-1 on the same samples; null: real data
        "eval_samples": int,
        "final_loss": (int, float, type(None)),
        # the learning curve, one point per evaluation (--eval-every), the final one last: each
        # {step, samples_per_class, top1, top5, eval_loss}
        "curve": list,
    },
    "data": {
        "skipped_images": (int, type(None)),  # unreadable files skipped (--skip-bad-images); null: not skipping
        "skipped_files": list,  # the first SKIPPED_SHOWN of them, sorted
    },
}
SKIPPED_SHOWN = 20
NULLABLE_IN_FAILED = ("env", "params", "comm", "perf", "accuracy", "data")
# Fields added to distbench.run/1 after records were first written: a record from before may lack them
# (readers fill them as analysis.with_config_defaults does); every record written now has them.
ADDED = frozenset(
    {
        "env.hosts",
        "perf.untimed_steps",
        "perf.resumed_from_steps",
        "perf.timed_window",
        "data",
        "env.cpu_cores",
        "params.head_in_features",
        "accuracy.curve",
    }
)


class SchemaError(ValueError):
    pass


def check_fields(
    spec: dict[str, Any], obj: Any, where: str = "", nullable: tuple[str, ...] = (), optional=frozenset()
) -> None:
    """Raise SchemaError naming the first field of `obj` that does not fit `spec` ({field: type(s) or a
    nested spec}). Sections named in `nullable` may be null; dotted names in `optional` may be missing.
    bool is accepted only where spec names it."""
    if not isinstance(obj, dict):
        raise SchemaError(f"{where.rstrip('.') or 'record'} must be an object, got {type(obj).__name__}")
    for key, want in spec.items():
        name = f"{where}{key}"
        if key not in obj:
            if name in optional:
                continue
            raise SchemaError(f"missing field {name}")
        value = obj[key]
        if isinstance(want, dict):
            if not (value is None and key in nullable):
                check_fields(want, value, name + ".", optional=optional)
        elif not isinstance(value, want) or (isinstance(value, bool) and bool not in _tuple(want)):
            raise SchemaError(f"{name} has type {type(value).__name__}")


def validate(record: dict[str, Any], written_before: bool = False) -> None:
    """Raise SchemaError naming the first field that does not fit the schema. `written_before`: the record
    may come from before the fields in ADDED (reading committed results); a record about to be written
    must have them all."""
    nullable = NULLABLE_IN_FAILED if record.get("status") == "failed" else ()
    check_fields(SPEC, record, nullable=nullable, optional=ADDED if written_before else frozenset())
    if record["schema"] != SCHEMA:
        raise SchemaError(f"schema is {record['schema']!r}, expected {SCHEMA!r}")
    if record["status"] not in STATUSES:
        raise SchemaError(f"status {record['status']!r} not in {STATUSES}")
    if record["perf"] is not None:
        for q in ("p50", "p90", "mean"):
            if not isinstance(record["perf"]["step_time_ms"].get(q), Number):
                raise SchemaError(f"missing field perf.step_time_ms.{q}")


def _tuple(t: Any) -> tuple:
    return t if isinstance(t, tuple) else (t,)


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


REPOSITORY = Path(__file__).resolve().parents[1]


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
            if os.write(fd, line) != len(line):
                raise OSError("short write")
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
