"""The benchmark scripts, their records and the README tables made from them.

Slow tier: each script runs once at its smallest size (most start their own torchrun); the test checks that
the record it writes with `--out` validates and holds exactly the printed lines, and relations that hold on
any machine: byte counts, step counts, skipped heads, and that each printed ratio is the quotient of the
printed figures it names (up to their printed rounding). No timing is asserted: machines are noisy.
Default tier: records.py's check and `Figures`, and tables.py on hand-made records.
"""

from __future__ import annotations

import importlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from conftest import ROOT, run_cmd

from distbench.comm.expected import expected_bytes
from distbench.config import parse_args
from distbench.model import build_model
from distbench.results import SchemaError

BENCHMARKS = ROOT / "benchmarks"


def _script_module(name: str):
    """benchmarks/<name>.py as a module (the scripts import their neighbours by bare name)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


records = _script_module("records")


# ------------------------------------------------------------------------------------------------ helpers
def bench(tmp_path, name: str, *args: str) -> tuple[dict[str, str], dict]:
    """Runs benchmarks/<name>.py with `--out` and returns its printed `name: value` texts and its record,
    having checked the record against the printed lines: it validates, holds every printed line (numbers
    as numbers), and its ratio is the last line printed."""
    out = tmp_path / f"{name}.jsonl"
    p = run_cmd([sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--out", str(out)], timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    texts = {m[1]: m[2] for line in p.stdout.splitlines() if (m := records.LINE.match(line))}
    assert texts, p.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    records.validate_bench(record)
    assert record["bench"] == name
    assert record["metrics"] == {k: records.parse_value(v) for k, v in texts.items()}
    last = [m[1] for line in p.stdout.splitlines() if (m := records.LINE.match(line))][-1]
    assert record["ratio_name"] == last and record["ratio"] == float(texts[last]) > 0
    assert "out" not in record["args"]
    return texts, record


def half_unit(text: str) -> float:
    """Half the last printed digit's unit: how far the printed number may be from the value."""
    digits = len(text.partition(".")[2])
    return 0.5 * 10.0**-digits


def consistent(texts: dict[str, str], name: str, fn: Callable[..., float], *inputs: str) -> None:
    """The printed `name` is fn(*the printed inputs), up to the printed rounding of all of them (fn is
    monotonic in each input, so its range over the rounding box is reached at the corners)."""
    centers = [float(texts[i]) for i in inputs]
    errors = [half_unit(texts[i]) for i in inputs]
    corners = [
        fn(*(c + s * e for c, s, e in zip(centers, signs, errors, strict=True)))
        for signs in itertools.product((-1, 1), repeat=len(inputs))
    ]
    value, err = float(texts[name]), half_unit(texts[name])
    assert min(corners) - err <= value <= max(corners) + err, (name, value, inputs, centers)


def interval(text: str) -> tuple[float, float]:
    lo, hi = (float(v) for v in text.split(" to "))
    return lo, hi


# ------------------------------------------------------------------------------------ the scripts (slow)
@pytest.mark.slow
def test_meter_overhead_counts_the_model_it_times(tmp_path):
    out, record = bench(tmp_path, "meter_overhead", "--blocks", "2", "--block-steps", "2", "--floor-blocks", "2")
    assert record["ratio_name"] == "meter_overhead"
    assert record["args"] == {"blocks": 2, "block_steps": 2, "floor_blocks": 2}
    assert record["env"]["world_size"] == 2
    assert out["device"].endswith("ranks: 2, steps per variant: 4")  # blocks x block-steps per variant
    cfg = parse_args(["--model", "tiny", "--batch-size", "32"])
    model = build_model(cfg.model, cfg.freeze, seed=cfg.train.seed)
    payload, _, buckets, _ = out["meter_bytes_per_step"].split()
    assert int(payload) == expected_bytes(model) and int(buckets) >= 1
    consistent(out, "meter_overhead", lambda a, b: a / b, "meter_step_ms", "default_step_ms")
    consistent(out, "floor_meter_added_us", lambda a, b: a - b, "floor_meter_step_us", "floor_default_step_us")
    consistent(out, "floor_counting_added_us", lambda a, b: a - b, "floor_meter_step_us", "floor_torch_hook_step_us")
    consistent(out, "meter_overhead_bound", lambda d, us: (d + us / 1e3) / d, "default_step_ms", "floor_meter_added_us")
    lo, hi = interval(out["meter_overhead_ci95"])
    assert 0 < lo <= hi


