"""Regenerate the README tables of benchmark figures from the committed records.

Reads the `distbench.bench/1` records under benchmarks/data/ (written by `python benchmarks/<name>.py --out
benchmarks/data/<name>.jsonl`), takes the latest one per script, and rewrites what lies between the markers
`<!-- bench-table:start -->` and `<!-- bench-table:end -->`: the full table in benchmarks/README.md, the
short one in README.md. A script without a record gets a row saying so: no figure is typed by hand.

    python benchmarks/tables.py            # rewrite both tables
    python benchmarks/tables.py --check    # exit 1 if either file differs from what the records give
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distbench.results import SchemaError
from distbench.results.blocks import replace_block

from records import latest_records

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
NO_RECORD = "no committed record"


class MissingMetric(KeyError):
    """The record lacks a figure the table shows (an older script printed other lines)."""


class Figures:
    """A record's printed figures, formatted for a table cell."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.metrics = record["metrics"]
        self.args = record["args"]

    def __call__(self, name: str, spec: str = "") -> str:
        if name not in self.metrics:
            raise MissingMetric(name)
        value = self.metrics[name]
        return format(value, spec) if spec and isinstance(value, (int, float)) else str(value)

    def num(self, name: str) -> float:
        value = self.metrics.get(name)
        if not isinstance(value, (int, float)):
            raise MissingMetric(name)
        return value

    def arg(self, name: str) -> Any:
        if name not in self.args:
            raise MissingMetric(f"args.{name}")
        return self.args[name]

    def get(self, name: str, spec: str = "", default: str = "not run") -> str:
        return self(name, spec) if name in self.metrics else default


@dataclass(frozen=True)
class Bench:
    name: str
    """the script, benchmarks/<name>.py"""
    measures: str
    """benchmarks/README.md: what the ratio compares"""
    target: str
    figures: Callable[[Figures], str]
    """benchmarks/README.md: the last figures, in full"""
    ratio: str | None = None
    """README.md: the ratio in a few words; None: the script has no row there"""
    short: Callable[[Figures], str] | None = None
    """README.md: the last figure"""


# ------------------------------------------------------------------------------------------ the scripts
def _meter(f: Figures) -> str:
    return (
        f"{f('meter_step_ms', '.2f')} / {f('default_step_ms', '.2f')} ms: **{f('meter_overhead', '.3f')}** "
        f"(95% interval {f('meter_overhead_ci95')}); `meter_overhead_bound` **{f('meter_overhead_bound', '.4f')}**. "
        f"Torch's Python hook alone: {f('torch_hook_step_ms', '.2f')} ms. Linear-layer floor: meter "
        f"{f('floor_meter_step_us', '.0f')} us, torch hook {f('floor_torch_hook_step_us', '.0f')} us, no hook "
        f"{f('floor_default_step_us', '.0f')} us per step"
    )


def _harness(f: Figures) -> str:
    return (
        f"{f('distbench_step_ms', '.2f')} / {f('plain_step_ms', '.2f')} ms: **{f('harness_overhead', '.3f')}** "
        f"(95% interval {f('harness_overhead_ci95')})"
    )


def _head(f: Figures) -> str:
    def side(name: str) -> str:
        return (
            f"{name}: {f(f'{name}_payload_MB', '.1f')} MB per step, step {f(f'{name}_step_ms', '.1f')} ms = "
            f"{f(f'{name}_nosync_step_ms', '.1f')} compute + {f(f'{name}_exposed_comm_ms', '.1f')} exposed "
            f"all-reduce; forward {f(f'{name}_forward_ms', '.1f')}, backward {f(f'{name}_backward_ms', '.1f')} "
            f"({f(f'{name}_backward_nosync_ms', '.1f')} without the all-reduce), optimizer "
            f"{f(f'{name}_optimizer_ms', '.1f')} ms"
        )

    setup = f"{f.arg('backbone')} backbone, {f.arg('num_classes'):,} classes, fixed head `{f.arg('fixed_head')}`"
    return f"{setup}: **{f('head_speedup', '.2f')}**. {side('learned')}. {side('fixed')}"


