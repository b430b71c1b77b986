"""A calibrated alpha-beta model of ring all-reduce, to project measured step times to more workers.

Ring all-reduce of S bytes over n ranks is a reduce-scatter then an all-gather, each n-1 steps in which
every rank sends S/n bytes to its neighbour, so with a per-step latency alpha (s) and a per-link bandwidth
beta (bytes/s):

    T(S, n) = 2(n-1) alpha + 2(n-1)/n x S / beta

This is the alpha-beta cost analysis of Thakur, Rabenseifner & Gropp 2005 ("Optimization of collective
communication operations in MPICH", IJHPCA 19(1)) applied to the ring, whose bandwidth term meets the
lower bound that Patarasuk & Yuan 2009 ("Bandwidth optimal all-reduce algorithms for clusters of
workstations", JPDC 69(2)) prove for all-reduce. The reduction's own arithmetic is folded into beta.
Reduce-scatter and all-gather alone are half of each term: (n-1) alpha + (n-1)/n x S / beta. beta is thus
the bus bandwidth that nccl-tests reports at large sizes (busbw = bus bytes / time), and alpha the latency
floor per ring step.

`fit` estimates alpha and beta from `distbench.commbench/1` records measured at one world size; the model
then extrapolates in n. That extrapolation is the model's, not a measurement: real libraries switch to
trees or hierarchical rings at scale (NCCL does), where the latency term grows like log n, not n, so the
ring's latency term is a pessimistic bound for large n and small messages.

For GPU clusters this machine does not have, `distbench.perfmodel.nccl` models NCCL itself (ring and tree,
NVLink inside a node, one NIC per GPU across nodes) from public figures; `fit_interconnect` here fits its
`measured` preset to this machine.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Coefficients of (alpha, S/beta) in the ring's time at world size n, per collective.
_RING_TERMS = {
    "all_reduce": lambda n: (2 * (n - 1), 2 * (n - 1) / n),
    "all_gather": lambda n: (n - 1, (n - 1) / n),
    "reduce_scatter": lambda n: (n - 1, (n - 1) / n),
}
# Gloo's reduce-scatter is an all-reduce of the whole input then a copy (commbench records it so): its
# time is an all-reduce's, and fitting it as a ring reduce-scatter would halve beta.
_IMPL_AS = {"all_reduce+slice": "all_reduce"}


def ring_allreduce_time(payload_bytes: float | np.ndarray, n: int, alpha: float, beta: float) -> float | np.ndarray:
    """Seconds for a ring all-reduce of `payload_bytes` over `n` ranks: 2(n-1) alpha + 2(n-1)/n S / beta."""
    steps, share = _RING_TERMS["all_reduce"](n)  # both 0 at n = 1: a world of one sends nothing
    return steps * alpha + share * np.asarray(payload_bytes, dtype=float) / beta


@dataclass(frozen=True)
class CostModel:
    alpha: float  # seconds per ring step (latency)
    beta: float  # bytes/s per link (bus bandwidth); inf when the fit found no size-dependent term
    world_size: int  # the n the measurements were taken at
    backend: str  # the process-group backend they were taken with

    def allreduce_time(self, payload_bytes: float | np.ndarray, n: int) -> float | np.ndarray:
        return ring_allreduce_time(payload_bytes, n, self.alpha, self.beta)


def _rows(data: Any) -> list[dict[str, Any]]:
    """commbench records as dicts, from a DataFrame (results.load) or an iterable of records."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data.to_dict("records")
    return list(data)


def _nonnegative_lstsq(design: np.ndarray, usable: Sequence[int]) -> tuple[float, np.ndarray]:
    """(residual, x) minimising |design @ x - 1|^2 with x >= 0 and x zero outside the `usable` columns.

    Non-negative least squares for the few unknowns of a latency-bandwidth model: every subset of the
    usable columns is solved freely, and the best solution with no negative term wins (the largest subsets
    are tried first, so a tie keeps more terms; with none feasible, x = 0)."""
    target = np.ones(len(design))
    best = (float(np.sum(target**2)), np.zeros(design.shape[1]))
    for k in range(len(usable), 0, -1):
        for cols in itertools.combinations(usable, k):
            trial = np.zeros(design.shape[1])
            trial[list(cols)] = np.linalg.lstsq(design[:, list(cols)], target, rcond=None)[0]
            residual = float(np.sum((design @ trial - target) ** 2))
            if np.all(trial >= 0) and residual < best[0]:
                best = (residual, trial)
    return best


