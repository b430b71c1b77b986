"""What every benchmark script shares: the torchrun re-launch, device sync, ABBA interleaving, medians'
ratio intervals. Scripts import it as `common` (Python puts the script's own folder first on sys.path)."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch

RANKS = 2


def relaunch(script: str, ranks: int = RANKS) -> int:
    """`script` again under torchrun, one process per rank; each rank gets its share of the cores, and the
    CPU when there are fewer GPUs than ranks (two ranks on one GPU would time contention, not distbench)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or ranks) // ranks)))
    if torch.cuda.is_available() and torch.cuda.device_count() < ranks:
        print(f"fewer than {ranks} GPUs: running on the CPU", file=sys.stderr)
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", script]
    return subprocess.run([*cmd, *sys.argv[1:]], env=env, check=False).returncode


def under_torchrun() -> bool:
    return "RANK" in os.environ


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a host clock read after it covers the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleave(fns: dict[str, Callable[[], list[float]]], blocks: int) -> dict[str, list[float]]:
    """Call each variant once per block, in ABBA order so that neither always runs first (caches, clocks and
    other jobs drift); returns every variant's concatenated samples."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for block in range(blocks):
        for name in list(fns) if block % 2 == 0 else list(fns)[::-1]:
            out[name] += fns[name]()
    return out


def ratio_ci95(a: list[float], b: list[float], resamples: int = 2000) -> tuple[float, float]:
    """Bootstrap 95% interval of median(a) / median(b), the two samples resampled independently."""
    rng = random.Random(0)
    ratios = sorted(
        statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
        for _ in range(resamples)
    )
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


class NoProgress:
    """`run_steps` wants a progress bar; a benchmark prints only its figures."""

    def update(self) -> None:
        pass
