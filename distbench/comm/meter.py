"""The CommMeter, which counts what really goes to a collective (the engines feed it from their taps,
`distbench.comm.taps`), and the bus-byte and bandwidth conversions of what it counts. What the model says
must go is `distbench.comm.expected`; a test holds the two equal.

Definitions, as code, README and records use them: payload bytes are the bytes of the tensors handed to a
collective per optimizer step; bus bytes per rank for a ring all-reduce are payload x 2(n-1)/n, and algbw /
busbw are as nccl-tests defines them (docs/PERFORMANCE.md there).
"""

from __future__ import annotations

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


class CommMeter:
    """Counts the bytes handed to each collective, step by step.

    The training loop brackets each optimizer step with `start_step()` / `end_step()`; hooks call
    `count()` as they launch a collective. Counting happens at launch, on the host, so it costs no
    synchronisation.
    """

    def __init__(self) -> None:
        self._open: StepTraffic | None = None
        self.steps: list[StepTraffic] = []

    def count(self, op: str, tensor: torch.Tensor, payload: bool = True, bucket: bool | None = None) -> None:
        """`tensor` (the input handed to collective `op`) is about to be sent. `payload`: it carries
        gradients being reduced (as opposed to, e.g., ZeRO's all-gather of updated weights)."""
        self.count_bytes(op, tensor.numel() * tensor.element_size(), payload, bucket)

    def count_bytes(self, op: str, size: int, payload: bool = True, bucket: bool | None = None) -> None:
        """`bucket`: this call is one gradient-reduction call (default: any payload call is)."""
        if self._open is None:  # traffic outside a bracketed step (e.g. evaluation) is not training traffic
            return
        self._open.bytes_by_op[op] = self._open.bytes_by_op.get(op, 0) + size
        if payload:
            self._open.payload += size
            self._open.payload_by_op[op] = self._open.payload_by_op.get(op, 0) + size
        if payload if bucket is None else bucket:
            self._open.buckets += 1

    def count_bucket(self) -> None:
        if self._open is not None:
            self._open.buckets += 1

    def start_step(self) -> None:
        self._open = StepTraffic({}, 0, 0)

    def end_step(self) -> StepTraffic:
        step, self._open = self._open, None
        self.steps.append(step)
        return step

    def summary(self, steps: list[StepTraffic], world_size: int) -> dict[str, Any]:
        """Per-step averages over `steps` (the timed window). In DDP every step sends the same bytes,
        so the averages are exact integers; anything else is reported as a float, never rounded."""
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
        }
