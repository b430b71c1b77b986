"""Token data for the language models (issue 27): a sample is a sequence of T token ids, and its targets are
the T next tokens, flattened with the batch (the backbone returns one feature row per position).

- `synthetic-text`: a Markov chain over V tokens generated on the device, with no V x V table, whose
  entropy rate is known exactly; every evaluation reports the Bayes-optimal loss and top-1 on its tokens.
- `tokens`: nanoGPT's format, DATA_DIR/train.bin and val.bin of token ids (uint16 for V <= 65,536, else
  uint32), memory-mapped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from distbench.config import ConfigError, DataError
from distbench.runtime.data.base import DATASETS, Batch, Dataset, Shard, _hash_uniform, eval_share, stream_generator


def next_tokens(tokens: torch.Tensor) -> Batch:
    """Sequences of T + 1 tokens -> (the first T of each, the T next tokens of each flattened): the model's
    input and its B x T targets, one per position."""
    return tokens[:, :-1], tokens[:, 1:].reshape(-1)


class MarkovText:
    """Token t is followed by token (h(t) + k q) mod V, k < K, with probability p_k = (k + 1)^-s / sum_j (j + 1)^-s
    (Zipf over its K successors): h(t) hashes (seed, t) to a token, q is a stride coprime with V, so the K
    successors are distinct. Every token's next-token distribution is the same p, permuted, so the entropy
    rate is exactly H(p) whatever the chain's stationary distribution, and the Bayes-optimal prediction after
    token t is its successor k = 0, right with probability p_0."""

    def __init__(self, vocab: int, successors: int, zipf: float, seed: int, device: torch.device) -> None:
        self.vocab, self.seed, self.device = vocab, seed, device
        k = min(successors, vocab)
        p = torch.arange(1, k + 1, dtype=torch.float64) ** -zipf
        self.p = p / p.sum()
        self.cdf = self.p.cumsum(0).to(device)
        self.log_p = self.p.log().to(device)
        self.entropy = float(-(self.p * self.p.log()).sum())  # nats per token
        stride = max(1, round(vocab * (math.sqrt(5) - 1) / 2))  # spread successors over the vocabulary
        while math.gcd(stride, vocab) != 1:
            stride += 1
        self.stride = stride
        # h(t) for every t: V ids (1 MB at 128K), so a step of generation is one gather, not a hash
        self.starts = self.start(torch.arange(vocab, device=device))

    def start(self, tokens: torch.Tensor) -> torch.Tensor:
        """h(t): where token t's successors begin."""
        keys = (self.seed * 1_000_003 + 7) * 65_537 + tokens
        return (_hash_uniform(keys) * self.vocab).long().clamp_max(self.vocab - 1)

    def sequences(self, n: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n sequences of `length` + 1 tokens (the first uniform) and the successor rank k of each step."""
        tokens = torch.empty(n, length + 1, dtype=torch.long, device=self.device)
        ranks = torch.empty(n, length, dtype=torch.long, device=self.device)
        tokens[:, 0] = torch.randint(self.vocab, (n,), generator=gen, device=self.device)
        u = torch.rand(n, length, generator=gen, device=self.device, dtype=torch.float64)
        ranks[:] = torch.searchsorted(self.cdf, u).clamp_max(len(self.cdf) - 1)
        steps = ranks * self.stride  # the successor offsets, known before the chain runs
        for i in range(length):
            torch.remainder(self.starts[tokens[:, i]] + steps[:, i], self.vocab, out=tokens[:, i + 1])
        return tokens, ranks


@DATASETS.register("synthetic-text")
def synthetic_text(
    cfg, num_classes: int, input_shape: tuple[int, ...], batch_size: int, shard: Shard, seed: int
) -> Dataset:
    (length,) = input_shape
    chain = MarkovText(num_classes, cfg.successors, cfg.zipf, seed, shard.device)

    def train(start: int = 0) -> Iterator[Batch]:
        step = start
        while True:
            tokens, _ = chain.sequences(batch_size, length, stream_generator(seed, 2 + step, shard))
            yield next_tokens(tokens)
            step += 1

    def held_out() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen, left = stream_generator(seed, 1, shard), len(eval_share(cfg.eval_samples, shard))
        while left > 0:
            n = min(batch_size, left)
            left -= n
            yield chain.sequences(n, length, gen)

    def evaluate() -> Iterator[Batch]:
        for tokens, _ in held_out():
            yield next_tokens(tokens)

    @functools.cache  # the same held-out tokens at every evaluation
    def oracle() -> tuple[int, float]:
        ranks = [r for _, r in held_out()]
        if not ranks:
            return 0, 0.0
        r = torch.cat([x.reshape(-1) for x in ranks])
        return int((r == 0).sum()), float(-chain.log_p[r].sum())

    return Dataset(
        num_classes,
        train,
        evaluate,
        cfg.eval_samples * length,
        oracle_hits=lambda: oracle()[0],
        oracle_loss_sum=lambda: oracle()[1],
    )


# ------------------------------------------------------------------------------------------- token files
TOKEN_FILES = ("train.bin", "val.bin")
CHECKED_TOKENS = 1 << 20  # ids checked against V before any process group; the rest batch by batch


def token_dtype(vocab: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32)


def open_tokens(path: Path, vocab: int) -> np.ndarray:
    return np.memmap(path, dtype=token_dtype(vocab), mode="r")


def check_tokens(data_dir: str | None, vocab: int, seq_len: int) -> None:
    """One line naming the field for a missing folder or file, a file too short for one sequence, a size that
    is not whole ids, or an id >= V among the first ones."""
    if not data_dir:
        raise ConfigError("data.data_dir", "tokens needs --data-dir (a folder with train.bin and val.bin)")
    dtype = token_dtype(vocab)
    for name in TOKEN_FILES:
        path = Path(data_dir) / name
        if not path.is_file():
            raise ConfigError("data.data_dir", f"no {name} in {data_dir} (nanoGPT's format: token ids, {dtype})")
        size = path.stat().st_size
        if size % dtype.itemsize:
            raise ConfigError("data.data_dir", f"{path} is {size} bytes, not whole {dtype} token ids")
        if size // dtype.itemsize < seq_len + 1:
            raise ConfigError(
                "data.data_dir",
                f"{path} holds {size // dtype.itemsize} tokens, fewer than one sequence of {seq_len} + 1",
            )
        head = np.asarray(open_tokens(path, vocab)[:CHECKED_TOKENS])
        if head.size and int(head.max()) >= vocab:
            raise ConfigError(
                "model.num_classes", f"{path} holds token id {int(head.max())}, not below the vocabulary size {vocab}"
            )


@DATASETS.register("tokens")
def tokens(cfg, num_classes: int, input_shape: tuple[int, ...], batch_size: int, shard: Shard, seed: int) -> Dataset:
    (length,) = input_shape
    train_path, val_path = (Path(cfg.data_dir) / name for name in TOKEN_FILES)
    train_ids, val_ids = open_tokens(train_path, num_classes), open_tokens(val_path, num_classes)

    def window(ids: np.ndarray, path: Path, starts) -> Batch:
        rows = np.stack([np.asarray(ids[s : s + length + 1], dtype=np.int64) for s in starts])
        if rows.max() >= num_classes:
            raise DataError(f"{path} holds token id {int(rows.max())}, not below the vocabulary size {num_classes}")
        return next_tokens(torch.from_numpy(rows).to(shard.device))

    def train(start: int = 0) -> Iterator[Batch]:
        # nanoGPT's sampling: windows at uniform random offsets; step s draws from its own seeded stream
        step = start
        while True:
            gen = stream_generator(seed, 2 + step, shard, torch.device("cpu"))  # offsets into a file: on the host
            starts = torch.randint(len(train_ids) - length, (batch_size,), generator=gen).tolist()
            yield window(train_ids, train_path, starts)
            step += 1

    available = (len(val_ids) - 1) // length  # consecutive, non-overlapping held-out sequences
    total = available if cfg.eval_samples <= 0 else min(available, cfg.eval_samples)
    share = list(eval_share(total, shard))

    def evaluate() -> Iterator[Batch]:
        for i in range(0, len(share), batch_size):
            yield window(val_ids, val_path, [j * length for j in share[i : i + batch_size]])

    return Dataset(num_classes, train, evaluate, total * length)
