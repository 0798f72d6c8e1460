"""Hosts for multi-host tests: process trees on one machine that share only what a test hands them.

A :class:`Cluster` (Linux, root) builds, on enter:

- a network namespace ``dcb-<tag>`` (:attr:`Cluster.bridge_netns`) with a bridge ``br0`` at ``10.<n>.0.1/24``
  (:attr:`Cluster.server_address`): start the PostgreSQL server there, with
  ``PostgresServer(base, host=cluster.server_address, netns=cluster.bridge_netns)`` (tests/pg_server.py);
- for each host *i* a network namespace ``dcb-<tag>-<i>`` with its own loopback and an ``eth0`` at
  ``10.<n>.0.(10+i)/24``, the far end of a veth pair whose near end is a port of the bridge;
- for each host a *boot*: a tiny init (it only reaps orphans) in new PID, mount and UTS namespaces inside that
  network namespace, hostname ``host-<i>``. Every :meth:`Cluster.run` on host *i* joins that init's namespaces
  (nsenter), so the processes of one host see each other, as on one machine, and :meth:`Cluster.kill` SIGKILLs the
  init, which makes the kernel kill every process of the host at once. A killed host boots afresh (new PID, mount
  and UTS namespaces; same network and directories) on its next run.

What a process on host *i* sees: the machine's filesystem (the Python install and the venv, the archive and
whatever else the test passes by path), its own directory ``base/host-<i>/`` (:meth:`Cluster.staging` is
``base/host-<i>/staging``), its own ``/proc`` (only its host's processes; PIDs count from 1), its own hostname and
``DICOMCOMMIT_HOST=host-<i>``, a private empty ``/dev/shm``, its own loopback, and over the bridge the server and
the other hosts' addresses, like machines on one LAN.

What it cannot see: the other hosts' directories (``base/host-<j>/`` is an empty read-only tmpfs there), their
processes and PIDs, their ``/dev/shm``, their loopback (127.0.0.1 is the host's own: nothing of the harness's or
another host's listens there), and the harness's own network (nothing routes out of ``10.<n>.0.0/24``).

What the hosts still share, being one kernel: every file reachable by path, including locks on those files
(flock, fcntl) and the page cache. In the archive that is intended (the archive is the shared directory), but
note that a lock on an archive file works between hosts here, where on a network filesystem it may not.
"""

from __future__ import annotations

import os
import random
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from tests.pg_server import child_pids

BOOT_TIMEOUT = 10.0

File = int | IO[Any] | None  # what subprocess takes for stdin, stdout and stderr

# PID 1 of a host: reap every process that ends up orphaned on it, forever (until the host is killed).
INIT = """
import os, signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
print("ready", flush=True)
while True:
    signal.sigwait({signal.SIGCHLD})
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
"""


