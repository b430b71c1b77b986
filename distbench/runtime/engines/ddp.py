"""PyTorch DistributedDataParallel with the byte-counting comm hook."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from distbench.comm.expected import step_traffic
from distbench.comm.meter import CommMeter
from distbench.comm.taps import COMM_HOOKS, DDP_COLLECTIVES, Tap, counting_buckets
from distbench.model.contracts import LanguageModel, is_sharded
from distbench.model.counts import named_fixed_weights, tensor_bytes, trainable
from distbench.model.loss import cross_entropy
from distbench.runtime.checkpoint import atomic_save, load_tensors
from distbench.runtime.engines.base import ENGINES, Engine, Place
from distbench.runtime.engines.collectives import Collectives
from distbench.runtime.optim import autocast, autocast_dtype, build_optimizer
from distbench.runtime.timing import region

log = logging.getLogger(__name__)


def wrap(model: torch.nn.Module, place: Place, bucket_cap_mb: float) -> DDP:
    """`model` (on its device) under DDP as distbench runs it; the overhead benchmarks wrap their
    reference models here too, so that both sides send the same bytes in the same buckets."""
    # Fixed weights are rebuilt identically from the seed on every rank: DDP need not broadcast them
    # at start-up (hundreds of MB for a 100K-class head).
    DDP._set_params_and_buffers_to_ignore_for_model(model, [name for name, _ in named_fixed_weights(model)])
    return DDP(
        model,
        device_ids=[place.device.index] if place.device.type == "cuda" else None,
        bucket_cap_mb=bucket_cap_mb,
        gradient_as_bucket_view=True,
        # Off so that the step's only collective is the gradient all-reduce the meter sees; each rank
        # keeps its own BatchNorm statistics (as without SyncBatchNorm). Buffers still sync once at init.
        forward_sync_buffers=False,
    )


@ENGINES.register("ddp")
class DDPEngine(Engine):
    def __init__(self, cfg, model: torch.nn.Module, place: Place) -> None:
        self.place, self.module, self.meter = place, model, CommMeter(place.device)
        # channels_last: for convs on a GPU; a language model's inputs are token ids
        self.channels_last = place.device.type == "cuda" and not isinstance(model.backbone, LanguageModel)
        model.to(place.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.bucket_cap_mb = cfg.dist.bucket_cap_mb
        if cfg.dist.comm_hook == "powersgd" and place.backend == "gloo":
            # PowerSGD issues each bucket's second all-reduce from a future callback; on gloo those run on
            # worker threads, so with several buckets the ranks can issue collectives in different orders
            # (seen here: "Received data size doesn't match expected size"). One bucket has one order.
            needed = tensor_bytes(trainable(model)) / 2**20 + 1
            if needed > self.bucket_cap_mb:
                log.warning(
                    "powersgd on gloo: one DDP bucket of %.0f MiB instead of %.0f MiB", needed, self.bucket_cap_mb
                )
                self.bucket_cap_mb = needed
        # A head sharded by classes (distbench.model.heads.sharded) is model parallel: only the backbone is replicated
        # and data parallel; the head talks through counted collectives of its own.
        head = getattr(model, "head", None)  # benchmarks hand in bare modules: no head, nothing sharded
        self.head = head if is_sharded(head) else None
        if self.head is not None:
            self.head.shard(Collectives(self.meter))
        self.replicated = model.backbone if self.head is not None else model
        self.ddp = wrap(self.replicated, place, self.bucket_cap_mb)
        hook = COMM_HOOKS.get(cfg.dist.comm_hook)
        self.hook_name = cfg.dist.comm_hook
        self.hook_state, fn = hook.make(cfg.dist)
        names = {id(p): n for n, p in self.replicated.named_parameters()}
        self.ddp.register_comm_hook(self.hook_state, counting_buckets(self.meter, fn, names))
        self.tap = Tap(self.meter, "torch.distributed", DDP_COLLECTIVES).install()
        self.amp_dtype = autocast_dtype(cfg.train.precision, place.device)
        self.expected_bytes_per_step = step_traffic(
            model,
            "ddp",
            place.world_size,
            cfg.train.batch_size,
            hook=cfg.dist.comm_hook,
            powersgd_rank=cfg.dist.powersgd_rank,
            activation_dtype=self.amp_dtype or torch.float32,
        ).payload_bytes
        self.optimizer = build_optimizer(cfg.train, trainable(model))
        self.scaler = torch.amp.GradScaler(place.device.type, enabled=self.amp_dtype is torch.float16)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with region("forward"), autocast(self.place.device, self.amp_dtype):
            if self.head is not None:
                loss = self.head.loss(self.ddp(x), y)
            else:
                loss = cross_entropy(self.ddp(x), y)
        with region("backward"):
            self.scaler.scale(loss).backward()  # returns once DDP has waited for every bucket's reduction
        self.meter.backward_done()
        with region("optimizer"):
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return loss.detach()

    def no_sync(self) -> ContextManager:
        return self.ddp.no_sync()  # a sharded head's own collectives still run: they are its forward

    def replicated_parameters(self) -> list[torch.Tensor]:
        return trainable(self.replicated)

    @property
    def collective_eval(self) -> bool:
        return self.head is not None

    @torch.no_grad()
    def eval_batch(self, x: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head is not None:
            return self.head.evaluate(self.module.backbone(x), y, k)
        return super().eval_batch(x, y, k)

    def save_checkpoint(self, directory: Path) -> None:
        # Fixed weights are rebuilt from the seed (hundreds of MB for a large fixed head): not saved.
        fixed = {name for name, _ in named_fixed_weights(self.module)}
        state = {
            "model": {k: v for k, v in self.module.state_dict().items() if k not in fixed},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            # PowerSGD's error feedback and warm-start matrices: without them a resumed run differs.
            "hook": _hook_state(self.hook_state) if self.hook_state is not None else None,
        }
        atomic_save(state, directory / f"engine-rank{self.place.rank}.pt")

    def load_checkpoint(self, directory: Path) -> None:
        state = load_tensors(directory / f"engine-rank{self.place.rank}.pt", self.place.device)
        fixed = {name for name, _ in named_fixed_weights(self.module)}
        missing, unexpected = self.module.load_state_dict(state["model"], strict=False)
        if unexpected or set(missing) - fixed:
            raise RuntimeError(f"checkpoint does not fit the model: missing {missing}, unexpected {unexpected}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if state["hook"] is not None:
            _set_hook_state(self.hook_state, state["hook"])

    def close(self) -> None:
        self.tap.uninstall()


def _hook_state(state) -> dict:
    """PowerSGD's state as tensors and plain values: its numpy RandomState becomes the tensor of its
    Mersenne-Twister key and plain numbers, so the checkpoint loads without unpickling code."""
    values = state.__getstate__()
    kind, key, pos, has_gauss, gauss = values.pop("rng").get_state()
    values["rng"] = {"kind": kind, "key": torch.from_numpy(key.astype("int64")), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)}  # fmt: skip
    return values


def _set_hook_state(state, values: dict) -> None:
    import numpy as np

    values = dict(values)
    rng = values.pop("rng")
    generator = np.random.RandomState()
    generator.set_state((rng["kind"], rng["key"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"], rng["gauss"]))
    state.__setstate__({**values, "rng": generator})
