"""The model: a backbone (images, or token ids, -> N features), a head (N -> C logits), and its structure
(what is frozen, how convs are parameterised). Nothing here talks to a process group: wrapping for data parallelism is
`distbench.runtime.engines`, counting what a step sends is `distbench.comm`.

- `backbones/`: the backbone registry and families;
- `heads/`: the classifier heads, the Hadamard maths of the fixed ones, the sharded head;
- `structure/`: freeze rules and conv parameterisations;
- `counts.py`: what a built model learns, holds fixed, and would send.
"""

from __future__ import annotations

import torch
from torch import nn

from distbench.model.backbones import build_backbone


class Classifier(nn.Module):
    """backbone (-> N features) followed by head (N -> C)."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.backbone.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def backbone_for(cfg) -> nn.Module:
    """The backbone a `ModelConfig` names (a language model's vocabulary is its class count)."""
    return build_backbone(cfg.model, cfg.image_size, cfg.width, vocab_size=cfg.num_classes, seq_len=cfg.seq_len)


def build_model(cfg, freeze=None, seed: int = 0, head_dtype: torch.dtype = torch.float32) -> Classifier:
    """`cfg` is a `distbench.config.ModelConfig`, `freeze` a `FreezeConfig` (None: learn everything).
    Weights are drawn from the global RNG (seed it first); then the convs are reparameterised and frozen."""
    from distbench.model.contracts import LanguageModel
    from distbench.model.heads import build_head
    from distbench.model.structure.freeze import FreezeSettings, apply_freeze
    from distbench.model.structure.params import apply_param

    backbone = backbone_for(cfg)
    apply_param(cfg.param, backbone)
    if freeze is not None:
        apply_freeze(backbone, FreezeSettings.from_config(freeze))
    head = build_head(
        cfg.head,
        backbone.num_features,
        cfg.num_classes,
        bias=cfg.head_bias,
        dtype=head_dtype,
        seed=seed,
        fixed_scale=cfg.head_scale,
        row_norm=cfg.head_rows,
        scale_init=cfg.head_scale_init,
        embedding=backbone.token_embedding if isinstance(backbone, LanguageModel) else None,
    )
    return Classifier(backbone, head)
