"""How much faster is the `fixed-srht` head's dense path (one product with its C x N matrix, rebuilt every
forward) than its transform (`hadamard.srht`: one Hadamard transform of size m per block of classes), and
where does the head's choice between them (`hadamard.dense_pays`) stand against the measured crossover?

For each R x N x C in `--shapes` (default: 1,024 rows = one rank's 16 sequences of 64 tokens, N = 64, at the
language-model study's 8K and 32K vocabularies; 128 rows, N = 256, at the image study's 100K classes (one rank's
batch of `analysis/head_scaling_100k.toml`, the tiny CNN at width 256); then
N = 128 to 1,024 at 8K classes, across DENSE_MAX_FEATURES): forward + backward of the head alone (input
requires grad; alpha learned, no bias, as in the study; a fixed random upstream gradient), one untimed call per
path, then `--reps` calls per path interleaved in ABBA order, median. Both paths' logits are compared first
(`max_abs_diff_<shape>`, float32). Prints `name: value` lines: per shape `transform_<shape>_ms`,
`dense_<shape>_ms`, `transform_over_dense_<shape>` and `head_picks_<shape>` (the path the head takes there),
then the headline ratio at the first shape, `transform_over_dense`. One thread by default, as each rank of a
2-rank CPU job has.

    python benchmarks/srht_paths.py          # ~40 s on 2 CPU cores (35 s measured)
"""

from __future__ import annotations

import statistics

import torch

from distbench.model.heads import build_head
from distbench.runtime.timing import Stopwatch

from common import interleave, shape_bench

SHAPES = "1024x64x8192,1024x64x32768,128x256x100000,1024x128x8192,1024x256x8192,1024x512x8192,1024x1024x8192"


def time_shape(rows: int, n: int, c: int, reps: int, device: torch.device, gen: torch.Generator) -> dict:
    """Median forward+backward ms of each path on one R x N batch, ABBA-interleaved, and their largest
    difference in the logits."""
    head = build_head("fixed-srht", n, c, bias=False, scale_init="rule").to(device)
    picks = "dense" if head.dense else "transform"
    x = torch.randn(rows, n, device=device, generator=gen).requires_grad_()
    grad = torch.randn(rows, c, device=device, generator=gen)
    watch = Stopwatch(device)

    def timed(dense: bool) -> list[float]:
        head.dense = dense
        x.grad = head.scale.grad = None
        watch.start()
        head(x).backward(grad)
        return [watch.stop() * 1e3]

    with torch.no_grad():
        head.dense = True
        dense_logits = head(x)
        head.dense = False
        diff = (head(x) - dense_logits).abs().max().item()
    variants = {"transform": lambda: timed(False), "dense": lambda: timed(True)}
    for fn in variants.values():
        fn()
    med = {name: statistics.median(v) for name, v in interleave(variants, reps).items()}
    return {**med, "diff": diff, "picks": picks}


def main() -> None:
    args, figures, device = shape_bench(__file__, __doc__, SHAPES, "comma-separated RxNxC (rows x N x C)", reps=10)
    gen = torch.Generator(device=device).manual_seed(0)
    ratios = []
    for shape in args.shapes.split(","):
        rows, n, c = (int(v) for v in shape.lower().split("x"))
        key = f"{rows}x{n}x{c}"
        med = time_shape(rows, n, c, args.reps, device, gen)
        figures.print(f"transform_{key}_ms: {med['transform']:.2f}")
        figures.print(f"dense_{key}_ms: {med['dense']:.2f}")
        figures.print(f"max_abs_diff_{key}: {med['diff']:.1e}")
        figures.print(f"head_picks_{key}: {med['picks']}")
        ratios.append(med["transform"] / med["dense"])
        figures.print(f"transform_over_dense_{key}: {ratios[-1]:.2f}")
    figures.print(f"transform_over_dense: {ratios[0]:.2f}")
    figures.finish("transform_over_dense", device)


if __name__ == "__main__":
    main()
