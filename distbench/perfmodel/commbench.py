"""Collective micro-benchmark in the manner of nccl-tests: time one collective per message size.

Per op: one call on known values (a check that the op does what its name says), `warmup` untimed calls
per size, then `repeats` rounds; a round times one window of `iters` back-to-back calls at every size,
each window between a barrier and a synchronise. The time per call is the window / iters; a window's time
is averaged over ranks (as nccl-tests does), and the record reports the median over windows (`time_us`)
and the fastest (`time_us_min`), so one window disturbed by a neighbouring process does not set the number.

Sizes follow nccl-tests: for all_gather the size is the output (the whole gathered tensor), for
reduce_scatter the input (the whole tensor before scattering), for all_reduce the tensor itself.
Bandwidths too: algbw = bytes / time; busbw = algbw x 2(n-1)/n for all_reduce and algbw x (n-1)/n for
all_gather and reduce_scatter (nccl-tests, doc/PERFORMANCE.md), the bytes a ring sends per rank over time.

Like comm.py, this module talks to the process group directly: timing a collective is its whole job.
Records (schema `distbench.commbench/1`) are checked by `validate_commbench`; `results.append` writes them.
"""

from __future__ import annotations

import argparse
import random
import re
import socket
import statistics
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from distbench.comm.meter import algbw, bus_bytes
from distbench.config import Registry
from distbench.results import SPEC as RUN_SPEC
from distbench.results import SchemaError, check_fields, environment, new_run_id, now
from distbench.runtime.timing import Stopwatch

SCHEMA = "distbench.commbench/1"
DTYPE = torch.float32


# ------------------------------------------------------------------------------------------- collectives
@dataclass(frozen=True)
class Collective:
    """One op: how to allocate its buffers for a total size, call it, and check it once."""

    bus_factor: Callable[[int], float]  # busbw / algbw at world size n (nccl-tests)
    buffers: Callable[[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]]  # (count, n, device) -> (in, out)
    call: Callable[[torch.Tensor, torch.Tensor], None]
    impl: Callable[[str], str]  # backend -> what really runs, for the record


OPS: Registry[Collective] = Registry("op")

# Newer torch calls the single-tensor collectives *_single; the older names are deprecated aliases.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _in_place(count: int, _n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.zeros(count, dtype=DTYPE, device=device)
    return t, t


