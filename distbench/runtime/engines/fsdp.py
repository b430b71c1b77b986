"""torch's FSDP2 (`torch.distributed.fsdp.fully_shard`), one shard group per block, with the meter and
records of the other engines.

Sharding. `shard_units(model)` lists the modules `fully_shard` wraps one by one, in forward order: each
top-level child of the backbone that has parameters or, where that child is a container (nn.Sequential,
nn.ModuleList, nn.ModuleDict), each of its children that has parameters; then the head. That is the tiny
CNN's four conv-BN-ReLU stages, a ResNet's stem conv, stem BN and every BasicBlock/Bottleneck, a WRN's stem
conv, its blocks and its last BN. The root is wrapped last and keeps whatever is left (parameters held by the
backbone or the Classifier itself; none in distbench's models). Buffers (BatchNorm statistics, fixed heads'
matrices, split convs' fixed filters) are never sharded or gathered: FSDP2 shards nn.Parameters only.

Counting. FSDP2 sends through two torch.distributed functions, looked up on the module at call time
(torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py, torch 2.14): `DefaultReduceScatter.__call__` ->
`dist.reduce_scatter_single` (from `foreach_reduce`: one call per group in backward, holding the gradients
of the group's parameters that have one) and `DefaultAllGather.__call__` -> `dist.all_gather_single` (from
`foreach_all_gather`: one call per group each time it is unsharded). `FSDPTap` wraps both, as
engines/hooks.AllReduceTap wraps all_reduce, and counts the input tensor of each call: the reduce-scatter's
input (every rank's padded gradients) is the payload; the all-gather's input (this rank's padded shards)
shows only in `comm.collectives`. `dist.all_reduce` is wrapped too (FSDP2 uses it only for HSDP; the fp16
loss scaler agrees on overflow with it), never as payload.

Padding. FSDP2 shards dim 0 with torch.chunk and pads every rank's shard to the first (largest) one:
`FSDPParam._init_sharded_param` (_fsdp_param.py) and `_get_dim0_padded_size` (_fsdp_common.py), so a
parameter with d0 rows costs ceil(d0 / n) * n rows in the reduce-scatter and ceil(d0 / n) rows in each
rank's all-gather input. `fsdp_expected_bytes` and `fsdp_all_gather_bytes` reproduce that.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distbench.comm.meter import CommMeter
from distbench.model.counts import named_fixed_weights, trainable
from distbench.runtime.checkpoint import atomic_save, load_tensors
from distbench.runtime.engines.base import ENGINES, Engine, Place
from distbench.runtime.optim import autocast, autocast_dtype, build_optimizer

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


# ------------------------------------------------------------------------------------------ pure functions
def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that get their own `fully_shard` group, in forward order (see the module docstring)."""
    backbone, head = getattr(model, "backbone", model), getattr(model, "head", None)
    units = []
    for child in backbone.children():
        units += [m for m in child.children() if _has_params(m)] if isinstance(child, CONTAINERS) else [child]
    if head is not None:
        units.append(head)
    return [m for m in units if _has_params(m)]


def mixed_precision(device: torch.device, amp_dtype: torch.dtype | None) -> tuple[torch.dtype | None, ...]:
    """(parameter dtype, gradient reduce dtype) of FSDP2's MixedPrecisionPolicy; None: the parameter's own.
    On GPU the parameters are gathered and used in the autocast dtype and the gradients reduced in fp32
    (torchtitan's policy); on CPU everything stays fp32 and autocast alone applies, as under DDP."""
    if device.type == "cuda" and amp_dtype is not None:
        return amp_dtype, torch.float32
    return None, None


def unit_param_dtype(unit: nn.Module, param_dtype: torch.dtype | None) -> torch.dtype | None:
    """The dtype `unit`'s parameters are gathered in. A unit holding a BatchNorm keeps them in fp32: the
    policy casts a whole group, and batch_norm takes bf16 weights only beside bf16 running statistics (the CPU
    kernel refuses the mix: "expected scalar type BFloat16 but found Float"), which stay fp32 as under DDP.
    Autocast still runs the unit's convolutions in bf16."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in unit.modules()):
        return None
    return param_dtype


def _shard_rows(p: torch.Tensor, world_size: int) -> int:
    """Rows of dim 0 in each rank's padded shard: ceil(d0 / n) (torch.chunk's first chunk)."""
    return math.ceil(p.shape[0] / world_size)


def _shard_bytes(p: torch.Tensor, world_size: int, dtype: torch.dtype | None) -> int:
    return _shard_rows(p, world_size) * math.prod(p.shape[1:]) * (dtype or p.dtype).itemsize


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


# ----------------------------------------------------------------------------------------------- the tap
# torch.distributed function -> (collective, input argument's name, its position, payload)
COLLECTIVES: dict[str, tuple[str, str, int, bool]] = {
    "reduce_scatter_single": ("reduce_scatter", "input", 1, True),
    "all_gather_single": ("all_gather", "input_tensor", 1, False),
    "all_reduce": ("all_reduce", "tensor", 0, False),
}


class FSDPTap:
    """While installed, FSDP2's collectives are counted into `meter` (inside a bracketed step only: the meter
    ignores the rest, e.g. evaluation's all-gathers)."""

    def __init__(self, meter: CommMeter) -> None:
        self.meter = meter
        self.saved: dict[str, object] = {}

    def install(self) -> None:
        for name, (op, arg, pos, payload) in COLLECTIVES.items():
            original = self.saved[name] = getattr(dist, name)
            setattr(dist, name, self._wrap(original, op, arg, pos, payload))

    def _wrap(self, fn, op: str, arg: str, pos: int, payload: bool):
        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.meter.count(op, kwargs[arg] if arg in kwargs else args[pos], payload=payload)
            return fn(*args, **kwargs)

        return counted

    def uninstall(self) -> None:
        for name, original in self.saved.items():
            setattr(dist, name, original)
        self.saved.clear()


