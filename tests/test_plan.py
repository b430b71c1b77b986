"""`python -m distbench.plan`: bytes from models built on the meta device, times from distbench.nccl."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import ROOT

from distbench.plan import head_cost, plan

DONE_WHEN = ["--model", "resnet50", "--num-classes", "100000", "--heads", "learned,fixed", "--gpus", "8,64,1024",
             "--cluster", "h100-ib-ndr"]  # fmt: skip


def run_plan(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distbench.plan", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def test_plan_prints_its_table_in_seconds():
    start = time.monotonic()
    r = run_plan(*DONE_WHEN)
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ") and "GPUs" not in line]
    assert len(rows) == 6 and took < 60
    assert "Assumed:" in r.stdout  # the compute assumption is stated, not hidden
    assert r.stderr == ""


def test_plan_bytes_are_the_models_gradient_bytes():
    learned = head_cost("resnet50", 100_000, "learned", 32, 8)
    fixed = head_cost("resnet50", 100_000, "fixed", 32, 8)
    # the 2048 x 100K weight is gone; alpha (one scalar) is learned instead
    assert learned.gradient_bytes - fixed.gradient_bytes == 4 * 2048 * 100_000 - 4
    assert 20e9 < fixed.flops_per_sample < learned.flops_per_sample  # ResNet-50: ~24 GFLOP fwd + bwd


def test_plan_saving_grows_with_scale_and_the_sharded_head_pays_in_activations():
    rows = plan("resnet50", 100_000, ["learned", "fixed", "sharded"], [8, 1024], "h100-ib-ndr")
    speed = {(r["gpus"], r["head"]): r["speedup_vs_learned"] for r in rows}
    assert 1 < speed[8, "fixed"] < speed[1024, "fixed"]
    by = {(r["gpus"], r["head"]): r for r in rows}
    # its features are all-gathered: the sharded head's bytes grow with the GPUs, the others' do not
    assert by[1024, "sharded"]["bytes_per_step"] > by[8, "sharded"]["bytes_per_step"]
    assert by[1024, "fixed"]["bytes_per_step"] == by[8, "fixed"]["bytes_per_step"]
    for r in rows:
        assert 0 <= r["exposed_ms"] <= r["collective_ms"] and r["step_ms"] >= r["compute_ms"]


def test_plan_json_and_bad_input():
    r = run_plan("--model", "tiny", "--num-classes", "1000", "--gpus", "8", "--json")
    assert r.returncode == 0
    assert {row["head"] for row in json.loads(r.stdout)} == {"learned", "fixed"}
    for args, flag in (
        (["--heads", "lerned"], "--heads"),
        (["--cluster", "nope"], "--cluster"),
        (["--model", "x"], "--model"),
    ):
        r = run_plan(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and f"error: {flag} " in lines[0], r.stderr
