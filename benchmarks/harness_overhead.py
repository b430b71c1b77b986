"""Does distbench's harness slow the step it times?

Two ranks, the default tiny CNN (learned head, 100 classes), batch 32 per rank, SGD with momentum at
distbench's default lr, synthetic data drawn from `build_dataset`'s train iterator inside each step:
- distbench: `build_engine` (DDP + counting comm hook + the all-reduce Tap, GradScaler, autocast) driven by
  `run_steps` (meter bracketing, batch fetch, StepTimer, progress, and between steps the stop vote: one
  asynchronous 4-byte all-reduce on its own gloo group, outside the step's time), i.e. what launch/run.py
  times;
- plain: a hand-written loop over `DDP(model)` with the engine's DDP settings (so both send the same
  bytes in the same buckets) and no hook: zero_grad, forward, cross-entropy, backward, SGD step.
Identical copies of the model and two iterators over the same seeded batch stream. Blocks of steps
alternate between the two (ABBA order); each reports the median of its per-step times on rank 0, with a
bootstrap 95% interval of the ratio (on a loaded machine it can be wider than the effect).
Prints `name: value` lines, the ratio last. CPU by default, CUDA when present (one GPU per rank).

    python benchmarks/harness_overhead.py          # re-launches itself under torchrun, 2 ranks
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distbench.runtime.engines import StopVote, build_engine, close_distributed
from distbench.runtime.loop import Progress, run_steps
from distbench.runtime.optim import autocast_dtype
from distbench.runtime.timing import StepTimer

from common import Figures, add_out_flag, interleave, ratio_ci95, relaunch, tiny_job, under_torchrun


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=60, help="blocks per variant")
    ap.add_argument("--block-steps", type=int, default=4, help="steps per block")
    add_out_flag(ap)
    args = ap.parse_args()
    figures = Figures(__file__, args)

    cfg, place, model, batch_stream = tiny_job()
    tc, device = cfg.train, place.device
    twin = copy.deepcopy(model)

    # distbench, as train.run builds it
    engine = build_engine(cfg, model, place)
    vote = StopVote(cfg.dist.pg_timeout_s)  # as train.run asks it after every step; no signal here, so it never stops
    distbench_batches = batch_stream()
    warmup = 3

    # plain torch, written out by hand (channels-last and bf16 autocast on CUDA, as the engine does there)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    twin.to(device, memory_format=memory_format)
    ddp = DDP(
        twin,
        device_ids=[device.index] if cuda else None,
        bucket_cap_mb=engine.bucket_cap_mb,
        gradient_as_bucket_view=True,
        forward_sync_buffers=False,
    )
    optimizer = torch.optim.SGD(ddp.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
    plain_batches = batch_stream()
    amp = autocast_dtype(tc.precision, device)  # the run's own choice, spelled out in plain torch below

    def plain_steps(n: int) -> list[float]:
        timer = StepTimer(device)  # the same clock as run_steps
        timer.mark()
        for _ in range(n):
            x, y = next(plain_batches)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext():
                loss = F.cross_entropy(ddp(x.contiguous(memory_format=memory_format)), y)
            loss.backward()
            optimizer.step()
            timer.mark()
        return timer.times_ms()

    with Progress(
        place, (warmup + args.blocks * args.block_steps) * 2, cfg.train.batch_size * place.world_size
    ) as progress:
        variants = {
            "distbench": lambda n: run_steps(engine, distbench_batches, n, progress, lambda: vote(False))[0],
            "plain": plain_steps,
        }
        for run in variants.values():  # warm-up: iteration 0, after which DDP rebuilds its buckets, and more
            run(warmup)
        times = interleave({name: lambda run=run: run(args.block_steps) for name, run in variants.items()}, args.blocks)

    vote.close()
    engine.close()
    if place.rank == 0:
        med = {n: statistics.median(v) for n, v in times.items()}
        figures.print(f"device: {device.type}, ranks: {place.world_size}, steps per variant: {len(times['plain'])}")
        figures.print(f"distbench_step_ms: {med['distbench']:.2f}")
        figures.print(f"plain_step_ms: {med['plain']:.2f}")
        lo, hi = ratio_ci95(times["distbench"], times["plain"])
        figures.print(f"harness_overhead_ci95: {lo:.3f} to {hi:.3f}")
        figures.print(f"harness_overhead: {med['distbench'] / med['plain']:.3f}")
        figures.finish("harness_overhead", device, place.world_size, place.backend)
    close_distributed()


if __name__ == "__main__":
    sys.exit(main() if under_torchrun() else relaunch(__file__))
