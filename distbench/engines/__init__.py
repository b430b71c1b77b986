"""Data-parallel engines: the only place (with distbench.comm) that talks to process groups.

An engine owns the process group, wraps the model, attaches the CommMeter, and runs one optimizer
step at a time. `distbench.train` drives it and never touches torch.distributed itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distbench.comm import CommMeter
from distbench.registry import Registry

ENGINES: Registry = Registry("backend")


@dataclass(frozen=True)
class Place:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # process-group backend: nccl or gloo


def init_distributed(dist_backend: str = "auto") -> Place:
    """Join the process group torchrun describes (env://), or make a world of one without torchrun."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = dist_backend if dist_backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        if "RANK" in os.environ:
            kwargs = {"device_id": device} if backend == "nccl" else {}
            dist.init_process_group(backend, **kwargs)
        else:  # plain `python launch/run.py`: a world of one, no rendezvous needed
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return Place(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of a small host-side statistic (not training traffic: never metered)."""
    dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


class Engine:
    """What the training loop needs from any data-parallel engine."""

    place: Place
    module: torch.nn.Module  # the unwrapped model (for evaluation and counting)
    meter: CommMeter
    expected_bytes_per_step: int
    hook_name: str

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's batch; returns the detached loss."""
        raise NotImplementedError

    def no_sync(self) -> ContextManager:
        """Gradient synchronisation off (for measuring exposed communication)."""
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


def build_engine(cfg, model: torch.nn.Module, place: Place) -> Engine:
    builder: Callable[..., Engine] = ENGINES.get(cfg.dist.backend)
    return builder(cfg, model, place)


from distbench.engines import ddp  # noqa: E402,F401  (registration)
