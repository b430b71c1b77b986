"""How much faster and smaller is the fixed Hadamard head as a fast Walsh–Hadamard transform (`fixed-fwht`)
than as a dense C x N matrix (`fixed`), at 100K classes?

Forward + backward of the head alone (input requires grad; alpha and b learned; a fixed random upstream
gradient, so neither side gets the stride-0 gradient of `.sum()`), interleaved repetitions, median.
Memory: the bytes of the head's fixed-weight buffers, and the peak of what one forward + backward
allocates above what existed before it (CUDA: the caching allocator's peak; CPU: the torch profiler's
memory timeline, tensor creations minus destructions). Prints `name: value` lines, the ratio last.
CPU by default, CUDA when present.

    python benchmarks/fwht.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import Action

from distbench.comm import fixed_weights, tensor_bytes
from distbench.engines import synchronize
from distbench.heads import build_head

BATCH, IN_FEATURES, NUM_CLASSES = 256, 2048, 100_000
MB = 1e6


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


def main() -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    heads = {}
    for name, key in (("dense", "fixed"), ("fwht", "fixed-fwht")):
        t = time.perf_counter()
        heads[name] = build_head(key, IN_FEATURES, NUM_CLASSES).to(device)
        synchronize(device)
        print(f"{name}_build_s: {time.perf_counter() - t:.2f}")
    x = torch.randn(BATCH, IN_FEATURES, device=device, requires_grad=True)
    grad = torch.randn(BATCH, NUM_CLASSES, device=device)

    def step(head: torch.nn.Module) -> None:
        head(x).backward(grad)

    def clear_grads(head: torch.nn.Module) -> None:  # so no step pays for accumulating into the last one's
        x.grad = None
        head.zero_grad(set_to_none=True)

    print(f"device: {device.type}")
    print(f"shape: batch {BATCH}, in_features {IN_FEATURES}, num_classes {NUM_CLASSES}")
    for name, head in heads.items():
        print(f"{name}_buffer_MB: {tensor_bytes(fixed_weights(head)) / MB:.1f}")
    for name, head in heads.items():
        step(head)  # first call outside the measurement: one-off allocations and lazy initialisation
        clear_grads(head)
        print(f"{name}_peak_fwd_bwd_MB: {peak_bytes(lambda head=head: step(head), device) / MB:.1f}")

    reps, warmup = (7, 2) if device.type == "cpu" else (25, 5)
    times: dict[str, list[float]] = {name: [] for name in heads}
    for rep in range(reps):
        for name, head in heads.items():
            clear_grads(head)
            synchronize(device)
            t = time.perf_counter()
            step(head)
            synchronize(device)
            if rep >= warmup:
                times[name].append(time.perf_counter() - t)
    med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
    print(f"dense_fwd_bwd_ms: {med['dense']:.2f}")
    print(f"fwht_fwd_bwd_ms: {med['fwht']:.2f}")
    print(f"dense_over_fwht: {med['dense'] / med['fwht']:.1f}")


if __name__ == "__main__":
    main()
