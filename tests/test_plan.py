"""`python -m distbench.perfmodel.plan`: bytes from models built on the meta device, times from perfmodel.nccl."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from distbench.perfmodel.plan import plan, plan_records, predict, record_workloads, spec_workload

DONE_WHEN = ["--model", "resnet50", "--num-classes", "100000", "--heads", "learned,fixed", "--gpus", "8,64,1024",
             "--cluster", "h100-ib-ndr"]  # fmt: skip


def run_plan(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "distbench.perfmodel.plan", *args]
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
    learned = spec_workload("resnet50", 100_000, "learned", 32, 8)
    fixed = spec_workload("resnet50", 100_000, "fixed", 32, 8)
    # the 2048 x 100K weight is gone; alpha (one scalar) is learned instead
    assert learned.gradient_bytes - fixed.gradient_bytes == 4 * 2048 * 100_000 - 4
    assert 20e9 < fixed.flops_per_sample < learned.flops_per_sample  # ResNet-50: ~24 GFLOP fwd + bwd


def test_plan_saving_grows_with_scale_and_the_sharded_head_pays_in_activations():
    rows = plan("resnet50", 100_000, ["learned", "fixed", "sharded"], [8, 1024], "h100-ib-ndr")
    speed = {(r["gpus"], r["head"]): r["speedup_vs_learned"] for r in rows}
    assert 1 < speed[8, "fixed head"] < speed[1024, "fixed head"]
    by = {(r["gpus"], r["head"]): r for r in rows}
    # its features are all-gathered: the sharded head's bytes grow with the GPUs, the others' do not
    assert by[1024, "sharded head"]["bytes_per_step"] > by[8, "sharded head"]["bytes_per_step"]
    assert by[1024, "fixed head"]["bytes_per_step"] == by[8, "fixed head"]["bytes_per_step"]
    for r in rows:
        assert 0 <= r["exposed_ms"] <= r["collective_ms"] and r["step_ms"] >= r["compute_ms"]


def plan_main(capsys, *args: str) -> tuple[int, str, str]:
    """`python -m distbench.perfmodel.plan ARGS` in this process: (exit status, stdout, stderr)."""
    from distbench.perfmodel.plan import main

    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_json_and_bad_input(capsys):
    code, out, _ = plan_main(capsys, "--model", "tiny", "--num-classes", "1000", "--gpus", "8", "--json")
    assert code == 0
    assert {row["head"] for row in json.loads(out)} == {"learned head", "fixed head"}
    for args, flag in (
        (["--heads", "lerned"], "--heads"),
        (["--cluster", "nope"], "--cluster"),
        (["--model", "x"], "--model"),
        (["--freeze", "fraction:2"], "--freeze"),
        (["--model", "tiny,x"], "--model"),
        (["--model", ","], "--model"),
        (["--num-classes", "1000,1"], "--num-classes"),
        (["--num-classes", "1000,x"], "--num-classes"),
        (["--gpus", "0"], "--gpus"),
        (["--model", "resnet18,gpt-tiny", "--heads", "learned,tied"], "--heads"),
    ):
        code, _, err = plan_main(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and f"error: {flag}:" in lines[0], err


def test_plan_takes_several_models_and_class_counts(capsys):
    """Every model at every class count, one group each, in the order given: the language models' table
    (docs/language-models.md) is one such command."""
    code, out, _ = plan_main(capsys, "--model", "gpt-tiny,gpt2-small", "--num-classes", "1000,4096",
                             "--heads", "learned,tied", "--gpus", "8", "--json")  # fmt: skip
    assert code == 0
    rows = json.loads(out)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    assert groups == [f"{m}, {v:,} classes" for m in ("gpt-tiny", "gpt2-small") for v in (1000, 4096)]
    by = {(r["group"], r["head"]): r["bytes_per_step"] for r in rows}
    # the tied head sends its matrix once: V x d fewer gradient bytes than the learned head (fp32)
    for m, d in (("gpt-tiny", 64), ("gpt2-small", 768)):
        for v in (1000, 4096):
            assert by[f"{m}, {v:,} classes", "learned head"] - by[f"{m}, {v:,} classes", "tied head"] == 4 * d * v


# ------------------------------------------------------------------------------------------- from records
RECORDS = ROOT / "analysis" / "data" / "heads.jsonl"  # DDP runs with --nosync-steps: exposed times measured


def test_plan_records_reproduce_each_runs_own_step_at_its_world_size():
    """At the world size and interconnect a run was measured on, the prediction is the measured step: the
    window and residual are solved from that run, and only the all-reduce changes elsewhere."""
    from distbench.results.analysis import load_runs

    runs = load_runs(RECORDS).set_index("run_id")
    workloads, skipped = record_workloads(RECORDS, "h100-ib-ndr")
    # every ok run is planned unless it has no exposed-communication time, and then it is counted as left out
    assert workloads and len(workloads) + skipped == len(runs)
    assert skipped == runs["perf.exposed_comm_ms"].isna().sum()
    for w in workloads:
        run = runs.loc[w.run_id]
        row = predict(w, w.world_size, "measured")
        if w.window_s < w.compute_s:  # a window that was not cut to the compute time
            assert row["step_ms"] == pytest.approx(run["perf.step_time_ms.p50"], rel=1e-9)
        assert row["bytes_per_step"] == w.gradient_bytes == run["comm.payload_bytes_per_step"]


def test_plan_records_on_a_cluster_keep_the_measured_compute():
    rows, _ = plan_records(RECORDS, [8, 1024], "h100-ib-ndr")
    assert rows
    for r in rows:
        assert r["step_ms"] >= r["compute_ms"] > 0
    # the fixed head sends less than the learned one of the same model and classes, and is not slower
    by = {(r["group"], r["gpus"], r["head"]): r for r in rows}
    pairs = [(k, by.get((k[0], k[1], "learned head"))) for k in by if k[2] == "fixed head"]
    assert pairs and all(base and by[k]["bytes_per_step"] < base["bytes_per_step"] for k, base in pairs)


def test_plan_cli_from_records_and_its_bad_input(tmp_path, capsys):
    code, out, err = plan_main(capsys, "--records", str(RECORDS), "--gpus", "8,64")
    assert code == 0, err
    assert "Measured:" in out and "| model |" in out
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    for args, flag in (
        (["--records", str(tmp_path / "missing")], "--records"),
        (["--records", str(RECORDS), "--model", "resnet50"], "--records"),
        (["--records", str(empty)], "--records"),
        (["--cluster", "measured"], "--device"),
        (["--gpus", "0"], "--gpus"),
    ):
        code, _, err = plan_main(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and flag in lines[0], (args, err)


def test_plan_freeze_rules_cut_the_bytes_of_every_head():
    rows = plan("resnet18", 1000, ["learned", "fixed"], [64], "a100-ib-hdr", freezes=("none", "fraction:0.1"))
    by = {r["head"]: r for r in rows}
    assert by["learned head, fraction:0.1"]["bytes_per_step"] < by["learned head"]["bytes_per_step"]
    assert by["fixed head, fraction:0.1"]["bytes_per_step"] < by["fixed head"]["bytes_per_step"]
    assert by["fixed head, fraction:0.1"]["speedup_vs_learned"] > 1


@pytest.mark.parametrize(
    "model,classes,head,freeze",
    [
        ("gpt-tiny", 512, "learned", "none"),
        ("gpt-tiny", 512, "tied", "none"),  # the head's weight is the backbone's embedding
        ("gpt-tiny", 512, "tied", "embedding"),  # ... and frozen
        ("gpt-tiny", 512, "fixed-srht", "bn"),
        ("resnet18", 1000, "learned", "fraction:0.1"),
        ("resnet18", 1000, "fixed", "none"),
    ],
)
def test_plan_flops_are_the_whole_models_count(model, classes, head, freeze):
    """The planner counts a backbone once per freeze rule and adds each head's part; the sum is the count of
    the whole model, forward and backward, as FlopCounterMode gives it."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from distbench.config import FreezeConfig, ModelConfig
    from distbench.model import build_model
    from distbench.model.contracts import example_input
    from distbench.perfmodel import plan as plan_module

    with torch.device("meta"):
        net = build_model(ModelConfig(model=model, num_classes=classes, head=head), FreezeConfig(freeze=freeze))
        with FlopCounterMode(display=False) as counter:
            logits = net(example_input(net.backbone, 1))
            F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long)).backward()
    whole = counter.get_total_flops()
    assert whole > 0
    assert spec_workload(model, classes, head, 32, 8, freeze).flops_per_sample == whole
    assert (model, freeze) in plan_module._BACKBONE_FLOPS  # counted once, then looked up