def _head_short(f: Figures) -> str:
    def saved(figure: str) -> float:
        return f.num(f"learned_{figure}") - f.num(f"fixed_{figure}")

    return (
        f"{f('head_speedup', '.2f')} (communication {saved('exposed_comm_ms'):.0f} ms, backward "
        f"{saved('backward_nosync_ms'):.0f} ms, optimizer {saved('optimizer_ms'):.0f} ms of the "
        f"{saved('step_ms'):.0f} ms saved)"
    )


FWHT_HEADS = ("dense", "fwht", "orthogonal", "srht")


def _classes(f: Figures) -> list[str]:
    return [c.strip() for c in str(f.arg("classes")).split(",") if c.strip()]


def _label(c: str) -> str:
    n = int(c)
    for size, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "K")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def _fwht(f: Figures) -> str:
    parts = []
    for c in _classes(f):
        heads = []
        for h in FWHT_HEADS:
            if f"{h}_{c}" in f.metrics:  # "skipped (needs ...)"
                heads.append(f"{h} {f(f'{h}_{c}')}")
            elif f"{h}_{c}_fwd_bwd_ms" in f.metrics:
                other = f.num(f"{h}_{c}_other_buffers_MB")
                heads.append(
                    f"{h} {f(f'{h}_{c}_fwd_bwd_ms', '.0f')} ms (built in {f(f'{h}_{c}_build_s', '.1f')} s; buffer "
                    f"{f(f'{h}_{c}_buffer_MB', '.1f')} MB"
                    + (f" + {other:.1f} MB other" if other else "")
                    + f"; peak {f(f'{h}_{c}_peak_fwd_bwd_MB', '.0f')} MB)"
                )
        ratios = f"dense/fwht **{f.get(f'dense_over_fwht_{c}')}**, dense/srht **{f.get(f'dense_over_srht_{c}')}**"
        parts.append(f"**{_label(c)}** ({f.get(f'shape_{c}')}): {', '.join(heads) or 'nothing ran'}; {ratios}")
    return ". ".join(parts)


def _fwht_short(f: Figures) -> str:
    parts = []
    for c in _classes(f):
        skipped = [h for h in FWHT_HEADS if f"{h}_{c}" in f.metrics]
        part = f"{_label(c)}: dense/fwht {f.get(f'dense_over_fwht_{c}')}, dense/srht {f.get(f'dense_over_srht_{c}')}"
        parts.append(part + (f" ({', '.join(skipped)} skipped)" if skipped else ""))
    return "; ".join(parts)


def _shapes(f: Figures, describe: Callable[..., str]) -> list[tuple[str, str]]:
    """(the shape as printed in figure names, `describe(*its sizes)` for a reader) per shape in the script's
    `--shapes` (`BxC` for cross_entropy.py, `RxNxC` for srht_paths.py)."""
    out = []
    for shape in str(f.arg("shapes")).split(","):
        sizes = shape.lower().split("x")
        out.append(("x".join(sizes), describe(*(int(v) for v in sizes))))
    return out


def _batch_shapes(f: Figures) -> list[tuple[str, str]]:
    return _shapes(f, lambda b, c: f"{b:,} x {c:,}")


def _cross_entropy(f: Figures) -> str:
    return (
        "; ".join(
            f"{text}: torch {f(f'torch_{key}_ms', '.0f')} ms, fused {f(f'fused_{key}_ms', '.0f')} ms, "
            f"**{f(f'torch_over_fused_{key}', '.2f')}**"
            for key, text in _batch_shapes(f)
        )
        + f" ({f.arg('threads')} thread, {f.arg('reps')} reps)"
    )


def _cross_entropy_short(f: Figures) -> str:
    return ", ".join(f"{text}: {f(f'torch_over_fused_{key}', '.2f')}" for key, text in _batch_shapes(f))


def _srht_paths(f: Figures) -> str:
    return (
        "; ".join(
            f"{text}: transform {f(f'transform_{key}_ms', '.0f')} ms, dense {f(f'dense_{key}_ms', '.0f')} ms, "
            f"**{f(f'transform_over_dense_{key}', '.2f')}** (head picks {f.get(f'head_picks_{key}')})"
            for key, text in _shapes(f, lambda r, n, c: f"N = {n:,}, C = {c:,} ({r:,} rows)")
        )
        + f" ({f.arg('threads')} thread, {f.arg('reps')} reps)"
    )


