"""The CommMeter, which counts what really goes to a collective (the engines feed it from their taps,
`distbench.comm.taps`), and the bus-byte and bandwidth conversions of what it counts. What the model says
must go is `distbench.comm.expected`; a test holds the two equal.

Definitions, as code, README and records use them: payload bytes are the bytes of the tensors handed to a
collective per optimizer step; bus bytes per rank for a ring all-reduce are payload x 2(n-1)/n, and algbw /
busbw are as nccl-tests defines them (docs/PERFORMANCE.md there).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch


# ------------------------------------------------------------------------------------------ pure functions
def bus_bytes(payload_bytes: float, world_size: int) -> float:
    """Bytes each rank moves in a ring all-reduce of `payload_bytes`: 2(n-1)/n x payload
    (n-1 reduce-scatter steps and n-1 all-gather steps, each of payload/n)."""
    return payload_bytes * 2 * (world_size - 1) / world_size


# Bytes each rank moves in a ring per byte handed to the collective (its input, as the meter counts it), by
# nccl-tests' bus-bandwidth factors (doc/PERFORMANCE.md): all-reduce 2(n-1)/n; reduce-scatter (n-1)/n of
# its input; all-gather (n-1)/n of its output, which is n inputs; reduce 1.
BUS_FACTORS = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_gather": lambda n: float(n - 1),
    "reduce": lambda n: 1.0 if n > 1 else 0.0,
}


def collective_bus_bytes(bytes_by_op: dict[str, float], world_size: int) -> float:
    """Bus bytes per rank of a set of collectives, each by its own factor (`BUS_FACTORS`)."""
    return sum(BUS_FACTORS[op](world_size) * size for op, size in bytes_by_op.items())


def algbw(payload_bytes: float, seconds: float) -> float:
    """Algorithm bandwidth in bytes/s (nccl-tests): payload / time."""
    return payload_bytes / seconds if seconds > 0 else float("nan")


def busbw(payload_bytes: float, seconds: float, world_size: int) -> float:
    """All-reduce bus bandwidth in bytes/s (nccl-tests): algbw x 2(n-1)/n."""
    return bus_bytes(algbw(payload_bytes, seconds), world_size)


# ----------------------------------------------------------------------------------------------- the meter
@dataclass
class StepTraffic:
    bytes_by_op: dict[str, int]  # every collective the engine issued
    payload: int  # of which: gradient reduction
    buckets: int  # gradient-reduction calls
    payload_by_op: dict[str, int] = field(default_factory=dict)  # the payload, by collective
    # Each payload call in launch order: [op, bytes, dtype, bucket index or -1]; and the buckets' parameters
    # ({"params", "first", "last"}) where the engine names them (DDP's comm hook).
    reductions: list[list] = field(default_factory=list)
    bucket_params: list[dict] = field(default_factory=list)
    # Where the step's time went, on this rank (ms; None until resolved): start to the last payload launch
    # (forward, backward up to its last bucket), from there to the end of backward (the wait for the
    # collectives), and the optimizer.
    compute_ms: float | None = None
    wait_ms: float | None = None
    optimizer_ms: float | None = None


class CommMeter:
    """Counts the bytes handed to each collective, step by step, and where each step's time went.

    The training loop brackets each optimizer step with `start_step()` / `end_step()`; taps call `count()`
    as they launch a collective; the engine calls `backward_done()` when its backward (and so its gradient
    reduction) has returned. Counting and marking happen at launch, on the host, with no synchronisation: on
    CUDA the marks are events on the current stream, read once a run of steps is over (`resolve()`).
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self._open: StepTraffic | None = None
        self.steps: list[StepTraffic] = []
        self.cuda = device is not None and device.type == "cuda"
        self._marks: list = []  # start, last payload launch, backward done, end
        self._pending: list[tuple[StepTraffic, list]] = []
        self._bucket: int = -1  # the bucket whose hook is running (DDP), -1 when none

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def count(self, op: str, tensor: torch.Tensor, payload: bool = True, bucket: bool | None = None) -> None:
        """`tensor` (the input handed to collective `op`) is about to be sent. `payload`: it carries
        gradients being reduced (as opposed to, e.g., ZeRO's all-gather of updated weights)."""
        self.count_bytes(op, tensor.numel() * tensor.element_size(), payload, bucket, tensor.dtype)

    def count_bytes(
        self, op: str, size: int, payload: bool = True, bucket: bool | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """`bucket`: this call is one gradient-reduction call (default: any payload call is)."""
        if self._open is None:  # traffic outside a bracketed step (e.g. evaluation) is not training traffic
            return
        self._open.bytes_by_op[op] = self._open.bytes_by_op.get(op, 0) + size
        if payload:
            self._open.payload += size
            self._open.payload_by_op[op] = self._open.payload_by_op.get(op, 0) + size
            self._open.reductions.append([op, size, str(dtype).removeprefix("torch.") if dtype else None, self._bucket])
            self._marks[1] = self._now()
        if payload if bucket is None else bucket:
            self._open.buckets += 1

    def count_bucket(self, params: list[str] | None = None) -> int:
        """One DDP bucket's hook begins: counted, named (its parameters, in bucket order), and what it sends
        until `bucket_done()` is attributed to it. Returns its index in the step."""
        if self._open is None:
            return -1
        self._open.buckets += 1
        names = params or []
        self._open.bucket_params.append(
            {"params": len(names), "first": names[0] if names else None, "last": names[-1] if names else None}
        )
        self._bucket = len(self._open.bucket_params) - 1
        return self._bucket

    def bucket_done(self) -> None:
        self._bucket = -1

    def start_step(self) -> None:
        self._open = StepTraffic({}, 0, 0)
        self._marks = [self._now(), None, None]

    def backward_done(self) -> None:
        if self._open is not None:
            self._marks[2] = self._now()

    def end_step(self) -> StepTraffic:
        step, self._open = self._open, None
        self._pending.append((step, [*self._marks, self._now()]))
        self._bucket = -1
        self.steps.append(step)
        return step

    def resolve(self) -> None:
        """Turn the steps' marks into milliseconds (one synchronisation on CUDA, at the end of a run of steps)."""
        if not self._pending:
            return
        if self.cuda:
            torch.cuda.synchronize()

        def ms(a, b) -> float:
            return a.elapsed_time(b) if self.cuda else (b - a) * 1e3

        for step, (start, launch, backward_end, end) in self._pending:
            done = backward_end if backward_end is not None else end
            last = launch if launch is not None else done  # nothing sent: all of it is compute
            wait = ms(last, done)
            if wait < 0:  # sent after the backward had returned (in the optimizer's step): no wait to split off
                last, wait = done, 0.0
            step.compute_ms, step.wait_ms, step.optimizer_ms = ms(start, last), wait, ms(done, end)
        self._pending.clear()

    def summary(
        self, steps: list[StepTraffic], world_size: int, layout: list[list[str]] | None = None
    ) -> dict[str, Any]:
        """Per-step averages over `steps` (the timed window). In DDP every step sends the same bytes,
        so the averages are exact integers; anything else is reported as a float, never rounded. `layout`:
        the parameters of each payload call in launch order, where the engine knows them and its hooks do
        not say (FSDP2's groups)."""
        n = max(len(steps), 1)
        totals: dict[str, int] = defaultdict(int)
        for s in steps:
            for op, b in s.bytes_by_op.items():
                totals[op] += b

        def per_step(total: int) -> int | float:
            return total // n if total % n == 0 else total / n

        payload = per_step(sum(s.payload for s in steps))
        payload_by_op: dict[str, int] = defaultdict(int)
        for s in steps:
            for op, b in s.payload_by_op.items():
                payload_by_op[op] += b
        return {
            "payload_bytes_per_step": payload,
            # each collective by its own factor: a reduce-scatter moves half of what an all-reduce does
            "bus_bytes_per_step": collective_bus_bytes({op: b / n for op, b in payload_by_op.items()}, world_size),
            "buckets_per_step": per_step(sum(s.buckets for s in steps)),
            "collectives": {op: per_step(b) for op, b in sorted(totals.items())},
            "buckets": buckets(steps[-1], layout) if steps else [],
        }


def buckets(step: StepTraffic, layout: list[list[str]] | None = None) -> list[dict[str, Any]]:
    """One entry per payload call of `step` (a DDP bucket, an FSDP group, a DeepSpeed reduction): its bytes,
    dtype and collective, and the first and last of its parameters and their count where known (null
    otherwise). The entries' bytes sum to the step's payload."""
    unnamed = {"params": None, "first": None, "last": None}
    named = layout is not None and len(layout) == len(step.reductions)
    out = []
    for i, (op, size, dtype, bucket) in enumerate(step.reductions):
        if 0 <= bucket < len(step.bucket_params):
            meta = step.bucket_params[bucket]
        elif named:
            names = layout[i]
            meta = {"params": len(names), "first": names[0] if names else None, "last": names[-1] if names else None}
        else:
            meta = unnamed
        out.append({"op": op, "bytes": size, "dtype": dtype, **meta})
    return out