OPS.register("all_reduce")(
    Collective(
        bus_factor=lambda n: bus_bytes(1.0, n),  # 2(n-1)/n, as comm.busbw
        buffers=_in_place,  # torch's all_reduce works in place
        call=lambda x, _out: dist.all_reduce(x),
        impl=lambda _backend: "all_reduce",
    )
)
OPS.register("all_gather")(
    Collective(
        bus_factor=lambda n: (n - 1) / n,
        buffers=lambda count, n, device: (
            torch.zeros(count // n, dtype=DTYPE, device=device),
            torch.zeros(count, dtype=DTYPE, device=device),
        ),
        call=lambda x, out: _all_gather(out, x),
        impl=lambda _backend: _all_gather.__name__,
    )
)
OPS.register("reduce_scatter")(
    Collective(
        bus_factor=lambda n: (n - 1) / n,
        buffers=lambda count, n, device: (
            torch.zeros(count, dtype=DTYPE, device=device),
            torch.zeros(count // n, dtype=DTYPE, device=device),
        ),
        call=lambda x, out: _reduce_scatter(out, x),
        # Gloo has no reduce-scatter of its own: ProcessGroupGloo::reduce_scatter_tensor_coalesced clones
        # the input, all-reduces the whole of it and copies out this rank's chunk. Its time is an
        # all-reduce's, so the record says so rather than pass it off as a ring reduce-scatter.
        impl=lambda backend: "all_reduce+slice" if backend == "gloo" else _reduce_scatter.__name__,
    )
)


def _check(op: str, rank: int, n: int, device: torch.device) -> None:
    """One call on known values, so a wrong call shows as an error rather than as a fast time."""
    coll, count = OPS.get(op), 2 * n
    x, out = coll.buffers(count, n, device)
    x.fill_(rank + 1)
    coll.call(x, out)
    total = n * (n + 1) / 2
    want = {
        "all_reduce": torch.full((count,), total),
        "all_gather": torch.arange(1, n + 1, dtype=DTYPE).repeat_interleave(count // n),
        "reduce_scatter": torch.full((count // n,), total),
    }[op]
    if not torch.equal(out.cpu(), want.to(DTYPE)):
        raise RuntimeError(f"{op} returned wrong values on rank {rank}: {out.cpu()[:8].tolist()}...")


# ------------------------------------------------------------------------------------------------- sizes
def message_sizes(min_bytes: int, max_bytes: int, factor: int = 2) -> list[int]:
    """min_bytes, min_bytes x factor, ... up to and including max_bytes (nccl-tests -b -e -f)."""
    if min_bytes <= 0 or max_bytes < min_bytes or factor < 2:
        raise ValueError(f"bad size range: {min_bytes}..{max_bytes} x{factor}")
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= factor
    return sizes


def element_count(op: str, size_bytes: int, world_size: int) -> int:
    """Elements of the op's total tensor for `size_bytes`: whole float32s, and for all_gather and
    reduce_scatter a multiple of the world size so every rank's chunk is equal (nccl-tests rounds alike)."""
    count = max(size_bytes // DTYPE.itemsize, 1)
    if op != "all_reduce":
        count = max(count - count % world_size, world_size)
    return count


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text: str) -> int:
    """'4096', '1K', '256M', '1G' (binary units, as nccl-tests) -> bytes."""
    m = re.fullmatch(r"\s*(-?\d+)\s*([KMG]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4096, 1K, 256M, 1G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


# -------------------------------------------------------------------------------------------- the loop
def time_sizes(place, op: str, counts: Sequence[int], iters: int, warmup: int, repeats: int) -> list[list[float]]:
    """Seconds per call of `op` for each element count: `repeats` timed windows per count, each window's
    time averaged over ranks.

    The windows are taken in rounds over the sizes (round 1: every size once, round 2: ...), not size by
    size: on a shared machine the load drifts over seconds, and in blocks a busy spell would land on a few
    neighbouring sizes and bend the size-time curve; in rounds it spreads over all sizes alike. Each round
    visits the sizes in a fresh order (seeded by the round, so every rank issues the same collectives): a
    call right after the largest one runs measurably slower, and a fixed order would always charge that to
    the smallest size.
    """
    coll = OPS.get(op)
    buffers = [coll.buffers(count, place.world_size, place.device) for count in counts]
    for x, out in buffers:
        for _ in range(warmup):
            coll.call(x, out)
    windows = torch.zeros(len(counts), repeats, dtype=torch.float64)
    watch = Stopwatch(place.device)
    for r in range(repeats):
        order = list(range(len(counts)))
        random.Random(r).shuffle(order)
        for i in order:
            x, out = buffers[i]
            dist.barrier()  # start together: otherwise the first call absorbs the ranks' skew
            watch.start()
            for _ in range(iters):
                coll.call(x, out)
            windows[i, r] = watch.stop() / iters  # stop() synchronises: NCCL calls return at launch
    windows = windows.to(place.device)
    dist.all_reduce(windows)
    return (windows / place.world_size).tolist()


def run_commbench(
    place,
    ops: Sequence[str],
    sizes: Sequence[int],
    iters: int,
    warmup: int,
    *,
    repeats: int = 1,
    run_id: str | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Time every op at every size on `place` (an engines.Place); every rank must call it alike.

    Returns one `distbench.commbench/1` record per (op, size); `on_record` sees each as soon as its op is
    measured (rank 0 appends it there, so a run that breaks in a later op keeps the earlier ones).
    """
    run_id = run_id or new_run_id(now(), prefix="commbench-")
    hosts = [None] * place.world_size
    dist.all_gather_object(hosts, socket.gethostname())
    env = environment(place.device, place.world_size, place.backend, hosts)
    n, records = place.world_size, []
    for op in ops:
        coll = OPS.get(op)
        _check(op, place.rank, n, place.device)
        counts = sorted({element_count(op, s, n) for s in sizes})
        started_at = now()
        for count, windows in zip(counts, time_sizes(place, op, counts, iters, warmup, repeats), strict=True):
            seconds = statistics.median(windows)
            size = count * DTYPE.itemsize
            record = {
                "schema": SCHEMA,
                "run_id": run_id,
                "op": op,
                "impl": coll.impl(place.backend),
                "bytes": size,
                "dtype": str(DTYPE).removeprefix("torch."),
                "world_size": n,
                "backend": place.backend,
                "device": str(place.device),
                "iters": iters,
                "warmup": warmup,
                "repeats": repeats,
                "time_us": seconds * 1e6,
                "time_us_min": min(windows) * 1e6,
                "time_us_windows": [w * 1e6 for w in windows],
                "algbw_bytes_per_s": algbw(size, seconds),
                "busbw_bytes_per_s": algbw(size, seconds) * coll.bus_factor(n),
                "started_at": started_at,
                "env": env,
            }
            records.append(record)
            if on_record is not None:
                on_record(record)
    return records


# ------------------------------------------------------------------------------------------------ schema
Number = (int, float)
SPEC: dict[str, Any] = {
    "schema": str,
    "run_id": str,
    "op": str,
    "impl": str,
    "bytes": int,
    "dtype": str,
    "world_size": int,
    "backend": str,
    "device": str,
    "iters": int,
    "warmup": int,
    "repeats": int,
    "time_us": Number,
    "time_us_min": Number,
    "time_us_windows": list,
    "algbw_bytes_per_s": Number,
    "busbw_bytes_per_s": Number,
    "started_at": str,
    "env": RUN_SPEC["env"],  # the same environment block as distbench.run/1
}


def validate_commbench(record: dict[str, Any]) -> None:
    """Raise SchemaError naming the first field of a `distbench.commbench/1` record that does not fit."""

    check_fields(SPEC, record)
    if record["schema"] != SCHEMA:
        raise SchemaError(f"schema is {record['schema']!r}, expected {SCHEMA!r}")
    if record["op"] not in OPS:
        raise SchemaError(f"op {record['op']!r} not in {OPS.names()}")
    for name, low in (("bytes", 1), ("world_size", 1), ("iters", 1), ("warmup", 0), ("repeats", 1)):
        if record[name] < low:
            raise SchemaError(f"{name} must be at least {low}, got {record[name]}")
    for name in ("time_us", "time_us_min", "algbw_bytes_per_s", "busbw_bytes_per_s"):
        if not record[name] >= 0:  # also rejects NaN
            raise SchemaError(f"{name} must be a non-negative number, got {record[name]}")
    if len(record["time_us_windows"]) != record["repeats"]:
        raise SchemaError(
            f"time_us_windows holds {len(record['time_us_windows'])} values, repeats is {record['repeats']}"
        )


# --------------------------------------------------------------------------------------------- the table
_COLUMNS = (("size", 11), ("count", 11), ("type", 7), ("op", 15), ("impl", 22))
_NUMBERS = (("time(us)", 10), ("algbw(GB/s)", 12), ("busbw(GB/s)", 12))


def table_header() -> str:
    """Column heads as nccl-tests prints them; GB/s there means 1e9 bytes/s."""
    return "#" + " ".join(f"{name:>{width}}" for name, width in (*_COLUMNS, *_NUMBERS))[1:]


def table_row(record: dict[str, Any]) -> str:
    texts = (record["bytes"], record["bytes"] // DTYPE.itemsize, record["dtype"], record["op"], record["impl"])
    numbers = (
        f"{record['time_us']:.1f}",
        f"{record['algbw_bytes_per_s'] / 1e9:.3f}",
        f"{record['busbw_bytes_per_s'] / 1e9:.3f}",
    )
    cells = zip((*texts, *numbers), (w for _, w in (*_COLUMNS, *_NUMBERS)), strict=True)
    return " ".join(f"{value:>{width}}" for value, width in cells)


# ------------------------------------------------------------------------------------------ command line
class ArgsError(ValueError):
    """A bad flag; the message names it."""


@dataclass(frozen=True)
class CommbenchArgs:
    ops: tuple[str, ...] = ("all_reduce", "all_gather", "reduce_scatter")
    """collectives to time"""
    min_bytes: int = 1 << 10
    """smallest message (total bytes, nccl-tests convention)"""
    max_bytes: int = 256 << 20
    """largest message"""
    factor: int = 2
    """each size is the previous times this"""
    iters: int = 20
    """timed calls per window"""
    warmup: int = 5
    """untimed calls before the windows, per size"""
    repeats: int = 5
    """timed windows per size; the median is reported"""
    dist_backend: str = "auto"
    """process-group backend: auto (nccl on GPU, gloo on CPU), gloo or nccl (run.py's --dist-backend)"""
    out: str = "results/commbench.jsonl"
    """results file; one record per (op, size) is appended"""
    run_id: str | None = None
    """id shared by this invocation's records; default: from the start time"""
    sizes: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        for name in self.ops:
            if name not in OPS:
                raise ArgsError(f"--ops: {OPS.miss_message(name, OPS.names())}")
        if not self.ops:
            raise ArgsError("--ops: give at least one op")
        if self.min_bytes < DTYPE.itemsize:
            raise ArgsError(f"--min-bytes must be at least {DTYPE.itemsize} (one float32), got {self.min_bytes}")
        if self.max_bytes < self.min_bytes:
            raise ArgsError(f"--max-bytes ({self.max_bytes}) is below --min-bytes ({self.min_bytes})")
        for name, low in (("factor", 2), ("iters", 1), ("warmup", 0), ("repeats", 1)):
            if getattr(self, name) < low:
                raise ArgsError(f"--{name} must be at least {low}, got {getattr(self, name)}")
        if self.dist_backend not in ("auto", "gloo", "nccl"):
            raise ArgsError(f"--dist-backend must be auto, gloo or nccl, got {self.dist_backend!r}")
        object.__setattr__(self, "sizes", tuple(message_sizes(self.min_bytes, self.max_bytes, self.factor)))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # the launcher reports it in one line, rank 0 only
        raise ArgsError(message)


def parse_args(argv: Sequence[str] | None = None) -> CommbenchArgs:
    """Flags -> CommbenchArgs; any bad value raises ArgsError naming the flag."""
    defaults = CommbenchArgs()
    p = _Parser(prog="commbench.py", description="Time collectives per message size (nccl-tests style).")
    p.add_argument("--ops", default=",".join(defaults.ops), help="comma-separated: " + ", ".join(OPS.names()))
    sizes_help = "bytes; K, M, G suffixes (binary)"
    p.add_argument("--min-bytes", type=parse_bytes, default=defaults.min_bytes, help=f"smallest size, {sizes_help}")
    p.add_argument("--max-bytes", type=parse_bytes, default=defaults.max_bytes, help=f"largest size, {sizes_help}")
    p.add_argument("--factor", type=int, default=defaults.factor, help="size multiplier (default 2)")
    p.add_argument("--iters", type=int, default=defaults.iters, help="timed calls per window (default 20)")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed calls per size (default 5)")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed windows; median reported (default 5)")
    # --dist-backend, as in run.py, where --backend names the engine (ddp, deepspeed); the old spelling still works.
    p.add_argument(
        "--dist-backend", "--backend", dest="dist_backend", default=defaults.dist_backend, help="auto, gloo or nccl"
    )
    p.add_argument("--out", default=defaults.out, help=f"results file (default {defaults.out})")
    p.add_argument("--run-id", default=None, help="id for this invocation's records")
    a = p.parse_args(argv)
    return CommbenchArgs(
        ops=tuple(o.strip() for o in a.ops.split(",") if o.strip()),
        min_bytes=a.min_bytes,
        max_bytes=a.max_bytes,
        factor=a.factor,
        iters=a.iters,
        warmup=a.warmup,
        repeats=a.repeats,
        dist_backend=a.dist_backend,
        out=a.out,
        run_id=a.run_id,
    )


# ------------------------------------------------------------------------------------------------ the CLI
def main(argv: list[str] | None = None, prog: str = "commbench.py") -> int:
    """The benchmark from the command line: launch/commbench.py and `distbench commbench`, under torchrun."""
    import logging
    import os

    from distbench import config, results

    log = logging.getLogger("distbench")
    rank0 = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if rank0 else logging.WARNING, format="%(message)s")
    try:
        args = parse_args(argv)
    except ArgsError as e:
        return config.fail(e, prog=prog, quiet=not rank0)

    from distbench.runtime.engines import close_distributed, init_distributed

    def write(record: dict) -> None:
        results.append(args.out, record, check=validate_commbench)
        log.info(table_row(record))

    try:
        place = init_distributed(args.dist_backend)
        if place.rank == 0:
            log.info("# %d ranks, %s on %s\n%s", place.world_size, place.backend, place.device, table_header())
        records = run_commbench(
            place,
            args.ops,
            args.sizes,
            args.iters,
            args.warmup,
            repeats=args.repeats,
            run_id=args.run_id,
            on_record=write if place.rank == 0 else None,
        )
    finally:
        close_distributed()
    if place.rank == 0:
        log.info("# %d records appended to %s (run_id %s)", len(records), args.out, records[0]["run_id"])
    return 0
