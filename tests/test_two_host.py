"""A real two-node job on one machine: two hosts from network namespaces (tests/hosts.py), one rank on
each, joined by torchrun's c10d rendezvous directly and through a two-node Slurm cluster."""

import subprocess
import sys

import hosts
import pytest
from conftest import FAST, ROOT, RUN, TORCHRUN, _env, torchrun
from slurm.cluster import running_cluster

from distbench.results import read_records

two_hosts = hosts.two_hosts  # the fixture, under the name pytest looks for
MULTINODE = ROOT / "launch" / "slurm" / "multinode.sbatch"


@pytest.fixture(scope="module")
def one_host_payload(tmp_path_factory) -> int:
    """Bytes per step of the same job as two ranks on one host: where the ranks run must not change them."""
    r = torchrun(FAST, tmp_path_factory.mktemp("one_host") / "runs.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.records[-1]["comm"]["payload_bytes_per_step"]


def assert_two_host_record(out, nodes, payload: int, logs: str) -> None:
    records = read_records(out) if out.exists() else []
    assert len(records) == 1, logs  # rank 0 alone writes
    rec = records[0]
    assert rec["status"] == "ok", rec.get("error")
    assert rec["env"]["world_size"] == 2
    assert rec["env"]["hosts"] == sorted(h.name for h in nodes)
    assert rec["comm"]["payload_bytes_per_step"] == payload


def test_two_host_torchrun(two_hosts, one_host_payload, tmp_path):
    out = tmp_path / "runs.jsonl"
    head = two_hosts[0]
    procs, logs = [], [tmp_path / f"{h.name}.log" for h in two_hosts]

    def output() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())

    try:
        for h, log in zip(two_hosts, logs, strict=True):
            cmd = [
                str(TORCHRUN),
                "--nnodes=2",
                "--nproc_per_node=1",
                "--rdzv_backend=c10d",
                f"--rdzv_endpoint={head.addr}:29400",
                "--rdzv_id=two_host",
                f"--local-addr={h.addr}",  # the address the other host reaches this one at
                str(RUN),
                "--out",
                str(out),
                *FAST,
            ]
            # Output to files, not pipes: a full pipe would stall one rank and, through it, both.
            with open(log, "w") as f:
                procs.append(subprocess.Popen(h.command(cmd), cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=120) for p in procs]
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{e}\n{output()}")
    finally:
        for p in procs:
            p.kill()  # only if still running; its workers go with the namespaces
    assert codes == [0, 0], output()
    assert_two_host_record(out, two_hosts, one_host_payload, output())


@pytest.fixture(scope="module")
def cluster(two_hosts, tmp_path_factory):
    """slurmctld on the first host and one slurmd on each."""
    yield from running_cluster(tmp_path_factory.mktemp("slurm"), nodes=two_hosts)


def test_two_host_slurm(cluster, two_hosts, one_host_payload, tmp_path):
    out = tmp_path / "runs.jsonl"
    log = tmp_path / "job.out"
    # Submitted on the first host (the only place the controller's address is reachable from) from the repo
    # root, where the script runs; the job inherits this environment, so DISTBENCH_PYTHON names this venv.
    # --output: the script's own logs/%j.out would land in the checkout (and needs logs/ to exist).
    r = cluster.run(
        ["sbatch", "--parsable", "--nodes=2", f"--output={log}", str(MULTINODE), *FAST, "--out", str(out)],
        check=False,
        cwd=ROOT,
        env={**_env(), "DISTBENCH_PYTHON": sys.executable},
    )
    assert r.returncode == 0, r.stderr

    def output() -> str:
        return f"--- job {r.stdout.strip()}\n{log.read_text()[-3000:] if log.exists() else ''}\n{cluster.logs()}"

    try:
        cluster.wait_idle(timeout=120)
    except TimeoutError as e:
        pytest.fail(f"{e}\n{output()}")
    assert_two_host_record(out, two_hosts, one_host_payload, output())