def _data_rate(f: Figures) -> str:
    return (
        f"{f('generate_batch_ms', '.2f')} ms per batch ({f.num('generated_samples_per_s'):,.0f} samples/s) vs "
        f"{f('train_step_ms', '.1f')} ms per step ({f.num('trained_samples_per_s'):,.0f} samples/s): "
        f"**{f('data_rate', '.1f')}**"
    )


def _split(f: Figures) -> str:
    return (
        f"**{f('p0.1_cat_weights_over_cat_outputs', '.2f')}** at 10% "
        f"({f('p0.1_cat_weights_ms', '.2f')} / {f('p0.1_cat_outputs_ms', '.2f')} ms), "
        f"**{f('p0.5_cat_weights_over_cat_outputs', '.2f')}** at 50% "
        f"({f('p0.5_cat_weights_ms', '.2f')} / {f('p0.5_cat_outputs_ms', '.2f')} ms)"
    )


BENCHES = (
    Bench(
        "meter_overhead",
        "DDP step of the default tiny CNN (100 classes, batch 32 per rank, 2 ranks) with distbench's counting "
        "meter (torch's `allreduce` hook wrapped by `counting_buckets`, the all-reduce Tap, per-step bracketing) / "
        "the same DDP with no hook (DDP's built-in C++ all-reduce); a third variant registers torch's own Python "
        "`allreduce_hook` and counts nothing. The trio is also timed on a 16 -> 16 linear layer, whose step is "
        "almost all host overhead",
        "<= 1.01",
        _meter,
        "DDP step with the counting meter / with DDP's built-in all-reduce",
        lambda f: f"{f('meter_overhead', '.3f')} (bound from the per-step floor: {f('meter_overhead_bound', '.4f')})",
    ),
    Bench(
        "harness_overhead",
        "distbench's timed step (`run_steps` over `DDPEngine`: meter, GradScaler, autocast, batch fetch from the "
        "synthetic iterator, StepTimer, progress, the stop vote between steps) / a hand-written torch DDP loop with "
        "the same model, batch, SGD "
        "and data stream",
        "<= 1.03",
        _harness,
        "distbench's timed step / a hand-written torch DDP loop",
        lambda f: f("harness_overhead", ".3f"),
    ),
    Bench(
        "head_speedup",
        "learned-head / fixed-head DDP step at 100K classes, Linear 512-512 backbone (the plain-torch reference "
        "shape), batch 32, 2 ranks; split by `no_sync()` steps (exposed "
        "communication) and barrier-separated forward / backward / optimizer phases",
        "report",
        _head,
        "learned / fixed head step at 100K classes, Linear 512-512, 2 ranks",
        _head_short,
    ),
    Bench(
        "fwht",
        "forward+backward of each fixed head alone, N = 2048: dense `fixed` (C x N buffer, `F.linear`), "
        "`fixed-fwht` (fold N, FWHT of size 2048, tile over C), `fixed-orthogonal` (C x N buffer from a float64 "
        "QR), `fixed-srht` (one FWHT of size 2048 per block of 2048 classes, a chunk of blocks at a time); at C = "
        "100K (batch 256) and 1M "
        "(batch 64, capped so the dense product stays under 600 GFLOP); buffers, the peak one forward+backward "
        "allocates (CPU: the profiler's memory timeline; CUDA: the allocator's peak), build time. What cannot "
        "fit is skipped with the memory it would need",
        "dense/fwht >= 10 on CPU; dense/srht >= 8 at 100K, >= 12 at 1M, srht's peak <= 2 x fwht's",
        _fwht,
        "forward+backward of the four fixed heads alone, N = 2048, at C = 100K (batch 256) and 1M (batch 64)",
        _fwht_short,
    ),
    Bench(
        "cross_entropy",
        "forward+backward of the training loss alone, float32 logits: torch's `F.cross_entropy` / distbench's "
        "(`distbench.model.loss`: the forward writes the softmax once, a cache-sized block of rows at a time, and "
        "the backward scales it in place into the gradient, minus the one-hot), at 128 x 100K (one rank of the "
        "100K-class image study) and 1024 x 32K (16 x 64 tokens at a 32K vocabulary), one thread",
        ">= 1.5 on CPU",
        _cross_entropy,
        "training loss, torch's / distbench's fused, forward+backward, one thread",
        _cross_entropy_short,
    ),
    Bench(
        "srht_paths",
        "forward+backward of the `fixed-srht` head alone (no bias, learned alpha): its transform "
        "(`hadamard.srht`, one FWHT of size m per block of classes) / its dense path (one product with the C x N "
        "matrix, rebuilt each forward), at the language-model study's shapes (1,024 rows, N = 64, V = 8K and 32K), "
        "the image study's (128 rows, N = 256, 100K classes) and N = 128 to 1,024 at 8K classes; the path the "
        "head picks at each (`hadamard.dense_pays`), one thread",
        "the head picks the faster path",
        _srht_paths,
    ),
    Bench(
        "data_rate",
        "samples per second the `synthetic` data set generates on the device (labels, hashed codes, noise, "
        "projection, upsampling to 3x32x32) / samples per second distbench trains on batches made beforehand; "
        "tiny CNN, batch 32, one rank",
        ">= 20",
        _data_rate,
        "synthetic samples generated / trained per second",
        lambda f: f("data_rate", ".1f"),
    ),
    Bench(
        "split_forward",
        "forward+backward of one split conv (256 -> 256, 3x3, 14x14, batch 32): rebuild the weight with "
        "`torch.cat` / two convs with concatenated outputs, at 10% and 50% learned filters",
        "none: it picks the split forward",
        _split,
    ),
)


