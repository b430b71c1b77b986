"""Generated blocks inside hand-written pages: the text between `<!-- name:start -->` and `<!-- name:end -->`
is made from records (the engines table, the benchmark tables), never typed. The one writer of such blocks:
`distbench docs` and `benchmarks/tables.py` both go through it."""

from __future__ import annotations

import os
from pathlib import Path


def replace_block(text: str, name: str, block: str, where: str = "the file") -> str:
    """`text` with what lies between its one `<!-- name:start -->` and its one `<!-- name:end -->` replaced."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"{where} needs exactly one {start} and one {end}")
    head, rest = text.split(start)
    if end in head:
        raise ValueError(f"{where}: {end} comes before {start}")
    _, tail = rest.split(end)
    return f"{head}{start}\n{block}\n{end}{tail}"


def update_block(path: str | os.PathLike, name: str, block: str, check: bool = False) -> bool:
    """Whether the block `name` of file `path` differs from `block`; written unless `check`."""
    path = Path(path)
    old = path.read_text()
    new = replace_block(old, name, block, str(path))
    if new != old and not check:
        path.write_text(new)
    return new != old
