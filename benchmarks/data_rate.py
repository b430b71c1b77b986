"""Can the synthetic data set feed training? Samples it generates per second / samples trained per second.

One rank (a world of one), the default tiny CNN (learned head, 100 classes), batch 32:
- generate: `next()` on the `synthetic` data set's train iterator (labels, hashed class codes, noise,
  projection and upsampling to 3x32x32, on the device);
- train: distbench's step (`run_steps` over DDPEngine) on batches generated beforehand, so the two rates
  are measured apart.
Blocks alternate between the two (ABBA order); each reports the median of its per-batch times. Prints
`name: value` lines, the ratio last. CPU by default, CUDA when present.

    python benchmarks/data_rate.py
"""

from __future__ import annotations

import argparse
import itertools
import statistics

import torch

from distbench.runtime.engines import build_engine, close_distributed
from distbench.runtime.loop import run_steps
from distbench.runtime.timing import Stopwatch

from common import Figures, NoProgress, add_out_flag, interleave, tiny_job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=30, help="blocks per variant")
    ap.add_argument("--train-steps", type=int, default=4, help="training steps per block")
    ap.add_argument("--generate-batches", type=int, default=20, help="generated batches per block")
    add_out_flag(ap)
    args = ap.parse_args()
    figures = Figures(__file__, args)

    cfg, place, model, batch_stream = tiny_job()
    tc, device = cfg.train, place.device
    stream = batch_stream()
    engine = build_engine(cfg, model, place)
    feed = itertools.cycle(list(itertools.islice(stream, 8)))

    watch = Stopwatch(device)

    def generate(n: int) -> list[float]:
        times = []
        for _ in range(n):
            watch.start()
            next(stream)
            times.append(watch.stop() * 1e3)
        return times

    def train(n: int) -> list[float]:
        return run_steps(engine, feed, n, NoProgress())[0]

    variants = {"generate": (generate, args.generate_batches), "train": (train, args.train_steps)}
    for fn, _ in variants.values():  # warm-up, including DDP's bucket rebuild after iteration 0
        fn(3)
    times = interleave({name: lambda fn=fn, n=n: fn(n) for name, (fn, n) in variants.items()}, args.blocks)
    engine.close()

    med = {name: statistics.median(v) for name, v in times.items()}
    rate = {name: tc.batch_size / (ms / 1e3) for name, ms in med.items()}
    figures.print(
        f"device: {device.type}, ranks: {place.world_size}, threads: {torch.get_num_threads()}, batch: {tc.batch_size}"
    )
    figures.print(f"generate_batch_ms: {med['generate']:.3f}")
    figures.print(f"train_step_ms: {med['train']:.2f}")
    figures.print(f"generated_samples_per_s: {rate['generate']:.0f}")
    figures.print(f"trained_samples_per_s: {rate['train']:.0f}")
    figures.print(f"data_rate: {rate['generate'] / rate['train']:.1f}")
    figures.finish("data_rate", device, place.world_size, place.backend)
    close_distributed()


if __name__ == "__main__":
    main()
