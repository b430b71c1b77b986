"""A real one-node Slurm cluster runs a real job array of distbench configurations."""

import json
import re
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from slurm.cluster import running_cluster

from distbench.results import load, read_records

SWEEP_PY = str(ROOT / "launch" / "sweep.py")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from running_cluster(tmp_path_factory.mktemp("slurm"))


SMOKE = ROOT / "launch" / "sweeps" / "smoke.toml"  # the committed CPU-sized example


def sweep_cmd(cluster, *args):
    return cluster.run([sys.executable, SWEEP_PY, *args], check=False, timeout=120)


def test_job_array_runs_each_line_once_and_records_failures(cluster, tmp_path):
    """The committed smoke grid at one class count (two lines: learned and fixed head, so the test stays
    cheap): each array task runs its line once; a resubmission skips them; a bad line records its failure."""
    out = tmp_path / "runs.jsonl"
    sweep = tmp_path / "sweep.jsonl"
    (tmp_path / "smoke.toml").write_text(
        SMOKE.read_text().replace('"model.num_classes" = [10, 20]', '"model.num_classes" = [10]')
    )
    r = sweep_cmd(cluster, "expand", str(tmp_path / "smoke.toml"), "-o", str(sweep), "--results", str(out))
    assert r.returncode == 0, r.stderr

    logs = tmp_path / "logs"
    r = sweep_cmd(cluster, "submit", str(sweep), "--parallel", "2", "--logs", str(logs), "--", "--cpus-per-task=1")
    assert r.returncode == 0 and "Submitted batch job" in r.stdout, r.stderr
    cluster.wait_idle(timeout=600)
    df = load(out)
    assert len(df) == 2, "\n".join(p.read_text()[-2000:] for p in logs.glob("*.out"))
    assert set(df["status"]) == {"ok"} and set(df["env.world_size"]) == {2}
    assert set(df["config.model.head"]) == {"learned", "fixed"}
    assert (df["comm.payload_bytes_per_step"] == df["comm.expected_bytes_per_step"]).all()
    listed = sweep_cmd(cluster, "list", str(sweep)).stdout
    assert listed.count(" ok") == 2

    # Resubmitting the same array runs nothing new: every line already has an ok record.
    r = sweep_cmd(cluster, "submit", str(sweep), "--logs", str(logs), "--", "--cpus-per-task=1")
    assert r.returncode == 0, r.stderr
    cluster.wait_idle(timeout=300)
    assert len(read_records(out)) == 2
    assert sum("skip " in p.read_text() for p in logs.glob("*.out")) == 2

    # A grid with one bad class count: that line records `failed` with its one-line error; the good
    # line shares a run_id with a finished one and is skipped.
    grid = SMOKE.read_text().replace("[10, 20]", "[10, 1]").replace('["learned", "fixed"]', '["learned"]')
    (tmp_path / "bad.toml").write_text(grid)
    bad = tmp_path / "bad.jsonl"
    r = sweep_cmd(cluster, "expand", str(tmp_path / "bad.toml"), "-o", str(bad), "--results", str(out))
    assert r.returncode == 0 and "--num-classes" in r.stderr  # warned at expand time, line kept
    r = sweep_cmd(cluster, "submit", str(bad), "--logs", str(logs), "--", "--cpus-per-task=1")
    assert r.returncode == 0, r.stderr
    cluster.wait_idle(timeout=300)
    records = read_records(out)
    assert len(records) == 3
    failed = [rec for rec in records if rec["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"].startswith("run.py: error: --num-classes")
    assert failed[0]["config"]["model"]["num_classes"] == 1


def test_dry_run_prints_the_array(tmp_path):
    (tmp_path / "grid.toml").write_text(SMOKE.read_text().replace("[10, 20]", "[10, 20, 30]"))
    subprocess.run(
        [
            sys.executable,
            SWEEP_PY,
            "expand",
            str(tmp_path / "grid.toml"),
            "-o",
            str(tmp_path / "s.jsonl"),
            "--results",
            str(tmp_path / "r.jsonl"),
        ],
        check=True,
        capture_output=True,
    )
    r = subprocess.run(
        [sys.executable, SWEEP_PY, "submit", str(tmp_path / "s.jsonl"), "--parallel", "3", "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--array=0-5%3" in r.stdout and "#SBATCH --requeue" in r.stdout and "srun" in r.stdout


PREEMPTIBLE = """\
[base.model]
model = "tiny"
[base.train]
steps = 80
warmup_steps = 3
nosync_steps = 1
batch_size = 8
[base.data]
eval_samples = 32
[base.output]
checkpoint_every = 2
[launch]
nproc_per_node = 2
[axes]
"model.head" = ["fixed"]
"""


def test_preempt_array_task_checkpoints_requeues_and_resumes(cluster, tmp_path):
    """What Slurm's `--signal=B:USR1@120` does ahead of a time limit, sent by hand: the batch script
    passes USR1 to every process of the step, every rank checkpoints at one step boundary, the task
    requeues itself, and the requeued task resumes its line and finishes it: one ok record, resumed."""
    (tmp_path / "grid.toml").write_text(PREEMPTIBLE)
    out, sweep, logs = tmp_path / "runs.jsonl", tmp_path / "sweep.jsonl", tmp_path / "logs"
    assert (
        sweep_cmd(cluster, "expand", str(tmp_path / "grid.toml"), "-o", str(sweep), "--results", str(out)).returncode
        == 0
    )
    r = sweep_cmd(cluster, "submit", str(sweep), "--logs", str(logs), "--", "--cpus-per-task=1")
    assert r.returncode == 0, r.stderr
    job = r.stdout.split()[-1]
    latest = tmp_path / "checkpoints" / read_sweep_run_id(sweep) / "latest"
    deadline = time.monotonic() + 180
    while not latest.exists():  # the line checkpoints beside its results file, every 2 steps
        assert time.monotonic() < deadline, cluster.run(["squeue"]).stdout
        time.sleep(0.2)
    cluster.run(["scancel", "--batch", "--signal=USR1", f"{job}_0"])
    cluster.wait_idle(timeout=300)

    log = "\n".join(p.read_text() for p in logs.glob("*.out"))
    (record,) = read_records(out)
    assert record["status"] == "ok", log[-3000:]
    assert "distbench: USR1 received" in log and "requeueing" in log
    # in training, or in a periodic save (then the run stops on that checkpoint)
    assert re.search(r"stopped by SIGUSR1 during (training|checkpoint save), after step \d+ of 83", log), log[-3000:]
    resumed = record["perf"]["resumed_from_steps"]
    assert len(resumed) == 1 and 0 < resumed[0] < 83, log[-3000:]
    assert record["comm"]["payload_bytes_per_step"] == record["comm"]["expected_bytes_per_step"]
    assert not latest.parent.exists()  # the line's checkpoint is removed once it has its ok record


def read_sweep_run_id(sweep) -> str:
    (line,) = [json.loads(t) for t in sweep.read_text().splitlines()]
    return line["run_id"]