@pytest.mark.slow
def test_harness_overhead_times_both_loops_alike(tmp_path):
    out, record = bench(tmp_path, "harness_overhead", "--blocks", "2", "--block-steps", "2")
    assert record["ratio_name"] == "harness_overhead"
    assert record["args"] == {"blocks": 2, "block_steps": 2} and record["env"]["world_size"] == 2
    assert out["device"].endswith("ranks: 2, steps per variant: 4")
    consistent(out, "harness_overhead", lambda a, b: a / b, "distbench_step_ms", "plain_step_ms")
    lo, hi = interval(out["harness_overhead_ci95"])
    assert 0 < lo <= hi


@pytest.mark.slow
def test_head_speedup_sends_what_each_head_trains(tmp_path):
    out, record = bench(tmp_path, "head_speedup", "--num-classes", "2000", "--blocks", "2", "--block-steps", "2")
    assert record["ratio_name"] == "head_speedup" and record["env"]["world_size"] == 2
    assert record["args"] == {
        "backbone": "mlp",
        "fixed_head": "fixed",
        "num_classes": 2000,
        "blocks": 2,
        "block_steps": 2,
    }
    assert out["device"].endswith("ranks: 2, backbone: mlp, batch: 32")
    mlp_model = _script_module("head_speedup").mlp_model
    seed = parse_args([]).train.seed
    for head in ("learned", "fixed"):
        # the bytes all-reduced per step are the head's and the backbone's trainable parameters, no more
        assert float(out[f"{head}_payload_MB"]) == round(expected_bytes(mlp_model(head, 2000, seed)) / 1e6, 1)
        consistent(out, f"{head}_exposed_comm_ms", lambda a, b: a - b, f"{head}_step_ms", f"{head}_nosync_step_ms")
    assert float(out["fixed_payload_MB"]) < float(out["learned_payload_MB"])
    consistent(out, "head_speedup", lambda a, b: a / b, "learned_step_ms", "fixed_step_ms")


@pytest.mark.slow
def test_data_rate_compares_rates_of_the_same_batch(tmp_path):
    out, record = bench(tmp_path, "data_rate", "--blocks", "2", "--train-steps", "2", "--generate-batches", "2")
    assert record["ratio_name"] == "data_rate" and record["env"]["world_size"] == 1
    assert record["args"] == {"blocks": 2, "train_steps": 2, "generate_batches": 2}
    assert out["device"].startswith(("cpu, ranks: 1, ", "cuda, ranks: 1, ")) and out["device"].endswith("batch: 32")
    consistent(out, "generated_samples_per_s", lambda ms: 32e3 / ms, "generate_batch_ms")
    consistent(out, "trained_samples_per_s", lambda ms: 32e3 / ms, "train_step_ms")
    consistent(out, "data_rate", lambda train, gen: train / gen, "train_step_ms", "generate_batch_ms")


