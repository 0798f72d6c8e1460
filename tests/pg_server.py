"""A throwaway PostgreSQL server for tests: initdb into a directory, start, stop, restart, crash.

Everything lives under the directory it is given: ``data/`` (the cluster), ``s/`` (the unix socket) and
``postgres.log`` (the server's output). Authentication is ``trust``; the database superuser is ``postgres``.
``fsync`` is on and ``synchronous_commit`` keeps its default, so a commit the server acknowledged survives
:meth:`PostgresServer.kill` (initdb itself runs with ``--no-sync``: its files only have to survive processes
dying, never the machine).

initdb and postgres refuse to run as root. As root, the server runs as ``nobody`` (or, on a machine without
it, a system user ``dicomcommit-pg`` created with useradd), which owns ``data/`` and ``s/``; the directories
above ``base`` get the others' execute (traverse) bit if they lack it, so that user can reach them. As anyone
else the server runs as ourselves.

With ``netns``, the postmaster runs inside that network namespace (see tests/hosts.py): it listens on an address
that exists only there, so :meth:`PostgresServer.url` is for processes inside the namespace's network, and the
harness itself talks to the server through the unix socket (:meth:`PostgresServer.socket_url`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import psycopg
from psycopg import sql

USER = "postgres"  # the superuser initdb creates, whichever OS user runs the server
SYSTEM_USER = "dicomcommit-pg"  # created when running as root on a machine without ``nobody``
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL

CONF = """
# tests/pg_server.py
max_connections = 200
fsync = on
logging_collector = off
log_min_messages = warning
"""
HBA = """\
local all all trust
host all all 0.0.0.0/0 trust
host all all ::/0 trust
"""


def pg_bin() -> Path:
    """The directory holding initdb and postgres: the newest /usr/lib/postgresql/*/bin, else initdb's on PATH."""

    def version(bin_dir: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name))

    installed = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").is_file()]
    if installed:
        return max(installed, key=version)
    initdb = shutil.which("initdb")
    if initdb is not None and (Path(initdb).parent / "postgres").is_file():
        return Path(initdb).parent
    raise RuntimeError(
        "the tests need PostgreSQL's server binaries (initdb, postgres) and found none in /usr/lib/postgresql/*/bin "
        "or on PATH: install them with 'apt-get install postgresql' (scripts/test does this as root on Debian)"
    )


def server_account() -> pwd.struct_passwd | None:
    """The unprivileged account to run initdb and postgres as, or None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", SYSTEM_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    useradd = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    subprocess.run([*useradd, "--shell", "/usr/sbin/nologin", SYSTEM_USER], check=True)
    return pwd.getpwnam(SYSTEM_USER)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is *pid* (from /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return children


def is_gone(pid: int) -> bool:
    """True once *pid* has exited (a zombie nobody reaped yet counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in {"Z", "X"}


def free_port(host: str, netns: str | None = None) -> int:
    """A TCP port nothing listens on at *host* (inside *netns* when given): bind port 0 and let go."""
    if netns is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.bind((host, 0))
            return int(probe.getsockname()[1])
    code = (
        "import socket, sys; host = sys.argv[1]; s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)"
        "; s.bind((host, 0)); print(s.getsockname()[1])"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code, host], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


class PostgresServer:
    """A PostgreSQL server of our own under *base*, on *host* and a free (or the given) TCP port.

    ``with PostgresServer(base) as server:`` starts it and always stops it. :meth:`restart` and :meth:`kill`
    keep the data directory and the port, so a test can restart or crash the server in the middle of its work.
    """

    def __init__(self, base: Path, *, host: str = "127.0.0.1", port: int | None = None, netns: str | None = None):
        if netns is not None and os.geteuid() != 0:
            raise RuntimeError("a PostgresServer in a network namespace needs root (ip netns exec)")
        self.base = base
        self.host = host
        self.port = port
        self.netns = netns
        self.data = base / "data"
        self.socket_dir = base / "s"
        self.log = base / "postgres.log"
        self.bin = pg_bin()
        self._account = server_account()
        self._proc: subprocess.Popen[bytes] | None = None
        if len(str(self.socket_dir / ".s.PGSQL.65535.lock")) > MAX_SOCKET_PATH:
            raise ValueError(f"{base} is too long a path for a unix socket inside it (at most ~{MAX_SOCKET_PATH - 30})")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def url(self, dbname: str = "postgres") -> str:
        """``postgresql://postgres@HOST:PORT/DBNAME``: the server over TCP (from inside ``netns``, if it has one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{USER}@{host}:{self._port()}/{dbname}"

    def socket_url(self, dbname: str = "postgres") -> str:
        """The server through its unix socket: reachable from this machine whatever network namespace it is in."""
        return f"postgresql://{USER}@/{dbname}?host={quote(str(self.socket_dir), safe='')}&port={self._port()}"

    def create_database(self) -> str:
        """A new, empty database with a name of its own; returns its :meth:`url`."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.socket_url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def start(self) -> None:
        """Start the server (initdb first, the first time) and wait until it accepts connections."""
        if self.running:
            return
        if self.port is None:
            self.port = free_port(self.host, self.netns)
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        where = ["-D", str(self.data), "-h", self.host, "-p", str(self.port), "-k", str(self.socket_dir)]
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*self._prefix(), str(self.bin / "postgres"), *where],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C in the terminal is pytest's to handle, not the server's
                cwd="/",
                env=self._env(),
            )
        self._wait_ready()

    def stop(self) -> None:
        """Fast shutdown (like ``pg_ctl stop -m fast``), then immediate, then SIGKILL: nothing is left running."""
        proc = self._proc
        if proc is None:
            return
        for sig, timeout in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0)):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        self.kill()

    def restart(self) -> None:
        """Stop and start again on the same data directory and port."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes at once, as a crash would; wait until they are gone.

        The postmaster is stopped first so it cannot fork while its children are listed and killed.
        """
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        children: list[int] = []
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 5
            while not _stopped(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.001)
            children = child_pids(proc.pid)
            for pid in children:
                _signal(pid, signal.SIGKILL)
            proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while not all(is_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _port(self) -> int:
        if self.port is None:
            raise RuntimeError("the server has no port before it was first started")
        return self.port

    def _prefix(self) -> list[str]:
        """What runs a server program: in the network namespace, and as the unprivileged account."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
        if self._account is not None:
            uid, gid = self._account.pw_uid, self._account.pw_gid
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
        return prefix

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}

    def _initdb(self) -> None:
        for directory in (self.data, self.socket_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self._account is not None:
                os.chown(directory, self._account.pw_uid, self._account.pw_gid)
        if self._account is not None:
            _let_others_traverse(self.base)
        options = [f"--username={USER}", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
        done = subprocess.run(
            [*self._prefix(), str(self.bin / "initdb"), "-D", str(self.data), *options],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd="/",
            env=self._env(),
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        (self.data / "pg_hba.conf").write_text(HBA)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(CONF)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.kill()
                raise RuntimeError(f"postgres exited ({code}) while starting; {self._log_tail()}")
            try:
                with psycopg.connect(self.socket_url(), connect_timeout=2):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    self.kill()
                    late = f"postgres did not accept connections in {START_TIMEOUT:.0f} s; {self._log_tail()}"
                    raise RuntimeError(late) from error
            time.sleep(0.05)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"the end of {self.log}:\n" + "\n".join(tail)


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] in {"T", "t", "Z", "X"}
    except OSError:
        return True


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _let_others_traverse(path: Path) -> None:
    """Give *path* and every directory above it the others' execute bit (traverse, not list), where missing."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
