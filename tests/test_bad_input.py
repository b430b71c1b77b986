"""Bad inputs and bad files: refused up front in one line, or failed fast with a record that names the cause;
never a traceback, a hang, or lost results. Checkpoints are data, never code (issue 29)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUN, SHORT, flags, python_run
from test_data import make_imagefolder

from distbench import config
from distbench.config import ConfigError
from distbench.results import validate
from distbench.runtime.checkpoint import read_latest
from distbench.runtime.checks import check_devices, parse_and_check

KEPT = '{"earlier": "record"}\n'  # must survive every refused run untouched


# ------------------------------------------------------------------------------------- sizes that cannot fit
@pytest.mark.parametrize(
    "args,field",
    [
        (["--batch-size", "100000000"], "train.batch_size"),  # 100M samples a rank: 1.2 TB of inputs alone
        (["--num-classes", "100000000"], "model.num_classes"),  # a 25.6G-parameter head
        (["--steps", "100000000000"], "train.steps"),  # the per-step timings alone would not fit
    ],
)
def test_bad_input_a_size_that_cannot_fit_is_refused_up_front(args, field):
    with pytest.raises(ConfigError, match="GB are available") as e:
        parse_and_check(args)
    assert e.value.field == field


@pytest.mark.parametrize("ranks,gpus", [(2, 1), (9, 8), (3, 2)])
def test_bad_input_more_ranks_on_a_node_than_gpus_is_refused_naming_nproc(ranks, gpus):
    # A GPU path, held here by the function it runs through (tests/test_gpu.py runs it under torchrun on CUDA).
    with pytest.raises(ConfigError, match=f"{ranks} ranks on this node.*start at most {gpus}") as e:
        check_devices(ranks, gpus)
    assert str(e.value).startswith("--nproc-per-node (launch.nproc_per_node): ")


@pytest.mark.parametrize("ranks,gpus", [(1, 1), (2, 2), (4, 8), (2, 0), (16, 0)])
def test_bad_input_ranks_within_the_gpus_or_on_cpu_pass(ranks, gpus):
    check_devices(ranks, gpus)  # 0 GPUs: the ranks share the host's CPUs


def test_bad_input_a_huge_batch_is_one_line_and_quick(tmp_path):
    """It used to spin for minutes in the label stream, deaf to signals, and write nothing."""
    out = tmp_path / "runs.jsonl"
    out.write_text(KEPT)
    r = python_run(["--batch-size", "100000000", "--steps", "5"], out, timeout=120)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("run.py: error: --batch-size (train.batch_size): 100,000,000 needs at least")
    assert out.read_text() == KEPT


def test_bad_input_the_label_stream_is_linear_in_the_batch():
    """A batch far larger than the class count: one pass, not a copy of the growing list per epoch."""
    import time

    import torch

    from distbench.runtime.data import Shard, class_stream

    started = time.perf_counter()
    labels = next(class_stream(10, 2_000_000, Shard(0, 1, torch.device("cpu")), seed=0))
    assert len(labels) == 2_000_000 and torch.equal(torch.bincount(labels), torch.full((10,), 200_000))
    assert time.perf_counter() - started < 30  # quadratic, this took hours; linear, well under a second


# ------------------------------------------------------------------------------------------------ images
def test_bad_input_an_empty_class_folder_is_caught_up_front(tmp_path):
    root = make_imagefolder(tmp_path, classes=2, per_class=2)
    for f in (root / "val" / "class1").iterdir():
        f.unlink()
    out = tmp_path / "runs.jsonl"
    r = python_run(["--dataset", "imagefolder", "--data-dir", str(root), "--num-classes", "2"], out, timeout=120)
    assert r.returncode == 2 and not out.exists()
    (line,) = r.stderr.strip().splitlines()
    assert line == f"run.py: error: --data-dir (data.data_dir): {root / 'val' / 'class1'} holds no image " + (
        "(.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)"
    )


def corrupt_images(root: Path) -> list[Path]:
    """One file in val/ and one in train/ that no image library can read."""
    bad = [root / "val" / "class0" / "broken.jpg", root / "train" / "class1" / "broken.jpg"]
    for path in bad:
        path.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return bad


IMAGES = [
    "--dataset", "imagefolder", "--num-classes", "2", "--image-size", "32", "--workers", "1", "--eval-samples", "0",
    *flags(steps=4, warmup_steps=1, nosync_steps=0, batch_size=2),
]  # fmt: skip


def test_bad_input_an_unreadable_image_is_one_line_naming_the_file(tmp_path):
    """A loader worker re-raises it with its whole traceback in the message: the record keeps the cause."""
    root = make_imagefolder(tmp_path / "data", classes=2, per_class=2)
    val_bad, _ = corrupt_images(root)
    (root / "train" / "class1" / "broken.jpg").unlink()  # training reads fine; evaluation reads every file
    out = tmp_path / "runs.jsonl"
    r = python_run([*IMAGES, "--data-dir", str(root)], out, timeout=180)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    (record,) = r.records
    validate(record)
    assert record["status"] == "failed"
    assert record["error"].startswith(f"DataError: cannot read image {val_bad} (")  # and PIL's reason
    assert [line for line in r.stderr.splitlines() if line.strip()][-1] == record["error"]


def test_bad_input_unreadable_images_can_be_skipped_and_are_counted(tmp_path):
    root = make_imagefolder(tmp_path / "data", classes=2, per_class=2)
    bad = corrupt_images(root)
    r = python_run([*IMAGES, "--data-dir", str(root), "--skip-bad-images"], tmp_path / "runs.jsonl", timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    (record,) = r.records
    assert record["status"] == "ok"
    assert record["data"] == {"skipped_images": 2, "skipped_files": sorted(str(p) for p in bad)}
    assert record["accuracy"]["eval_samples"] == 5  # the broken file's turn went to the next readable image


# ----------------------------------------------------------------------------------- checkpoints are data
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-process run's checkpoint directory, its record written."""
    tmp = tmp_path_factory.mktemp("finished")
    r = python_run([*flags(**SHORT), "--checkpoint-dir", str(tmp / "ckpt")], tmp / "runs.jsonl", timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "ckpt"


def unfinished(finished: Path, into: Path) -> Path:
    """A copy of `finished` as if the run had stopped in evaluation: a rerun would load it."""
    ckpt = Path(shutil.copytree(finished, into))
    latest = read_latest(ckpt)
    del latest["recorded"]
    (ckpt / "latest").write_text(json.dumps(latest))
    return ckpt


def refused(ckpt: Path, tmp_path: Path, process: bool = False) -> str:
    """Resume from `ckpt`: the one line it is refused with, by the up-front checks (in this process), or by
    launch/run.py (`process`: exit 2, nothing written); either way the checkpoint is left as it was."""
    before = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}
    out = tmp_path / "runs.jsonl"
    args = [*flags(**SHORT), "--checkpoint-dir", str(ckpt)]
    if process:
        r = python_run(args, out, timeout=180)
        assert r.returncode == 2 and not out.exists(), r.stderr[-3000:]
        (line,) = r.stderr.strip().splitlines() or [""]
    else:
        with pytest.raises(ConfigError) as e:
            parse_and_check([*args, "--out", str(out)])
        line = f"run.py: error: {e.value}"
    assert {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == before  # nothing deleted or changed
    return line


class _Marker:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_checkpoint_a_loop_file_that_would_run_code_is_refused(tmp_path, finished):
    ckpt = unfinished(finished, tmp_path / "ckpt")
    marker = tmp_path / "unpickled-code-ran"
    loop = ckpt / read_latest(ckpt)["dir"] / "loop-rank0.pt"
    loop.write_bytes(pickle.dumps({"state": _Marker(marker), "rng": None}))
    line = refused(ckpt, tmp_path, process=True)
    assert line.startswith(f"run.py: error: --checkpoint-dir (output.checkpoint_dir): {loop}: ")
    assert "refused" in line
    assert not marker.exists()


def test_checkpoint_a_latest_pointing_outside_is_refused(tmp_path, finished):
    ckpt = unfinished(finished, tmp_path / "ckpt")
    latest = read_latest(ckpt)
    outside = shutil.copytree(ckpt / latest["dir"], tmp_path / "elsewhere")
    for pointer in (str(outside), "../elsewhere", "step-00000006/../../elsewhere"):
        (ckpt / "latest").write_text(json.dumps({**latest, "dir": pointer}))
        line = refused(ckpt, tmp_path)
        assert line.endswith(f"{ckpt / 'latest'}: not a distbench checkpoint (names {pointer!r}, not a step directory)")


@pytest.mark.parametrize("name", ["loop-rank0.pt", "engine-rank0.pt"])
def test_checkpoint_a_truncated_file_is_refused(tmp_path, finished, name):
    ckpt = unfinished(finished, tmp_path / "ckpt")
    path = ckpt / read_latest(ckpt)["dir"] / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    line = refused(ckpt, tmp_path)
    assert line.startswith(f"run.py: error: --checkpoint-dir (output.checkpoint_dir): {path}: ")


def test_checkpoint_the_package_never_unpickles_code():
    from conftest import ROOT

    sources = [p for p in (ROOT / "distbench").rglob("*.py") if "weights_only=False" in p.read_text()]
    assert sources == []


# ------------------------------------------------------------------------------------------ a closed pipe
def reader_gone(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Python with `argv`, its stdout a pipe whose reading end is closed before it starts: the first write fails,
    whenever it comes."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, *argv], check=False, stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=300, cwd=cwd)  # fmt: skip
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "argv",
    [["-m", "distbench", "counts", "--models", "tiny", "--num-classes", "10"], [str(RUN), "--dry-run"]],
    ids=["counts", "run-dry-run"],
)
def test_bad_input_a_reader_that_left_is_no_traceback(tmp_path, argv):
    """`distbench counts | head`, `run.py --dry-run | head`: the reader may close the pipe before the output is
    written. No traceback, and a non-zero exit (as Python's recipe for SIGPIPE), not a hang; and the dry run,
    which once recorded its BrokenPipeError as a `failed` run, records nothing."""
    done = reader_gone(argv, cwd=tmp_path)  # the dry run's --out default, results/runs.jsonl, would be here
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert not (tmp_path / "results").exists()


def test_bad_input_a_finished_run_asked_again_with_its_reader_gone_appends_nothing(tmp_path):
    """The other answer of a run that trains nothing: the same command again after the run finished, its stdout
    a pipe nobody reads. No traceback, exit 1, and the results file keeps its one record."""
    out, args = tmp_path / "runs.jsonl", [*flags(**SHORT), "--checkpoint-dir", str(tmp_path / "ckpt")]
    first = python_run(args, out)
    assert first.returncode == 0 and len(first.records) == 1, first.stderr[-2000:]
    done = reader_gone([str(RUN), "--out", str(out), *args], cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert out.read_text().count("\n") == 1


def test_bad_input_a_dry_run_is_never_recorded_even_when_it_fails(tmp_path):
    """A dry run trains nothing, so nothing of it goes into --out, whatever ends it; the same failure in a run
    that trains is recorded."""
    from distbench.runtime.outcome import Outcome
    from distbench.runtime.stop import StopRequest

    out = tmp_path / "runs.jsonl"
    for argv, recorded in ((["--dry-run"], False), ([], True)):
        end = Outcome(StopRequest(), None, rank0=True)
        end.set_config(config.parse_args([*argv, "--out", str(out)]))
        assert end.failed(RuntimeError("describe broke")) == 1
        assert out.exists() == recorded


# ------------------------------------------------------------------------------------------ a broken install
def test_bad_input_an_engine_that_cannot_be_imported_is_still_recorded(tmp_path):
    """A module the engines need cannot be imported (a broken install; here one made unimportable on purpose): the
    run ends in a `failed` record naming it, the error not raised again while the failure is being handled."""
    out = tmp_path / "runs.jsonl"
    script = (
        "import sys\n"
        "import torch  # torch.distributed is loaded, the engines are not\n"
        "sys.modules['distbench.comm.taps'] = None\n"
        "from distbench.runtime.main import main\n"
        f"sys.exit(main(['--steps', '2', '--warmup-steps', '1', '--nosync-steps', '0', '--out', {str(out)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["status"] == "failed" and "distbench.comm.taps" in record["error"], record["error"]
