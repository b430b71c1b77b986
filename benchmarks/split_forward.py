"""Which forward pass for a split conv is faster: rebuild the weight with torch.cat and run one conv,
or run the learned and the fixed filters as two convs and concatenate the outputs?

Forward + backward of one conv layer, interleaved repetitions, median. Prints `name: value` lines,
the ratio last. CPU by default, CUDA when present.

    python benchmarks/split_forward.py
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from distbench.timing import Stopwatch

from common import Figures, add_out_flag


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_out_flag(ap)
    figures = Figures(__file__, ap.parse_args())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    batch, channels, size = (32, 256, 14) if device.type == "cpu" else (128, 256, 28)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    w = torch.randn(channels, channels, 3, 3, device=device)
    for p in (0.1, 0.5):
        k = max(1, round(p * channels))
        learned = w[:k].clone().requires_grad_(True)
        fixed = w[k:].clone()

        def cat_weights(learned=learned, fixed=fixed):
            return F.conv2d(x, torch.cat([learned, fixed]), padding=1)

        def cat_outputs(learned=learned, fixed=fixed):
            return torch.cat([F.conv2d(x, learned, padding=1), F.conv2d(x, fixed, padding=1)], dim=1)

        times: dict[str, list[float]] = {"cat_weights": [], "cat_outputs": []}
        fns = {"cat_weights": cat_weights, "cat_outputs": cat_outputs}
        watch = Stopwatch(device)
        for rep in range(12):
            for name, fn in fns.items():
                watch.start()
                fn().sum().backward()
                seconds = watch.stop()
                if rep >= 2:  # warm-up
                    times[name].append(seconds)
        med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        figures.print(f"device: {device.type}")
        figures.print(f"p{p}_cat_weights_ms: {med['cat_weights']:.2f}")
        figures.print(f"p{p}_cat_outputs_ms: {med['cat_outputs']:.2f}")
        figures.print(f"p{p}_cat_weights_over_cat_outputs: {med['cat_weights'] / med['cat_outputs']:.3f}")
    figures.finish("p0.5_cat_weights_over_cat_outputs", device)


if __name__ == "__main__":
    main()
