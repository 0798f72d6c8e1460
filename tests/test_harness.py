"""The test harness itself: throwaway PostgreSQL servers (tests/pg_server.py), hosts in namespaces (tests/hosts.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.hosts import Cluster
from tests.pg_server import PostgresServer, child_pids, is_gone


def netns_names() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def pid_namespace_members(namespace: str) -> list[int]:
    """The live processes of this machine whose PID namespace is *namespace* (as /proc/PID/ns/pid reads)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and not is_gone(int(entry.name)):
            try:
                if os.readlink(entry / "ns" / "pid") == namespace:
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


def eventually(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Whether *condition* holds within *timeout* seconds (polled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def connect_from(cluster: Cluster, i: int, url: str) -> subprocess.CompletedProcess[bytes]:
    """Connect to *url* and run a query, from a process on host *i*."""
    code = "import sys, psycopg; psycopg.connect(sys.argv[1], connect_timeout=3).execute('select 1')"
    proc = cluster.run(i, [sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_session_database_is_fresh_and_empty(pg_url: str, pg_server: PostgresServer) -> None:
    assert pg_url.startswith(pg_server.url(""))
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute("select count(*) from pg_tables where schemaname = 'public'").fetchone()
    assert tables == (0,)
    assert pg_server.create_database() != pg_url


def test_a_server_restarts_and_survives_a_crash_on_the_same_port(tmp_path: Path) -> None:
    with PostgresServer(tmp_path / "pg") as server:
        url, port = server.create_database(), server.port
        with psycopg.connect(url) as conn:
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (1)")
        server.restart()
        assert server.port == port
        with psycopg.connect(url) as conn:
            conn.execute("insert into t values (2)")
        postmaster = server.pid
        assert postmaster is not None
        backends = child_pids(postmaster)
        assert backends
        server.kill()
        assert is_gone(postmaster)
        assert all(is_gone(pid) for pid in backends)
        server.start()
        with psycopg.connect(url) as conn:
            assert conn.execute("select x from t order by x").fetchall() == [(1,), (2,)]
        postmaster = server.pid
    assert postmaster is not None
    assert is_gone(postmaster)
    assert not server.running


def test_a_host_reaches_the_server_on_the_bridge_and_only_its_own_loopback(
    tmp_path: Path, pg_server: PostgresServer
) -> None:
    with (
        Cluster(tmp_path / "hosts", 2) as cluster,
        PostgresServer(tmp_path / "pg", host=cluster.server_address, netns=cluster.bridge_netns) as server,
    ):
        url = server.create_database()
        for i in range(cluster.hosts):
            done = connect_from(cluster, i, url)
            assert done.returncode == 0, done.stderr.decode()
        # the session's server listens on the harness's 127.0.0.1: from a host that is the host's own loopback
        assert connect_from(cluster, 0, pg_server.url()).returncode != 0


def test_a_host_sees_its_own_directory_name_and_processes_only(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2) as cluster:
        (cluster.staging(1) / "theirs").write_text("host-1's file")
        look = (
            "import os, socket, sys; mine, theirs = sys.argv[1:]\n"
            "open(os.path.join(mine, 'mine'), 'w').close()\n"
            "print(socket.gethostname(), os.environ['DICOMCOMMIT_HOST'], os.listdir(theirs), os.getpid(),"
            " sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
            "open(os.path.join(theirs, 'x'), 'w')"
        )
        argv = [sys.executable, "-c", look, str(cluster.staging(0)), str(cluster.home(1))]
        proc = cluster.run(0, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=30)
        hostname, env, theirs, pid, pids = out.decode().split(" ", 4)
        assert (hostname, env, theirs) == ("host-0", "host-0", "[]")
        assert int(pid) < 10  # its own PID namespace, where only its init and itself run
        assert pids.startswith("[1, ")
        assert b"Read-only file system" in err  # and it cannot write where host-1's directory is
        assert (cluster.staging(0) / "mine").exists()
        assert {p.name for p in cluster.home(1).rglob("*")} >= {"staging", "theirs"}
        assert not (cluster.home(1) / "x").exists()


def test_kill_ends_every_process_of_one_host_and_the_host_boots_again(tmp_path: Path) -> None:
    with Cluster(tmp_path, 2) as cluster:
        sleepers = [cluster.run(0, ["sleep", "60"]), cluster.run(0, ["sh", "-c", "sleep 60 & sleep 60"])]
        other = cluster.run(1, ["sleep", "60"])
        assert eventually(lambda: all(child_pids(p.pid) for p in sleepers))  # each wrapper started its command
        namespace = os.readlink(f"/proc/{child_pids(sleepers[0].pid)[0]}/ns/pid")
        assert eventually(lambda: len(pid_namespace_members(namespace)) == 5)  # init; sleep; sh, sleep, sleep

        cluster.kill(0)

        assert [p.returncode for p in sleepers] == [-9, -9]
        assert pid_namespace_members(namespace) == []
        assert other.poll() is None
        again = cluster.run(0, ["hostname"], stdout=subprocess.PIPE)
        assert again.communicate(timeout=30)[0] == b"host-0\n"


def test_a_cluster_leaves_nothing_behind_even_when_the_test_fails(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2)
    started: list[subprocess.Popen[bytes]] = []

    def a_failing_test() -> None:
        with cluster:
            assert set(cluster.namespaces) <= netns_names()
            started.append(cluster.run(1, ["sleep", "60"]))
            raise LookupError("the test failed")

    with pytest.raises(LookupError, match="the test failed"):
        a_failing_test()
    assert [p.returncode for p in started] == [-9]
    assert not set(cluster.namespaces) & netns_names()