def fit(data: Any, op: str = "all_reduce", time_field: str = "time_us") -> CostModel:
    """Least-squares alpha and beta from commbench measurements of `op` at one world size.

    The ring's time is linear in the unknowns (alpha, 1/beta), so each measurement (S_i, t_i) is one row
    [a_i, b_i S_i] . (alpha, 1/beta) = t_i. Rows are divided by t_i: the fit minimises relative error, so
    a 4 KiB message (latency-bound, microseconds) counts as much as a 256 MiB one (bandwidth-bound,
    seconds) instead of being lost in its absolute residual. Both unknowns are physically positive; if
    the free fit makes one negative, that term is dropped and the other refitted alone (the two-variable
    case of non-negative least squares).

    `time_field` picks the statistic: `time_us` (median over timed windows) or `time_us_min` (the fastest
    window: on a shared machine, the one least disturbed by other processes).
    """
    rows = [r for r in _rows(data) if r.get("op") == op]
    if not rows:
        raise ValueError(f"no {op} measurements to fit")
    for key in ("world_size", "backend"):
        found = sorted({r[key] for r in rows})
        if len(found) != 1:
            raise ValueError(f"{op} measurements mix {key} {found}; fit one at a time")
    n, backend = rows[0]["world_size"], rows[0]["backend"]
    if n < 2:
        raise ValueError("a world of one sends nothing; fit measurements from 2 or more ranks")
    if len({r["bytes"] for r in rows}) < 2:
        raise ValueError("need at least two message sizes to separate latency from bandwidth")

    size = np.array([r["bytes"] for r in rows], dtype=float)
    seconds = np.array([r[time_field] for r in rows], dtype=float) * 1e-6
    if not np.all(seconds > 0):
        raise ValueError(f"{time_field} must be positive in every measurement")
    terms = np.array([_RING_TERMS[_IMPL_AS.get(r.get("impl"), op)](n) for r in rows], dtype=float)
    design = np.column_stack([terms[:, 0], terms[:, 1] * size]) / seconds[:, None]
    _, (alpha, inv_beta) = _nonnegative_lstsq(design, [0, 1])
    return CostModel(float(alpha), 1 / inv_beta if inv_beta > 0 else float("inf"), int(n), str(backend))


def fit_interconnect(
    data: Any, name: str = "measured", time_field: str = "time_us", source: str = "", host_cores: int | None = None
):
    """An `nccl.Interconnect` for the machine that measured `data`: all-reduce records (one backend) at one
    or more world sizes, all ranks on one host of `host_cores` cores (default: this machine's). The ring
    on one host, with the time-shared case of `nccl.shared_host_time`:

        L = 2(n-1) x (alpha, or alpha_shared once ranks outnumber cores),  W = 2(n-1)/n S / B
        T = base + L + W                                          n <= cores
        T = base + max(L, W') + theta min(L, W'),  W' = W n/cores  n >  cores

    base, alpha, alpha_shared and 1/B are fitted like `fit` (least squares on relative error, non-negative),
    theta (`shared_exposed`) by a search over [0, 1]. With one world size below the cores, base and alpha
    are one column and base is 0; without a time-shared world size, alpha_shared and theta stay unset.
    `time_field`: the median window (`time_us`, default) or the fastest (`time_us_min`). On a quiet host
    the median is the steadier one once ranks outnumber cores (a lucky window, when the scheduler happens
    to run the ring in order, is rare and far below the rest); on a busy one, the fastest.

    The ranks of one host form one "node" (gpus_per_node large enough that every n stays inside it), so
    `nccl.collective_time` runs the ring with these terms. Beyond the world sizes measured it extrapolates.
    """
    from distbench.perfmodel.nccl import Interconnect

    cores = host_cores or os.cpu_count() or 1
    rows = [r for r in _rows(data) if r.get("op") == "all_reduce" and r.get("impl", "all_reduce") == "all_reduce"]
    if not rows:
        raise ValueError("no all_reduce measurements to fit")
    backends = sorted({r["backend"] for r in rows})
    if len(backends) != 1:
        raise ValueError(f"all_reduce measurements mix backends {backends}; fit one at a time")
    if min(r["world_size"] for r in rows) < 2:
        raise ValueError("a world of one sends nothing; fit measurements from 2 or more ranks")
    if len({r["bytes"] for r in rows}) < 2:
        raise ValueError("need at least two message sizes to separate latency from bandwidth")
    n = np.array([r["world_size"] for r in rows], dtype=float)
    size = np.array([r["bytes"] for r in rows], dtype=float)
    seconds = np.array([r[time_field] for r in rows], dtype=float) * 1e-6
    if not np.all(seconds > 0):
        raise ValueError(f"{time_field} must be positive in every measurement")
    shared = n > cores
    steps = 2 * (n - 1)
    # columns: base, alpha (own cores), alpha_shared, 1/B; the transfer slowed by n/cores where shared
    transfer = 2 * (n - 1) / n * size * np.maximum(1, n / cores)
    columns = np.column_stack([np.ones_like(n), steps * ~shared, steps * shared, transfer])
    usable = [c for c in range(4) if columns[:, c].any()]
    if len(set(n[~shared])) < 2 and len(set(n[shared])) < 2:
        usable.remove(0)  # one world size per regime: a call's base and its steps' latency are one column

    def solve(theta: float) -> tuple[float, np.ndarray]:
        x = np.array([0.0, 1e-4, 1e-3, 1e-9])
        for _ in range(10):  # which of steps and transfer is longer depends on the fit: iterate to a fixed point
            lat, xfer = columns[:, 1] * x[1] + columns[:, 2] * x[2], columns[:, 3] * x[3]
            weight_lat = np.where(shared & (lat < xfer), theta, 1.0)
            weight_xfer = np.where(shared & (xfer <= lat), theta, 1.0)
            design = columns * np.column_stack([np.ones_like(n), weight_lat, weight_lat, weight_xfer])
            residual, x = _nonnegative_lstsq(design / seconds[:, None], usable)
        return residual, x

    thetas = np.linspace(0, 1, 21) if shared.any() else [1.0]
    _, x, theta = min(((*solve(t), t) for t in thetas), key=lambda fit: fit[0])
    base, alpha, alpha_shared, inv_b = (float(v) for v in x)
    if inv_b <= 0:
        raise ValueError("the measurements show no size-dependent time: nothing to fit a bandwidth to")
    tiny = 1e-9  # Interconnect wants positive latencies: a term the fit dropped is "below a nanosecond"
    return Interconnect(
        name=name,
        gpus_per_node=2**20,
        intra_bytes_per_s=1 / inv_b,
        intra_latency_s=max(alpha, tiny),
        nic_bytes_per_s=1 / inv_b,
        inter_latency_s=max(alpha, tiny),
        intra_efficiency=1.0,
        nic_efficiency=1.0,
        base_latency_s=max(base, tiny),
        host_cores=cores,
        shared_latency_s=max(alpha_shared, tiny) if shared.any() else None,
        shared_exposed=float(theta),
        source=source or f"{len(rows)} {backends[0]} all_reduce records at {sorted({int(w) for w in n})} ranks",
    )


