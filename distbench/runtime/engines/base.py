"""Data-parallel engines: the only place that talks to process groups.

An engine owns the process group, wraps the model, attaches the CommMeter, and runs one optimizer
step at a time. `distbench.runtime.loop` drives it and never touches torch.distributed itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from distbench.comm.meter import CommMeter
from distbench.config import Registry
from distbench.model.loss import cross_entropy

__all__ = [
    "ENGINES",
    "Engine",
    "Place",
    "StopVote",
    "all_reduce",
    "barrier",
    "build_engine",
    "close_distributed",
    "gather_objects",
    "init_distributed",
    "note_failure",
    "peer_failures",
    "replicas_identical",
]

ENGINES: Registry = Registry("backend")


@dataclass(frozen=True)
class Place:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # process-group backend: nccl or gloo


def init_distributed(dist_backend: str = "auto", timeout_s: float = 300.0) -> Place:
    """Join the process group torchrun describes (env://), or make a world of one without torchrun.
    A collective that waits more than `timeout_s` for a peer raises (gloo) or aborts the process (NCCL's
    watchdog) instead of holding the job for the backend's default 30 (gloo) or 10 (NCCL) minutes."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = dist_backend if dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        if "RANK" in os.environ:
            kwargs = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, timeout=timeout, **kwargs)
        else:  # plain `python launch/run.py`: a world of one, no rendezvous needed
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return Place(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of a small host-side statistic (not training traffic: never metered)."""
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def barrier() -> None:
    dist.barrier()


class StopVote:
    """Ranks agree to stop at the same step boundary when any of them was asked to (a signal).

    A rank that stopped alone would leave the others waiting in the next gradient all-reduce. Each
    boundary waits for the vote issued at the previous one, long finished (a whole step ran since), and
    issues the next without waiting: on its own gloo group, on the host, so it neither synchronises the
    device nor mixes with the gradient traffic, and no rank can pass a boundary the others stop at.
    A request is therefore acted on one boundary later, by every rank together.

    The group gets the run's `timeout_s` explicitly: a new group's default is gloo's 30 minutes, so a
    rank waiting on the vote of a hung peer would outlast --pg-timeout-s by half an hour.
    """

    def __init__(self, timeout_s: float) -> None:
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.flag = torch.zeros(1, dtype=torch.int32)
        self.pending = None

    def __call__(self, requested: bool) -> bool:
        agreed = False
        if self.pending is not None:
            self.pending.wait()
            agreed = bool(self.flag.item())
        self.flag = torch.tensor([int(requested)], dtype=torch.int32)
        self.pending = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        return agreed

    def close(self) -> None:
        """Wait for the vote in flight, so no rank leaves a collective behind."""
        if self.pending is not None:
            self.pending.wait()
            self.pending = None

    def agree(self, flags: list[bool]) -> list[bool]:
        """For each flag, whether any rank raised it, at once (for untimed work: evaluation, after a save)."""
        self.close()
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return [bool(v) for v in t.tolist()]


_FAILED = "distbench/failed/{}"  # a rank's one-line error, in the job's store


def _store():
    """The job's key-value store (torchrun's), or None without a process group."""
    return dist.distributed_c10d._get_default_store() if dist.is_initialized() else None


def note_failure(message: str) -> None:
    """Leave this rank's error where rank 0 can read it, before this rank exits and torchrun ends the job."""
    try:
        store = _store()
        if store is not None:
            store.set(_FAILED.format(dist.get_rank()), message.encode())
    except Exception:  # the store went with a peer: rank 0 records its own error instead
        pass


def peer_failures() -> dict[int, str]:
    """The errors other ranks have left (`note_failure`), by rank; {} without a process group or its store."""
    try:
        store = _store()
        if store is None:
            return {}
        own, found = dist.get_rank(), {}
        for r in range(dist.get_world_size()):
            key = _FAILED.format(r)
            if r != own and store.check([key]):
                found[r] = store.get(key).decode()
        return found
    except Exception:
        return {}


def gather_objects(obj) -> list:
    """`obj` from every rank, in rank order (small picklable values: host names, not training traffic)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def replicas_identical(params: list[torch.Tensor]) -> bool:
    """Whether every rank holds bit-identical `params`: a per-rank fingerprint (sums of the values and
    of their squares, in float64) is compared through MIN and MAX all-reduces.

    A sharded parameter (FSDP's DTensor) has no replica that could drift: each rank owns one shard. It is
    compared as the full tensor each rank gathers, so for FSDP this says that every rank sees (and
    evaluates) the same model, not that the gradients were reduced: tests/test_fsdp.py holds FSDP's
    weights to DDP's for that."""
    device = params[0].device if params else torch.device("cpu")
    fp = torch.zeros(2, dtype=torch.float64, device=device)
    for p in params:
        t = p.full_tensor() if hasattr(p, "full_tensor") else p  # one at a time: one full tensor in memory
        fp += torch.stack([t.double().sum(), t.double().square().sum()])
    lo, hi = fp.clone(), fp.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


class Engine:
    """What the training loop needs from any data-parallel engine."""

    place: Place
    module: torch.nn.Module  # the unwrapped model (for evaluation and counting)
    meter: CommMeter
    expected_bytes_per_step: int
    hook_name: str
    bucket_cap_mb: float | None = None  # the bucket size really used, where the engine has buckets
    # Steps a fresh process takes before every step sends the same bytes (DDP rebuilds its buckets after
    # iteration 0); a resumed process leaves them out of the timed window.
    settle_steps: int = 1

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's batch; returns the detached loss."""
        raise NotImplementedError

    def no_sync(self) -> ContextManager | None:
        """Gradient synchronisation off, for measuring exposed communication; None where the engine
        cannot take optimizer steps without it."""
        return None

    def reduction_layout(self) -> list[list[str]] | None:
        """The parameters of each payload call of a step in launch order, where the engine knows them and its
        hooks do not say (FSDP2's groups); None: unknown, or named by the hooks themselves (DDP)."""
        return None

    def logged_bytes(self) -> int | None:
        """Bytes the engine's own communication logger has seen so far (None: no such logger)."""
        return None

    collective_eval = False  # evaluation runs collectives: every rank must take part in every batch

    def replicated_parameters(self) -> list[torch.Tensor]:
        """The trained parameters every rank must hold identically (a sharded head's are per rank)."""
        return [p for p in self.module.parameters() if p.requires_grad]

    @torch.no_grad()
    def eval_batch(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k class ids (B x k) and per-sample cross-entropy (B) of this rank's held-out batch."""
        logits = self.module(x).float()
        top = logits.topk(min(k, logits.shape[1]), dim=1).indices
        return top, cross_entropy(logits, y, reduction="none")

    def save_checkpoint(self, directory: Path) -> None:
        """Write this rank's model, optimizer and loss-scaler state into `directory` (every rank calls it;
        `distbench.runtime.checkpoint` makes the checkpoint visible once all have)."""
        raise NotImplementedError

    def load_checkpoint(self, directory: Path) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def build_engine(cfg, model: torch.nn.Module, place: Place) -> Engine:
    builder: Callable[..., Engine] = ENGINES.get(cfg.dist.backend)
    return builder(cfg, model, place)
