"""What every benchmark script shares: the torchrun re-launch, the default job's parts, ABBA interleaving, medians'
ratio intervals, and (from records.py) the printed figures and the `--out` record. Scripts import it as `common`
(Python puts the script's own folder first on sys.path)."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch

from distbench.config import parse_args
from distbench.model import build_model
from distbench.runtime.data import Shard, build_dataset
from distbench.runtime.engines import init_distributed

from records import Figures, add_out_flag

__all__ = [
    "RANKS",
    "Figures",
    "NoProgress",
    "add_out_flag",
    "interleave",
    "ratio_ci95",
    "relaunch",
    "shape_bench",
    "tiny_job",
    "under_torchrun",
]

RANKS = int(os.environ.get("DISTBENCH_BENCH_RANKS", "2"))  # the GPU check sets 1 on a one-GPU machine


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


def shape_bench(
    script: str, doc: str, shapes: str, shape_help: str, reps: int
) -> tuple[argparse.Namespace, Figures, torch.device]:
    """The start of a one-process script timed at each of `--shapes`: its flags (--shapes, --reps, --threads,
    --out) parsed, the thread count set (one by default, as each rank of a 2-rank CPU job has), and the device
    (CUDA when present) and settings printed as the first figure."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--shapes", default=shapes, help=shape_help)
    ap.add_argument("--reps", type=int, default=reps, help="timed calls per variant and shape")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    add_out_flag(ap)
    args = ap.parse_args()
    figures = Figures(script, args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    figures.print(f"device: {device.type}, threads: {torch.get_num_threads()}, reps: {args.reps}")
    return args, figures, device


class NoProgress:
    """`run_steps` wants a progress bar; a benchmark prints only its figures."""

    def update(self) -> None:
        pass


def tiny_job(batch_size: int = 32):
    """The default job's parts, as launch/run.py builds them: the config (tiny CNN, learned head, 100
    classes), the process group, the model (the same initial weights on every rank) and a function that
    starts this rank's synthetic batch stream (every call the same seeded stream)."""
    cfg = parse_args(["--model", "tiny", "--batch-size", str(batch_size)])
    tc = cfg.train
    place = init_distributed(cfg.dist.dist_backend)
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, cfg.freeze, seed=tc.seed)

    def stream():
        shard = Shard(place.rank, place.world_size, place.device)
        return build_dataset(cfg.data, cfg.model.num_classes, model.input_shape, tc.batch_size, shard, tc.seed).train()

    return cfg, place, model, stream
