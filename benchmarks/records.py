"""Benchmark records, schema `distbench.bench/1`: one JSON object per line, one line per script run.

A script prints its figures through `Figures.print` (the same `name: value` lines as ever, which the tests
and a reader of the terminal see) and ends with `Figures.finish`, which appends the run's record to the
file `--out` names, or to none: running a script never touches committed data unless asked.

    {"schema": "distbench.bench/1", "bench": "data_rate", "run_id": "data_rate-...", "started_at": "...",
     "finished_at": "...", "env": {...as distbench.run/1...}, "args": {"blocks": 30, ...},
     "metrics": {"generate_batch_ms": 1.02, ..., "device": "cpu, ranks: 1, ..."},
     "ratio_name": "data_rate", "ratio": 49.4}

`metrics` holds every printed line, the value as printed: a number where the text is one, else the text
("skipped (needs ~53 GB ...)", "0.974 to 1.026"). `ratio` is the value of the script's headline ratio line
(null where the script could not compute it). `args` are the script's flags but `--out`. `tables.py`
reads the committed records under benchmarks/data/ into the README tables.

No torch here (`environment` imports it only when called): tables.py reads records without loading it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from distbench.results import (
    ADDED,
    SchemaError,
    append,
    check_fields,
    environment,
    new_run_id,
    now,
    read_records,
)
from distbench.results import SPEC as RUN_SPEC

SCHEMA = "distbench.bench/1"
LINE = re.compile(r"^([A-Za-z0-9_.]+): (.+)$")  # a figure line, as tests/test_benchmarks.py reads it
_INT = re.compile(r"^-?\d+$")
_FLOAT = re.compile(r"^-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")

SPEC: dict[str, Any] = {
    "schema": str,
    "bench": str,
    "run_id": str,
    "started_at": str,
    "finished_at": str,
    "env": RUN_SPEC["env"],  # the same environment block as distbench.run/1
    "args": dict,
    "metrics": dict,
    "ratio_name": str,
    "ratio": (int, float, type(None)),
}


def parse_value(text: str) -> int | float | str:
    """A printed value as the record holds it: '12' -> 12, '1.005' -> 1.005, anything else as text."""
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def parse_lines(text: str) -> dict[str, int | float | str]:
    """The `name: value` lines of a script's output, values as `parse_value` reads them."""
    return {m[1]: parse_value(m[2]) for line in text.splitlines() if (m := LINE.match(line))}


def validate_bench(record: dict[str, Any], written_before: bool = False) -> None:
    """Raise SchemaError naming the first field of a `distbench.bench/1` record that does not fit.
    `written_before`: a committed record, which may predate the run schema's later env fields."""
    check_fields(SPEC, record, optional=frozenset(ADDED) if written_before else frozenset())
    if record["schema"] != SCHEMA:
        raise SchemaError(f"schema is {record['schema']!r}, expected {SCHEMA!r}")
    if not re.fullmatch(r"[a-z0-9_]+", record["bench"]):
        raise SchemaError(f"bench must be a script name, got {record['bench']!r}")
    for name, value in record["metrics"].items():
        if not LINE.match(f"{name}: x"):
            raise SchemaError(f"metrics: {name!r} is not a figure name")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SchemaError(f"metrics.{name} has type {type(value).__name__}")
    ratio, name = record["ratio"], record["ratio_name"]
    if isinstance(ratio, bool):
        raise SchemaError("ratio has type bool")
    if ratio is not None and record["metrics"].get(name) != ratio:
        raise SchemaError(f"ratio is {ratio}, but metrics.{name} is {record['metrics'].get(name)!r}")
    if record["finished_at"] < record["started_at"]:
        raise SchemaError(f"finished_at {record['finished_at']} is before started_at {record['started_at']}")


def add_out_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default=None, metavar="FILE", help=f"append this run's record ({SCHEMA}) to FILE; default: none"
    )


class Figures:
    """What a benchmark script prints, kept for its record."""

    def __init__(self, script: str, args: argparse.Namespace | None = None) -> None:
        self.bench = Path(script).stem
        given = dict(vars(args)) if args is not None else {}
        self.out: str | None = given.pop("out", None)
        self.args = given
        self.started_at = now()
        self.metrics: dict[str, int | float | str] = {}

    def print(self, line: str) -> None:
        """Print one `name: value` line and keep the value; a name printed twice must keep its value."""
        m = LINE.match(line)
        if m is None:
            raise ValueError(f"not a `name: value` line: {line!r}")
        name, value = m[1], parse_value(m[2])
        if self.metrics.get(name, value) != value:
            raise ValueError(f"{name} printed twice with different values: {self.metrics[name]!r}, {value!r}")
        self.metrics[name] = value
        print(line)

    def record(self, ratio_name: str, device, world_size: int = 1, backend: str = "none") -> dict[str, Any]:
        """The run's record; `backend` is the process group's ("none": the script makes none)."""
        ratio = self.metrics.get(ratio_name)
        return {
            "schema": SCHEMA,
            "bench": self.bench,
            "run_id": new_run_id(self.started_at, prefix=f"{self.bench}-"),
            "started_at": self.started_at,
            "finished_at": now(),
            "env": environment(device, world_size, backend),
            "args": self.args,
            "metrics": dict(self.metrics),
            "ratio_name": ratio_name,
            "ratio": ratio if isinstance(ratio, (int, float)) else None,
        }

    def finish(self, ratio_name: str, device, world_size: int = 1, backend: str = "none") -> dict[str, Any]:
        """Make the record and append it to `--out` when given (checked, whole or not at all)."""
        record = self.record(ratio_name, device, world_size, backend)
        if self.out:
            append(self.out, record, check=validate_bench)
        return record


def latest_records(data: str | Path) -> dict[str, dict[str, Any]]:
    """The latest valid record per script (by finished_at; on a tie the one read last) under `data`, a
    .jsonl file or a directory of them. A record that does not fit the schema raises SchemaError."""
    latest: dict[str, dict[str, Any]] = {}
    path = Path(data)
    if not path.exists():
        return latest
    for record in read_records(path, SCHEMA):
        try:
            validate_bench(record, written_before=True)
        except SchemaError as e:
            raise SchemaError(f"{path}: record {record.get('run_id')!r} ({record.get('bench')}): {e}") from None
        bench = record["bench"]
        if bench not in latest or record["finished_at"] >= latest[bench]["finished_at"]:
            latest[bench] = record
    return latest
