"""Optimizers and mixed precision, shared by the engines."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager

import torch


def build_optimizer(train_cfg, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Only trainable parameters are given: frozen weights get no optimizer state."""
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train_cfg.lr, momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay
        )
    return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """None means plain fp32. `auto` is bf16 autocast on CUDA (no loss scaling needed) and fp32 on CPU,
    where bf16 autocast is usually slower than fp32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
