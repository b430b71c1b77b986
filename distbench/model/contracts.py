"""The contracts between the parts of a model and the code that uses them, declared rather than implied.

A module keeps a contract by having what the Protocol names; the code that relies on it asks with
`isinstance`, never with a bare `getattr` on a name set in another file. The contract tests
(tests/test_contracts.py) hold every registered backbone, head, parameterisation and freeze rule to them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    """Images (B, C, H, W) -> features (B, N): N = `num_features`, (C, H, W) = `input_shape`."""

    num_features: int
    input_shape: tuple[int, ...]


@runtime_checkable
class LanguageModel(Protocol):
    """Token ids (B, T) -> features (B x T, N), one per position (each predicts the next token): T = `seq_len`,
    `input_shape` = (T,); `token_embedding` is the V x N input embedding that a `tied` head reuses."""

    num_features: int
    seq_len: int
    token_embedding: torch.nn.Embedding


def positions(backbone: Any) -> int:
    """Predictions per sample: T for a language model (every position), 1 for an image model."""
    return backbone.seq_len if isinstance(backbone, LanguageModel) else 1


def example_input(backbone: Any, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A zero input batch of the backbone's shape and kind: token ids (long) or images (float)."""
    dtype = torch.long if isinstance(backbone, LanguageModel) else torch.float32
    return torch.zeros((batch, *backbone.input_shape), dtype=dtype, device=device)


@runtime_checkable
class HoldsFixedWeights(Protocol):
    """Weights that exist but are never trained, held as buffers rather than parameters (a fixed head's C x N
    projection, a split conv's fixed filters), named in `fixed_weights`: they count as frozen weights, DDP
    never broadcasts them and checkpoints leave them out (they are rebuilt from the seed). A name set to None
    (a conv without bias) is no weight."""

    fixed_weights: tuple[str, ...]


@runtime_checkable
class CountsItsConvs(Protocol):
    """A conv that learns only part of what it computes with (split, or a parameterisation):
    `conv_counts()` gives (learned elements, elements of the weight it computes with)."""

    def conv_counts(self) -> tuple[int, int]: ...


@runtime_checkable
class MasksFilters(Protocol):
    """A conv whose gradient --freeze-mode mask zeroes past its first `learned_filters` output rows (an engine
    that replaces parameters, FSDP2, must zero those rows itself)."""

    learned_filters: int


@runtime_checkable
class ModelParallelHead(Protocol):
    """A head split over the ranks (`sharded`): the engine hands it counted collectives (`shard`) and replicates
    only the backbone; it evaluates with the collectives too (`evaluate`: top-k ids and per-sample loss)."""

    sharded: bool
    in_features: int

    def shard(self, collectives: Any) -> None: ...

    def evaluate(self, features: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]: ...


def is_sharded(head: Any) -> bool:
    return isinstance(head, ModelParallelHead) and head.sharded
