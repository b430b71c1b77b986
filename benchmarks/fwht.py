"""How much faster and smaller are the transform heads (`fixed-fwht`, `fixed-srht`) than the dense fixed heads
(`fixed`, `fixed-orthogonal`: a C x N buffer), at 100K and 1M classes and N = 2048?

The four heads (printed as dense, fwht, orthogonal, srht):
- `fixed` (dense): the C x N top-left block of a Sylvester Hadamard matrix as a buffer, `F.linear`;
- `fixed-fwht`: the same logits from a fast Walsh–Hadamard transform (fold N, FWHT of size 2048, tile over
  C): no C x N matrix, but classes C and C + 2048 share a row;
- `fixed-orthogonal`: a seeded random (semi-)orthogonal C x N buffer (float64 QR), `F.linear`;
- `fixed-srht`: C distinct rows of H D_b, one FWHT of size 2048 per block of 2048 classes; holds the
  ceil(C / 2048) x 2048 signs D_b (`srht_<C>_other_buffers_MB`), which are no weight.

For each C in `--classes`, one at a time (the heads of one C are freed before the next): build time (the
orthogonal head's QR dominates), the bytes of the fixed-weight buffers (distbench.model.counts.fixed_weights) and of
any other buffer, the peak of what one forward + backward allocates above what existed before it (CUDA: the
caching allocator's peak; CPU: the torch profiler's memory timeline, tensor creations minus destructions),
and forward + backward time of the head alone (input requires grad; alpha and b learned; a fixed random
upstream gradient, so neither side gets the stride-0 gradient of `.sum()`): one untimed call, then `--reps`
timed calls per head interleaved in ABBA order, median.

What cannot fit is not attempted: a head whose estimated build memory (dense: the float32 C x N buffer;
orthogonal: about 3 float64 copies of it during the QR, measured, so ~52 GB at 1M classes) exceeds 80% of
the memory available (/proc/meminfo MemAvailable; CUDA: also the device's free memory for the buffer) prints
`<head>_<C>: skipped (...)`. The batch at each C is `--batch` capped so that the dense product
(forward and input gradient, 4 B C N FLOP) stays under `--max-gflop` (256 at 100K classes, 64 at 1M by
default: 1M classes at batch 256 is ~2 TFLOP, 15-60 s per call on 2 CPU cores); the shape lines say which.

Prints `name: value` lines: per C `<head>_<C>_<metric>` and the ratios `dense_over_fwht_<C>`,
`dense_over_srht_<C>`, `srht_over_fwht_<C>`; then the headline ratios at the first C in `--classes` where all
three ran, `dense_over_srht` and, last, `dense_over_fwht`. CPU by default, CUDA when present.

    python benchmarks/fwht.py          # 2 CPU cores: 9.5 min beside another job keeping both busy (the 100K QR 2.5)
    python benchmarks/fwht.py --classes 100000 --batch 64 --reps 2
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action

from distbench.model.counts import fixed_weights, tensor_bytes
from distbench.model.heads import build_head
from distbench.runtime.timing import Stopwatch, synchronize

from common import Figures, add_out_flag, interleave

IN_FEATURES = 2048
HEADS = {"dense": "fixed", "fwht": "fixed-fwht", "orthogonal": "fixed-orthogonal", "srht": "fixed-srht"}
MB, GB = 1e6, 1e9
FIT = 0.8  # build only what needs at most this share of the memory available


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by `step` above what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before
    # The CPU allocator keeps no statistics; the profiler's memory timeline records every tensor's
    # creation and destruction (the data behind the deprecated export_memory_timeline).
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    live = peak = 0
    for _, action, (key, _), size in prof._memory_profile().timeline:
        if key.device.type == "cpu" and action in (Action.CREATE, Action.DESTROY):
            live += size if action == Action.CREATE else -size
            peak = max(peak, live)
    return peak


def host_bytes() -> tuple[int, int]:
    """(available, total) host memory in bytes: /proc/meminfo's MemAvailable (what can be allocated without
    swapping, page cache included) and MemTotal; os.sysconf's free and total pages where there is no
    /proc/meminfo."""
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def build_estimate(name: str, c: int, n: int) -> tuple[int, int]:
    """(host bytes to build, bytes the built head holds on its device), estimated. The dense Hadamard block
    is built as whole periods of 2^ceil(log2 N) rows; the orthogonal one holds a float64 Gaussian, its QR
    and the sign-corrected Q at once (3.1 x 8 C N measured at 20000 x 2048) before the float32 copy."""
    matrix = c * n * 4
    if name == "dense":
        rows = -(-c // n) * n
        return rows * n * 4, matrix
    if name == "orthogonal":
        return int(3.2 * 2 * matrix), matrix
    return 2 * c * 4, 2 * c * 4  # bias, signs


def skip_reason(name: str, c: int, n: int, batch: int, device: torch.device) -> str | None:
    """Why head `name` at C classes would not fit here, or None."""
    build, held = build_estimate(name, c, n)
    build += 4 * batch * c * 4  # and one forward + backward: logits, their gradient, transients
    available, total = host_bytes()
    if build > FIT * available:
        return f"needs ~{build / GB:.0f} GB to build; {available / GB:.0f} GB available of {total / GB:.0f} GB here"
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        if held + 4 * batch * c * 4 > FIT * free:
            return f"needs ~{held / GB:.0f} GB on the device; {free / GB:.0f} GB free of {total / GB:.0f} GB"
    return None


def batch_for(c: int, n: int, batch: int, max_gflop: float) -> int:
    """`batch`, halved until the dense head's forward + backward (4 B C N FLOP) is at most `max_gflop`."""
    while batch > 1 and 4 * batch * c * n > max_gflop * 1e9:
        batch //= 2
    return batch


