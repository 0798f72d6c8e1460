"""Many hosts, one archive, one PostgreSQL manifest: real committers on real (namespace) hosts.

Each host (tests/hosts.py) stages into its own directory and commits into the shared archive with a
``postgresql://`` manifest on a real server (tests/pg_server.py) on the hosts' LAN. Every scenario ends with
:func:`check_converged`: no staged file lost, every final file whole and never replaced, every staged file
recorded exactly once, under its own host.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dicomcommit import Status, open_manifest
from tests.conftest import ROOT, archive_files, sha256_of, staged_files
from tests.hosts import Cluster
from tests.pg_server import PostgresServer, free_port

HOSTS = 4
WAIT = 120.0  # seconds any one process of these tests may take, at most
SEED = os.environ.get("TEST_HOSTS_SEED", "7")  # the crash tests' random choices (points, counts, delays)

# Run on a host: stage the (index, variant) jobs of a JSON file, write [name, sha256] of each staged file.
STAGE = """
import hashlib, json, sys
from pathlib import Path
from dicomcommit import Stager
from dicomcommit.synthetic import synthetic_dataset
staging, root, jobs, out = sys.argv[1:]
with Stager(staging) as stager:
    paths = stager.stage_many(synthetic_dataset(root, i, v) for i, v in json.loads(Path(jobs).read_text()))
