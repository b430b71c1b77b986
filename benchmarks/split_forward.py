"""Which forward pass for a split conv is faster?

`--dim out` (the default; whole filters learned, `--freeze-dim out`): rebuild the weight with torch.cat and
run one conv, or run the learned and the fixed filters as two convs and concatenate the outputs?
`--dim in` (the first input channels learned, `--freeze-dim in`): rebuild the weight with torch.cat along
the input channels and run one conv, or run two convs on the two input-channel groups and sum them?

Forward + backward of one conv layer (the input requires grad, as inside a network), both forms interleaved
in one run (ABBA order), repetitions after a warm-up, median. Prints `name: value` lines, the ratio last.
CPU by default, CUDA when present.

    python benchmarks/split_forward.py
    python benchmarks/split_forward.py --dim in --reps 40   # shared 2-core machines: more repetitions
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from distbench.runtime.timing import Stopwatch

from common import Figures, add_out_flag


def forms(x: torch.Tensor, learned: torch.Tensor, fixed: torch.Tensor, dim: str) -> dict[str, Callable]:
    """The two forward passes of a split conv whose weight is cat([learned, fixed]) along `dim`."""
    if dim == "out":
        return {
            "cat_weights": lambda: F.conv2d(x, torch.cat([learned, fixed]), padding=1),
            "cat_outputs": lambda: torch.cat([F.conv2d(x, learned, padding=1), F.conv2d(x, fixed, padding=1)], 1),
        }
    k = learned.shape[1]
    return {
        "cat_weights": lambda: F.conv2d(x, torch.cat([learned, fixed], 1), padding=1),
        "sum_convs": lambda: F.conv2d(x[:, :k], learned, padding=1) + F.conv2d(x[:, k:], fixed, padding=1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", choices=("out", "in"), default="out", help="the weight dimension split (default: out)")
    ap.add_argument("--reps", type=int, default=12, help="repetitions of each form, the first 2 untimed (default: 12)")
    add_out_flag(ap)
    args = ap.parse_args()
    dim, reps = args.dim, args.reps
    if reps < 3:
        ap.error("--reps must be >= 3 (the first 2 are warm-up)")
    for name, default in (("dim", "out"), ("reps", 12)):  # the default run's record keeps its committed shape
        if getattr(args, name) == default:
            delattr(args, name)
    figures = Figures(__file__, args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    batch, channels, size = (32, 256, 14) if device.type == "cpu" else (128, 256, 28)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    w = torch.randn(channels, channels, 3, 3, device=device)
    prefix = "" if dim == "out" else "in_"
    for p in (0.1, 0.5):
        k = max(1, round(p * channels))
        learned, fixed = (w[:k], w[k:]) if dim == "out" else (w[:, :k], w[:, k:])
        learned, fixed = learned.clone().requires_grad_(True), fixed.clone()
        fns = forms(x, learned, fixed, dim)
        times: dict[str, list[float]] = {name: [] for name in fns}
        watch = Stopwatch(device)
        for rep in range(reps):
            for name in list(fns) if rep % 2 == 0 else list(fns)[::-1]:  # ABBA: neither always runs first
                fn = fns[name]
                watch.start()
                fn().sum().backward()
                seconds = watch.stop()
                if rep >= 2:  # warm-up
                    times[name].append(seconds)
        med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        a, b = fns
        figures.print(f"device: {device.type}")
        figures.print(f"{prefix}p{p}_{a}_ms: {med[a]:.2f}")
        figures.print(f"{prefix}p{p}_{b}_ms: {med[b]:.2f}")
        figures.print(f"{prefix}p{p}_{a}_over_{b}: {med[a] / med[b]:.3f}")
    figures.finish(f"{prefix}p0.5_{a}_over_{b}", device)


if __name__ == "__main__":
    main()
