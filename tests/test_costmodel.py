"""The alpha-beta cost model and the collective benchmark that calibrates it: pure fits on synthetic
measurements, and one real 2-rank gloo benchmark whose fit must predict every measured size."""

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TORCHRUN, run_cmd

from distbench.perfmodel import commbench, costmodel, nccl
from distbench.results import load, read_records

COMMBENCH = ROOT / "launch" / "commbench.py"


def measurement(size: int, seconds: float, n: int = 4, op: str = "all_reduce", impl: str = "all_reduce") -> dict:
    return {"op": op, "impl": impl, "bytes": size, "time_us": seconds * 1e6, "world_size": n, "backend": "gloo"}


SIZES = [4 << 10 << k for k in range(17)]  # 4 KiB .. 256 MiB


# ------------------------------------------------------------------------------------------------- fit
@pytest.mark.parametrize("n", [2, 4, 8])
def test_fit_recovers_alpha_and_beta_from_exact_ring_times(n):
    alpha, beta = 37e-6, 3.1e9
    rows = [measurement(s, costmodel.ring_allreduce_time(s, n, alpha, beta), n) for s in SIZES]
    model = costmodel.fit(rows)
    assert model.alpha == pytest.approx(alpha, rel=1e-6)
    assert model.beta == pytest.approx(beta, rel=1e-6)
    assert (model.world_size, model.backend) == (n, "gloo")


def test_fit_reads_the_loaders_dataframe_and_other_ring_collectives():
    import pandas as pd

    alpha, beta, n = 20e-6, 1e10, 8
    ring_rs = [measurement(s, (n - 1) * alpha + (n - 1) / n * s / beta, n, "reduce_scatter", "x") for s in SIZES]
    # gloo's reduce-scatter is an all-reduce plus a copy: its times are fitted as an all-reduce's
    gloo_rs = [
        measurement(s, costmodel.ring_allreduce_time(s, n, alpha, beta), n, "reduce_scatter", "all_reduce+slice")
        for s in SIZES
    ]
    for rows in (ring_rs, gloo_rs):
        model = costmodel.fit(pd.DataFrame(rows), op="reduce_scatter")
        assert model.alpha == pytest.approx(alpha, rel=1e-6) and model.beta == pytest.approx(beta, rel=1e-6)


def test_fit_keeps_both_terms_non_negative():
    # Bandwidth-bound times a little under the line through zero: the free fit's alpha is negative; it is
    # held at zero and beta refitted alone.
    rows = [measurement(s, s / 2e9 - 1e-7, 2) for s in SIZES]
    model = costmodel.fit(rows)
    assert model.alpha == 0 and model.beta == pytest.approx(2e9, rel=1e-2)
    # Flat times (latency only) that fall slightly with size: no bandwidth term, beta infinite, never < 0.
    rows = [measurement(s, 1e-4 * (1 - 1e-3 * k), 2) for k, s in enumerate(SIZES)]
    model = costmodel.fit(rows)
    assert model.beta == float("inf") and model.alpha == pytest.approx(0.5e-4, rel=1e-2)
    assert model.allreduce_time(1e9, 8) == pytest.approx(14 * model.alpha)


def test_fit_refuses_what_it_cannot_separate():
    with pytest.raises(ValueError, match="no all_reduce"):
        costmodel.fit([measurement(4096, 1e-4, op="all_gather")])
    with pytest.raises(ValueError, match="world_size"):
        costmodel.fit([measurement(4096, 1e-4, 2), measurement(8192, 1e-4, 4)])
    with pytest.raises(ValueError, match="two message sizes"):
        costmodel.fit([measurement(4096, 1e-4), measurement(4096, 2e-4)])


# --------------------------------------------------------------------------------------- predictions
# ------------------------------------------------------------------------------ the `measured` preset
COMMITTED = ROOT / "analysis" / "data" / "commbench_measured.jsonl"


def test_costmodel_measured_preset_is_the_fit_of_the_committed_records():
    """nccl.MEASURED is what `python -m distbench.perfmodel.costmodel --fit-preset` prints for the committed records,
    not numbers typed in: refit after new records, and this holds them together."""
    fitted = costmodel.fit_interconnect(read_records(COMMITTED, schema=commbench.SCHEMA), host_cores=2)
    kept = nccl.MEASURED
    for name in ("intra_bytes_per_s", "intra_latency_s", "base_latency_s", "nic_bytes_per_s", "inter_latency_s",
                 "shared_latency_s", "shared_exposed", "host_cores"):  # fmt: skip
        assert getattr(kept, name) == pytest.approx(getattr(fitted, name), rel=1e-3), name
    p = run_cmd([sys.executable, "-m", "distbench.perfmodel.costmodel", "--fit-preset", str(COMMITTED)], timeout=60)
    assert p.returncode == 0 and "MEASURED = Interconnect(" in p.stdout