Path(out).write_text(json.dumps([[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in paths]))
"""

# Run on a host: import everything, say "ready", wait for "go", then run the CLI (so that commits start at once).
AT_ONCE = """
import os, sys, time
from dicomcommit.cli.main import main
import dicomcommit.manifests.postgres
ready, go, *argv = sys.argv[1:]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
sys.exit(main(argv))
"""


def target_of(index: int) -> str:
    """The default template's name for synthetic_dataset(ROOT, index, any variant), written out by hand."""
    return f"DEMO{index // 100:04d}/{ROOT}.1.{index // 100}/{ROOT}.2.{index // 20}/{ROOT}.3.{index}.dcm"


def conflict_copy(sha256: str) -> str:
    return f".dicomcommit/conflicts/{sha256}.dcm"


Run = tuple[int, list[str], dict[str, str]]  # a process to start: (host, CLI arguments, environment)


@dataclass(frozen=True)
class Job:
    """One staged file: where (host, its name in that host's staging directory) and what."""

    host: str
    source: str
    sha256: str
    index: int
    variant: int

    @property
    def target(self) -> str:
        return target_of(self.index)


@dataclass
class Proc:
    """A process started on a host, its output going to files."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"{self.name} did not end in {timeout:g} s; stderr: {self.stderr()[-2000:]}")

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def json(self) -> Any:
        text = self.stdout()
        try:
            return json.loads(text)
        except ValueError:
            pytest.fail(f"{self.name} printed no JSON (exit {self.popen.returncode}): {text[-500:]!r}; "
                        f"stderr: {self.stderr()[-2000:]}")  # fmt: skip


@dataclass
class Network:
    """The module's hosts and the PostgreSQL server on their LAN."""

    cluster: Cluster
    server: PostgresServer


@dataclass
class Lan:
    """One test's view: the hosts, a database of its own, an archive of its own."""

    cluster: Cluster
    server: PostgresServer
    url: str  # the database, as the hosts reach it (TCP, on the bridge)
    local: str  # the same database, as this process reaches it (unix socket)
    archive: Path
    work: Path  # job lists, outputs, barrier files

    def host(self, i: int) -> str:
        return self.cluster.hostname(i)

    def run(self, i: int, argv: list[str], *, name: str, env: dict[str, str] | None = None) -> Proc:
        """Start *argv* on host *i*, its output in work/<name>.out and .err."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMCOMMIT_", "PG"))}
        environ.update(env or {})
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = self.cluster.run(i, argv, env=environ, cwd=self.work, stdout=stdout, stderr=stderr)
        return Proc(name, popen, out, err)

    def cli(self, i: int, *args: str, name: str, env: dict[str, str] | None = None) -> Proc:
        """``python -m dicomcommit ARGS`` on host *i*."""
        return self.run(i, [sys.executable, "-m", "dicomcommit", *args], name=name, env=env)

    def commit_args(self, i: int, batch: int) -> list[str]:
        staging = str(self.cluster.staging(i))
        return ["commit", staging, str(self.archive), "--manifest", self.url, "--json", "--batch-size", str(batch)]

    def at_once(self, runs: list[Run], *, tag: str) -> list[Proc]:
        """Start each (host, CLI args, env) of *runs*, every one imported and waiting; then let them all go."""
        barrier = self.work / f"barrier-{tag}"
        barrier.mkdir()
        go = barrier / "go"
        procs = []
        for n, (i, args, env) in enumerate(runs):
            ready = barrier / f"ready-{n}"
            argv = [sys.executable, "-c", AT_ONCE, str(ready), str(go), *args]
            procs.append(self.run(i, argv, name=f"{tag}-{n}-host-{i}", env=env))
        deadline = time.monotonic() + WAIT
        while not all((barrier / f"ready-{n}").exists() for n in range(len(runs))):
            for proc in procs:
                if proc.popen.poll() is not None:
                    pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) before it started: {proc.stderr()}")
            assert time.monotonic() < deadline, "the processes did not all get ready"
            time.sleep(0.01)
        go.touch()
        return procs

    def stage(self, plan: dict[int, list[tuple[int, int]]]) -> list[Job]:
        """Stage on each host *i* the (index, variant) datasets plan[i], in that order, every host at once."""
        procs = {}
        for i, jobs in plan.items():
            listing = self.work / f"jobs-{i}.json"
            listing.write_text(json.dumps(jobs))
            out = self.work / f"staged-{i}.json"
            argv = [sys.executable, "-c", STAGE, str(self.cluster.staging(i)), ROOT, str(listing), str(out)]
            procs[i] = (self.run(i, argv, name=f"stage-host-{i}"), out)
        staged = []
        for i, (proc, out) in procs.items():
            assert proc.wait() == 0, proc.stderr()
            names = json.loads(out.read_text())
            assert len(names) == len(plan[i])
            staged += [Job(self.host(i), name, sha, index, variant)
                       for (name, sha), (index, variant) in zip(names, plan[i], strict=True)]  # fmt: skip
        assert len({(j.host, j.source) for j in staged}) == len(staged)
        return staged

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.local, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()

    def live_leases(self, host: str) -> int:
        return int(self.query("SELECT count(*) FROM leases WHERE host = %s AND expires > now()", (host,))[0][0])

    def rows_of(self, host: str) -> int:
        """How many manifest rows *host* has (0 while the manifest has no tables yet)."""
        try:
            return int(self.query("SELECT count(*) FROM files WHERE host = %s", (host,))[0][0])
        except psycopg.errors.UndefinedTable:
            return 0

    def recorded(self, host: str) -> set[str]:
        """The sources of *host*'s manifest rows."""
        try:
            rows = self.query("SELECT source FROM files WHERE host = %s", (host,))
        except psycopg.errors.UndefinedTable:
            return set()
        return {os.fsdecode(source) for (source,) in rows}

    def claims_of(self, host: str) -> list[tuple[str, str | None, str | None]]:
        """(source, target, sha256) of every claim *host* holds."""
        rows = self.query("SELECT source, target, sha256 FROM claims WHERE host = %s ORDER BY source", (host,))
        return [(os.fsdecode(s), None if t is None else os.fsdecode(t), h) for s, t, h in rows]

    def wait_for_expiry(self, host: str, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        while self.live_leases(host):
            assert time.monotonic() < deadline, f"{host}'s leases did not expire in {limit:g} s"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """4 hosts and a PostgreSQL server on their bridge, for every test of the module (each its own database)."""
    base = tmp_path_factory.mktemp("lan")
    with (
        Cluster(base / "hosts", HOSTS) as cluster,
        PostgresServer(base / "pg", host=cluster.server_address, netns=cluster.bridge_netns) as server,
    ):
        yield Network(cluster, server)


@pytest.fixture
def lan(network: Network, tmp_path: Path) -> Iterator[Lan]:
    """The hosts with empty staging directories, a new database, a new archive; every host killed at the end."""
    cluster, server = network.cluster, network.server
    for i in range(cluster.hosts):
        cluster.kill(i)
        staging = cluster.staging(i)
        shutil.rmtree(staging)
        staging.mkdir()
    url = server.create_database()
    work = tmp_path / "work"
    work.mkdir()
    setup = Lan(cluster, server, url, server.socket_url(url.rpartition("/")[2]), tmp_path / "archive", work)
    try:
        yield setup
    finally:
        for i in range(cluster.hosts):
            cluster.kill(i)


def check_converged(archive: Path, manifest: str, jobs: list[Job], stagings: list[Path]) -> Counter[str]:
    """Every staged file accounted for, once; returns the number of rows by status.

    - nothing lost: each staged file's bytes are at its final name or kept in conflicts/, and no staging
      directory holds a staged file any more;
    - each final file is whole (its bytes are a staged file's) and is the one its committed row names;
    - each staged file has exactly one row, under its own host and source, with its own hash, and no row is
      anyone else's; each final name has exactly one committed row.
    """
    for staging in stagings:
        left = staged_files(staging)
        assert left == [], f"{len(left)} files still staged in {staging}: {[p.name for p in left[:5]]}"
    with open_manifest(archive, manifest=manifest) as opened:
        rows = opened.records()
    staged = {(j.host, j.source): j for j in jobs}
    keys = Counter((r.host, r.source) for r in rows)
    twice = [f"{k} x{n}" for k, n in keys.items() if n > 1]
    assert twice == [], f"{len(twice)} files recorded more than once: {twice[:5]}"
    strangers = [f"#{r.id} {r.status} {r.host}:{r.source}" for r in rows if (r.host, r.source) not in staged]
    assert strangers == [], f"{len(strangers)} rows of no staged file: {strangers[:5]}"
    unrecorded = sorted(set(staged) - set(keys))
    assert unrecorded == [], f"{len(unrecorded)} staged files have no row: {unrecorded[:5]}"

    files = archive_files(archive)
    targets = {j.target for j in jobs}
    assert sorted(set(files) - targets) == [], "files in the archive that no staged file asked for"
    assert sorted(targets - set(files)) == [], "final names nobody holds"
    committed = Counter(r.path for r in rows if r.status is Status.COMMITTED)
    assert sorted(p for p, n in committed.items() if n != 1) == [], "final names with more than one committed row"
    assert set(committed) == targets
    wrong = []
    for r in rows:
        job = staged[(r.host, r.source)]
        there = files[job.target]
        if r.sha256 != job.sha256 or r.target != job.target:
            wrong.append(
                f"#{r.id} {r.status} {r.host}:{r.source}: {r.target} {r.sha256}, staged {job.target} {job.sha256}"
            )
        elif r.status in (Status.COMMITTED, Status.DUPLICATE):
            if r.path != job.target or there != r.sha256:
                wrong.append(f"#{r.id} {r.status} at {r.path} {r.sha256}; {job.target} holds {there}")
        elif r.status is Status.CONFLICT:
            kept = archive / r.path
            if r.path != conflict_copy(r.sha256) or not kept.is_file() or sha256_of(kept) != r.sha256 == there:
                wrong.append(f"#{r.id} conflict at {r.path} {r.sha256}; {job.target} holds {there}")
            elif r.existing_sha256 not in (None, there):
                wrong.append(f"#{r.id} conflict says {job.target} holds {r.existing_sha256}, it holds {there}")
        else:
            wrong.append(f"#{r.id} {r.status} {r.host}:{r.source}")
    assert wrong == [], f"{len(wrong)} rows do not match the archive: {wrong[:5]}"
    # And from the archive alone, the manifest aside: every staged file's bytes are there.
    lost = []
    for job in jobs:
        kept = archive / conflict_copy(job.sha256)
        if files[job.target] != job.sha256 and not (kept.is_file() and sha256_of(kept) == job.sha256):
            lost.append(f"{job.host}:{job.source} ({job.index}, {job.variant})")
    assert lost == [], f"{len(lost)} staged files lost: {lost[:5]}"
    statuses = Counter(str(r.status) for r in rows)
    assert statuses["committed"] + statuses["duplicate"] + statuses["conflict"] == len(jobs)
    return statuses


def expected_statuses(jobs: list[Job]) -> Counter[str]:
    """The rows a plan must end with, whoever wins each name: one committed row per name; for the other files
    wanting it, a duplicate when their bytes are the same as a file already there, else a conflict (the plans
    here give each name at most two different contents, and each content at most twice)."""
    by_target: dict[str, list[Job]] = {}
    for job in jobs:
        by_target.setdefault(job.target, []).append(job)
    expected: Counter[str] = Counter()
    for same_name in by_target.values():
        contents = Counter(j.sha256 for j in same_name)
        assert len(contents) <= 2
        expected["committed"] += 1
        expected["duplicate"] += len(same_name) - len(contents)
        expected["conflict"] += len(contents) - 1
    return expected


class InodeWatch:
    """Notes the inode of every archive file the first time it is seen (a thread, every *every* seconds)."""

    def __init__(self, archive: Path, every: float = 0.2) -> None:
        self.archive, self.every = archive, every
        self.seen: dict[str, int] = {}
        self.gone: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> InodeWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching, after a last scan."""
        self._stop.set()
        self._thread.join()
        self.scan()

    def __enter__(self) -> InodeWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.scan()

    def scan(self) -> None:
        for directory, dirs, files in os.walk(self.archive):
            dirs[:] = [d for d in dirs if d != ".dicomcommit"]
            for name in files:
                path = os.path.join(directory, name)
                try:
                    self.seen.setdefault(path, os.lstat(path).st_ino)
                except FileNotFoundError:
                    self.gone.append(path)

    def replaced(self) -> list[str]:
        return [path for path, inode in self.seen.items() if os.lstat(path).st_ino != inode]


def colliding_plan(hosts: int, per_host: int, share: float, seed: int) -> dict[int, list[tuple[int, int]]]:
    """(index, variant) jobs for each host: *share* of each host's files are another copy of an instance the next
    host stages (half of them the same bytes: duplicates, half other bytes: conflicts), at the same position in
    its order, so that both hosts want the name at about the same time; the rest are instances of its own."""
    rng = random.Random(seed)
    positions = rng.sample(range(per_host), round(per_host * share) * hosts)
    # position -> (the host that stages a copy there, its variant: alternately the same bytes and others)
    extra_at = {p: (n % hosts, n // hosts % 2) for n, p in enumerate(positions)}
    plan: dict[int, list[tuple[int, int]]] = {}
    for i in range(hosts):
        jobs = []
        for p in range(per_host):
            host, variant = extra_at.get(p, (None, 0))
            if host == i:
                jobs.append((((i + 1) % hosts) * per_host + p, variant))
            else:
                jobs.append((i * per_host + p, 0))
        plan[i] = jobs
    return plan


def claimed_sources(entries: list[str], host: str) -> set[str]:
    """The sources of recover's claims_finished ("host:source -> ...") or claims_ended ("host:source (...)")."""
    sources = set()
    for entry in entries:
        who, _, rest = entry.partition(":")
        assert who == host, entry
        sources.add(rest.split(" ", 1)[0])
    return sources


@pytest.mark.slow
def test_four_hosts_with_two_committers_each_commit_10000_files_losing_and_replacing_none(lan: Lan) -> None:
    per_host = 2500
    plan = colliding_plan(HOSTS, per_host, share=0.10, seed=11)  # 10 % of all files: another host's names
    jobs = lan.stage(plan)
    expected = expected_statuses(jobs)
    assert expected == {"committed": 9000, "duplicate": 500, "conflict": 500}
    runs: list[Run] = [(i, lan.commit_args(i, 200), {}) for i in range(HOSTS) for _ in range(2)]
    started = time.monotonic()
    with InodeWatch(lan.archive) as watch:
        procs = lan.at_once(runs, tag="commit")
        codes = [proc.wait() for proc in procs]
    took = time.monotonic() - started
    assert all(code in (0, 3) for code in codes), [(p.name, p.popen.returncode, p.stderr()[-500:]) for p in procs]
    stagings = [lan.cluster.staging(i) for i in range(HOSTS)]
    assert check_converged(lan.archive, lan.local, jobs, stagings) == expected
    # Each run reports at least the rows it recorded. (Not exactly: a file the other committer of its host had
    # recorded but not yet removed from staging is counted by both, as a rerun counts what a killed run recorded.)
    for proc in procs:
        report = proc.json()
        assert report["invalid"] == 0
        assert report["left_in_place"] == []
        mine = Counter(str(s) for (s,) in lan.query("SELECT status FROM files WHERE run = %s", (report["run"],)))
        counted = {"committed": report["committed"], "duplicate": report["duplicates"], "conflict": report["conflicts"]}
        assert all(counted[status] >= n for status, n in mine.items()), (proc.name, counted, mine)
    assert watch.gone == []
    assert watch.replaced() == []
    assert len(watch.seen) == 9000
    with open_manifest(lan.archive, manifest=lan.local) as manifest:
        hosts_of = Counter(r.host for r in manifest.records())
    assert hosts_of == {lan.host(i): per_host for i in range(HOSTS)}
    elsewhere = sum(proc.json()["claimed_elsewhere"] for proc in procs)
    print(f"8 committers on 4 hosts: {len(jobs)} files committed in {took:.1f} s; {elsewhere} found claimed")


CRASHES = [
    ("commit:after-link", 80),  # (point, the largest n to pick for it: each of 2 committers gets ~150 files)
    ("commit:before-manifest", 2),  # (~3 batches of 50 each)
    ("commit:in-manifest", 2),
    ("commit:after-manifest", 2),
    ("commit:after-unlink", 80),
    ("kill", 0),  # the whole host SIGKILLed (cluster.kill) once it has recorded a random number of files
]


@pytest.mark.slow
@pytest.mark.parametrize(("crash", "upto"), CRASHES, ids=[c for c, _ in CRASHES])
def test_a_host_killed_while_committing_is_recovered_from_another_host(lan: Lan, crash: str, upto: int) -> None:
    rng = random.Random(f"{crash}-{SEED}")
    per_host = 300
    plan = colliding_plan(2, per_host, share=0.10, seed=rng.randrange(1000))
    jobs = lan.stage(plan)
    dead, rescuer = lan.host(0), 2  # host 1 commits alongside
    victim_env = {"DICOMCOMMIT_LEASE_SECONDS": "2"}
    if crash != "kill":
        victim_env["DICOMCOMMIT_CRASH_AT"] = f"{crash}:{rng.randint(1, upto)}"
    print(f"seed {SEED}: {dead}'s committers: {victim_env}")
    runs: list[Run] = [(0, lan.commit_args(0, 50), victim_env), (0, lan.commit_args(0, 50), victim_env)]
    runs.append((1, lan.commit_args(1, 50), {}))
    watch = InodeWatch(lan.archive, every=0.05).start()  # (a daemon thread: a failure below leaves it be)
    *victims, survivor = lan.at_once(runs, tag="commit")
    if crash == "kill":
        recorded = rng.randint(1, per_host * 3 // 4)
        deadline = time.monotonic() + WAIT
        while lan.rows_of(dead) < recorded:
            assert any(p.popen.poll() is None for p in victims), "the committers ended before they could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        print(f"killed {dead} once it had recorded {lan.rows_of(dead)} files (waited for {recorded})")
        assert any(p.popen.poll() is None for p in victims), "the committers ended before they could be killed"
        lan.cluster.kill(0)
    codes = [p.wait() for p in victims]
    assert any(code != 0 for code in codes), f"no committer of {dead} died ({crash})"
    assert survivor.wait() in (0, 3), survivor.stderr()

    lan.wait_for_expiry(dead)
    before = lan.recorded(dead)
    claims = lan.claims_of(dead)
    files = archive_files(lan.archive) if lan.archive.exists() else {}
    placed = {source for source, target, sha in claims if sha is not None and (
        files.get(target or "") == sha or (lan.archive / conflict_copy(sha)).is_file())}  # fmt: skip
    recovered = lan.cli(rescuer, "recover", str(lan.archive), "--manifest", lan.url, "--json", name="recover")
    assert recovered.wait() == 0, recovered.stderr()
    report = recovered.json()
    # A claim may be of a file recorded already (the host's other committer recorded it, and this one claimed
    # it before it left staging): that claim just ends, reported as neither.
    assert claimed_sources(report["claims_finished"], dead) == placed - before
    assert claimed_sources(report["claims_ended"], dead) == {source for source, _, _ in claims} - placed - before
    assert report["rows_added"] == []  # nothing found in the archive with neither a row nor a claim
    assert report["missing"] == report["mismatched"] == []
    assert lan.claims_of(dead) == []
    # The dead host's placed files are recorded now, under its own host. (A claim may be of a file recorded
    # already: the other committer of the host recorded it, and this one claimed it before it left staging.)
    assert lan.recorded(dead) == before | placed
    details = dict(lan.query("SELECT convert_from(source, 'UTF8'), detail FROM files WHERE host = %s", (dead,)))
    assert {s for s in placed - before if not details[s].startswith("finished by recover")} == set()
    if crash in ("commit:after-link", "commit:before-manifest", "commit:in-manifest"):
        assert placed, f"{crash}: the dead committers left no placed file to finish"

    rerun = lan.cli(0, *lan.commit_args(0, 50), name="rerun")
    assert rerun.wait() in (0, 3), rerun.stderr()
    assert rerun.json()["left_in_place"] == []
    assert rerun.json()["claimed_elsewhere"] == 0
    watch.stop()
    stagings = [lan.cluster.staging(0), lan.cluster.staging(1)]
    assert check_converged(lan.archive, lan.local, jobs, stagings) == expected_statuses(jobs)
    assert watch.gone == watch.replaced() == []


@pytest.mark.slow
def test_recover_leaves_a_dead_hosts_claims_alone_until_its_lease_expires(lan: Lan) -> None:
    jobs = lan.stage({0: [(i, 0) for i in range(150)]})
    dead, rescuer = lan.host(0), 1
    env = {"DICOMCOMMIT_LEASE_SECONDS": "3", "DICOMCOMMIT_CRASH_AT": "commit:before-manifest:2"}
    victim = lan.cli(0, *lan.commit_args(0, 50), name="commit", env=env)
    assert victim.wait() != 0
    killed = time.monotonic()
    # batch 1 recorded; batch 2 linked into the archive, claimed, not recorded; batch 3 untouched
    assert lan.rows_of(dead) == 50
    claims = lan.claims_of(dead)
    assert len(claims) == 50
    assert len(archive_files(lan.archive)) == 100

    early = lan.cli(rescuer, "recover", str(lan.archive), "--manifest", lan.url, "--json", name="recover-early")
    assert early.wait() == 0, early.stderr()
    took = time.monotonic() - killed
    assert lan.live_leases(dead) == 1, f"the lease expired before recover ended ({took:.1f} s): no conclusion"
    print(f"the early recover ended {took:.1f} s after the committer died, its lease still live")
    report = early.json()
    assert report["claims_finished"] == report["claims_ended"] == []
    assert report["rows_added"] == []  # the claimed files are not taken for files nobody recorded
    assert lan.claims_of(dead) == claims
    assert lan.rows_of(dead) == 50
    assert lan.rows_of("") == 0

    lan.wait_for_expiry(dead)
    late = lan.cli(rescuer, "recover", str(lan.archive), "--manifest", lan.url, "--json", name="recover-late")
    assert late.wait() == 0, late.stderr()
    report = late.json()
    assert claimed_sources(report["claims_finished"], dead) == {source for source, _, _ in claims}
    assert report["claims_ended"] == report["rows_added"] == []
    assert lan.claims_of(dead) == []
    assert lan.rows_of(dead) == 100
    assert lan.rows_of("") == 0

    rerun = lan.cli(0, *lan.commit_args(0, 50), name="rerun")
    assert rerun.wait() == 0, rerun.stderr()
    # batch 3 recorded now; batch 2's files, recorded by recover, only leave staging (the report counts them too,
    # as a rerun counts what a killed run recorded)
    run = rerun.json()["run"]
    assert lan.query("SELECT count(*) FROM files WHERE run = %s", (run,)) == [(50,)]
    assert check_converged(lan.archive, lan.local, jobs, [lan.cluster.staging(0)]) == {"committed": 150}


# Cases without hosts: local processes against a server on this machine's loopback.


def local_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMCOMMIT_", "PG"))}
    return {**env, "DICOMCOMMIT_HOST": "local", **extra}


def local_stage(staging: Path, count: int) -> list[Job]:
    from dicomcommit import Stager  # noqa: PLC0415
    from dicomcommit.synthetic import synthetic_dataset  # noqa: PLC0415

    with Stager(staging) as stager:
        paths = stager.stage_many(synthetic_dataset(ROOT, i) for i in range(count))
    return [Job("local", p.name, sha256_of(p), i, 0) for i, p in enumerate(paths)]


def local_commit(staging: Path, archive: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dicomcommit", "commit", str(staging), str(archive), *extra]


def count_rows(url: str, table: str = "files") -> int:
    """The number of rows of *table* (0 while there is no such table yet, or the server restarts)."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):
        return 0


def count_claims(url: str) -> int:
    return count_rows(url, "claims")


@pytest.mark.slow
def test_a_postgresql_restart_in_the_middle_of_a_commit_fails_it_cleanly_and_a_rerun_completes(
    tmp_path: Path, dirs: tuple[Path, Path]
) -> None:
    staging, archive = dirs
    jobs = local_stage(staging, 1500)
    with PostgresServer(tmp_path / "pg") as server:
        url = server.create_database()
        dbname = url.rpartition("/")[2]
        argv = local_commit(staging, archive, "--manifest", url, "--json", "--batch-size", "500")
        proc = subprocess.Popen(argv, env=local_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + WAIT
        # Restart once the first batch is recorded and the second claimed: its files are being placed.
        while count_rows(url) < 500 or count_claims(url) == 0:
            assert proc.poll() is None, f"the commit ended before the restart: {proc.communicate()}"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        server.restart()
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 1, (out, err)
        message = err.decode()
        assert message.startswith("dicomcommit: error: "), message
        assert "manifest" in message
        assert f"postgresql://postgres@127.0.0.1:{server.port}/{dbname}" in message
        assert "Traceback" not in message
        assert out == b""
        recorded = count_rows(url)
        assert 500 <= recorded < 1500
        assert count_claims(url) > 0  # the batch in flight, claimed under the lease of a process now gone
        assert len(staged_files(staging)) >= 1500 - recorded  # nothing unrecorded left staging
        assert len(archive_files(archive)) >= recorded

        rerun = subprocess.run(argv, env=local_env(), capture_output=True, check=False, timeout=WAIT)
        assert rerun.returncode == 0, rerun.stderr
        report = json.loads(rerun.stdout)
        assert report["left_in_place"] == []
        assert report["claimed_elsewhere"] == 0  # the dead committer's claims were taken over at once
        assert check_converged(archive, server.socket_url(dbname), jobs, [staging]) == {"committed": 1500}


UNREACHABLE = ["wrong-port", "no-such-database", "stopped-server", "from-the-environment"]


@pytest.mark.parametrize("how", UNREACHABLE)
def test_a_manifest_that_cannot_be_reached_stops_the_commit_before_anything_is_placed(
    how: str, tmp_path: Path, dirs: tuple[Path, Path], pg_server: PostgresServer
) -> None:
    staging, archive = dirs
    local_stage(staging, 20)
    before = {p.name: sha256_of(p) for p in staging.rglob("*") if p.is_file()}  # the journal too
    env = local_env()
    if how == "wrong-port":
        url = f"postgresql://postgres@127.0.0.1:{free_port('127.0.0.1')}/postgres"
    elif how == "no-such-database":
        url = pg_server.url("no_such_database")
    elif how == "stopped-server":
        with PostgresServer(tmp_path / "pg") as server:
            url = server.create_database()
    else:
        url = f"postgresql://postgres@127.0.0.1:{free_port('127.0.0.1')}/postgres"
        env["DICOMCOMMIT_MANIFEST"] = url
    given = [] if how == "from-the-environment" else ["--manifest", url]
    argv = local_commit(staging, archive, *given, "--json")
    done = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=WAIT)
    assert done.returncode == 1, done
    message = done.stderr.decode()
    assert message.startswith("dicomcommit: error: "), message
    assert "manifest" in message
    assert url in message  # the location, as given (no password in these)
    assert "Traceback" not in message
    assert done.stdout == b""
    assert not archive.exists() or archive_files(archive) == {}
    assert {p.name: sha256_of(p) for p in staging.rglob("*") if p.is_file()} == before