@pytest.mark.slow
def test_fwht_transform_heads_hold_no_dense_buffer(tmp_path):
    # 20000 classes: the orthogonal head's QR takes ~30 s; 1e9: every head but the transforms' would need
    # terabytes, so the script must skip them, not try
    out, record = bench(tmp_path, "fwht", "--classes", "20000,1000000000", "--batch", "64", "--reps", "2")
    assert record["ratio_name"] == "dense_over_fwht" and out["headline_classes"] == "20000"
    assert record["args"] == {
        "classes": "20000,1000000000",
        "batch": 64,
        "reps": 2,
        "max_gflop": 600,
        "heads": ["dense", "fwht", "orthogonal", "srht"],
    }
    assert out["shape_20000"] == "batch 64, in_features 2048, num_classes 20000"  # 10.5 GFLOP: not capped
    dense = float(out["dense_20000_buffer_MB"])
    assert dense == float(out["orthogonal_20000_buffer_MB"]) == pytest.approx(20000 * 2048 * 4 / 1e6, abs=0.05)
    assert float(out["fwht_20000_buffer_MB"]) == float(out["srht_20000_buffer_MB"]) == 0
    # the signs, ceil(C / N) x N (printed to 0.1 MB)
    assert float(out["srht_20000_other_buffers_MB"]) == pytest.approx(10 * 2048 * 4 / 1e6, abs=0.05)
    for a, b in (("dense", "fwht"), ("dense", "srht"), ("srht", "fwht")):
        consistent(out, f"{a}_over_{b}_20000", lambda x, y: x / y, f"{a}_20000_fwd_bwd_ms", f"{b}_20000_fwd_bwd_ms")
    assert out["dense_over_fwht"] == out["dense_over_fwht_20000"]  # the headline is the first C where all ran
    assert out["dense_over_srht"] == out["dense_over_srht_20000"]
    for name in ("dense", "orthogonal"):
        assert out[f"{name}_1000000000"].startswith("skipped (needs ~"), out[f"{name}_1000000000"]
        assert f"{name}_1000000000_build_s" not in out and f"{name}_1000000000_fwd_bwd_ms" not in out
    assert out.get("dense_over_fwht_1000000000", "skipped") == "skipped"


@pytest.mark.slow
def test_cross_entropy_times_both_losses_at_each_shape(tmp_path):
    out, record = bench(tmp_path, "cross_entropy", "--shapes", "8x1000,32x500", "--reps", "2")
    assert record["ratio_name"] == "torch_over_fused" and record["env"]["backend"] == "none"
    assert record["args"] == {"shapes": "8x1000,32x500", "reps": 2, "threads": 1}
    assert out["device"].endswith("threads: 1, reps: 2")
    for shape in ("8x1000", "32x500"):
        consistent(out, f"torch_over_fused_{shape}", lambda a, b: a / b, f"torch_{shape}_ms", f"fused_{shape}_ms")
    assert out["torch_over_fused"] == out["torch_over_fused_8x1000"]  # the headline is the first shape


@pytest.mark.slow
def test_srht_paths_times_both_paths_and_names_the_heads_choice(tmp_path):
    out, record = bench(tmp_path, "srht_paths", "--shapes", "32x64x1000,8x300x500", "--reps", "2")
    assert record["ratio_name"] == "transform_over_dense" and record["env"]["backend"] == "none"
    assert record["args"] == {"shapes": "32x64x1000,8x300x500", "reps": 2, "threads": 1}
    assert out["head_picks_32x64x1000"] == "dense" and out["head_picks_8x300x500"] == "transform"
    for shape in ("32x64x1000", "8x300x500"):
        assert float(out[f"max_abs_diff_{shape}"]) < 1e-4  # the same logits either way
        consistent(
            out, f"transform_over_dense_{shape}", lambda a, b: a / b, f"transform_{shape}_ms", f"dense_{shape}_ms"
        )
    assert out["transform_over_dense"] == out["transform_over_dense_32x64x1000"]  # the headline is the first shape


@pytest.mark.slow
def test_split_forward_compares_both_forms_at_both_shares(tmp_path):
    out, record = bench(tmp_path, "split_forward")
    assert record["ratio_name"] == "p0.5_cat_weights_over_cat_outputs"
    assert record["args"] == {} and record["env"]["world_size"] == 1 and record["env"]["backend"] == "none"
    forms = ("cat_weights_ms", "cat_outputs_ms", "cat_weights_over_cat_outputs")
    assert set(out) == {"device"} | {f"p{p}_{f}" for p in (0.1, 0.5) for f in forms}
    for p in (0.1, 0.5):
        consistent(out, f"p{p}_cat_weights_over_cat_outputs", lambda a, b: a / b, *(f"p{p}_{f}" for f in forms[:2]))


