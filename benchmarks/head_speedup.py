"""How much faster is a DDP step with a fixed classifier head than with a learned one, at 100K classes?

Two ranks, batch 32 per rank, distbench's DDPEngine (counting comm hook, SGD with momentum) on two models
that differ only in the head: `learned` (a trainable N x C linear layer) or `fixed` (Hoffer et al. 2018:
a fixed Hadamard C x N buffer, learned scale and bias). Backbone (`--backbone`):
- `mlp` (default): Linear(512, 512) + ReLU on 512-dim inputs, so the model is Linear 512-512-100K, the
  shape of the plain-torch reference measurement (3.0x at batch 32, as its issue reported it; not a record here);
- `tiny`: distbench's tiny CNN (N = 256) on 3x32x32 inputs.
Inputs are random and generated before timing. The headline ratio comes from un-instrumented steps
(`run_steps`: distbench's timed loop), blocks alternating between the heads (ABBA order), medians on
rank 0. The split comes from separate passes, also alternating:
- exposed communication: step time minus the same step under `no_sync()` (no gradient all-reduce);
- forward, backward and optimizer.step, each timed between barriers (and device synchronisation):
  backward with sync includes DDP's wait for the last all-reduce, backward under `no_sync()` is compute.
Prints `name: value` lines, the ratio last. CPU by default, CUDA when present (one GPU per rank).

    python benchmarks/head_speedup.py [--backbone tiny]   # re-launches itself under torchrun, 2 ranks
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import statistics
import sys
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distbench.config import parse_args
from distbench.model import Classifier, build_model
from distbench.model.heads import build_head
from distbench.runtime.engines import Engine, build_engine, close_distributed, init_distributed
from distbench.runtime.loop import run_steps
from distbench.runtime.optim import autocast
from distbench.runtime.timing import Stopwatch

from common import Figures, NoProgress, add_out_flag, interleave, relaunch, under_torchrun

MB = 1e6


def mlp_model(head: str, num_classes: int, seed: int) -> Classifier:
    # Inputs are 512 x 1 x 1 "images": the engine makes inputs channels-last on CUDA, which needs 4 dims.
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(512, 512), nn.ReLU())
    backbone.num_features, backbone.input_shape = 512, (512, 1, 1)
    return Classifier(backbone, build_head(head, 512, num_classes, seed=seed))


def phases(engine: Engine, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """One step, as DDPEngine.step does it, split into forward, backward and optimizer seconds. Each phase
    starts after a barrier (so it does not absorb the other rank's lag) and ends after a device sync."""
    device = engine.place.device
    watch = Stopwatch(device)

    watch.start(then=dist.barrier)
    engine.optimizer.zero_grad(set_to_none=True)
    with autocast(device, engine.amp_dtype):
        loss = F.cross_entropy(engine.ddp(x), y)
    forward = watch.stop()
    watch.start(then=dist.barrier)
    engine.scaler.scale(loss).backward()
    backward = watch.stop()
    watch.start(then=dist.barrier)
    engine.scaler.step(engine.optimizer)
    engine.scaler.update()
    return forward, backward, watch.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", choices=("mlp", "tiny"), default="mlp")
    ap.add_argument("--fixed-head", default="fixed", help="the fixed head to compare: fixed or fixed-fwht")
    ap.add_argument("--num-classes", type=int, default=100_000)
    ap.add_argument(
        "--blocks", type=int, default=8, help="blocks per head for the headline, half as many for the split"
    )
    ap.add_argument("--block-steps", type=int, default=3, help="steps per block")
    add_out_flag(ap)
    args = ap.parse_args()
    figures = Figures(__file__, args)
    # C > 512 repeats Hadamard rows: a warning about accuracy, which timing does not care about.
    logging.getLogger("distbench.model.heads").setLevel(logging.ERROR)

    heads = {"learned": "learned", "fixed": args.fixed_head}
    engines: dict[str, Engine] = {}
    place = None
    for name, head in heads.items():
        cfg = parse_args(["--model", "tiny", "--head", head, "--num-classes", str(args.num_classes)])
        if place is None:
            place = init_distributed(cfg.dist.dist_backend)
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        if args.backbone == "mlp":
            model = mlp_model(head, args.num_classes, cfg.train.seed)
        else:
            model = build_model(cfg.model, cfg.freeze, seed=cfg.train.seed)
        engines[name] = build_engine(cfg, model, place)
    device, batch = place.device, cfg.train.batch_size
    gen = torch.Generator(device=device).manual_seed(1000 + place.rank)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # as the engine
    batches = [
        (
            torch.randn(batch, *model.input_shape, generator=gen, device=device).contiguous(
                memory_format=memory_format
            ),
            torch.randint(args.num_classes, (batch,), generator=gen, device=device),
        )
        for _ in range(4)
    ]
    feeds = {name: itertools.cycle(batches) for name in engines}
    progress = NoProgress()

    def steps(name: str, nosync: bool = False) -> Callable[[], list[float]]:
        engine = engines[name]

        def run() -> list[float]:
            with engine.no_sync() if nosync else contextlib.nullcontext():
                return run_steps(engine, feeds[name], args.block_steps, progress)[0]

        return run

    def instrumented(name: str, nosync: bool) -> Callable[[], list[tuple[float, float, float]]]:
        engine = engines[name]

        def run() -> list[tuple[float, float, float]]:
            with engine.no_sync() if nosync else contextlib.nullcontext():
                return [phases(engine, *next(feeds[name])) for _ in range(args.block_steps)]

        return run

    for name in engines:  # warm-up: iteration 0, after which DDP rebuilds its buckets, and a few more
        steps(name)()
    step_ms = interleave({name: steps(name) for name in engines}, args.blocks)
    payload = {name: engines[name].meter.steps[-1].payload for name in engines}
    nosync_ms = interleave({name: steps(name, nosync=True) for name in engines}, max(2, args.blocks // 2))
    split = interleave(
        {f"{name}/{mode}": instrumented(name, mode == "nosync") for name in engines for mode in ("sync", "nosync")},
        max(2, args.blocks // 2),
    )
    for engine in reversed(engines.values()):  # last in, first out: each tap restores the one it wrapped
        engine.close()

    if place.rank == 0:
        med = {name: statistics.median(v) for name, v in step_ms.items()}
        figures.print(f"device: {device.type}, ranks: {place.world_size}, backbone: {args.backbone}, batch: {batch}")
        for name in engines:
            nosync = statistics.median(nosync_ms[name])
            fwd, bwd, opt = (statistics.median(p) * 1e3 for p in zip(*split[f"{name}/sync"], strict=True))
            bwd_compute = statistics.median(p[1] for p in split[f"{name}/nosync"]) * 1e3
            figures.print(f"{name}_payload_MB: {payload[name] / MB:.1f}")
            figures.print(f"{name}_step_ms: {med[name]:.1f}")
            figures.print(f"{name}_nosync_step_ms: {nosync:.1f}")
            figures.print(f"{name}_exposed_comm_ms: {med[name] - nosync:.1f}")
            figures.print(f"{name}_forward_ms: {fwd:.1f}")
            figures.print(f"{name}_backward_ms: {bwd:.1f}")
            figures.print(f"{name}_backward_nosync_ms: {bwd_compute:.1f}")
            figures.print(f"{name}_optimizer_ms: {opt:.1f}")
        figures.print(f"head_speedup: {med['learned'] / med['fixed']:.2f}")
        figures.finish("head_speedup", device, place.world_size, place.backend)
    close_distributed()


if __name__ == "__main__":
    sys.exit(main() if under_torchrun() else relaunch(__file__))
