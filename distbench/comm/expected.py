"""What a step sends, as the model says it must: the one owner of expected traffic.

`step_traffic(model, engine, world_size, batch_size, ...)` lists every collective one optimizer step hands
bytes to on each rank (the input of each call, as the meter counts them), for every engine, comm hook and
head: the engines set their `expected_bytes_per_step` from it and tests hold it equal to the meter; the dry
run, the counts table and the planner print it. `traffic_for(cfg, model, world_size)` derives the settings
from a run's config. Pure functions of the module tree: no process group, and a model built on the meta
device is enough.

- DDP: every trainable parameter all-reduced, in the reduced dtype (halved by the fp16 and bf16 hooks;
  PowerSGD sends P and Q, Vogels et al. 2019). A head sharded by classes is model parallel: only the backbone
  is all-reduced, and the head's own collectives (features and labels gathered, three floats per sample
  all-reduced, the feature gradient reduce-scattered) replace its weight gradient.
- FSDP2: the gradients reduce-scattered with dim 0 padded to a multiple of the ranks; each rank's padded
  shards all-gathered once per unit in forward and again, for the units gradient reaches, in backward.
- DeepSpeed ZeRO 0-2: every trainable gradient reduced in the communication dtype. ZeRO-3: reduce-scattered
  with padding to the ranks (or, with its reduce-scatter off, buckets all-reduced whole). ZeRO's parameter
  all-gathers are counted by the meter but not predicted here.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from distbench.model.contracts import is_sharded, positions
from distbench.model.counts import tensor_bytes, trainable

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass(frozen=True)
class Collective:
    """One collective of a step: `bytes` handed to `op` on each rank. `payload`: it replaces a gradient
    reduction (the bytes a technique saves or not), as the meter's payload does."""

    op: str
    bytes: int
    payload: bool
    what: str


@dataclass(frozen=True)
class Traffic:
    """Every collective of one optimizer step, on each rank."""

    collectives: tuple[Collective, ...]

    @property
    def payload_bytes(self) -> int:
        return sum(c.bytes for c in self.collectives if c.payload)

    @property
    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.collectives:
            out[c.op] = out.get(c.op, 0) + c.bytes
        return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------- DDP
def expected_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Gradient bytes data parallelism must reduce per step: every trainable parameter, in the reduced dtype
    (its own, or e.g. float16 under a compression hook)."""
    return tensor_bytes(trainable(model), dtype)


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


HOOK_DTYPES = {"allreduce": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def hook_bytes(model: nn.Module, hook: str, powersgd_rank: int = 1) -> int:
    """What DDP's comm hook `hook` all-reduces per step for `model`'s gradients."""
    if hook == "powersgd":
        return powersgd_expected_bytes(model, powersgd_rank)
    return expected_bytes(model, HOOK_DTYPES[hook])


def sharded_head_collectives(
    batch_size: int, in_features: int, world_size: int, activation_dtype: torch.dtype = torch.float32
) -> tuple[Collective, ...]:
    """The sharded head's collectives per step: features and labels gathered, three per-sample floats
    all-reduced (the softmax's max, sum and the true class's logit), the feature gradient reduce-scattered.
    None of it grows with the number of classes; a world of one sends nothing."""
    b, n, size = batch_size, world_size, activation_dtype.itemsize
    if n == 1:
        return ()
    return (
        Collective("all_gather", b * in_features * size + b * torch.int64.itemsize, True, "head features, labels"),
        Collective("all_reduce", 3 * n * b * torch.float32.itemsize, True, "softmax statistics"),
        Collective("reduce_scatter", n * b * in_features * size, True, "feature gradients"),
    )


# ---------------------------------------------------------------------------------------------------- FSDP
def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that get their own FSDP2 `fully_shard` group, in forward order: each top-level child of the
    backbone that has parameters or, where that child is a container, each of its children that has
    parameters; then the head (see distbench.runtime.engines.fsdp). Modules that share a parameter are left to
    the root group."""
    backbone, head = getattr(model, "backbone", model), getattr(model, "head", None)
    units = []
    for child in backbone.children():
        units += [m for m in child.children() if _has_params(m)] if isinstance(child, CONTAINERS) else [child]
    if head is not None:
        units.append(head)
    units = [m for m in units if _has_params(m)]
    # A parameter in two units (a tied head's embedding) stays in the root group: gathered before the first use
    # and held to the last (the root is not resharded after forward), its gradient summed and reduced once.
    owners = Counter(id(p) for m in units for p in m.parameters())
    return [m for m in units if all(owners[id(p)] == 1 for p in m.parameters())]


