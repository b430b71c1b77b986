"""Longer runs, on purpose: `pytest -m slow`."""

import pytest
from conftest import flags, torchrun

pytestmark = pytest.mark.slow


def test_synthetic_task_is_learnable_at_100_classes(tmp_path):
    """The README's claim: a learned head reaches well above chance (1%) within a few hundred steps."""
    args = flags(num_classes=100, steps=300, warmup_steps=5, nosync_steps=0, eval_samples=1024)
    r = torchrun(args, tmp_path / "runs.jsonl", timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.records[0]["accuracy"]["top1"] > 0.5


def test_full_size_done_when_pair(tmp_path):
    """The issue's acceptance runs at full size: ResNet-18 at 224x224 and 100K classes, learned and fixed."""
    out = tmp_path / "runs.jsonl"
    common = flags(
        model="resnet18", num_classes=100_000, steps=6, warmup_steps=2, batch_size=4, nosync_steps=2, eval_samples=16
    )
    for head in ("learned", "fixed"):
        r = torchrun([*common, "--head", head], out, timeout=900)
        assert r.returncode == 0, r.stderr[-2000:]
    learned, fixed = (rec["comm"] for rec in r.records)
    assert learned["payload_bytes_per_step"] == learned["expected_bytes_per_step"] == 249_906_048
    assert fixed["payload_bytes_per_step"] == fixed["expected_bytes_per_step"] == 45_106_052
