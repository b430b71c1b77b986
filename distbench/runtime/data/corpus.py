"""A real text corpus on every machine, with no download: the Python standard library's own source files,
tokenized by a byte-level BPE vocabulary trained here (Hugging Face `tokenizers`, the `text` extra), written in
nanoGPT's format for the `tokens` data set.

    distbench corpus --vocab 8192 --out data/pystdlib-8k       # then: --dataset tokens --data-dir data/...
    distbench corpus --vocab 32768 --out data/pystdlib-32k

Files are split into training and validation by a hash of their path (one in ten held out), so no file is
in both; the vocabulary is trained on the training files alone. Each file's tokens end with an end-of-text
token. `DIR/meta.json` says what was made: the vocabulary size to pass as --num-classes, the file and token
counts, the Python version whose library it is; `DIR/tokenizer.json` decodes the ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import sysconfig
from pathlib import Path

import numpy as np

from distbench.runtime.data.text import token_dtype

EOT = "<|endoftext|>"
HELD_OUT = 10  # one file in ten, by path hash


def stdlib_sources() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path) -> list[Path]:
    """Every .py file under `root`, sorted, leaving out installed packages (site-packages, dist-packages)."""
    skip = {"site-packages", "dist-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts) and p.is_file())


def held_out(relative: str) -> bool:
    return int(hashlib.sha1(relative.encode()).hexdigest(), 16) % HELD_OUT == 0


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # a test fixture in another encoding, an unreadable file: not text for this corpus


def prepare(source: Path, out: Path, vocab: int) -> dict:
    """Train a byte-level BPE of `vocab` ids on the training files of `source`, write train.bin, val.bin,
    tokenizer.json and meta.json into `out`; return the meta."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    files = [(f, f.relative_to(source).as_posix()) for f in source_files(source)]
    texts = {rel: t for f, rel in files if (t := read_text(f)) is not None}
    split = {"train": [r for r in texts if not held_out(r)], "val": [r for r in texts if held_out(r)]}
    if not split["train"] or not split["val"]:
        raise ValueError(f"{source}: {len(texts)} readable .py files, too few for a training and a validation split")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((texts[r] for r in split["train"]), trainer)
    size, eot = tokenizer.get_vocab_size(), tokenizer.token_to_id(EOT)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, rels in split.items():
        encoded = tokenizer.encode_batch([texts[r] for r in rels])
        ids = np.fromiter((i for e in encoded for i in (*e.ids, eot)), dtype=np.int64)
        tmp = out / f"{name}.bin.tmp"
        ids.astype(token_dtype(size)).tofile(tmp)
        tmp.replace(out / f"{name}.bin")  # whole files only: a stopped run leaves no half corpus
        counts[name] = {"files": len(rels), "tokens": int(ids.size)}
    tokenizer.save(str(out / "tokenizer.json"))
    meta = {
        "vocab_size": size,
        "requested_vocab": vocab,
        "eot": eot,
        "source": str(source),
        "python": sys.version.split()[0],
        "split": f"one file in {HELD_OUT} held out, by the SHA-1 of its path",
        **counts,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="distbench corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size, end-of-text included (>= 257)")
    p.add_argument("--out", required=True, help="folder for train.bin, val.bin, tokenizer.json, meta.json")
    p.add_argument("--source", help="folder of .py files (default: this Python's standard library)")
    args = p.parse_args(argv)
    if args.vocab < 257:
        p.error(f"--vocab: must be >= 257 (256 bytes and the end-of-text token), got {args.vocab}")
    source = Path(args.source) if args.source else stdlib_sources()
    if not source.is_dir():
        p.error(f"--source: no such directory: {source}")
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        p.error("the corpus needs Hugging Face tokenizers: pip install -e '.[text]'")
    try:
        meta = prepare(source, Path(args.out), args.vocab)
    except ValueError as e:
        p.error(f"--source: {e}")
    print(
        f"{args.out}: vocabulary {meta['vocab_size']:,} (--num-classes {meta['vocab_size']}); "
        f"train {meta['train']['tokens']:,} tokens in {meta['train']['files']} files, "
        f"val {meta['val']['tokens']:,} tokens in {meta['val']['files']} files"
    )
    return 0