# ------------------------------------------------------------------------------- records (default tier)
ENV = {
    "torch": "2.0",
    "torchvision": None,
    "deepspeed": None,
    "cuda": None,
    "nccl": None,
    "device": "x86_64",
    "world_size": 2,
    "backend": "gloo",
    "hostname": "ci",
    "hosts": ["ci"],
    "git_sha": "0123456789abcdef",
    "python": "3.11",
    "cpu_cores": 2,
}


def make_record(bench: str, metrics: dict, ratio_name: str, day: str, args: dict | None = None) -> dict:
    return {
        "schema": records.SCHEMA,
        "bench": bench,
        "run_id": f"{bench}-{day}",
        "started_at": f"{day}T10:00:00+00:00",
        "finished_at": f"{day}T10:05:00+00:00",
        "env": ENV,
        "args": args or {},
        "metrics": metrics,
        "ratio_name": ratio_name,
        "ratio": metrics.get(ratio_name),
    }


HARNESS = make_record(
    "harness_overhead",
    {
        "device": "cpu, ranks: 2, steps per variant: 240",
        "distbench_step_ms": 107.98,
        "plain_step_ms": 108.94,
        "harness_overhead_ci95": "0.943 to 1.056",
        "harness_overhead": 0.991,
    },
    "harness_overhead",
    "2026-11-22",
)


def data_rate(day: str, ratio: float) -> dict:
    metrics = {
        "generate_batch_ms": 1.022,
        "train_step_ms": 50.5,
        "generated_samples_per_s": 31302,
        "trained_samples_per_s": 634,
        "data_rate": ratio,
    }
    return make_record("data_rate", metrics, "data_rate", day, {"blocks": 30})


def test_validate_bench_names_what_is_wrong():
    records.validate_bench(HARNESS)
    older = HARNESS | {"env": {k: v for k, v in ENV.items() if k != "hosts"}}  # written before env.hosts
    records.validate_bench(older, written_before=True)
    with pytest.raises(SchemaError, match=r"missing field env\.hosts"):
        records.validate_bench(older)
    for change, match in (
        ({"schema": "distbench.run/1"}, "schema is"),
        ({"ratio": 2.0}, "ratio is 2.0, but metrics.harness_overhead is 0.991"),
        ({"metrics": HARNESS["metrics"] | {"flag": True}}, "metrics.flag has type bool"),
        ({"bench": "../x"}, "bench must be a script name"),
        ({"finished_at": "2026-11-21T00:00:00+00:00"}, "finished_at"),
        ({"env": ENV | {"world_size": "2"}}, "env.world_size"),
    ):
        with pytest.raises(SchemaError, match=match):
            records.validate_bench(HARNESS | change)


def test_figures_print_the_lines_and_write_only_when_asked(tmp_path, monkeypatch, capsys):
    import argparse

    import torch

    monkeypatch.chdir(tmp_path)
    figures = records.Figures("benchmarks/some_bench.py", argparse.Namespace(blocks=3, out=None))
    figures.print("device: cpu, ranks: 1")
    figures.print("device: cpu, ranks: 1")  # the same line twice is one figure
    figures.print("thing_ms: 12.50")
    figures.print("note: skipped (too big)")
    figures.print("some_ratio: 3")
    record = figures.finish("some_ratio", torch.device("cpu"))
    assert capsys.readouterr().out.splitlines() == [
        "device: cpu, ranks: 1",
        "device: cpu, ranks: 1",
        "thing_ms: 12.50",
        "note: skipped (too big)",
        "some_ratio: 3",
    ]
    assert list(tmp_path.iterdir()) == []  # no --out: nothing written
    records.validate_bench(record)
    assert record["bench"] == "some_bench" and record["args"] == {"blocks": 3}
    assert record["metrics"] == {
        "device": "cpu, ranks: 1",
        "thing_ms": 12.5,
        "note": "skipped (too big)",
        "some_ratio": 3,
    }
    assert record["ratio"] == 3 and record["env"]["backend"] == "none"
    with pytest.raises(ValueError, match="printed twice"):
        figures.print("thing_ms: 13.00")
    with pytest.raises(ValueError, match="not a `name: value` line"):
        figures.print("no colon here")

    out = tmp_path / "data" / "some_bench.jsonl"
    for _ in range(2):
        records.Figures("some_bench.py", argparse.Namespace(out=str(out))).finish("missing", torch.device("cpu"))
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 2 and all(r["ratio"] is None and r["args"] == {} for r in written)


