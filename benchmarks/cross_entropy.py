"""How much faster is distbench's training loss (`distbench.model.loss.cross_entropy`, fused on the CPU) than
torch's `F.cross_entropy`, at the shapes of the large-class studies?

For each B x C in `--shapes` (default: 128 x 100K, one rank's batch of the 100K-class image study; 1024 x 32K,
one rank's 16 sequences of 64 tokens at a 32K vocabulary): forward + backward of the loss alone on float32
logits that require grad, one untimed call, then `--reps` calls per variant interleaved in ABBA order, median.
Prints `name: value` lines: per shape `torch_<B>x<C>_ms`, `fused_<B>x<C>_ms` and `torch_over_fused_<B>x<C>`,
then the headline ratio at the first shape, `torch_over_fused`. On CUDA the function is torch's (the ratio is
then about 1). One thread by default, as each rank of a 2-rank CPU job has.

    python benchmarks/cross_entropy.py
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from distbench.model.loss import cross_entropy
from distbench.runtime.timing import Stopwatch

from common import interleave, shape_bench


def time_shape(b: int, c: int, reps: int, device: torch.device, gen: torch.Generator) -> dict[str, float]:
    """Median forward+backward ms of each loss on one B x C batch of logits, ABBA-interleaved."""
    logits = torch.randn(b, c, device=device, generator=gen).requires_grad_()
    target = torch.randint(0, c, (b,), device=device, generator=gen)
    watch = Stopwatch(device)

    def timed(loss_fn) -> list[float]:
        logits.grad = None
        watch.start()
        loss_fn(logits, target).backward()
        return [watch.stop() * 1e3]

    variants = {"torch": lambda: timed(F.cross_entropy), "fused": lambda: timed(cross_entropy)}
    for fn in variants.values():
        fn()
    return {name: statistics.median(v) for name, v in interleave(variants, reps).items()}


def main() -> None:
    args, figures, device = shape_bench(__file__, __doc__, "128x100000,1024x32768", "comma-separated BxC", reps=15)
    gen = torch.Generator(device=device).manual_seed(0)
    ratios = []
    for shape in args.shapes.split(","):
        b, c = (int(v) for v in shape.lower().split("x"))
        med = time_shape(b, c, args.reps, device, gen)
        for name, ms in med.items():
            figures.print(f"{name}_{b}x{c}_ms: {ms:.2f}")
        ratios.append(med["torch"] / med["fused"])
        figures.print(f"torch_over_fused_{b}x{c}: {ratios[-1]:.2f}")
    figures.print(f"torch_over_fused: {ratios[0]:.2f}")
    figures.finish("torch_over_fused", device)


if __name__ == "__main__":
    main()
