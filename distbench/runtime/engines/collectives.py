"""The collectives a model-parallel module may use (the sharded head), counted into the engine's meter.

Modules never import torch.distributed: the engine hands them one of these. Each call counts the bytes of
its input tensor (as the meter counts every collective) and then runs on the default process group. The
underlying c10d functions are called directly, not through `torch.distributed.all_reduce`, which the DDP
engine's Tap wraps: a call is counted here once.
"""

from __future__ import annotations

import torch
from torch.distributed import distributed_c10d as c10d

from distbench.comm.meter import CommMeter

OPS = {"sum": c10d.ReduceOp.SUM, "max": c10d.ReduceOp.MAX}


class Collectives:
    def __init__(self, meter: CommMeter) -> None:
        self.meter = meter
        self.rank, self.world_size = c10d.get_rank(), c10d.get_world_size()

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        self.meter.count("all_gather", t, bucket=False)
        out = t.new_empty((self.world_size * t.shape[0], *t.shape[1:]))
        c10d.all_gather_into_tensor(out, t)
        return out

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor:
        self.meter.count("reduce_scatter", t, bucket=False)
        out = t.new_empty((t.shape[0] // self.world_size, *t.shape[1:]))
        c10d.reduce_scatter_tensor(out, t)
        return out

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        self.meter.count("all_reduce", t, bucket=False)
        c10d.all_reduce(t, op=OPS[op])
        return t