# ---------------------------------------------------------------------------------------------- the engine
def _masked_convs(model: nn.Module) -> list[tuple[nn.Module, str, int]]:
    """(module, parameter name, learned rows) of every parameter whose gradient --freeze-mode mask zeroes.

    freeze.py zeroes the fixed filters' rows in a gradient hook on the conv's Parameter and marks the conv
    with `learned_filters`. fully_shard replaces every Parameter by a sharded one and computes with
    unsharded copies, so hooks on the originals never run; the engine zeroes those rows of the reduced,
    sharded gradient instead (the mean of masked gradients is the masked mean: the same update, and the
    same bytes, as every row is still sent). A gradient hook of any other kind is refused."""
    masked = []
    for m in model.modules():
        if hasattr(m, "learned_filters"):
            masked += [(m, name, m.learned_filters) for name in ("weight", "bias") if getattr(m, name) is not None]
    known = {id(getattr(m, name)) for m, name, _ in masked}
    for name, p in model.named_parameters():
        if getattr(p, "_backward_hooks", None) and id(p) not in known:
            raise ValueError(f"--backend fsdp: parameter {name} has a gradient hook, which FSDP2 would drop")
    return masked


def _is_sharded(value) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def _local(value):
    return value.to_local() if _is_sharded(value) else value


@ENGINES.register("fsdp")
class FSDPEngine(Engine):
    hook_name = "fsdp2"
    collective_eval = True  # every forward all-gathers parameters: ranks evaluate batch for batch together

    def __init__(self, cfg, model: torch.nn.Module, place: Place) -> None:
        # Imported here: torch.distributed.tensor takes most of a second, which DDP runs need not pay.
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        self.place, self.module, self.meter = place, model, CommMeter()
        self.amp_dtype = autocast_dtype(cfg.train.precision, place.device)
        self.param_dtype, self.reduce_dtype = mixed_precision(place.device, self.amp_dtype)
        n = place.world_size
        self.expected_bytes_per_step = fsdp_expected_bytes(model, n, self.reduce_dtype)
        self.expected_all_gather_bytes_per_step = fsdp_all_gather_bytes(model, n, self.param_dtype)
        masked = _masked_convs(model)
        # No channels-last here (unlike DDP): FSDP2 shards contiguous parameters only (_fsdp_param.py).
        model.to(place.device)
        for unit in shard_units(model):
            policy = MixedPrecisionPolicy(
                param_dtype=unit_param_dtype(unit, self.param_dtype), reduce_dtype=self.reduce_dtype
            )
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype))
        self.masks = [(getattr(m, name), rows) for m, name, rows in masked]  # the sharded Parameters now
        self.optimizer = build_optimizer(cfg.train, trainable(model))
        # The sharded scaler agrees on overflow across ranks: each rank checks only its own shard.
        self.scaler = ShardedGradScaler(place.device.type, enabled=self.amp_dtype is torch.float16)
        self.tap = FSDPTap(self.meter)
        self.tap.install()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.place.device, self.amp_dtype):
            loss = F.cross_entropy(self.module(x), y)
        self.scaler.scale(loss).backward()
        self._mask_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    @torch.no_grad()
    def _mask_gradients(self) -> None:
        for p, rows in self.masks:
            if p.grad is None:
                continue
            # This rank's shard starts at row rank x ceil(d0 / n) (FSDP2's torch.chunk layout).
            start = self.place.rank * _shard_rows(p, self.place.world_size)
            local = p.grad.to_local()
            local[min(max(rows - start, 0), local.shape[0]) :].zero_()

    def no_sync(self):
        # FSDP2's set_requires_gradient_sync(False) keeps gradients on the unsharded parameters and gives the
        # sharded ones, which the optimizer holds, none: a step would update nothing and still all-gather, so
        # it would time different work. perf.exposed_comm_ms is null under FSDP.
        return None

    def save_checkpoint(self, directory: Path) -> None:
        # Each rank saves its own shards (local tensors: a DTensor would pickle its device mesh) and its own
        # buffers. Fixed weights are rebuilt from the seed, as under DDP.
        fixed = {name for name, _ in named_fixed_weights(self.module)}
        opt = self.optimizer.state_dict()
        sharded = [(i, k) for i, s in opt["state"].items() for k, v in s.items() if _is_sharded(v)]
        opt["state"] = {i: {k: _local(v) for k, v in s.items()} for i, s in opt["state"].items()}
        state = {
            "model": {k: _local(v) for k, v in self.module.state_dict().items() if k not in fixed},
            "optimizer": opt,
            "optimizer_sharded": sharded,
            "scaler": self.scaler.state_dict(),
        }
        atomic_save(state, directory / f"engine-rank{self.place.rank}.pt")

    def load_checkpoint(self, directory: Path) -> None:
        from torch.distributed.tensor import DTensor

        state = load_tensors(directory / f"engine-rank{self.place.rank}.pt", self.place.device)
        own = self.module.state_dict()
        fixed = {name for name, _ in named_fixed_weights(self.module)}
        missing, unexpected = set(own) - set(state["model"]) - fixed, set(state["model"]) - set(own)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for k, v in state["model"].items():
                _local(own[k]).copy_(v)  # in place: the local tensor is a view of FSDP2's padded shard
        opt = state["optimizer"]
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for i, k in state["optimizer_sharded"]:
            p = params[i]
            opt["state"][i][k] = DTensor.from_local(
                opt["state"][i][k], p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
            )
        self.optimizer.load_state_dict(opt)
        self.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:
        self.tap.uninstall()
