"""The benchmark scripts still run and print what benchmarks/README.md reads from them (slow tier: each
starts its own torchrun or allocates a 100K-class head). Their figures are not asserted: machines are noisy."""

from __future__ import annotations

import re
import sys

import pytest
from conftest import ROOT, run_cmd

from distbench.comm import expected_bytes
from distbench.config import parse_args
from distbench.models import build_model

pytestmark = pytest.mark.slow

LINE = re.compile(r"^([A-Za-z0-9_.]+): (.+)$")


def bench(name: str, *args: str) -> dict[str, str]:
    """Runs benchmarks/<name>.py the way its README says and returns its `name: value` lines, checking that
    the last one is the script's ratio."""
    p = run_cmd([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    pairs = [m.groups() for line in p.stdout.splitlines() if (m := LINE.match(line))]
    assert pairs, p.stdout
    last_name, last_value = pairs[-1]
    assert float(last_value) > 0, pairs[-1]
    return dict(pairs) | {"_ratio": last_name}


def test_meter_overhead_counts_the_model_it_times():
    out = bench("meter_overhead", "--blocks", "2", "--block-steps", "2", "--floor-blocks", "2")
    assert out["_ratio"] == "meter_overhead"
    cfg = parse_args(["--model", "tiny", "--batch-size", "32"])
    model = build_model(cfg.model, cfg.freeze, seed=cfg.train.seed)
    assert int(out["meter_bytes_per_step"].split()[0]) == expected_bytes(model)


def test_harness_overhead_runs():
    assert bench("harness_overhead", "--blocks", "2", "--block-steps", "2")["_ratio"] == "harness_overhead"


def test_head_speedup_sends_fewer_bytes_with_the_fixed_head():
    out = bench("head_speedup", "--num-classes", "2000", "--blocks", "2", "--block-steps", "2")
    assert out["_ratio"] == "head_speedup"
    assert float(out["fixed_payload_MB"]) < float(out["learned_payload_MB"])


def test_data_rate_runs():
    assert bench("data_rate", "--blocks", "2", "--train-steps", "2", "--generate-batches", "2")["_ratio"] == "data_rate"


def test_fwht_transform_heads_hold_no_dense_buffer():
    # 20000 classes: the orthogonal head's QR takes ~30 s; 1e9: every head but the transforms' would need
    # terabytes, so the script must skip them, not try
    out = bench("fwht", "--classes", "20000,1000000000", "--batch", "64", "--reps", "2")
    assert out["_ratio"] == "dense_over_fwht" and out["headline_classes"] == "20000"
    dense = float(out["dense_20000_buffer_MB"])
    assert dense == float(out["orthogonal_20000_buffer_MB"]) == pytest.approx(20000 * 2048 * 4 / 1e6, abs=0.05)
    assert float(out["fwht_20000_buffer_MB"]) == float(out["srht_20000_buffer_MB"]) == 0
    # the signs, ceil(C / N) x N (printed to 0.1 MB)
    assert float(out["srht_20000_other_buffers_MB"]) == pytest.approx(10 * 2048 * 4 / 1e6, abs=0.05)
    assert float(out["dense_over_srht"]) > 0
    for name in ("dense", "orthogonal"):
        assert out[f"{name}_1000000000"].startswith("skipped (needs ~"), out[f"{name}_1000000000"]


def test_split_forward_runs():
    assert bench("split_forward")["_ratio"] == "p0.5_cat_weights_over_cat_outputs"
