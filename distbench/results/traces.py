"""The traces `--profile-dir` writes (one torch.profiler Chrome trace per rank, `rank-<r>.json.gz`): what they
hold, and HTA's overlap of communication with compute where they can give it.

Open a trace in Perfetto (ui.perfetto.dev: "Open trace file"; it reads .json.gz) or TensorBoard. Meta's
Holistic Trace Analysis (`pip install holistictraceanalysis`, or distbench's `trace` extra) reads a directory of
them by `distributedInfo.rank`; its overlap counts GPU kernels only, so a CPU/gloo trace gives none.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

RANK_FILE = re.compile(r"rank-(\d+)\.json\.gz$")


def trace_files(directory: str | os.PathLike) -> dict[int, Path]:
    """{rank: path} of the traces in `directory`."""
    found = {}
    for path in Path(directory).glob("rank-*.json.gz"):
        m = RANK_FILE.search(path.name)
        if m:
            found[int(m.group(1))] = path
    return dict(sorted(found.items()))


def summary(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Per rank: the rank and world size the trace says, its profiler steps, its named ranges (forward,
    backward, optimizer, bucket reductions) and how many GPU kernels it holds (0 on a CPU run)."""
    rows = []
    for path in trace_files(directory).values():
        trace = json.loads(gzip.decompress(path.read_bytes()))
        events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
        info = trace.get("distributedInfo") or {}
        names = {e["name"] for e in events if e.get("cat") == "user_annotation"}
        rows.append(
            {
                "file": path.name,
                "rank": info.get("rank"),
                "world_size": info.get("world_size"),
                "steps": sum(1 for e in events if e["name"].startswith("ProfilerStep#")),
                "ranges": sorted(n for n in names if not n.startswith("ProfilerStep#")),
                "gpu_kernels": sum(1 for e in events if e.get("cat") == "kernel"),
            }
        )
    return rows


def comm_comp_overlap(directory: str | os.PathLike):
    """HTA's `get_comm_comp_overlap()` on the traces, as (DataFrame, None); or (None, why not): no traces, no
    GPU kernels in them (HTA reads kernels only), or HTA not installed."""
    rows = summary(directory)
    if not rows:
        return None, f"no rank-<r>.json.gz traces in {directory}"
    if not any(r["gpu_kernels"] for r in rows):
        return None, (
            f"the traces in {directory} hold no GPU kernels (a CPU run): HTA's overlap reads GPU kernels only. "
            "Their CPU ranges (forward, backward, optimizer, each bucket's reduction) open in Perfetto."
        )
    try:
        from hta.trace_analysis import TraceAnalysis
    except ImportError:
        return None, "HTA is not installed: pip install holistictraceanalysis (or distbench's `trace` extra)"
    return TraceAnalysis(trace_dir=str(directory)).get_comm_comp_overlap(visualize=False), None