def test_costmodel_fit_interconnect_separates_call_and_step_latency():
    base, alpha, bandwidth = 80e-6, 30e-6, 1.5e9
    rows = [
        measurement(s, base + 2 * (n - 1) * alpha + 2 * (n - 1) / n * s / bandwidth, n) for n in (2, 4) for s in SIZES
    ]
    fitted = costmodel.fit_interconnect(rows, host_cores=8)  # no world size time-shares the host
    assert fitted.base_latency_s == pytest.approx(base, rel=1e-6)
    assert fitted.intra_latency_s == pytest.approx(alpha, rel=1e-6)
    assert fitted.intra_bytes_per_s == pytest.approx(bandwidth, rel=1e-6)
    for n in (2, 4, 8):  # the NCCL model with these terms is the ring on one host
        assert nccl.collective_time("all_reduce", 1 << 20, n, fitted) == pytest.approx(
            base + 2 * (n - 1) * alpha + 2 * (n - 1) / n * (1 << 20) / bandwidth
        )
    with pytest.raises(ValueError, match="backends"):
        costmodel.fit_interconnect([*rows, {**rows[0], "backend": "nccl"}])


def test_costmodel_fit_interconnect_recovers_a_time_shared_host():
    """Four ranks on two cores: the transfer runs twice as slow, each ring step waits alpha_shared to be
    scheduled, and only theta of the shorter of the two adds to the longer."""
    truth = nccl.Interconnect("truth", 2**20, 1.2e9, 300e-6, 1.2e9, 300e-6, 1.0, 1.0, 1e-9, host_cores=2,
                              shared_latency_s=1.1e-3, shared_exposed=0.3)  # fmt: skip
    rows = [measurement(s, nccl.collective_time("all_reduce", s, n, truth), n) for n in (2, 4) for s in SIZES]
    fitted = costmodel.fit_interconnect(rows, host_cores=2)
    assert fitted.shared_exposed == pytest.approx(0.3)
    assert fitted.shared_latency_s == pytest.approx(1.1e-3, rel=1e-4)
    assert fitted.intra_bytes_per_s == pytest.approx(1.2e9, rel=1e-4)
    # one world size per regime: the call's base is folded into the per-step latency, predictions agree
    assert fitted.intra_latency_s == pytest.approx(300e-6, rel=1e-3)


def test_costmodel_measured_preset_holds_every_committed_measurement_in_the_band():
    """The records the preset was fitted to (2 and 4 ranks, 1 KiB to 256 MiB; every fourth-power size in four
    runs, the others in one): each (ranks, size) median over the runs within 0.75x..1.33x of the prediction, and no size
    of a single run off by more than 2x. Deterministic; the fresh benchmark below is the slow tier's."""
    times: dict[tuple[int, int], list[float]] = {}
    for r in read_records(COMMITTED, schema=commbench.SCHEMA):
        times.setdefault((r["world_size"], r["bytes"]), []).append(r["time_us"])
    assert {n for n, _ in times} == {2, 4} and len(times) == 38
    for (n, size), measured in times.items():
        predicted = nccl.collective_time("all_reduce", size, n, "measured") * 1e6
        assert 0.75 <= predicted / float(np.median(measured)) <= 1.33, (n, size, measured)
        assert all(0.5 <= predicted / t <= 2 for t in measured), (n, size, measured)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_costmodel_measured_preset_predicts_a_fresh_gloo_commbench(tmp_path, n):
    """The acceptance test of the `measured` preset: commbench's all-reduce at n gloo ranks, 1 KiB to 256 MiB,
    measured now, against the preset fitted to the committed records earlier: every size within 0.75x..1.33x
    of its median time. Run it on purpose (`-m slow`) on a quiet machine: it is a timed test.

    One-call windows on this 2-core machine are heavy-tailed (a scheduling delay adds milliseconds to about
    half the small ones), in about one run in three one size's median doubles, and the whole VM runs up to
    2.5x slower for minutes at a time. A size outside the band is measured once more, in a second run of the
    same benchmark (not alone: with nothing but small calls back to back the idle cores wake slowly and
    every small call takes milliseconds), and must be inside the band then: a wrong model fails twice."""

    def bench(out: Path):
        cmd = [
            str(TORCHRUN),
            "--standalone",
            f"--nproc_per_node={n}",
            str(COMMBENCH),
            *("--ops", "all_reduce", "--min-bytes", "1K", "--max-bytes", "256M", "--factor", "4"),
            *("--iters", "1", "--warmup", "2", "--repeats", "15", "--out", str(out)),
        ]
        p = run_cmd(cmd, timeout=300)  # about 10 s at 2 ranks, 25 s at 4
        assert p.returncode == 0, p.stderr[-3000:]
        df = load(out, schema=commbench.SCHEMA)
        predicted = np.array([nccl.collective_time("all_reduce", b, n, "measured") for b in df.bytes]) * 1e6
        return df.assign(ratio=predicted / df.time_us.to_numpy())

    df = bench(tmp_path / "bench.jsonl")
    assert df.bytes.tolist() == [1 << 10 << 2 * k for k in range(10)] and set(df.world_size) == {n}
    outside = df[(df.ratio < 0.75) | (df.ratio > 1.33)]
    if outside.empty:
        return
    again = bench(tmp_path / "again.jsonl").set_index("bytes").ratio
    table = ", ".join(
        f"{b >> 10}K: {m:.0f} us x{r:.2f}" for b, m, r in zip(df.bytes, df.time_us, df.ratio, strict=True)
    )
    for size, first in zip(outside.bytes, outside.ratio, strict=True):
        assert 0.75 <= again[size] <= 1.33, (
            f"n={n}: {size} B predicted/measured x{first:.2f}, again x{again[size]:.2f}; the first run: {table}"
        )
