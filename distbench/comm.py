"""Communication accounting.

Two sides that a test holds equal:
- pure functions that say what the model must send (`expected_bytes`, `bus_bytes`, bandwidths);
- the CommMeter, which counts what really goes to a collective, from inside the DDP comm hook.

Definitions (ARCHITECTURE.md): payload bytes are the bytes of the tensors handed to a collective per
optimizer step; bus bytes per rank for a ring all-reduce are payload x 2(n-1)/n, and algbw / busbw are
as nccl-tests defines them (docs/PERFORMANCE.md there).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distbench.registry import Registry


# ------------------------------------------------------------------------------------------ pure functions
def tensor_bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """Bytes of `tensors` if each were held in `dtype` (default: its own dtype)."""
    return sum(t.numel() * (dtype or t.dtype).itemsize for t in tensors)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def expected_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Gradient bytes data parallelism must reduce per step: every trainable parameter, in the
    reduced dtype (its own, or e.g. float16 under a compression hook)."""
    return tensor_bytes(trainable(model), dtype)


def bus_bytes(payload_bytes: float, world_size: int) -> float:
    """Bytes each rank moves in a ring all-reduce of `payload_bytes`: 2(n-1)/n x payload
    (n-1 reduce-scatter steps and n-1 all-gather steps, each of payload/n)."""
    return payload_bytes * 2 * (world_size - 1) / world_size


def algbw(payload_bytes: float, seconds: float) -> float:
    """Algorithm bandwidth in bytes/s (nccl-tests): payload / time."""
    return payload_bytes / seconds if seconds > 0 else float("nan")


def busbw(payload_bytes: float, seconds: float, world_size: int) -> float:
    """All-reduce bus bandwidth in bytes/s (nccl-tests): algbw x 2(n-1)/n."""
    return bus_bytes(algbw(payload_bytes, seconds), world_size)


def named_fixed_weights(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """(qualified name, tensor) of the weights that exist but are never trained and so are buffers, not
    parameters (a fixed head's projection, a split conv's fixed filters). Modules name them in a
    `fixed_weights` attribute; a name set to None (a conv without bias) is no weight."""
    for prefix, m in model.named_modules():
        for name in getattr(m, "fixed_weights", ()):
            if (tensor := getattr(m, name)) is not None:
                yield (f"{prefix}.{name}" if prefix else name), tensor


def fixed_weights(model: nn.Module) -> Iterable[torch.Tensor]:
    return (tensor for _, tensor in named_fixed_weights(model))


def param_counts(model: nn.Module) -> dict[str, int]:
    """Weight counts for the record. Fixed weights count as frozen parameters, so `total` is the same
    for a learned and a fixed head of the same shape."""

    def count(m: nn.Module) -> tuple[int, int]:
        total = sum(p.numel() for p in m.parameters()) + sum(t.numel() for t in fixed_weights(m))
        return total, sum(p.numel() for p in trainable(m))

    from distbench.freeze import conv_learned_fraction

    total, learned = count(model)
    head_total, head_learned = count(model.head) if hasattr(model, "head") else (0, 0)
    return {
        "total": total,
        "trainable": learned,
        "frozen": total - learned,
        "head_total": head_total,
        "head_trainable": head_learned,
        "conv_learned_fraction": conv_learned_fraction(model),
    }


# ----------------------------------------------------------------------------------------------- the meter
@dataclass
class StepTraffic:
    bytes_by_op: dict[str, int]  # every collective the engine issued
    payload: int  # of which: gradient reduction
    buckets: int  # gradient-reduction calls


class CommMeter:
    """Counts the bytes handed to each collective, step by step.

    The training loop brackets each optimizer step with `start_step()` / `end_step()`; hooks call
    `count()` as they launch a collective. Counting happens at launch, on the host, so it costs no
    synchronisation.
    """

    def __init__(self) -> None:
        self._open: StepTraffic | None = None
        self.steps: list[StepTraffic] = []

    def count(self, op: str, tensor: torch.Tensor, payload: bool = True, bucket: bool | None = None) -> None:
        """`tensor` (the input handed to collective `op`) is about to be sent. `payload`: it carries
        gradients being reduced (as opposed to, e.g., ZeRO's all-gather of updated weights)."""
        self.count_bytes(op, tensor.numel() * tensor.element_size(), payload, bucket)

    def count_bytes(self, op: str, size: int, payload: bool = True, bucket: bool | None = None) -> None:
        """`bucket`: this call is one gradient-reduction call (default: any payload call is)."""
        if self._open is None:  # traffic outside a bracketed step (e.g. evaluation) is not training traffic
            return
        self._open.bytes_by_op[op] = self._open.bytes_by_op.get(op, 0) + size
        if payload:
            self._open.payload += size
        if payload if bucket is None else bucket:
            self._open.buckets += 1

    def count_bucket(self) -> None:
        if self._open is not None:
            self._open.buckets += 1

    def start_step(self) -> None:
        self._open = StepTraffic({}, 0, 0)

    def end_step(self) -> StepTraffic:
        step, self._open = self._open, None
        self.steps.append(step)
        return step

    def summary(self, steps: list[StepTraffic], world_size: int) -> dict[str, Any]:
        """Per-step averages over `steps` (the timed window). In DDP every step sends the same bytes,
        so the averages are exact integers; anything else is reported as a float, never rounded."""
        n = max(len(steps), 1)
        totals: dict[str, int] = defaultdict(int)
        for s in steps:
            for op, b in s.bytes_by_op.items():
                totals[op] += b

        def per_step(total: int) -> int | float:
            return total // n if total % n == 0 else total / n

        payload = per_step(sum(s.payload for s in steps))
        return {
            "payload_bytes_per_step": payload,
            "bus_bytes_per_step": bus_bytes(payload, world_size),
            "buckets_per_step": per_step(sum(s.buckets for s in steps)),
            "collectives": {op: per_step(b) for op, b in sorted(totals.items())},
        }


# ------------------------------------------------------------------------------------------------- hooks
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
        import torch.distributed as dist

        original = self.original = dist.all_reduce

        def all_reduce(tensor, *args, **kwargs):
            self.meter.count("all_reduce", tensor, bucket=False)  # DDP's hook wrapper counts the buckets
            return original(tensor, *args, **kwargs)

        dist.all_reduce = all_reduce

    def uninstall(self) -> None:
        import torch.distributed as dist

        if self.original is not None:
            dist.all_reduce, self.original = self.original, None


@dataclass(frozen=True)
class CommHook:
    """A DDP comm hook (torch's own) and the bytes per step it is expected to send."""

    make: Callable[[Any], tuple[Any, Callable]]  # dist config -> (hook state, hook(state, bucket) -> Future)
    expected: Callable[[nn.Module, Any], int]  # (model, dist config) -> bytes per step


COMM_HOOKS: Registry = Registry("comm hook")


def counting_buckets(meter: CommMeter, hook: Callable) -> Callable:
    """`hook`, also counting its calls (one per DDP bucket)."""

    # DDP inspects the hook's signature: `bucket` must be unannotated or dist.GradBucket itself, which
    # `from __future__ import annotations` would turn into a string.
    def counted(state, bucket):
        meter.count_bucket()
        return hook(state, bucket)

    return counted


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
