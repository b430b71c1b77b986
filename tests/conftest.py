from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "launch" / "run.py"
MANY_RUNS = ROOT / "tests" / "helpers" / "many_runs.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")


def flags(**values: object) -> list[str]:
    """Command-line flags from keywords: flags(num_classes=10) == ["--num-classes", "10"]."""
    return [part for key, value in values.items() for part in (f"--{key.replace('_', '-')}", str(value))]


# Small and fast: 2 warm-up, 4 timed and 2 unsynchronised steps; still a real 2-process gloo job.
FAST = flags(steps=4, warmup_steps=2, nosync_steps=2, batch_size=8, eval_samples=64)
# The least a run can be when only its bytes matter: 1 warm-up and 2 timed steps of 2 samples.
SHORT = {"steps": 2, "warmup_steps": 1, "nosync_steps": 0, "batch_size": 2, "eval_samples": 8}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    records: list[dict]


def _env(gpu: bool = False) -> dict[str, str]:
    """The job's environment: no inherited rank variables; CPU-only unless `gpu` (the default tier must
    exercise the CPU/gloo path even on a machine with GPUs)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def run_cmd(
    cmd: list[str], timeout: int = 180, gpu: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`cmd` from the repo root in the job environment (`_env`, plus `env`), output captured, never raising on
    failure."""
    env = _env(gpu) | (env or {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False)


def torchrun(
    args: list[str], out: Path, nproc: int = 2, timeout: int = 180, gpu: bool = False, env: dict | None = None
) -> Result:
    """launch/run.py under a real torchrun with `nproc` gloo ranks on this machine (`env`: added variables)."""
    # --standalone: a c10d rendezvous on a free local port, so concurrent jobs never collide.
    cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", str(RUN), "--out", str(out), *args]
    p = run_cmd(cmd, timeout, gpu, env)
    return Result(p.returncode, p.stdout, p.stderr, _records(out))


def torchrun_many(configs: list[list[str]], out: Path, timeout: int = 600) -> list[dict]:
    """One 2-rank torchrun job that runs every config in `configs` (argv lists) in turn through train.run, as
    launch/run.py would, and returns their records in order: for tests that check many configurations'
    bytes, without a new job's imports and rendezvous for each (tests/helpers/many_runs.py)."""
    listing = out.with_suffix(".configs.json")
    listing.write_text(json.dumps(configs))
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(MANY_RUNS), str(out), str(listing)]
    p = run_cmd(cmd, timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    records = _records(out)
    assert len(records) == len(configs), p.stderr[-3000:]
    return records


def start_torchrun(args: list[str], out: Path, ckpt: Path | None = None, hold: str | None = None) -> subprocess.Popen:
    """launch/run.py under a real torchrun with 2 gloo ranks, not waited for: for tests that signal or
    kill the job. Its output goes to one pipe: read it with `finish`, as it comes (a full pipe would stall
    the job). `hold`: DISTBENCH_HOLD for the ranks (distbench.runtime.stop.hold: they wait at a named point). Its
    own session, as a job started from a shell is: a signal to the test's process group never reaches it."""
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(RUN), "--out", str(out), *args]
    if ckpt is not None:
        cmd += ["--checkpoint-dir", str(ckpt)]
    env = _env() | ({"DISTBENCH_HOLD": hold} if hold else {})
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def workers(proc: subprocess.Popen) -> dict[int, int]:
    """{rank: pid} of the workers torchrun `proc` has started so far."""
    found = {}
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        return found
    for child in children:
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:  # a short-lived child of torchrun, gone already
            continue
        rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            found[rank] = int(child)
    return found


def worker(proc: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker of `rank`."""
    pid = workers(proc).get(rank)
    if pid is None:
        raise LookupError(f"no rank {rank} under torchrun {proc.pid}")
    return pid


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (/proc's SigCgt mask): for distbench's ranks, that its
    first lines have run."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (signum - 1) & 1)


def rank_tracebacks(log: str) -> list[str]:
    """Traceback lines from distbench's own code in a job's output (torchrun's own are not the ranks')."""
    ours = ("/distbench/", "launch/run.py")
    return [line for line in log.splitlines() if line.strip().startswith("File ") and any(o in line for o in ours)]


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for(predicate, timeout: float = 120, what: str = "", proc: subprocess.Popen | None = None) -> None:
    """Until `predicate()`; fails if `timeout` passes first or the job `proc` ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the job ended before {what}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.05)


def python_run(args: list[str], out: Path, timeout: int = 180) -> Result:
    """launch/run.py as a plain single process (a world of one, no torchrun)."""
    p = run_cmd([sys.executable, str(RUN), "--out", str(out), *args], timeout)
    return Result(p.returncode, p.stdout, p.stderr, _records(out))


@pytest.fixture(scope="session")
def head_pair(tmp_path_factory) -> dict[str, dict]:
    """ResNet-18 at 100K classes with a learned and a fixed head, 2 ranks each (small images: bytes do not
    depend on image size)."""
    out = tmp_path_factory.mktemp("pair") / "runs.jsonl"
    common = flags(model="resnet18", num_classes=100_000, image_size=32, **SHORT | {"nosync_steps": 1})
    heads = ("learned", "fixed")
    return dict(zip(heads, torchrun_many([[*common, "--head", head] for head in heads], out), strict=True))


# The test files that take longest, longest first, by the seconds their tests took in one `pytest --junitxml` run
# of the default tier on the 2-core machine (test_resume 278 s ... test_sweep 53 s; 1,334 s in all). With
# --no-loadscope-reorder (pyproject.toml) xdist hands files out in collection order, so these start first and the
# short files fill in behind them (longest processing time first). xdist's own order, by how many tests a file holds,
# started the 241 quick SRHT tests first and left test_resume for later: replayed on that run's times, two workers
# end at 703 s in that order, at 670 s in this one (the files' sum over two workers is 667 s). The list only orders:
# a file it names or misses runs all the same.
LONGEST_FIRST = ("test_resume", "test_deepspeed", "test_signals", "test_slurm", "test_run", "test_lm", "test_notebooks",
                 "test_fsdp", "test_sweep")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        stem = item.path.stem
        return LONGEST_FIRST.index(stem) if stem in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the rest, the order pytest collected
