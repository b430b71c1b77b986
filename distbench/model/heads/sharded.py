"""The `sharded` head: a learned head split by classes over the data-parallel ranks.

What large-class training does instead of replicating the head (insightface's PartialFC, without its class
sampling; Megatron-LM's vocab-parallel cross-entropy for the loss). Rank r of n holds rows
[r C / n, (r + 1) C / n) of W and b. A step:

    forward   features of every rank all-gathered (B x N per rank -> nB x N), labels too (B int64);
              each rank computes its shard's logits for all nB samples; the softmax cross-entropy is
              exact across shards: the row max, the sum of exponentials and the target logit are
              all-reduced (3 x nB floats)
    backward  the head's weight gradient is local (every rank saw every sample): never communicated;
              the feature gradient is reduce-scattered back to the rank whose sample it is (nB x N in)

so what it sends grows with B x N, not with C x N
(`distbench.comm.expected.sharded_head_collectives`). The backbone stays
replicated under DDP and sends its gradients as usual.

No process group here: the engine hands the head a collectives object (`distbench.runtime.engines.collectives`),
counted into its meter; until then the head is a world of one (`LocalCollectives`) and equals `learned`.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


class Collectives(Protocol):
    rank: int
    world_size: int

    def all_gather(self, t: torch.Tensor) -> torch.Tensor: ...  # concatenated along dim 0, rank order
    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor: ...  # summed, this rank's dim-0 slice
    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor: ...  # in place


class LocalCollectives:
    """A world of one: every collective is the identity."""

    rank, world_size = 0, 1

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return t


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """The classes [lo, hi) of rank `rank`'s shard (sizes differ by at most one)."""
    return rank * num_classes // world_size, (rank + 1) * num_classes // world_size


class _Gather(torch.autograd.Function):
    """All-gather forward, reduce-scatter backward (the all-gather's adjoint), times n: the loss below is
    the mean over the whole global batch already, and DDP then averages the backbone's gradients over the
    n ranks, which would leave them n times too small."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Collectives) -> torch.Tensor:
        ctx.comm = comm
        return comm.all_gather(x.contiguous())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.comm.reduce_scatter(grad.contiguous()) * ctx.comm.world_size, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Per-sample softmax cross-entropy of logits split by classes over the ranks (Megatron-LM's
    `_VocabParallelCrossEntropy`). Forward: three all-reduces of one float per sample; backward: local."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, labels: torch.Tensor, first: int, comm: Collectives) -> torch.Tensor:
        z = z.float()
        zmax = comm.all_reduce(z.max(dim=1).values, "max")
        z = z - zmax[:, None]
        exp = z.exp()
        total = comm.all_reduce(exp.sum(dim=1))
        mine = (labels >= first) & (labels < first + z.shape[1])
        index = (labels - first).clamp(0, z.shape[1] - 1)
        target = torch.where(mine, z.gather(1, index[:, None]).squeeze(1), torch.zeros_like(total))
        target = comm.all_reduce(target)
        softmax = exp.div_(total[:, None])
        ctx.save_for_backward(softmax, mine, index)
        return total.log() - target

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        softmax, mine, index = ctx.saved_tensors
        g = softmax.clone()
        rows = mine.nonzero().squeeze(1)
        g[rows, index[rows]] -= 1.0
        return g * grad[:, None], None, None, None


class ShardedHead(nn.Module):
    """A learned N -> C head whose rows are split over the ranks once `shard` is called."""

    sharded = True  # the engine wraps only the backbone for data parallelism and calls `shard`

    def __init__(self, in_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        # Drawn exactly as `learned` draws its layer (same RNG use), then cut: the same initial weights.
        full = nn.Linear(in_features, num_classes, bias=bias)
        self.weight, self.bias = full.weight, full.bias
        self.in_features, self.num_classes, self.first = in_features, num_classes, 0
        self.comm: Collectives = LocalCollectives()

    def extra_repr(self) -> str:
        rows = f"classes {self.first}..{self.first + self.weight.shape[0] - 1} of {self.num_classes}"
        return f"in_features={self.in_features}, {rows}, ranks={self.comm.world_size}"

    @torch.no_grad()
    def shard(self, comm: Collectives) -> None:
        """Keep this rank's rows and talk through `comm` from now on."""
        lo, hi = class_range(self.num_classes, comm.rank, comm.world_size)
        self.weight = nn.Parameter(self.weight[lo:hi].clone())
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias[lo:hi].clone())
        self.first, self.comm = lo, comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """This shard's logits for every rank's samples: (n B) x (C / n)."""
        return F.linear(_Gather.apply(x, self.comm), self.weight, self.bias)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of each of the n B samples of the global batch, the same on every rank."""
        return _ShardedCrossEntropy.apply(self(x), self.comm.all_gather(y), self.first, self.comm)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean cross-entropy over the global batch (what DDP's averaging gives a replicated head)."""
        return self.losses(x, y).mean()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k over all C classes and the cross-entropy, for this rank's own B samples.
        Each shard's top-k (global class ids) is all-gathered and merged. Ranks with fewer samples (the
        last batch of a share, or none) pad to the largest B, so every rank gathers equal shapes."""
        n, b = self.comm.world_size, x.shape[0]
        width = int(self.comm.all_reduce(torch.tensor([b], device=x.device), "max").item())
        if width > b:
            x = torch.cat([x, x.new_zeros((width - b, *x.shape[1:]))])
            y = torch.cat([y, y.new_zeros(width - b)])
        b, kept = width, b
        z = self(x).float()
        losses = _ShardedCrossEntropy.apply(z, self.comm.all_gather(y), self.first, self.comm)
        kk = min(k, self.num_classes)
        values, index = z.topk(min(kk, z.shape[1]), dim=1)
        if values.shape[1] < kk:  # a shard smaller than k: pad with entries that never win
            pad = kk - values.shape[1]
            values = F.pad(values, (0, pad), value=-torch.inf)
            index = F.pad(index, (0, pad), value=0)
        values = self.comm.all_gather(values.contiguous())  # n blocks of (n B) x kk, rank order
        index = self.comm.all_gather((index + self.first).contiguous())
        values = values.view(n, n * b, kk).permute(1, 0, 2).reshape(n * b, n * kk)
        index = index.view(n, n * b, kk).permute(1, 0, 2).reshape(n * b, n * kk)
        best = index.gather(1, values.topk(kk, dim=1).indices)
        mine = slice(self.comm.rank * b, self.comm.rank * b + kept)
        return best[mine], losses[mine]
