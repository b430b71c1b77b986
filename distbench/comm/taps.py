"""DDP comm hooks (torch's own), the bytes per step each is expected to send, and the taps that count
what they really send into a CommMeter. Only the DDP engine uses them; `distbench.checks` asks the
registry for valid names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from distbench.comm.meter import CommMeter, expected_bytes
from distbench.model.counts import trainable
from distbench.registry import Registry


class AllReduceTap:
    """While installed, every torch.distributed.all_reduce is counted as payload of the open step.

    Comm hooks are counted by what they really send: the fp16 hook's half-size copy, PowerSGD's
    uncompressed tensors, P and Q. PowerSGD launches its second all-reduce from a future callback, after
    the hook has returned, so wrapping the hook call alone would miss it; wrapping the collective does not.
    With `forward_sync_buffers=False` DDP issues no other collective inside a step, and collectives outside
    a bracketed step (evaluation, statistics) are ignored by the meter.
    """

    def __init__(self, meter: CommMeter) -> None:
        self.meter = meter
        self.original: Callable | None = None

    def install(self) -> None:
        original = self.original = dist.all_reduce

        def all_reduce(tensor, *args, **kwargs):
            self.meter.count("all_reduce", tensor, bucket=False)  # DDP's hook wrapper counts the buckets
            return original(tensor, *args, **kwargs)

        dist.all_reduce = all_reduce

    def uninstall(self) -> None:
        if self.original is not None:
            dist.all_reduce, self.original = self.original, None


def counting_buckets(meter: CommMeter, hook: Callable) -> Callable:
    """`hook`, also counting its calls (one per DDP bucket)."""

    # DDP inspects the hook's signature: `bucket` must be unannotated or dist.GradBucket itself, which
    # `from __future__ import annotations` would turn into a string.
    def counted(state, bucket):
        meter.count_bucket()
        return hook(state, bucket)

    return counted


@dataclass(frozen=True)
class CommHook:
    """A DDP comm hook (torch's own) and the bytes per step it is expected to send."""

    make: Callable[[Any], tuple[Any, Callable]]  # dist config -> (hook state, hook(state, bucket) -> Future)
    expected: Callable[[nn.Module, Any], int]  # (model, dist config) -> bytes per step


COMM_HOOKS: Registry = Registry("comm hook")


def _default_hooks():
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks


def powersgd_expected_bytes(model: nn.Module, rank: int) -> int:
    """PowerSGD's bytes per step once compression has started (Vogels et al. 2019; torch's powerSGD_hook):
    each gradient viewed as an n x m matrix (n = its first dimension) sends P (n x r) and Q (m x r) when
    torch's own test says compression pays, else the whole tensor; r = min(n, m, rank). fp32 throughout."""
    from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress

    total = 0
    for p in trainable(model):
        n = p.shape[0] if p.dim() else 1
        m = p.numel() // n
        r = min(n, m, rank)
        compress, _, _ = _should_compress(n, m, r, 2)  # PowerSGDState's default min_compression_rate
        total += ((n + m) * r if compress else p.numel()) * p.element_size()
    return total


def _powersgd(dc) -> tuple[Any, Callable]:
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    state = psgd.PowerSGDState(
        process_group=None, matrix_approximation_rank=dc.powersgd_rank, start_powerSGD_iter=dc.powersgd_start_iter
    )
    return state, psgd.powerSGD_hook


COMM_HOOKS.register("allreduce")(
    CommHook(make=lambda dc: (None, _default_hooks().allreduce_hook), expected=lambda model, dc: expected_bytes(model))
)
COMM_HOOKS.register("fp16")(
    CommHook(
        make=lambda dc: (None, _default_hooks().fp16_compress_hook),
        expected=lambda model, dc: expected_bytes(model, torch.float16),
    )
)
COMM_HOOKS.register("bf16")(
    CommHook(
        make=lambda dc: (None, _default_hooks().bf16_compress_hook),
        expected=lambda model, dc: expected_bytes(model, torch.bfloat16),
    )
)
COMM_HOOKS.register("powersgd")(
    CommHook(make=_powersgd, expected=lambda model, dc: powersgd_expected_bytes(model, dc.powersgd_rank))
)
