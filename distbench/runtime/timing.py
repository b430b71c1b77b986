"""Step timing: the one place that reads clocks around device work.

CUDA calls return when the work is queued, not when it is done, so a host clock read after them measures
the launch. Two honest ways, both here (nanoGPT's bench.py and timm's benchmark.py time the same way):
- `StepTimer` brackets a run of consecutive steps with CUDA events on GPU (perf_counter on CPU) and reads
  them after one synchronise at the end, so timing neither stalls the host between steps nor hides
  asynchronous work; train.run_steps times every step with it.
- `Stopwatch` times one window on the host clock between two synchronisations: for a window that already
  ends in a host-visible wait (a collective, a barrier) or a benchmark that compares variants one call at a
  time.
`quantile` is the linear interpolation numpy.quantile uses by default (p50 / p90 of step times).

No process group here: a window that must start on all ranks together takes its barrier as an argument. A leaf
(it imports nothing of distbench), so that the taps in comm/ may name their ranges with `region`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

# Set by the loop while it profiles (--profile-dir): only then do engines and hooks open named ranges, so an
# unprofiled run pays nothing for them.
PROFILING = False


def region(name: str) -> AbstractContextManager:
    """A named range in a profiler trace (torch.profiler.record_function) while profiling; nothing otherwise."""
    if PROFILING:
        return torch.profiler.record_function(name)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (CUDA launches return at once), so that a host clock read
    after it covers the work; nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Per-step wall times in ms: CUDA events on GPU (read once at the end), perf_counter on CPU.

    `mark()` before the first step and after each one; `times_ms()` gives the n - 1 intervals of n marks.
    `restart()` instead of `mark()` starts the next step without ending one: work between steps that is
    not part of them (the stop vote, saving a checkpoint) stays out of the times.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []
        self.ends: list[bool] = []  # whether each mark ends a step

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()  # on the current device's current stream, where the steps run
            return event
        return time.perf_counter()

    def mark(self) -> None:
        self.marks.append(self._now())
        self.ends.append(len(self.marks) > 1)

    def restart(self) -> None:
        self.marks.append(self._now())
        self.ends.append(False)

    def times_ms(self) -> list[float]:
        pairs = [(a, b) for a, b, end in zip(self.marks, self.marks[1:], self.ends[1:], strict=False) if end]
        if self.cuda:
            torch.cuda.synchronize()  # the current device: the one the events were recorded on
            return [a.elapsed_time(b) for a, b in pairs]
        return [(b - a) * 1e3 for a, b in pairs]


class Stopwatch:
    """Seconds of one window of device work on the host clock: `start()` synchronises, then reads
    perf_counter; `stop()` synchronises, then returns the seconds since `start()`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start: float | None = None

    def start(self, then: Callable[[], object] | None = None) -> None:
        """Begin the window. `then` runs after the synchronisation and before the clock is read: a barrier
        there starts every rank's window together, with its own queued work already done."""
        synchronize(self.device)
        if then is not None:
            then()
        self._start = time.perf_counter()

    def stop(self) -> float:
        if self._start is None:
            raise RuntimeError("Stopwatch.stop() before start()")
        synchronize(self.device)
        return time.perf_counter() - self._start


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values`, interpolating linearly between the two nearest ranks (numpy.quantile's
    default, 'linear'); q = 0.5 is the median."""
    if not values:
        raise ValueError("quantile of no values")
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
