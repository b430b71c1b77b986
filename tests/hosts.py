"""Two hosts on one machine for multi-node tests: two Linux network namespaces joined by a veth pair.

Each host is a network namespace with its own address, and every command run on a host also gets its own
UTS namespace named after the host, so `socket.gethostname()` differs between ranks as it does on two
machines. Each host's /etc/netns/<ns>/hosts, bind-mounted over its /etc/hosts, lists both, so both names
resolve on both hosts. The file system and PIDs stay shared (so munge's unix socket is reachable from
both). Needs root, iproute2 and util-linux; the `two_hosts` fixture skips, saying why, where they are
missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SUBNET = "10.213.77"  # a private /24 that exists only between the two namespaces, never in the root one
NAMES = ("hostA", "hostB")


class NamespaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Host:
    name: str  # its hostname, also the name the other host resolves
    addr: str
    netns: str

    @property
    def hosts_file(self) -> Path:
        return Path("/etc/netns", self.netns, "hosts")

    def command(self, cmd: list[str]) -> list[str]:
        """`cmd` as run on this host: in its network namespace, under its own hostname."""
        # Not `ip netns exec`: it also remounts /sys, which hides /sys/fs/cgroup, and slurmd does not start
        # without it. So nsenter joins the network namespace alone, and a private mount namespace puts the
        # host's hosts file over /etc/hosts as `ip netns exec` would. nsenter, unshare (without --fork) and
        # the shell all exec: the process started is `cmd` itself, so its PID is the one to wait on or stop.
        script = 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"'
        enter = ["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount", "--uts"]
        return [*enter, "sh", "-c", script, str(self.hosts_file), self.name, *cmd]


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if r.returncode != 0:
        raise NamespaceError(f"`ip {' '.join(args)}` failed: {r.stderr.strip()}")


class TwoHosts:
    """`up()` makes the two hosts, `down()` removes them and whatever still runs in them."""

    def __init__(self, names: tuple[str, str] = NAMES) -> None:
        tag = f"db{os.getpid()}"  # unique per test session; names are at most 15 characters (IFNAMSIZ)
        # One interface name in both namespaces, so a single GLOO_SOCKET_IFNAME fits every rank. It is
        # created inside the namespaces and never exists in the root one.
        self.ifname = f"{tag}v"
        self.hosts = [Host(name, f"{SUBNET}.{i}", f"{tag}{name[-1].lower()}") for i, name in enumerate(names, 1)]

    def up(self) -> None:
        """Make both hosts; on any failure, remove what was made and raise."""
        try:
            self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> None:
        a, b = self.hosts
        for h in self.hosts:
            _ip("netns", "add", h.netns)
        _ip("-n", a.netns, "link", "add", self.ifname, "type", "veth", "peer", "name", self.ifname, "netns", b.netns)
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{h.addr} {h.name}\n" for h in self.hosts)
        for h in self.hosts:
            _ip("-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", self.ifname)
            _ip("-n", h.netns, "link", "set", self.ifname, "up")
            _ip("-n", h.netns, "link", "set", "lo", "up")  # torchrun and slurmstepd also talk to themselves
            h.hosts_file.parent.mkdir(parents=True, exist_ok=True)
            h.hosts_file.write_text(hosts_file)
        # Each host names itself and finds the other by name, or the tests using them fail (not skip):
        # the namespaces exist, so a failure here is a fault in this module, not a machine without them.
        for h in self.hosts:
            other = b if h is a else a
            probe = h.command(["sh", "-c", f"hostname && getent hosts {other.name}"])
            r = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
            if r.returncode != 0 or r.stdout.split()[:2] != [h.name, other.addr]:
                raise RuntimeError(f"{' '.join(probe)} gave {r.stdout!r} {r.stderr.strip()!r}")

    def down(self) -> None:
        for h in self.hosts:
            # Anything still running in a namespace was started by a test through it: stop it, or the
            # namespace (and its veth) would outlive `ip netns del`.
            self._kill(h.netns)
            subprocess.run(["ip", "netns", "del", h.netns], capture_output=True, timeout=30, check=False)
            shutil.rmtree(h.hosts_file.parent, ignore_errors=True)

    @staticmethod
    def _kill(netns: str) -> None:
        def pids() -> list[int]:
            r = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30, check=False)
            return [int(p) for p in r.stdout.split()]

        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while pids() and time.monotonic() < deadline:
                time.sleep(0.1)


def unavailable() -> str | None:
    """Why two hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "nsenter", "unshare", "mount", "hostname") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not installed (iproute2, util-linux, hostname)" if missing else None


@pytest.fixture(scope="module")
def two_hosts():
    """Two hosts, `hostA` (10.213.77.1) and `hostB` (10.213.77.2), for the tests of one module."""
    reason = unavailable()
    if reason:
        pytest.skip(f"two hosts cannot be made here: {reason}")
    two = TwoHosts()
    try:
        two.up()
    except NamespaceError as e:
        pytest.skip(f"two hosts cannot be made here: {e}")
    try:
        yield two.hosts
    finally:
        two.down()