def test_latest_record_per_script_wins(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "data_rate.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (data_rate("2026-11-23", 55.7), data_rate("2026-11-21", 40.0)))
    )
    (data / "other.jsonl").write_text(json.dumps(HARNESS) + "\n" + json.dumps({"schema": "distbench.run/1"}) + "\n")
    latest = records.latest_records(data)
    assert sorted(latest) == ["data_rate", "harness_overhead"]
    assert latest["data_rate"]["ratio"] == 55.7  # by finished_at, not by line order
    (data / "bad.jsonl").write_text(json.dumps(HARNESS | {"ratio": 9.0}) + "\n")
    with pytest.raises(SchemaError, match="harness_overhead"):
        records.latest_records(data)


# -------------------------------------------------------------------------------- tables (default tier)
README = """# Project

Intro text stays.

<!-- bench-table:start -->
| an old | hand-made table |
<!-- bench-table:end -->

Text after stays.
"""


def tables(*args: str) -> subprocess.CompletedProcess:
    return run_cmd([sys.executable, str(BENCHMARKS / "tables.py"), *args], timeout=60)


def test_tables_are_made_from_the_records_and_check_finds_a_stale_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "harness_overhead.jsonl").write_text(json.dumps(HARNESS) + "\n")
    (data / "data_rate.jsonl").write_text(json.dumps(data_rate("2026-11-22", 49.4)) + "\n")
    readme, full = tmp_path / "README.md", tmp_path / "benchmarks-README.md"
    readme.write_text(README)
    full.write_text(README)
    paths = ["--data", str(data), "--readme", str(readme), "--benchmarks-readme", str(full)]

    assert tables(*paths, "--check").returncode == 1  # the hand-made table is not what the records give
    assert readme.read_text() == README  # --check changes nothing
    p = tables(*paths)
    assert p.returncode == 0, p.stderr

    text = readme.read_text()
    assert text.startswith("# Project\n\nIntro text stays.\n\n<!-- bench-table:start -->\n| script | ratio |")
    assert text.endswith("<!-- bench-table:end -->\n\nText after stays.\n") and "hand-made" not in text
    rows = text.split("<!-- bench-table:start -->\n")[1].split("\n<!-- bench-table:end -->")[0].splitlines()
    assert rows[:2] == ["| script | ratio | target | last |", "|---|---|---|---|"]
    assert [r.split(" | ")[0] for r in rows[2:]] == [
        f"| `python benchmarks/{n}.py`"
        for n in ("meter_overhead", "harness_overhead", "head_speedup", "fwht", "cross_entropy", "data_rate")
    ]
    by_script = {r.split("`")[1]: r for r in rows[2:]}
    assert by_script["python benchmarks/harness_overhead.py"] == (
        "| `python benchmarks/harness_overhead.py` | distbench's timed step / a hand-written torch DDP loop | <= 1.03 "
        "| 0.991 (2026-11-22, CPU (x86_64), 2 ranks) |"
    )
    assert by_script["python benchmarks/data_rate.py"].endswith("| >= 20 | 49.4 (2026-11-22, CPU (x86_64), 2 ranks) |")
    for name in ("meter_overhead", "head_speedup", "fwht", "cross_entropy"):
        assert by_script[f"python benchmarks/{name}.py"].endswith("| no committed record |")

    full_rows = full.read_text().split("<!-- bench-table:start -->\n")[1].split("\n<!-- bench-table:end -->")[0]
    full_rows = {r.split("`")[1]: r for r in full_rows.splitlines()[2:]}
    scripts = ("meter_overhead", "harness_overhead", "head_speedup", "fwht", "cross_entropy", "data_rate")
    assert sorted(full_rows) == sorted(f"{n}.py" for n in (*scripts, "srht_paths", "split_forward"))
    assert full_rows["harness_overhead.py"].endswith(
        "| 107.98 / 108.94 ms: **0.991** (95% interval 0.943 to 1.056). 2026-11-22, CPU (x86_64), 2 ranks, ci, "
        "git 0123456 |"
    )
    assert (
        "1.02 ms per batch (31,302 samples/s) vs 50.5 ms per step (634 samples/s): **49.4**"
        in full_rows["data_rate.py"]
    )
    assert full_rows["split_forward.py"].endswith("| no committed record |")
    assert full_rows["srht_paths.py"].endswith("| no committed record |")

    assert tables(*paths, "--check").returncode == 0  # up to date
    with (data / "data_rate.jsonl").open("a") as fh:  # a newer run is committed
        fh.write(json.dumps(data_rate("2026-11-24", 51.0)) + "\n")
    p = tables(*paths, "--check")
    assert p.returncode == 1 and "out of date" in p.stderr
    assert "49.4 (2026-11-22" in readme.read_text()  # --check changes nothing
    assert tables(*paths).returncode == 0
    assert "| >= 20 | 51.0 (2026-11-24, CPU (x86_64), 2 ranks) |" in readme.read_text()
    assert tables(*paths, "--check").returncode == 0


