"""distbench.runtime.timing: the quantiles reported as p50/p90, the CPU clocks, and the module's place in the house."""

from __future__ import annotations

import ast
import random
import time

import numpy as np
import pytest
import torch
from conftest import ROOT

from distbench.runtime.timing import StepTimer, Stopwatch, quantile

CPU = torch.device("cpu")


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
def test_quantile_is_numpys_linear_method(n, q):
    values = [random.Random(n).uniform(-5, 50) for _ in range(n)]
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q, method="linear")), rel=1e-12)


def test_quantile_does_not_care_about_order_and_rejects_nonsense():
    assert quantile([3.0, 1.0, 2.0, 10.0], 0.5) == 2.5
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)
    with pytest.raises(ValueError, match="q must be"):
        quantile([1.0], 1.5)


def test_step_timer_on_cpu_gives_one_interval_per_step():
    timer = StepTimer(CPU)
    timer.mark()
    for i in range(5):
        time.sleep(0.001 * (i % 2))
        timer.mark()
    ms = timer.times_ms()
    assert len(ms) == 5
    assert all(t >= 0 for t in ms)
    assert ms[1] >= 1.0 and ms[3] >= 1.0  # the steps that slept 1 ms: the unit is milliseconds


def test_stopwatch_runs_then_before_reading_the_clock():
    def barrier():  # a slow one: had the clock started before it, the window would hold its 50 ms
        time.sleep(0.05)
        seen.append(time.perf_counter())

    watch, seen = Stopwatch(CPU), []
    watch.start(then=barrier)
    seconds = watch.stop()
    assert len(seen) == 1
    assert 0 <= seconds <= time.perf_counter() - seen[0]
    with pytest.raises(RuntimeError, match="before start"):
        Stopwatch(CPU).stop()


def test_timing_imports_no_process_group():
    tree = ast.parse((ROOT / "distbench" / "runtime" / "timing.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.startswith(("torch.distributed", "distbench"))}, imported


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_timer_on_gpu_times_the_queued_work():
    device = torch.device("cuda")
    x = torch.randn(2048, 2048, device=device)
    timer = StepTimer(device)
    timer.mark()
    for _ in range(3):
        for _ in range(20):
            x = (x @ x).tanh()
        timer.mark()
    ms = timer.times_ms()
    assert len(ms) == 3 and all(t > 0 for t in ms)
    watch = Stopwatch(device)
    watch.start()
    for _ in range(20):
        x = (x @ x).tanh()
    assert watch.stop() > 0
