"""Real 2-rank gloo jobs through torchrun and launch/run.py: no mocks of torch.distributed."""

from pathlib import Path

import pytest
from conftest import FAST, python_run, torchrun, torchrun_many

from distbench.config import ConfigError
from distbench.results import validate
from distbench.runtime.checks import parse_and_check

HEADS = ["learned", "fixed", "fixed-orthogonal"]


@pytest.fixture(scope="module")
def head_records(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("heads") / "runs.jsonl"
    return dict(zip(HEADS, torchrun_many([[*FAST, "--head", head] for head in HEADS], out), strict=True))


def test_a_run_through_launch_run_py_writes_one_record(tmp_path):
    """The whole entry point under a real torchrun: rank 0 alone writes, once."""
    r = torchrun([*FAST, "--head", "fixed"], tmp_path / "runs.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = r.records
    validate(rec)
    assert rec["status"] == "ok" and rec["comm"]["payload_bytes_per_step"] == rec["comm"]["expected_bytes_per_step"]


@pytest.mark.parametrize("head", HEADS)
def test_two_rank_run_writes_a_valid_record_with_exact_bytes(head_records, head):
    rec = head_records[head]
    validate(rec)
    assert rec["status"] == "ok" and rec["env"]["world_size"] == 2 and rec["env"]["backend"] == "gloo"
    assert rec["comm"]["payload_bytes_per_step"] == rec["comm"]["expected_bytes_per_step"]
    assert rec["comm"]["expected_bytes_per_step"] == 4 * rec["params"]["trainable"]
    assert rec["comm"]["bus_bytes_per_step"] == rec["comm"]["payload_bytes_per_step"]  # 2(n-1)/n = 1 at n = 2
    assert rec["perf"]["timed_steps"] == 4 and rec["accuracy"]["eval_samples"] == 64
    assert rec["perf"]["samples_per_s"] > 0 and rec["perf"]["exposed_comm_ms"] is not None
    assert 0 < rec["accuracy"]["oracle_top1"] <= 1  # synthetic data: the Bayes-optimal top-1 is recorded


def test_learned_minus_fixed_payload_is_the_head_weight(head_pair):
    learned, fixed = head_pair["learned"], head_pair["fixed"]
    for rec in (learned, fixed):
        validate(rec)
        assert rec["status"] == "ok"
        assert rec["comm"]["payload_bytes_per_step"] == rec["comm"]["expected_bytes_per_step"]
    diff = learned["comm"]["payload_bytes_per_step"] - fixed["comm"]["payload_bytes_per_step"]
    # The learned head's 512 x 100K weight is gone; the fixed head adds one learned scale (alpha).
    assert diff == 4 * 512 * 100_000 - 4
    ratio = fixed["comm"]["payload_bytes_per_step"] / learned["comm"]["payload_bytes_per_step"]
    assert round(ratio, 3) == 0.180
    assert fixed["params"]["head_trainable"] == 100_001 and learned["params"]["head_trainable"] == 51_300_000


KEPT = '{"earlier": "record"}\n'  # must survive every failed run untouched
BAD = [
    (["--steps", "0"], "--steps"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--num-classes", "1"], "--num-classes"),
    (["--model", "resnet19"], "--model"),
    (["--head", "fxied"], "--head"),
    (["--dataset", "nope"], "--dataset"),
    (["--dataset", "imagefolder", "--data-dir", "/no/such/dir"], "--data-dir"),
    (["--steps", "many"], "--steps"),
    (["--freeze", "fraction:1.5"], "--freeze"),
    (["--freeze", "fraction:-1"], "--freeze"),
    (["--freeze", "filters:0"], "--freeze"),
    (["--model", "resnet18", "--freeze", "blocks:nosuchlayer"], "--freeze"),
    (["--param", "symmetric"], "--param"),  # the tiny CNN has no square conv
]


@pytest.mark.parametrize("args,flag", BAD)
def test_bad_input_names_its_flag(args, flag, capsys):
    if "many" in args:  # not an int at all: argparse's own one line and exit 2
        with pytest.raises(SystemExit) as stop:
            parse_and_check(args)
        assert stop.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err
        return
    with pytest.raises(ConfigError) as e:
        parse_and_check(args)
    assert str(e.value).startswith(f"{flag} ")


@pytest.mark.parametrize("args,flag", [BAD[0], BAD[11]])  # a value's own check, and one against the model
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, flag):
    out = tmp_path / "runs.jsonl"
    out.write_text(KEPT)
    r = python_run(args, out)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "error" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert out.read_text() == KEPT


def test_bad_input_under_torchrun(tmp_path):
    out = tmp_path / "runs.jsonl"
    out.write_text(KEPT)
    r = torchrun(["--head", "fxied"], out)
    # Every rank exits 2 and rank 0 alone prints the one line; torchrun itself always exits 1 and
    # reports the failed workers (its own behaviour, which no worker can change).
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("run.py: error:")]
    assert ours == [
        (
            "run.py: error: --head (model.head): unknown head 'fxied' (did you mean 'fixed'?); "
            "choose from: fixed, fixed-fwht, fixed-orthogonal, fixed-srht, learned, sharded, tied"
        )
    ]
    assert "exitcode  : 2" in r.stderr and "exitcode  : 1" not in r.stderr
    assert out.read_text() == KEPT


def test_single_process_run_without_torchrun(tmp_path):
    r = python_run([*FAST, "--dataset", "digits", "--num-classes", "10", "--eval-samples", "0"], tmp_path / "r.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    rec = r.records[0]
    assert rec["env"]["world_size"] == 1 and rec["accuracy"]["eval_samples"] == 297
    assert rec["accuracy"]["oracle_top1"] is None  # real data has no oracle
    assert rec["comm"]["payload_bytes_per_step"] == rec["comm"]["expected_bytes_per_step"]
    assert rec["comm"]["bus_bytes_per_step"] == 0


def test_dry_run_prints_counts_and_writes_nothing(tmp_path):
    out = tmp_path / "r.jsonl"
    r = python_run(["--dry-run", "--model", "resnet18", "--num-classes", "1000"], out)
    assert r.returncode == 0
    assert "46,758,048" in r.stdout  # 11,689,512 parameters x 4 bytes
    assert not out.exists()


@pytest.mark.parametrize("scale", [[], ["--head-scale", "rule"]], ids=["learned-alpha", "alpha-at-the-rule"])
def test_dry_run_at_a_million_classes_is_quick_with_the_srht_head(tmp_path, scale):
    """No C x N matrix: ResNet-50 with 1M classes and fixed-srht counts in seconds."""
    import time

    t = time.perf_counter()
    args = ["--dry-run", "--model", "resnet50", "--num-classes", "1000000", "--head", "fixed-srht", *scale]
    r = python_run(args, tmp_path / "r.jsonl")
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.perf_counter() - t < 60  # seconds on this CPU; a dense 1M x 2048 head would need 8 GB first
    # The backbone's 23,508,032 parameters, alpha (unless held) and the 1M biases are all that is sent.
    assert f"{4 * (23_508_032 + (0 if scale else 1) + 1_000_000):,}" in r.stdout


def unwritable(tmp_path: Path, flag: str, where: str) -> tuple[Path, list[str]]:
    (tmp_path / "a_file").write_text("not a directory")
    bad = {"under_a_file": tmp_path / "a_file" / "sub", "read_only_fs": Path("/proc/distbench-test")}[where]
    target = bad / "runs.jsonl" if flag == "--out" else bad
    return target, [flag, str(target)]


@pytest.mark.parametrize("flag", ["--out", "--checkpoint-dir"])
@pytest.mark.parametrize("where", ["under_a_file", "read_only_fs"])
def test_unwritable_output_is_found_by_the_checks(tmp_path, flag, where):
    """Tried, not inferred from permission bits, which root passes."""
    _, args = unwritable(tmp_path, flag, where)
    with pytest.raises(ConfigError, match="cannot write") as e:
        parse_and_check(args)
    assert e.value.flag == flag


def test_unwritable_output_fails_before_starting(tmp_path):
    """An --out that cannot be written stops the run before it trains (it used to train to the end and lose
    its result): one line naming the flag, exit 2."""
    flag = "--out"
    target, _ = unwritable(tmp_path, flag, "under_a_file")
    out = tmp_path / "runs.jsonl"
    r = python_run([], target)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"run.py: error: {flag} ") and "cannot write" in lines[0], r.stderr
    assert not out.exists()