# ------------------------------------------------------------------------------------------------ figure
def test_plan_figure_has_one_panel_per_model_and_labels_its_lines():
    from distbench.results.report import fig_plan

    rows = plan("tiny", 1000, ["learned", "fixed"], [8, 64], "h100-ib-ndr") + plan(
        "tiny", 100_000, ["learned", "fixed"], [8, 64], "h100-ib-ndr"
    )
    fig = fig_plan(rows)
    axes = [ax for ax in fig.axes if ax.lines]
    assert len(axes) == 2
    for ax in axes:
        assert len(ax.lines) == 2  # one per head
        labels = [t.get_text() for t in ax.texts]
        assert "learned" in labels and any(t.startswith("fixed ") and t.endswith("x") for t in labels)


def test_the_language_models_table_names_the_command_that_prints_it():
    """docs/language-models.md shows `lm_plan_command()` above the table made from LM_PLAN: the command parses
    back to LM_PLAN, so it prints that table (`main` and the page both go through spec_rows)."""
    import shlex

    from distbench.perfmodel.plan import LM_PLAN, _validate, lm_plan_command, parse_args

    words = shlex.split(lm_plan_command())
    assert words[:2] == ["distbench", "plan"]
    args = parse_args(words[2:])
    _validate(args)
    assert [args.model, args.num_classes, args.heads, args.gpus, args.cluster] == list(LM_PLAN.values())
