"""What does distbench's byte counting cost a DDP step?

Three DDP instances over identical copies of the default tiny CNN (learned head, 100 classes, batch 32 per
rank), in one process group of 2 ranks:
- meter: distbench's DDPEngine, i.e. torch's `allreduce` comm hook wrapped by `counting_buckets`, the
  all-reduce Tap installed, and every step bracketed by `meter.start_step()` / `meter.end_step()`;
- default: the same DDP settings with no comm hook registered (DDP's built-in C++ all-reduce), no tap;
- torch_hook: the same with torch's own Python `allreduce_hook` registered and nothing counted, so that
  what any Python comm hook costs is told apart from what counting adds.
All run the same step function on the same pre-generated synthetic batches; blocks of steps alternate
between them (ABBA order), and each reports the median of its per-step times on rank 0, with a bootstrap
95% interval of meter / default: on a loaded machine it can be wider than the effect. So the same trio is
also timed on a 16 -> 16 linear layer (batch 4), whose step is almost all host-side overhead: there, what
the meter adds per step is resolved in microseconds, and `meter_overhead_bound` is the tiny CNN's default
step plus those microseconds, over the default step.
Prints `name: value` lines, the ratio (meter / default, tiny CNN) last. CPU by default, CUDA when present
(one GPU per rank).

    python benchmarks/meter_overhead.py            # re-launches itself under torchrun, 2 ranks
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from distbench.model.counts import trainable
from distbench.runtime.engines import Place, build_engine, close_distributed
from distbench.runtime.engines.ddp import wrap
from distbench.runtime.optim import autocast, autocast_dtype, build_optimizer
from distbench.runtime.timing import Stopwatch

from common import Figures, add_out_flag, interleave, ratio_ci95, relaunch, tiny_job, under_torchrun

Batch = tuple[torch.Tensor, torch.Tensor]


def compare(cfg, model: nn.Module, batches: list[Batch], place: Place, blocks: int, block_steps: int):
    """Per-step seconds of the metered DDPEngine, of DDP with torch's own Python `allreduce_hook`, and of
    hook-less DDP, each over its own copy of `model`, alternating blocks; returns them and the last metered
    step's traffic."""
    device = place.device
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # as the engine
    twins = {name: copy.deepcopy(model) for name in ("torch_hook", "default")}
    engine = build_engine(cfg, model, place)  # the counting hook and the tap
    amp = autocast_dtype(cfg.train.precision, device)
    variants = {"meter": (engine.ddp, engine.optimizer, engine.meter)}
    for name, twin in twins.items():
        twin.to(device, memory_format=memory_format)
        ddp = wrap(twin, place, engine.bucket_cap_mb)  # the engine's DDP, without its hook and tap
        if name == "torch_hook":  # separates the cost of any Python hook from the cost of counting in it
            ddp.register_comm_hook(None, default_hooks.allreduce_hook)
        variants[name] = (ddp, build_optimizer(cfg.train, trainable(twin)), None)
    batches = [(x.contiguous(memory_format=memory_format) if x.dim() == 4 else x, y) for x, y in batches]
    feeds = {name: itertools.cycle(batches) for name in variants}
    watch = Stopwatch(device)

    def step(name: str) -> float:
        ddp, optimizer, meter = variants[name]
        x, y = next(feeds[name])
        watch.start()
        if meter is not None:
            meter.start_step()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        optimizer.step()
        if meter is not None:
            meter.end_step()
        return watch.stop()

    for name in variants:  # warm-up: iteration 0, after which DDP rebuilds its buckets, and a few more
        for _ in range(3):
            step(name)
    times = interleave({name: lambda name=name: [step(name) for _ in range(block_steps)] for name in variants}, blocks)
    engine.close()  # uninstalls the tap
    return times, engine.meter.steps[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=50, help="blocks per variant (tiny CNN)")
    ap.add_argument("--block-steps", type=int, default=4, help="steps per block (tiny CNN)")
    ap.add_argument("--floor-blocks", type=int, default=300, help="blocks of 10 steps per variant (linear layer)")
    add_out_flag(ap)
    args = ap.parse_args()
    figures = Figures(__file__, args)

    cfg, place, model, batch_stream = tiny_job()
    device = place.device
    batches = list(itertools.islice(batch_stream(), 8))  # generated before timing: neither variant pays
    times, counted = compare(cfg, model, batches, place, args.blocks, args.block_steps)

    gen = torch.Generator(device=device).manual_seed(place.rank)
    floor_batches = [
        (torch.randn(4, 16, generator=gen, device=device), torch.randint(16, (4,), generator=gen, device=device))
    ]
    floor, _ = compare(cfg, nn.Linear(16, 16), floor_batches, place, args.floor_blocks, 10)

    if place.rank == 0:
        med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        floor_us = {n: statistics.median(v) * 1e6 for n, v in floor.items()}
        lo, hi = ratio_ci95(times["meter"], times["default"])
        figures.print(f"device: {device.type}, ranks: {place.world_size}, steps per variant: {len(times['meter'])}")
        figures.print(f"meter_bytes_per_step: {counted.payload} in {counted.buckets} buckets")
        figures.print(f"floor_meter_step_us: {floor_us['meter']:.0f}")
        figures.print(f"floor_default_step_us: {floor_us['default']:.0f}")
        figures.print(f"floor_torch_hook_step_us: {floor_us['torch_hook']:.0f}")
        figures.print(f"floor_meter_added_us: {floor_us['meter'] - floor_us['default']:.0f}")
        figures.print(f"floor_counting_added_us: {floor_us['meter'] - floor_us['torch_hook']:.0f}")
        figures.print(f"meter_step_ms: {med['meter']:.2f}")
        figures.print(f"torch_hook_step_ms: {med['torch_hook']:.2f}")
        figures.print(f"default_step_ms: {med['default']:.2f}")
        # What the meter adds does not grow with the model (it counts numel x element size per bucket), so
        # the floor's microseconds over the tiny CNN's step bound the ratio far more tightly than its noise.
        added_ms = (floor_us["meter"] - floor_us["default"]) / 1e3
        figures.print(f"meter_overhead_bound: {(med['default'] + added_ms) / med['default']:.4f}")
        figures.print(f"meter_overhead_ci95: {lo:.3f} to {hi:.3f}")
        figures.print(f"meter_overhead: {med['meter'] / med['default']:.3f}")
        figures.finish("meter_overhead", device, place.world_size, place.backend)
    close_distributed()


if __name__ == "__main__":
    sys.exit(main() if under_torchrun() else relaunch(__file__))