# ------------------------------------------------------------------------------------------- the tables
def machine(record: dict[str, Any]) -> str:
    env = record["env"]
    where = env["device"] if env["cuda"] else f"CPU ({env['device']})"
    ranks = env["world_size"]
    return f"{record['finished_at'][:10]}, {where}, {ranks} rank{'s' if ranks != 1 else ''}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _last(record: dict[str, Any] | None, render: Callable[[Figures], str], full: bool) -> str:
    if record is None:
        return NO_RECORD
    try:
        text = render(Figures(record))
    except MissingMetric as e:
        text = f"the record lacks `{e.args[0]}`"
    where = machine(record)
    if full:
        sha = record["env"]["git_sha"]
        return f"{text}. {where}, {record['env']['hostname']}" + (f", git {sha[:7]}" if sha else "")
    return f"{text} ({where})"


def full_table(records: dict[str, dict[str, Any]]) -> str:
    """benchmarks/README.md's table: every script, what it measures, its target, its latest figures."""
    rows = ["| script | measures | target | last figures |", "|---|---|---|---|"]
    for b in BENCHES:
        last = _last(records.get(b.name), b.figures, full=True)
        rows.append(f"| `{b.name}.py` | {_cell(b.measures)} | {_cell(b.target)} | {_cell(last)} |")
    return "\n".join(rows)


def short_table(records: dict[str, dict[str, Any]]) -> str:
    """README.md's table: the command, the ratio in a few words, the target, the latest figure."""
    rows = ["| script | ratio | target | last |", "|---|---|---|---|"]
    for b in BENCHES:
        if b.ratio is None or b.short is None:
            continue
        last = _last(records.get(b.name), b.short, full=False)
        rows.append(f"| `python benchmarks/{b.name}.py` | {_cell(b.ratio)} | {_cell(b.target)} | {_cell(last)} |")
    return "\n".join(rows)


def replace_table(text: str, table: str, where: str = "the file") -> str:
    """`text` with its bench-table block replaced by `table` (distbench.results.blocks: the one block writer)."""
    return replace_block(text, "bench-table", table, where)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data", help="records: a .jsonl or a folder")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md", help="gets the short table")
    ap.add_argument(
        "--benchmarks-readme", type=Path, default=ROOT / "benchmarks" / "README.md", help="gets the full table"
    )
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is out of date")
    args = ap.parse_args(argv)
    try:
        records = latest_records(args.data)
    except SchemaError as e:
        print(f"tables.py: {e}", file=sys.stderr)
        return 2
    stale = []
    for path, table in ((args.benchmarks_readme, full_table(records)), (args.readme, short_table(records))):
        old = path.read_text()
        try:
            new = replace_table(old, table, str(path))
        except ValueError as e:
            print(f"tables.py: {e}", file=sys.stderr)
            return 2
        if new == old:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(new)
            print(f"updated {path}")
    if args.check and stale:
        for path in stale:
            print(f"{path} is out of date: run python benchmarks/tables.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
