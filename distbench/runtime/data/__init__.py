"""Data sets behind one interface (`base.Dataset`): infinite per-rank training batches and a finite per-rank
share of held-out batches, already on the training device, found by name in `DATASETS`.

- `images.py`: synthetic (a learnable C-class task with a Bayes oracle), digits, fashion-mnist, imagefolder;
- `text.py`: token data for the language models, synthetic-text (a Markov chain of known entropy rate) and
  tokens (nanoGPT's train.bin / val.bin).

This module checks a data config against the disk before any process group (`check_data`) and builds one
(`build_dataset`).
"""

from __future__ import annotations

from pathlib import Path

from distbench.config import ConfigError
from distbench.runtime.data import images, text
from distbench.runtime.data.base import DATASETS, Batch, Dataset, Shard, _hash_uniform, eval_count, eval_share
from distbench.runtime.data.images import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    SyntheticTask,
    check_imagefolder,
    class_stream,
)

__all__ = [
    "DATASETS",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_FILES",
    "TEXT_DATASETS",
    "Batch",
    "Dataset",
    "Shard",
    "SyntheticTask",
    "_hash_uniform",
    "build_dataset",
    "check_data",
    "class_stream",
    "eval_count",
    "eval_share",
    "images",
    "text",
]  # fmt: skip

TEXT_DATASETS = ("synthetic-text", "tokens")  # token ids, for the language models; the others are images
FIXED_CLASSES = {"digits": 10, "fashion-mnist": 10}


def check_data(cfg, num_classes: int, seq_len: int | None = None) -> None:
    """Checks that need no data loaded, run while the config is validated (before any process group);
    `seq_len`: a language model's context (token data)."""
    if cfg.dataset == "tokens":
        text.check_tokens(cfg.data_dir, num_classes, seq_len or 1)
    if cfg.dataset == "synthetic-text" and cfg.successors > num_classes:
        raise ConfigError("data.successors", f"{cfg.successors} successors of a token, but only {num_classes} tokens")
    if cfg.dataset in FIXED_CLASSES and num_classes != FIXED_CLASSES[cfg.dataset]:
        raise ConfigError(
            "model.num_classes", f"{cfg.dataset} has {FIXED_CLASSES[cfg.dataset]} classes, got {num_classes}"
        )
    if cfg.dataset == "imagefolder":
        check_imagefolder(cfg.data_dir, num_classes)
    if cfg.dataset == "fashion-mnist":
        root = Path(cfg.data_dir or FASHION_MNIST_DIR)
        missing = [f for f in FASHION_MNIST_FILES.values() if not (root / f).is_file()]
        if missing:
            raise ConfigError(
                "data.data_dir", f"no {missing[0]} in {root} (Debian: apt-get install dataset-fashion-mnist)"
            )


def build_dataset(
    cfg, num_classes: int, input_shape: tuple[int, ...], batch_size: int, shard: Shard, seed: int
) -> Dataset:
    """`cfg` is a `distbench.config.DataConfig`; `input_shape` the model's ((T,) for token data)."""
    return DATASETS.get(cfg.dataset)(cfg, num_classes, input_shape, batch_size, shard, seed)
