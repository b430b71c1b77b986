"""DeepSpeed (ZeRO stages 0-3) with the same meter and records as DDP.

Counting. DeepSpeed sends everything through `deepspeed.comm`; the meter wraps its collectives there and
counts the input tensor of each call (the same size DeepSpeed's own comms logger records). Bytes sent
while one of the engine's gradient-reduction points is on the stack are the payload:
- stage 0: DeepSpeedEngine.allreduce_bucket (runtime/engine.py);
- stages 1-2: DeepSpeedZeroOptimizer.average_tensor, allreduce_bucket, gradient_reduction_w_predivide
  (runtime/zero/stage_1_and_2.py);
- stage 3: DeepSpeedZeroOptimizer_Stage3.__avg_scatter_grads (reduce_scatter_coalesced, the default) and
  __avg_scatter_contiguous_grads (an all-reduce, with {"reduce_scatter": false}) (runtime/zero/stage3.py).
Everything else (ZeRO's all-gather of updated partitions, ZeRO-3's all-gather of parameters for forward and
backward, norms, overflow checks) shows only in `comm.collectives`. ZeRO-3 partitions and gathers parameters
only (runtime/zero/partition_parameters.py converts `module.parameters()`), so fixed weights, which are
buffers, are never sent; a frozen Parameter would be, in every step's all-gather.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from distbench.comm.expected import step_traffic
from distbench.comm.meter import CommMeter
from distbench.comm.taps import Counted, Tap
from distbench.model.counts import named_fixed_weights, trainable
from distbench.model.loss import cross_entropy
from distbench.runtime.checkpoint import atomic_save, load_tensors
from distbench.runtime.engines.base import ENGINES, Engine, Place
from distbench.runtime.optim import autocast_dtype, build_optimizer
from distbench.runtime.timing import region

# deepspeed.comm's functions: gradient reduction and other traffic go through the same ones, so payload is
# what is sent inside a reduction point (below).
DEEPSPEED_COLLECTIVES = {
    name: Counted(op, arg, pos, payload=None)
    for name, (op, arg, pos) in {
        "all_reduce": ("all_reduce", "tensor", 0),
        "inference_all_reduce": ("all_reduce", "tensor", 0),
        "all_reduce_coalesced": ("all_reduce", "tensors", 0),
        "reduce": ("reduce", "tensor", 0),
        "reduce_scatter_tensor": ("reduce_scatter", "tensor", 1),
        "reduce_scatter_fn": ("reduce_scatter", "tensor", 1),
        "reduce_scatter": ("reduce_scatter", "input_list", 1),
        "all_gather_into_tensor": ("all_gather", "tensor", 1),
        "allgather_fn": ("all_gather", "input_tensor", 1),
        "all_gather": ("all_gather", "tensor", 1),
        "all_gather_coalesced": ("all_gather", "input_tensors", 1),
        "broadcast": ("broadcast", "tensor", 0),
    }.items()
}
REDUCTION_POINTS = {
    "engine": ("allreduce_bucket",),
    "optimizer": (
        "average_tensor",
        "allreduce_bucket",
        "gradient_reduction_w_predivide",
        # stage 3's are private: `self.__avg_scatter_grads(...)` looks up the mangled name, so marking that
        # name on the instance catches every call
        "_DeepSpeedZeroOptimizer_Stage3__avg_scatter_grads",
        "_DeepSpeedZeroOptimizer_Stage3__avg_scatter_contiguous_grads",
    ),
}


def deepspeed_config(cfg, place: Place) -> dict[str, Any]:
    """The DeepSpeed config generated from the run config, then overlaid by --deepspeed-config."""
    tc, dc = cfg.train, cfg.dist
    amp = autocast_dtype(tc.precision, place.device)
    bucket = int(dc.bucket_cap_mb * 2**20 / 4)  # bucket sizes are in elements; DDP's in MiB of fp32
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": tc.batch_size * place.world_size,
        "zero_optimization": {
            "stage": dc.zero_stage,
            "reduce_bucket_size": bucket,
            "allgather_bucket_size": bucket,
            "overlap_comm": place.device.type == "cuda",
            "contiguous_gradients": True,
        },
        "bf16": {"enabled": amp is torch.bfloat16},
        "fp16": {"enabled": amp is torch.float16},
        # distbench passes its own torch optimizer (SGD is no DeepSpeed optimizer type); ZeRO >= 1
        # accepts it only with this flag.
        "zero_allow_untested_optimizer": True,
        # DeepSpeed clips the gradient norm at 1.0 unless told otherwise (GRADIENT_CLIPPING_DEFAULT in
        # runtime/constants.py, 0.19); DDP and FSDP do not clip, and every engine must take the same step.
        "gradient_clipping": 0.0,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "comms_logger": {"enabled": dc.validate_comm, "prof_all": True, "verbose": False, "debug": False},
    }
    if dc.deepspeed_config:
        with open(dc.deepspeed_config) as fh:
            conf = _overlay(conf, json.load(fh))
    optimizer = conf.get("optimizer")
    if optimizer and str(optimizer.get("type", "")).lower() in ("adam", "adamw"):
        # without torch_adam DeepSpeed JIT-builds fused Adam (~45 s on a CPU)
        optimizer.setdefault("params", {}).setdefault("torch_adam", True)
    return conf


def _overlay(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _overlay(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@ENGINES.register("deepspeed")
class DeepSpeedEngine(Engine):
    def __init__(self, cfg, model: torch.nn.Module, place: Place) -> None:
        if place.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        import deepspeed.comm as dscomm

        if place.device.type == "cpu":
            # Else every CPU start JIT-builds the shared-memory comm op (about a minute).
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.place, self.module, self.meter = place, model, CommMeter(place.device)
        self.config = deepspeed_config(cfg, place)
        params = trainable(model)
        numels = [p.numel() for p in params]  # ZeRO-3 empties the parameters it partitions
        client_optimizer = None if "optimizer" in self.config else build_optimizer(cfg.train, params)
        self.counter = Tap(self.meter, "deepspeed.comm", DEEPSPEED_COLLECTIVES)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=params,
            optimizer=client_optimizer,
            config=self.config,
            dist_init_required=False,
        )
        self.counter.mark_reduction_points(self.engine, REDUCTION_POINTS["engine"])
        self.counter.mark_reduction_points(self.engine.optimizer, REDUCTION_POINTS["optimizer"])
        self.counter.install()
        self.stage = self.engine.zero_optimization_stage()
        # ZeRO-3 records the order it fetches parameters in during step 0 and checks it across ranks
        # (broadcasts) in step 1
        self.settle_steps = 2 if self.stage == 3 else 1
        self.hook_name = f"deepspeed-zero{self.stage}"
        comm_dtype = self.engine.communication_data_type
        z3 = self.engine.optimizer if self.stage == 3 else None  # with the settings ZeRO-3 really runs with
        self.expected_bytes_per_step = step_traffic(
            model,
            "deepspeed",
            place.world_size,
            cfg.train.batch_size,
            zero_stage=self.stage,
            reduce_dtype=comm_dtype,
            numels=numels,
            zero3_reduce_scatter=z3 is None or z3.reduce_scatter or not z3.contiguous_gradients,
            zero3_bucket=z3.reduce_bucket_size if z3 is not None else 0,
        ).payload_bytes
        self.validate = cfg.dist.validate_comm
        self._logger = dscomm.comms_logger if self.validate else None
        self._fixed = {name for name, _ in named_fixed_weights(model)}

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Under bf16/fp16 the engine holds the weights in that dtype; images follow (token ids stay ids).
        if x.is_floating_point():
            x = x.to(next(self.engine.module.parameters()).dtype)
        with region("forward"):
            loss = cross_entropy(self.engine(x).float(), y)
        with region("backward"):
            self.engine.backward(loss)
        self.meter.backward_done()
        with region("optimizer"):
            self.engine.step()
        return loss.detach()

    def no_sync(self):
        return None  # DeepSpeed forbids optimizer steps inside its no_sync(); see the README

    @property
    def collective_eval(self) -> bool:
        # ZeRO-3's forward all-gathers the partitioned parameters, evaluation's too: a rank with one held-out
        # batch more than the others would wait in that all-gather forever.
        return self.stage == 3

    def replicated_parameters(self) -> list[torch.Tensor]:
        # ZeRO-3 keeps whole on every rank only its persistent parameters (stage3_param_persistence_threshold);
        # of the others each rank holds just its own partition, no replica to compare.
        params = super().replicated_parameters()
        return [p for p in params if p.ds_persist] if self.stage == 3 else params

    def save_checkpoint(self, directory: Path) -> None:
        # DeepSpeed's own API: model, optimizer (its ZeRO partitions), loss scaler. Its model file comes
        # from rank 0 alone, so each rank also keeps its own buffers (BatchNorm statistics differ per rank).
        self.engine.save_checkpoint(str(directory), tag="deepspeed", save_latest=False)
        buffers = {k: v for k, v in self.module.named_buffers() if k not in self._fixed}
        atomic_save(buffers, directory / f"buffers-rank{self.place.rank}.pt")

    def load_checkpoint(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag="deepspeed")
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {directory}")
        buffers = load_tensors(directory / f"buffers-rank{self.place.rank}.pt", self.place.device)
        own = dict(self.module.named_buffers())
        with torch.no_grad():
            for k, v in buffers.items():
                own[k].copy_(v)

    def logged_bytes(self) -> int | None:
        """Bytes DeepSpeed's own comms logger has recorded so far (--validate-comm), else None."""
        if self._logger is None:
            return None
        return sum(size * vals[0] for sizes in self._logger.comms_dict.values() for size, vals in sizes.items())

    def close(self) -> None:
        self.counter.uninstall()
        with contextlib.suppress(Exception):
            self.engine.destroy()
