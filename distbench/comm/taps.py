"""How the meter sees what really goes to a collective: one `Tap` mechanism for every engine, and DDP's comm
hooks (torch's own).

A Tap wraps named collective functions of a namespace (`torch.distributed` for DDP and FSDP2,
`deepspeed.comm` for DeepSpeed) while installed, and counts the bytes of each call's input tensor(s) into a
CommMeter before the call goes on: counting at launch, on the host, costs no synchronisation. A wrapper that
calls another wrapped function (DeepSpeed's do) is counted once. What counts as payload is declared per
function, or, where an engine sends gradients and other traffic through the same function (DeepSpeed),
decided by reduction points: methods the engine marks, inside which a call is payload.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from distbench.comm.meter import CommMeter
from distbench.config import Registry
from distbench.model.counts import tensor_bytes


@dataclass(frozen=True)
class Counted:
    """How a tapped function is counted: as collective `op`, by its input `arg` (keyword name, or position
    `pos`). `payload`: True or False, or None for "while a reduction point is open". `bucket`: the call is
    one gradient-reduction call (None: any payload call is; False: the engine counts its buckets itself)."""

    op: str
    arg: str
    pos: int
    payload: bool | None = True
    bucket: bool | None = None


def _input_bytes(arg: Any) -> int:
    if isinstance(arg, torch.Tensor):
        return tensor_bytes([arg])
    if isinstance(arg, list | tuple):
        return tensor_bytes([t for t in arg if isinstance(t, torch.Tensor)])
    return 0


def _dtype(arg: Any) -> torch.dtype | None:
    if isinstance(arg, torch.Tensor):
        return arg.dtype
    first = next((t for t in arg if isinstance(t, torch.Tensor)), None) if isinstance(arg, list | tuple) else None
    return first.dtype if first is not None else None


class Tap:
    """While installed, the functions of `namespace` named in `table` are counted into `meter`."""

    def __init__(self, meter: CommMeter, namespace: str, table: dict[str, Counted]) -> None:
        self.meter, self.namespace, self.table = meter, namespace, table
        self.depth = 0  # nested tapped calls (one wrapper calling another) are counted once
        self.reducing = 0  # open reduction points
        self.saved: dict[str, Callable] = {}

    def install(self) -> Tap:
        module = importlib.import_module(self.namespace)
        for name, counted in self.table.items():
            original = getattr(module, name, None)
            if original is not None:  # a function this version of the namespace lacks is not sent through
                self.saved[name] = original
                setattr(module, name, self._wrap(original, counted))
        return self

    def uninstall(self) -> None:
        module = importlib.import_module(self.namespace)
        for name, original in self.saved.items():
            setattr(module, name, original)
        self.saved.clear()

    def _wrap(self, fn: Callable, c: Counted) -> Callable:
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            if self.depth == 0:
                arg = kwargs[c.arg] if c.arg in kwargs else (args[c.pos] if len(args) > c.pos else None)
                size = _input_bytes(arg)
                if size:
                    payload = self.reducing > 0 if c.payload is None else c.payload
                    self.meter.count_bytes(c.op, size, payload=payload, bucket=c.bucket, dtype=_dtype(arg))
            self.depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth -= 1

        return counted

    def mark_reduction_points(self, obj: Any, names: tuple[str, ...]) -> None:
        """Calls made inside the methods `names` of `obj` (where it has them) count as payload."""
        for name in names:
            method = getattr(obj, name, None)
            if method is None:
                continue

            def marked(*args, _method=method, **kwargs):
                self.reducing += 1
                try:
                    return _method(*args, **kwargs)
                finally:
                    self.reducing -= 1

            setattr(obj, name, marked)


# DDP: with `forward_sync_buffers=False` it issues no other collective inside a step. Comm hooks are counted by
# what they really send (the fp16 hook's half-size copy; PowerSGD's uncompressed tensors, P and Q: it launches
# its second all-reduce from a future callback, after the hook has returned, so wrapping the hook call alone
# would miss it). `counting_buckets` counts the buckets.
DDP_COLLECTIVES = {"all_reduce": Counted("all_reduce", "tensor", 0, payload=True, bucket=False)}


def counting_buckets(meter: CommMeter, hook: Callable, names: dict[int, str] | None = None) -> Callable:
    """`hook`, also counting its calls (one per DDP bucket) and naming each bucket's parameters (`names`:
    id of a parameter -> its name), so that what the hook sends is attributed to its bucket. In a profiled
    run each bucket's collectives are a range of their own in the trace."""
    from distbench.runtime.timing import region

    # DDP inspects the hook's signature: `bucket` must be unannotated or dist.GradBucket itself, which
    # `from __future__ import annotations` would turn into a string.
    def counted(state, bucket):
        params = [names.get(id(p), "?") for p in bucket.parameters()] if names else None
        index = meter.count_bucket(params)
        try:
            with region(f"bucket {index} reduction"):
                return hook(state, bucket)
        finally:
            meter.bucket_done()

    return counted


# ------------------------------------------------------------------------------------------ DDP comm hooks
@dataclass(frozen=True)
class CommHook:
    """A DDP comm hook (torch's own): dist config -> (hook state, hook(state, bucket) -> Future). What it sends
    is `distbench.comm.expected.hook_bytes`."""

    make: Callable[[Any], tuple[Any, Callable]]


COMM_HOOKS: Registry = Registry("comm hook")


def _default_hooks():
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks


def _powersgd(dc) -> tuple[Any, Callable]:
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    state = psgd.PowerSGDState(
        process_group=None, matrix_approximation_rank=dc.powersgd_rank, start_powerSGD_iter=dc.powersgd_start_iter
    )
    return state, psgd.powerSGD_hook


COMM_HOOKS.register("allreduce")(CommHook(make=lambda dc: (None, _default_hooks().allreduce_hook)))
COMM_HOOKS.register("fp16")(CommHook(make=lambda dc: (None, _default_hooks().fp16_compress_hook)))
COMM_HOOKS.register("bf16")(CommHook(make=lambda dc: (None, _default_hooks().bf16_compress_hook)))
COMM_HOOKS.register("powersgd")(CommHook(make=_powersgd))