def unit_param_dtype(unit: nn.Module, param_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype `unit`'s parameters are gathered in. A unit holding a BatchNorm keeps them in fp32: the
    policy casts a whole group, and batch_norm takes bf16 weights only beside bf16 running statistics (the CPU
    kernel refuses the mix: "expected scalar type BFloat16 but found Float"), which stay fp32 as under DDP."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in unit.modules()):
        return None
    return param_dtype


def shard_rows(p: torch.Tensor, world_size: int) -> int:
    """Rows of dim 0 in each rank's padded shard: ceil(d0 / n) (torch.chunk's first chunk)."""
    return math.ceil(p.shape[0] / world_size)


def _shard_bytes(p: torch.Tensor, world_size: int, dtype: torch.dtype | None) -> int:
    return shard_rows(p, world_size) * math.prod(p.shape[1:]) * (dtype or p.dtype).itemsize


def fsdp_expected_bytes(model: nn.Module, world_size: int, reduce_dtype: torch.dtype | None = None) -> int:
    """Gradient bytes FSDP2 reduce-scatters per step: every trainable parameter, dim 0 padded to a multiple of
    the world size, in `reduce_dtype` (default: the parameter's own). A world of one sends nothing:
    `foreach_reduce` copies the gradient instead of reducing it."""
    if world_size == 1:
        return 0
    return sum(world_size * _shard_bytes(p, world_size, reduce_dtype) for p in trainable(model))


def fsdp_all_gather_bytes(model: nn.Module, world_size: int, param_dtype: torch.dtype | None = None) -> int:
    """All-gather input bytes per step on each rank (its padded shards, in `param_dtype` where mixed precision
    casts them: `unit_param_dtype`), for the groups `shard_units` makes, with fully_shard's default resharding:

    - forward: every group is gathered once (frozen parameters too: the forward needs them);
    - backward: the root group is never resharded after forward (fully_shard's default for the root,
      `FSDPState._lazy_init`), so only the unit groups are gathered again: each one that gradient reaches
      (its forward output requires grad: it or a unit before it has a trainable parameter) and, before the
      first of those, the one before it, which that first one's pre-backward prefetches
      (`FSDPParamGroup._backward_prefetch`, _fsdp_param_group.py).

    Assumes the units run in the order `shard_units` lists them, each feeding the next, and that the root's
    own parameters (if any) are used before them. A world of one gathers nothing (`FSDPParamGroup.unshard`)."""
    if world_size == 1:
        return 0

    def gathered(params, dtype: torch.dtype | None) -> int:
        return sum(_shard_bytes(p, world_size, dtype if p.is_floating_point() else None) for p in params)

    def unit(u: nn.Module) -> int:
        return gathered(u.parameters(), unit_param_dtype(u, param_dtype))

    units = shard_units(model)
    in_units = {id(p) for u in units for p in u.parameters()}
    root = [p for p in model.parameters() if id(p) not in in_units]
    learns = [any(p.requires_grad for p in u.parameters()) for u in units]
    first = 0 if any(p.requires_grad for p in root) else next((i for i, t in enumerate(learns) if t), len(units))
    again = units[max(first - 1, 0) :] if first < len(units) else []
    return gathered(root, param_dtype) + sum(unit(u) for u in [*units, *again])


# ----------------------------------------------------------------------------------------------- DeepSpeed
def zero3_reduced_bytes(
    numels: list[int], world_size: int, dtype: torch.dtype, reduce_scatter: bool = True, bucket: int = 0
) -> int:
    """Gradient bytes ZeRO-3 hands to its reduction per step, for trainable parameters of `numels` elements.

    The reduce-scatter (runtime/comm/coalesced_collectives.py, reduce_scatter_coalesced) pads each gradient
    to a multiple of the world size, ceil(numel / n) elements per rank, so every rank's slice of the
    coalesced buffer lines up with its partition. With {"reduce_scatter": false} and contiguous gradients,
    a bucket of at most `bucket` elements is all-reduced whole, unpadded; a gradient larger than the bucket
    is reduced alone, through the padded reduce-scatter again (stage3.py, __reduce_and_partition_ipg_grads).
    """

    def reduced(numel: int) -> int:
        if not reduce_scatter and numel <= bucket:
            return numel
        return -(-numel // world_size) * world_size

    return sum(reduced(n) for n in numels) * dtype.itemsize


# --------------------------------------------------------------------------------------------- one step
def step_traffic(
    model: nn.Module,
    engine: str,
    world_size: int,
    batch_size: int,
    *,
    hook: str = "allreduce",
    powersgd_rank: int = 1,
    zero_stage: int = 0,
    reduce_dtype: torch.dtype | None = None,
    param_dtype: torch.dtype | None = None,
    activation_dtype: torch.dtype = torch.float32,
    zero3_reduce_scatter: bool = True,
    zero3_bucket: int = 0,
    numels: list[int] | None = None,
) -> Traffic:
    """Every collective one optimizer step of `model` sends on each rank under `engine` ("ddp", "fsdp" or
    "deepspeed") at `world_size` ranks of `batch_size` samples. `reduce_dtype`: the gradients' reduced dtype
    under FSDP and DeepSpeed (None: the parameters' own); `param_dtype`: FSDP's gather dtype; `numels`: the
    trainable parameters' sizes where the model no longer shows them (ZeRO-3 empties what it partitions)."""
    head = getattr(model, "head", None)
    if engine == "ddp":
        if is_sharded(head):
            backbone = Collective("all_reduce", hook_bytes(model.backbone, hook, powersgd_rank), True, "gradients")
            rows = batch_size * positions(model.backbone)  # a language model: a feature row per position
            rest = sharded_head_collectives(rows, head.in_features, world_size, activation_dtype)
            return Traffic((backbone, *rest))
        return Traffic((Collective("all_reduce", hook_bytes(model, hook, powersgd_rank), True, "gradients"),))
    if engine == "fsdp":
        if world_size == 1:
            return Traffic(())
        return Traffic(
            (
                Collective("reduce_scatter", fsdp_expected_bytes(model, world_size, reduce_dtype), True, "gradients"),
                Collective("all_gather", fsdp_all_gather_bytes(model, world_size, param_dtype), False, "parameters"),
            )
        )
    if engine == "deepspeed":
        dtype = reduce_dtype or torch.float32
        sizes = numels if numels is not None else [p.numel() for p in trainable(model)]
        if zero_stage == 3:
            sent = zero3_reduced_bytes(sizes, world_size, dtype, zero3_reduce_scatter, zero3_bucket)
            return Traffic((Collective("reduce_scatter", sent, True, "gradients"),))
        return Traffic((Collective("all_reduce", sum(sizes) * dtype.itemsize, True, "gradients"),))
    raise ValueError(f"unknown engine {engine!r}")


def traffic_for(cfg, model: nn.Module, world_size: int, device: torch.device | None = None) -> Traffic:
    """`step_traffic` with the settings a run of `cfg` (a RunConfig) would use on `device` (default: the CPU):
    for the dry run, the counts table and the planner. The engines pass their own, as really configured."""
    device = device or torch.device("cpu")
    precision = cfg.train.precision
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision == "auto":
        amp = torch.bfloat16 if device.type == "cuda" else None
    d = cfg.dist
    reduce_dtype = param_dtype = None
    if d.backend == "fsdp" and device.type == "cuda" and amp is not None:
        param_dtype, reduce_dtype = amp, torch.float32  # the FSDP engine's mixed-precision policy
    if d.backend == "deepspeed":
        reduce_dtype = amp or torch.float32  # DeepSpeed communicates in the model's dtype
    return step_traffic(
        model,
        d.backend,
        world_size,
        cfg.train.batch_size,
        hook=d.comm_hook,
        powersgd_rank=d.powersgd_rank,
        zero_stage=d.zero_stage,
        reduce_dtype=reduce_dtype,
        param_dtype=param_dtype,
        activation_dtype=amp or torch.float32,
    )