def preset_source(interconnect) -> str:
    """The `measured` preset as the Python literal nccl.py keeps (numbers rounded to 4 significant digits)."""
    p = interconnect
    return (
        "MEASURED = Interconnect(\n"
        f'    name="{p.name}",\n'
        f"    gpus_per_node={p.gpus_per_node},  # one host: every rank in one ring\n"
        f"    intra_bytes_per_s={p.intra_bytes_per_s:.4g},\n"
        f"    intra_latency_s={p.intra_latency_s:.4g},\n"
        f"    nic_bytes_per_s={p.nic_bytes_per_s:.4g},\n"
        f"    inter_latency_s={p.inter_latency_s:.4g},\n"
        "    intra_efficiency=1.0,\n"
        "    nic_efficiency=1.0,\n"
        f"    base_latency_s={p.base_latency_s:.4g},\n"
        f"    host_cores={p.host_cores},\n"
        f"    shared_latency_s={p.shared_latency_s and float(f'{p.shared_latency_s:.4g}')},\n"
        f"    shared_exposed={p.shared_exposed:g},\n"
        f'    source="{p.source}",\n'
        ")"
    )


def main(argv: list[str] | None = None) -> int:
    """python -m distbench.perfmodel.costmodel --fit-preset FILE: the `measured` preset fitted to FILE's records."""
    import argparse
    import sys

    from distbench.perfmodel.commbench import SCHEMA
    from distbench.results import read_records

    p = argparse.ArgumentParser(prog="python -m distbench.perfmodel.costmodel", description=main.__doc__)
    p.add_argument("--fit-preset", required=True, metavar="FILE", help="distbench.commbench/1 records (.jsonl)")
    p.add_argument(
        "--host-cores", type=int, default=None, help="cores of the host that measured them (default: this one's)"
    )
    args = p.parse_args(argv)
    try:
        records = list(read_records(args.fit_preset, schema=SCHEMA))
        fitted = fit_interconnect(records, source=f"fitted to {args.fit_preset}", host_cores=args.host_cores)
    except (OSError, ValueError) as e:
        print(f"python -m distbench.perfmodel.costmodel: error: --fit-preset: {e}", file=sys.stderr)
        return 2
    print(preset_source(fitted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
