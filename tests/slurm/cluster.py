"""A real one-node Slurm cluster for the tests, from Debian's slurmctld, slurmd, slurm-client and munge.

Runs as root with no systemd: a munged of its own under `runuser -u munge`, slurmctld and slurmd with a slurm.conf in
a temporary directory. proctrack/linuxproc with task/none (the cgroup plugins fail here: no freezer
cgroup), select/cons_tres with CR_Core so array tasks share the node, no accounting, and
`cred_expire=10` (Slurm holds a requeued job that long before it may start again; 120 s by default) with
`bf_interval=1` (the backfill pass, which is what starts a requeued job, every second instead of every 30).
Daemons this helper started are stopped by PID.

Given `nodes` (tests/hosts.py's two hosts, say), it is a cluster of those nodes instead: one slurmd per
node, started on that node as `slurmd -N <name>`, slurmctld on the first node, and every client command
of `run` on the first node too (the nodes' addresses may be reachable only from there).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "runuser")


def missing_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass(frozen=True)
class Node:
    """A node of the cluster: its name, its address, and how a command runs on it (here: as it is)."""

    name: str
    addr: str

    def command(self, cmd: list[str]) -> list[str]:
        return cmd


class SlurmCluster:
    def __init__(self, root: Path, cpus: int | None = None, nodes: Sequence[Node] | None = None) -> None:
        self.root = root
        self.cpus = cpus or os.cpu_count() or 2
        self.host = socket.gethostname().split(".")[0]
        self.nodes = list(nodes or [Node(self.host, "127.0.0.1")])
        self.conf = root / "slurm.conf"
        self.pids: dict[str, int] = {}
        self.munge_dir: Path | None = None
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------------------------------- start
    def start(self, timeout: float = 60) -> None:
        self._start_munge()
        for d in ("state", "logs", *(f"spool/{n.name}" for n in self.nodes)):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        ctl = self.nodes[0]
        node_lines = "\n".join(
            f"NodeName={n.name} NodeAddr={n.addr} CPUs={self.cpus} State=UNKNOWN" for n in self.nodes
        )
        # %n (the node's name) keeps the slurmds' spool, PID and log files apart when several share a disk.
        self.conf.write_text(f"""\
ClusterName=distbench
SlurmctldHost={ctl.name}({ctl.addr})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_dir}/munge.socket,cred_expire=10
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/logs/slurmctld.log
SlurmdLogFile={r}/logs/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300
{node_lines}
PartitionName=debug Nodes={",".join(n.name for n in self.nodes)} Default=YES MaxTime=INFINITE State=UP
""")
        self._daemon(ctl, "slurmctld", [_which("slurmctld"), "-f", str(self.conf)])
        for n in self.nodes:
            self._daemon(n, f"slurmd-{n.name}", [_which("slurmd"), "-f", str(self.conf), "-N", n.name])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False).stdout.split()
            if len(states) == len(self.nodes) and set(states) <= {"idle", "mixed", "allocated"}:
                return
            time.sleep(0.5)
        raise RuntimeError(f"slurm nodes not up after {timeout}s: {states!r}\n{self.logs()}")

    def _daemon(self, node: Node, name: str, cmd: list[str]) -> None:
        """Start a daemon on `node`; it forks away, and its PID file (`name`.pid) says which PID to stop."""
        r = self.run(cmd, node=node, timeout=30, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{name} did not start: {r.stderr.strip()}\n{self.logs()}")
        self.pids[name] = self._read_pid(self.root / f"{name}.pid")

    def _start_munge(self) -> None:
        # A munged of this cluster's own, on its own socket (slurm.conf's AuthInfo). A shared one is stopped by
        # whichever cluster started it, which breaks every other cluster still running on this machine
        # (another test session's). munged runs as `munge`, so its directory is outside the 0700 tmp_path,
        # and readable by all: munged refuses a socket that not every user can reach.
        d = self.munge_dir = Path(tempfile.mkdtemp(prefix="distbench-munge-"))
        shutil.chown(d, "munge", "munge")
        d.chmod(0o755)
        files = [f"--socket={d}/munge.socket", f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log"]
        cmd = ["runuser", "-u", "munge", "--", _which("munged"), *files, f"--seed-file={d}/munged.seed"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"munged did not start: {r.stderr.strip()}")
        self.pids["munged"] = self._read_pid(d / "munged.pid")

    @staticmethod
    def _read_pid(path: Path, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError(f"no pid file {path}")

    # --------------------------------------------------------------------------------------------- use
    def run(
        self,
        cmd: list[str],
        check: bool = True,
        timeout: float = 60,
        node: Node | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """`cmd` on `node` (default: the first), in `cwd`, with `env` added to the cluster's environment."""
        return subprocess.run(
            (node or self.nodes[0]).command(cmd),
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def wait_idle(self, timeout: float = 600) -> None:
        """Until no job is pending or running (no accounting here, so squeue is the source)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run(["squeue", "-h", "-o", "%i"]).stdout.strip():
                return
            time.sleep(1)
        raise TimeoutError(f"jobs still queued after {timeout}s:\n{self.run(['squeue']).stdout}")

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted((self.root / "logs").glob("*.log")))

    # -------------------------------------------------------------------------------------------- stop
    def stop(self) -> None:
        for name in (*(f"slurmd-{n.name}" for n in self.nodes), "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                if not _running(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None


def _running(pid: int) -> bool:
    """Whether `pid` has not exited. A daemon's parent is PID 1, which can take seconds to reap it, so a
    zombie counts as exited (`os.kill(pid, 0)` would wait for the reaping)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # the state follows the command name in parentheses


def running_cluster(root: Path, nodes: Sequence[Node] | None = None) -> Iterator[SlurmCluster]:
    """A started cluster, for a pytest fixture to `yield from`; stopped afterwards. Skips, saying why,
    where Slurm is not installed, this is not root, or the daemons do not start."""
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"Slurm is not installed ({', '.join(missing)} missing): .ci/run installs Debian's slurmctld "
            "slurmd slurm-client munge"
        )
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs its daemons as root")
    cluster = SlurmCluster(root, nodes=nodes)
    try:
        cluster.start()
    except Exception as e:
        cluster.stop()
        pytest.skip(f"Slurm could not start here: {e}")
    yield cluster
    cluster.stop()
