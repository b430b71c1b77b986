"""Weight counts of a built model, for the record: what is learned, what is frozen, and the fixed weights
that are buffers rather than parameters. Pure functions over the module tree; no process group."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from distbench.model.contracts import HoldsFixedWeights
from distbench.model.structure.freeze import conv_learned_fraction


def tensor_bytes(tensors: Iterable[torch.Tensor], dtype: torch.dtype | None = None) -> int:
    """Bytes of `tensors` if each were held in `dtype` (default: its own dtype)."""
    return sum(t.numel() * (dtype or t.dtype).itemsize for t in tensors)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """What is learned, and so what data parallelism must reduce: the parameters that require a gradient."""
    return [p for p in model.parameters() if p.requires_grad]


def named_fixed_weights(model: nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    """(qualified name, tensor) of the weights that exist but are never trained and so are buffers, not
    parameters (a fixed head's projection, a split conv's fixed filters). Modules name them in a
    `fixed_weights` attribute; a name set to None (a conv without bias) is no weight."""
    for prefix, m in model.named_modules():
        for name in m.fixed_weights if isinstance(m, HoldsFixedWeights) else ():
            if (tensor := getattr(m, name)) is not None:
                yield (f"{prefix}.{name}" if prefix else name), tensor


def fixed_weights(model: nn.Module) -> Iterable[torch.Tensor]:
    return (tensor for _, tensor in named_fixed_weights(model))


def param_counts(model: nn.Module) -> dict[str, int]:
    """Weight counts for the record. Fixed weights count as frozen parameters, so `total` is the same
    for a learned and a fixed head of the same shape."""

    def count(m: nn.Module, outside: set[int] = frozenset()) -> tuple[int, int]:
        params = [p for p in m.parameters() if id(p) not in outside]
        total = sum(p.numel() for p in params) + sum(t.numel() for t in fixed_weights(m))
        return total, sum(p.numel() for p in params if p.requires_grad)

    total, learned = count(model)
    # a head's own weights: a tied head's is the backbone's embedding, counted there
    body = {id(p) for p in model.backbone.parameters()} if hasattr(model, "backbone") else set()
    head_total, head_learned = count(model.head, body) if hasattr(model, "head") else (0, 0)
    return {
        "total": total,
        "trainable": learned,
        "frozen": total - learned,
        "head_total": head_total,
        "head_trainable": head_learned,
        "conv_learned_fraction": conv_learned_fraction(model),
        # N, the features the head maps to C logits (0: a model without a head)
        "head_in_features": getattr(getattr(model, "backbone", None), "num_features", 0),
    }
