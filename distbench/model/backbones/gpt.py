"""Decoder-only transformers for the language-model heads (issue 27), in nanoGPT's shape (Karpathy's
nanoGPT `model.py`, itself GPT-2's): learned token and position embeddings, pre-norm blocks of causal
self-attention (`scaled_dot_product_attention`) and a 4x GELU MLP, a final LayerNorm.

A language model predicts the next token at every position, so a sequence of T tokens is T classification
samples: the backbone maps token ids (B, T) to features (B x T, N) with N = d, and any head maps those to
(B x T, V) logits against the (B x T) next tokens. Heads, engines and byte counts need nothing new;
`token_embedding` (the V x d input embedding) is what a `tied` head reuses as its output layer.

Sizes: `gpt-tiny` (2 layers, d = 64, seconds on a CPU) and GPT-2's four, `gpt2-small` to `gpt2-xl`
(`GPT2_SIZES`).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from distbench.model.backbones.registry import BACKBONES

DEFAULT_SEQ_LEN = 256


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.c_attn(x).split(d, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token ids (B, T) -> the final hidden state at every position, (B x T, d)."""

    def __init__(self, vocab_size: int, seq_len: int, layers: int, d: int, heads: int) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"width {d} is not a multiple of {heads} attention heads")
        self.wte = nn.Embedding(vocab_size, d)
        self.wpe = nn.Embedding(seq_len, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.num_features, self.seq_len, self.input_shape = d, seq_len, (seq_len,)
        # nanoGPT's initialisation: N(0, 0.02) everywhere, the residual projections scaled by 1/sqrt(2 L)
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("c_proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The V x d input embedding (a tied head's output layer); a property, so the module is registered once."""
        return self.wte

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x).reshape(-1, self.num_features)


@BACKBONES.register("gpt-tiny")
def gpt_tiny(vocab_size: int, seq_len: int | None = None, width: int = 64) -> nn.Module:
    heads = next(h for h in range(max(1, width // 32), 0, -1) if width % h == 0)  # about 32 wide, dividing d
    return GPT(vocab_size, seq_len or DEFAULT_SEQ_LEN, layers=2, d=width, heads=heads)


# GPT-2's sizes (Radford et al. 2019) as nanoGPT configures them: layers, width d, attention heads
GPT2_SIZES: dict[str, tuple[int, int, int]] = {
    "gpt2-small": (12, 768, 12),
    "gpt2-medium": (24, 1024, 16),
    "gpt2-large": (36, 1280, 20),
    "gpt2-xl": (48, 1600, 25),
}


def _gpt2(vocab_size: int, seq_len: int | None = None, *, layers: int, d: int, heads: int) -> nn.Module:
    return GPT(vocab_size, seq_len or DEFAULT_SEQ_LEN, layers=layers, d=d, heads=heads)


for _name, (_layers, _d, _heads) in GPT2_SIZES.items():
    BACKBONES.register(_name)(functools.partial(_gpt2, layers=_layers, d=_d, heads=_heads))