def test_tables_refuse_a_file_without_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    p = tables("--data", str(tmp_path / "none"), "--readme", str(readme), "--benchmarks-readme", str(readme))
    assert p.returncode == 2 and "needs exactly one" in p.stderr
    assert readme.read_text() == "# no markers\n"


def test_the_committed_tables_match_the_committed_records():
    if not records.latest_records(BENCHMARKS / "data"):
        pytest.skip("no benchmark records committed yet (benchmarks/data/*.jsonl)")
    p = tables("--check")
    assert p.returncode == 0, p.stderr


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_step(tmp_path):
    """The prepared GPU check, at toy sizes on the CPU: every step runs and leaves its records and summary."""
    out = tmp_path / "check"
    p = run_cmd([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--out", str(out)], 600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# GPU check on CPU (smoke test)")
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 8 and all(r["status"] == "ok" for r in runs)
    assert all(r["comm"]["payload_bytes_per_step"] == r["comm"]["expected_bytes_per_step"] for r in runs)
    assert summary.count("| True |") == 8
    benches = [json.loads(line)["bench"] for line in (out / "bench.jsonl").read_text().splitlines()]
    assert benches == ["harness_overhead", "meter_overhead", "fwht"]
    assert "collected" in (out / "gpu_tests.txt").read_text()


def test_gpu_check_keeps_to_its_budget(tmp_path):
    """A step's limit is cut to what is left of the whole check's budget, and a step with none left is named
    and skipped: a slow loan loses its last steps, not the check's results."""
    check = _script_module("gpu_check").Check(tmp_path / "check", smoke=True)
    check.deadline = time.monotonic() + 8
    hung = [sys.executable, "-c", "import signal; signal.pause()"]  # a step that never ends by itself
    assert check.step("hung", hung, limit=600) is None
    assert len(check.failures) == 1 and check.failures[0].startswith("hung: over its ")
    assert int(check.failures[0].split("over its ")[1].split()[0]) <= 8  # cut from 600 to what was left
    assert check.step("late", [sys.executable, "-c", "pass"], limit=600) is None
    assert check.failures[1] == f"late: no time left of the check's {check.budget} s"