@dataclass
class _Host:
    """One host's state: the process that holds its namespaces (while booted) and what ran on it."""

    init: subprocess.Popen[bytes] | None = None  # ``unshare``, whose only child is the host's PID 1
    init_pid: int = 0  # that PID 1, as this machine numbers it
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class Cluster:
    """*hosts* hosts, numbered from 0, with their directories under *base*; use as a context manager."""

    def __init__(self, base: Path, hosts: int):
        if not 1 <= hosts <= 200:
            raise ValueError(f"a cluster has 1 to 200 hosts, not {hosts}")
        self.base = base
        self.tag = secrets.token_hex(3)
        self.subnet = random.randint(16, 250)  # cosmetic: every cluster's bridge is in a namespace of its own
        self._hosts = [_Host() for _ in range(hosts)]
        self._made: list[str] = []  # the network namespaces created so far, to delete on exit

    def __enter__(self) -> Self:
        _check_can_run()
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._teardown()

    @property
    def hosts(self) -> int:
        return len(self._hosts)

    @property
    def bridge_netns(self) -> str:
        """The network namespace of the bridge, where the PostgreSQL server runs."""
        return f"dcb-{self.tag}"

    @property
    def server_address(self) -> str:
        """The bridge's address: where a server in :attr:`bridge_netns` listens for the hosts."""
        return f"10.{self.subnet}.0.1"

    @property
    def namespaces(self) -> list[str]:
        """Every network namespace this cluster names (the bridge's first)."""
        return [self.bridge_netns, *(self.netns(i) for i in range(self.hosts))]

    def netns(self, i: int) -> str:
        """Host *i*'s network namespace."""
        return f"dcb-{self.tag}-{self._index(i)}"

    def address(self, i: int) -> str:
        """Host *i*'s address on the bridge."""
        return f"10.{self.subnet}.0.{10 + self._index(i)}"

    def hostname(self, i: int) -> str:
        return f"host-{self._index(i)}"

    def home(self, i: int) -> Path:
        """Host *i*'s own directory, ``base/host-<i>`` (invisible to the other hosts)."""
        return self.base / self.hostname(i)

    def staging(self, i: int) -> Path:
        """Host *i*'s staging directory, ``base/host-<i>/staging``."""
        return self.home(i) / "staging"

    def booted(self, i: int) -> bool:
        init = self._hosts[self._index(i)].init
        return init is not None and init.poll() is None

    def run(
        self,
        i: int,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        stdin: File = subprocess.DEVNULL,
        stdout: File = None,
        stderr: File = None,
    ) -> subprocess.Popen[bytes]:
        """Start *argv* on host *i* (booting it first if needed) and return it.

        *env* is the whole environment, as for Popen (default: ours), plus ``DICOMCOMMIT_HOST=host-<i>``;
        *cwd* defaults to ours. The Popen is a wrapper (nsenter) outside the host whose exit status is the
        command's; killing the wrapper (``kill()``, ``terminate()``) SIGKILLs the command, by its parent-death signal.
        """
        host = self._hosts[self._index(i)]
        if not self.booted(i):
            self._boot(i)
        environ = dict(os.environ if env is None else env)
        environ.update(DICOMCOMMIT_HOST=self.hostname(i), HOSTNAME=self.hostname(i))
        enter = ["nsenter", f"--target={host.init_pid}", "--net", "--pid", "--mount", "--uts", "--"]
        inside = ["env", f"--chdir={cwd or Path.cwd()}", "setpriv", "--pdeathsig=KILL", "--", *argv]
        proc = subprocess.Popen([*enter, *inside], env=environ, stdin=stdin, stdout=stdout, stderr=stderr)
        host.procs.append(proc)
        return proc

    def kill(self, i: int) -> None:
        """SIGKILL every process of host *i* at once (its PID 1, which takes the rest along) and wait for them."""
        host = self._hosts[self._index(i)]
        if host.init is not None:
            if host.init.poll() is None:
                os.kill(host.init_pid, signal.SIGKILL)
            host.init.wait()
        for proc in host.procs:
            proc.wait()
        host.init, host.init_pid, host.procs = None, 0, []

    def _index(self, i: int) -> int:
        if not 0 <= i < len(self._hosts):
            raise IndexError(f"no host {i} in a cluster of {len(self._hosts)}")
        return i

    def _build(self) -> None:
        bridge = self.bridge_netns
        self._netns_add(bridge)
        _ip("-n", bridge, "link", "set", "lo", "up")
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge", "forward_delay", "0")
        _ip("-n", bridge, "addr", "add", f"{self.server_address}/24", "dev", "br0")
        _ip("-n", bridge, "link", "set", "br0", "up")
        for i in range(self.hosts):
            ns, port = self.netns(i), f"h{i}"
            self._netns_add(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", bridge, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            self.staging(i).mkdir(parents=True, exist_ok=True)
        for i in range(self.hosts):
            self._boot(i)

    def _netns_add(self, name: str) -> None:
        _ip("netns", "add", name)
        self._made.append(name)

    def _boot(self, i: int) -> None:
        """Start host *i*'s PID 1 in fresh PID, mount and UTS namespaces and wait until it has set the host up."""
        host = self._hosts[i]
        hidden = [self.home(j) for j in range(self.hosts) if j != i]
        setup = [
            "set -e",
            f"echo {self.hostname(i)} > /proc/sys/kernel/hostname",
            *(f"mount -t tmpfs -o ro,mode=0555,size=4k dcb-hidden {shlex.quote(str(d))}" for d in hidden),
            "if [ -d /dev/shm ]; then mount -t tmpfs -o mode=1777,size=64m dcb-shm /dev/shm; fi",
            f"exec {shlex.quote(sys.executable)} -c {shlex.quote(INIT)}",
        ]
        unshare = ["unshare", "--pid", "--fork", "--mount", "--uts", "--mount-proc", "--kill-child"]
        log = self.home(i) / "boot.log"
        with log.open("wb") as errors:
            init = subprocess.Popen(
                ["ip", "netns", "exec", self.netns(i), *unshare, "--", "sh", "-c", "\n".join(setup)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
        host.init, host.procs = init, []
        assert init.stdout is not None
        with init.stdout:
            ready, _, _ = select.select([init.stdout], [], [], BOOT_TIMEOUT)
            line = init.stdout.readline() if ready else b""
        if line != b"ready\n":
            init.kill()
            init.wait()
            raise RuntimeError(f"host-{i} did not boot: {log.read_text(errors='replace') or 'no word from its init'}")
        (host.init_pid,) = child_pids(init.pid)  # ip execs unshare, whose one child is the host's PID 1

    def _teardown(self) -> None:
        """Kill every host, then delete every namespace made (each attempted even when one fails)."""
        errors = []
        for i in range(self.hosts):
            try:
                self.kill(i)
            except Exception as error:  # keep tearing down; reported below
                errors.append(f"killing host-{i}: {error}")
        for name in reversed(self._made):
            done = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                errors.append(f"deleting {name}: {done.stderr.strip()}")
        self._made = []
        if errors:
            raise RuntimeError("the cluster was not torn down cleanly: " + "; ".join(errors))


def _check_can_run() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("multi-host tests need root (network, PID and mount namespaces): run them as root")
    missing = [tool for tool in ("ip", "unshare", "nsenter", "setpriv", "mount") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"multi-host tests need {', '.join(missing)}: apt-get install iproute2 util-linux mount")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
