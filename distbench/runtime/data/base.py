"""What every data set shares: the registry, where a rank sits (`Shard`), the `Dataset` interface (infinite
per-rank training batches, a finite per-rank share of held-out batches, already on the device), and the
counter-based hashing the synthetic sets generate from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from distbench.config import Registry

Batch = tuple[torch.Tensor, torch.Tensor]
DATASETS: Registry = Registry("dataset")


@dataclass
class Shard:
    """Where this process sits: the data it reads depends on it."""

    rank: int
    world_size: int
    device: torch.device


@dataclass
class Dataset:
    num_classes: int
    # infinite; train(start) begins at step `start`, exactly where a run that took `start` steps was (resume)
    train: Callable[..., Iterator[Batch]]
    eval: Callable[[], Iterator[Batch]]  # this rank's share of the held-out set, finite
    eval_size: int  # held-out samples over all ranks (tokens, for text)
    # Held-out samples of this rank that the Bayes-optimal classifier gets right (synthetic data only).
    oracle_hits: Callable[[], int] | None = None
    # The Bayes-optimal classifier's cross-entropy summed over this rank's held-out samples (synthetic text).
    oracle_loss_sum: Callable[[], float] | None = None
    # Files this rank skipped as unreadable so far (imagefolder --skip-bad-images); None: it cannot skip.
    skipped: Callable[[], set[str]] | None = None


def eval_count(available: int, eval_samples: int) -> int:
    """Held-out samples to evaluate: --eval-samples of those available, or all of them for 0."""
    return available if eval_samples <= 0 else min(available, eval_samples)


def eval_share(total: int, shard: Shard) -> range:
    """Indices of `total` held-out samples that this rank evaluates (rank::world, no padding)."""
    return range(shard.rank, total, shard.world_size)


def stream_generator(seed: int, stream: int, shard: Shard, device: torch.device | None = None) -> torch.Generator:
    """The seeded generator of one stream of draws, distinct per rank: stream 1 is the held-out set, 2 + s
    training step s (so held-out samples are never trained on, and a resume at step s draws nothing to get
    there). On the shard's device unless `device` says otherwise."""
    gen = torch.Generator(device=device or shard.device)
    return gen.manual_seed((seed * 1_000_003 + stream) * 65_537 + shard.rank)


def _hash_uniform(keys: torch.Tensor) -> torch.Tensor:
    """Counter-based uniform(0, 1) from int64 keys: a 32-bit integer bijection (xorshift-multiply),
    so distinct keys < 2^32 give distinct values. Products stay below 2^58: no int64 overflow."""
    x = keys & 0xFFFFFFFF
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & 0xFFFFFFFF
    x = (x >> 16) ^ x
    return (x.to(torch.float64) + 0.5) / 2.0**32