def run_classes(c: int, args: argparse.Namespace, device: torch.device, figures: Figures) -> dict[str, float]:
    """Builds, measures and times every head at C classes; prints its lines, returns the median ms per head."""
    n = IN_FEATURES
    batch = batch_for(c, n, args.batch, args.max_gflop)
    capped = ""
    if batch < args.batch:
        capped = f" (--batch {args.batch} capped: dense forward+backward <= {args.max_gflop:g} GFLOP)"
    figures.print(f"shape_{c}: batch {batch}{capped}, in_features {n}, num_classes {c}")
    heads: dict[str, torch.nn.Module] = {}
    watch = Stopwatch(device)
    for name, key in HEADS.items():
        if name not in args.heads:
            continue
        if reason := skip_reason(name, c, n, batch, device):
            figures.print(f"{name}_{c}: skipped ({reason})")
            continue
        watch.start()
        heads[name] = build_head(key, n, c).to(device)
        figures.print(f"{name}_{c}_build_s: {watch.stop():.2f}")
        gc.collect()  # the orthogonal build's float64 temporaries
    if not heads:
        return {}

    gen = torch.Generator().manual_seed(c)
    x = torch.randn(batch, n, generator=gen).to(device).requires_grad_(True)
    grad = torch.randn(batch, c, generator=gen).to(device)

    def step(head: torch.nn.Module) -> None:
        head(x).backward(grad)

    def clear_grads(head: torch.nn.Module) -> None:  # so no step pays for accumulating into the last one's
        x.grad = None
        head.zero_grad(set_to_none=True)

    for name, head in heads.items():
        weights = list(fixed_weights(head))
        others = [b for b in head.buffers() if not any(b is w for w in weights)]
        figures.print(f"{name}_{c}_buffer_MB: {tensor_bytes(weights) / MB:.1f}")
        figures.print(f"{name}_{c}_other_buffers_MB: {tensor_bytes(others) / MB:.1f}")
    for name, head in heads.items():
        step(head)  # first call outside the measurement: one-off allocations and lazy initialisation
        clear_grads(head)
        figures.print(f"{name}_{c}_peak_fwd_bwd_MB: {peak_bytes(lambda head=head: step(head), device) / MB:.1f}")

    def timed(head: torch.nn.Module) -> list[float]:
        clear_grads(head)
        watch.start()
        step(head)
        return [watch.stop()]

    times = interleave({name: lambda head=head: timed(head) for name, head in heads.items()}, args.reps)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    for name, ms in med.items():
        figures.print(f"{name}_{c}_fwd_bwd_ms: {ms:.2f}")
    for a, b in (("dense", "fwht"), ("dense", "srht"), ("srht", "fwht")):
        figures.print(f"{a}_over_{b}_{c}: " + (f"{med[a] / med[b]:.1f}" if a in med and b in med else "skipped"))
    heads.clear()
    gc.collect()
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", default="100000,1000000", help="comma-separated class counts")
    ap.add_argument("--batch", type=int, default=256, help="batch (capped per C by --max-gflop)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per head and C (default: 5 CPU, 25 CUDA)")
    ap.add_argument(
        "--max-gflop", type=float, default=600, help="cap on the dense head's forward+backward work per call"
    )
    ap.add_argument(
        "--heads", default=",".join(HEADS), help=f"comma-separated subset of {', '.join(HEADS)} (default: all)"
    )
    add_out_flag(ap)
    args = ap.parse_args()
    args.heads = args.heads.split(",")
    if unknown := set(args.heads) - set(HEADS):
        ap.error(f"--heads: unknown {', '.join(sorted(unknown))}; choose from: {', '.join(HEADS)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.reps = args.reps or (5 if device.type == "cpu" else 25)
    figures = Figures(__file__, args)  # the record holds the reps really used
    # "classes share a row": true, and beside the point
    logging.getLogger("distbench.model.heads").setLevel(logging.ERROR)
    torch.manual_seed(0)
    figures.print(f"device: {device.type}")
    figures.print(f"threads: {torch.get_num_threads()}")
    figures.print(f"reps: {args.reps}")
    results = {c: run_classes(c, args, device, figures) for c in (int(v) for v in args.classes.split(","))}
    headline = next((c for c, med in results.items() if {"dense", "fwht", "srht"} <= med.keys()), None)
    if headline is not None:
        med = results[headline]
        figures.print(f"headline_classes: {headline}")
        figures.print(f"dense_over_srht: {med['dense'] / med['srht']:.1f}")
        figures.print(f"dense_over_fwht: {med['dense'] / med['fwht']:.1f}")
    figures.finish("dense_over_fwht", device)


if __name__ == "__main__":
    main()
