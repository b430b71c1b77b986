"""torch's FSDP2 (`torch.distributed.fsdp.fully_shard`), one shard group per block, with the meter and
records of the other engines.

Sharding. `shard_units(model)` (distbench.comm.expected) lists the modules `fully_shard` wraps one by one, in
forward order: each top-level child of the backbone that has parameters or, where that child is a container
(nn.Sequential, nn.ModuleList, nn.ModuleDict), each of its children that has parameters; then the head. That is the tiny
CNN's four conv-BN-ReLU stages, a ResNet's stem conv, stem BN and every BasicBlock/Bottleneck, a WRN's stem
conv, its blocks and its last BN. The root is wrapped last and keeps whatever is left (parameters held by the
backbone or the Classifier itself; none in distbench's models). Buffers (BatchNorm statistics, fixed heads'
matrices, split convs' fixed filters) are never sharded or gathered: FSDP2 shards nn.Parameters only.

Counting. FSDP2 sends through two torch.distributed functions, looked up on the module at call time
(torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py, torch 2.14): `DefaultReduceScatter.__call__` ->
`dist.reduce_scatter_single` (from `foreach_reduce`: one call per group in backward, holding the gradients
of the group's parameters that have one) and `DefaultAllGather.__call__` -> `dist.all_gather_single` (from
`foreach_all_gather`: one call per group each time it is unsharded). A `Tap` (distbench.comm.taps) wraps both
and counts the input tensor of each call: the reduce-scatter's
input (every rank's padded gradients) is the payload; the all-gather's input (this rank's padded shards)
shows only in `comm.collectives`. `dist.all_reduce` is wrapped too (FSDP2 uses it only for HSDP; the fp16
loss scaler agrees on overflow with it), never as payload.

Padding. FSDP2 shards dim 0 with torch.chunk and pads every rank's shard to the first (largest) one:
`FSDPParam._init_sharded_param` (_fsdp_param.py) and `_get_dim0_padded_size` (_fsdp_common.py), so a
parameter with d0 rows costs ceil(d0 / n) * n rows in the reduce-scatter and ceil(d0 / n) rows in each
rank's all-gather input. `distbench.comm.expected` reproduces that; `shard_units` lives there too, as what is
sharded decides what is sent.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from distbench.comm.expected import shard_rows, shard_units, step_traffic, unit_param_dtype
from distbench.comm.meter import CommMeter
from distbench.comm.taps import Counted, Tap
from distbench.model.contracts import MasksFilters
from distbench.model.counts import named_fixed_weights, trainable
from distbench.model.loss import cross_entropy
from distbench.runtime.checkpoint import atomic_save, load_tensors
from distbench.runtime.engines.base import ENGINES, Engine, Place
from distbench.runtime.optim import autocast, autocast_dtype, build_optimizer
from distbench.runtime.timing import region

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def mixed_precision(device: torch.device, amp_dtype: torch.dtype | None) -> tuple[torch.dtype | None, ...]:
    """(parameter dtype, gradient reduce dtype) of FSDP2's MixedPrecisionPolicy; None: the parameter's own.
    On GPU the parameters are gathered and used in the autocast dtype and the gradients reduced in fp32
    (torchtitan's policy); on CPU everything stays fp32 and autocast alone applies, as under DDP."""
    if device.type == "cuda" and amp_dtype is not None:
        return amp_dtype, torch.float32
    return None, None


# ----------------------------------------------------------------------------------------------- the tap
# torch.distributed function -> (collective, input argument's name, its position, payload)
# torch.distributed's functions FSDP2 sends through: the reduce-scatter's input (every rank's padded gradients)
# is the payload; the all-gather's (this rank's padded shards) and the all-reduce's are not.
FSDP_COLLECTIVES = {
    "reduce_scatter_single": Counted("reduce_scatter", "input", 1, payload=True),
    "all_gather_single": Counted("all_gather", "input_tensor", 1, payload=False),
    "all_reduce": Counted("all_reduce", "tensor", 0, payload=False),
}


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
        if isinstance(m, MasksFilters):
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

        self.place, self.module, self.meter = place, model, CommMeter(place.device)
        self.amp_dtype = autocast_dtype(cfg.train.precision, place.device)
        self.param_dtype, self.reduce_dtype = mixed_precision(place.device, self.amp_dtype)
        n = place.world_size
        traffic = step_traffic(
            model, "fsdp", n, cfg.train.batch_size, reduce_dtype=self.reduce_dtype, param_dtype=self.param_dtype
        )
        self.expected_bytes_per_step = traffic.payload_bytes
        self.expected_all_gather_bytes_per_step = traffic.by_op.get("all_gather", 0)
        masked = _masked_convs(model)
        # No channels-last here (unlike DDP): FSDP2 shards contiguous parameters only (_fsdp_param.py).
        model.to(place.device)
        self.units = shard_units(model)
        for unit in self.units:
            policy = MixedPrecisionPolicy(
                param_dtype=unit_param_dtype(unit, self.param_dtype), reduce_dtype=self.reduce_dtype
            )
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype))
        self.masks = [(getattr(m, name), rows) for m, name, rows in masked]  # the sharded Parameters now
        self.optimizer = build_optimizer(cfg.train, trainable(model))
        # The sharded scaler agrees on overflow across ranks: each rank checks only its own shard.
        self.scaler = ShardedGradScaler(place.device.type, enabled=self.amp_dtype is torch.float16)
        self.tap = Tap(self.meter, "torch.distributed", FSDP_COLLECTIVES).install()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with region("forward"), autocast(self.place.device, self.amp_dtype):
            loss = cross_entropy(self.module(x), y)
        with region("backward"):
            self.scaler.scale(loss).backward()
        self.meter.backward_done()
        with region("optimizer"):
            self._mask_gradients()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.detach()

    def reduction_layout(self) -> list[list[str]]:
        """The parameters of each reduce-scatter of a step, in launch order: one per group with a trainable
        parameter, last unit first (backward runs the groups in reverse); the root's own group, if it has
        one, last."""
        names = {id(p): n for n, p in self.module.named_parameters()}
        groups = [[names[id(p)] for p in u.parameters() if p.requires_grad] for u in self.units]
        return [g for g in reversed(groups) if g]

    @torch.no_grad()
    def _mask_gradients(self) -> None:
        for p, rows in self.masks:
            if p.grad is None:
                continue
            # This rank's shard starts at row rank x ceil(d0 / n) (FSDP2's torch.chunk layout).
            start = self.place.rank * shard_rows(p, self.place.world_size)
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
