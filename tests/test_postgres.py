"""The PostgreSQL manifest on a real server (tests/pg_server.py): the same outcomes, rows and
output as SQLite; no archive lock; claims; manifest copy; locations and their errors."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from filelock import FileLock
from pydicom.dataset import Dataset

from dicomcommit import (
    LockTimeout,
    Manifest,
    ManifestError,
    Stager,
    Status,
    UsageError,
    _fs,
    commit,
    ingest,
    open_manifest,
    recover,
)
from dicomcommit import resolve as resolve_conflict
from dicomcommit.cli.main import main
from dicomcommit.committing import describing
from dicomcommit.manifests import ENV_MANIFEST, manifest_url
from dicomcommit.manifests.copying import copy_manifest
from dicomcommit.manifests.records import Claim, NewRecord, host_id
from tests.conftest import archive_files, killed_commit, staged_files, write_foreign
from tests.pg_server import PostgresServer

_VOLATILE = ("id", "run", "time")  # differ between two runs of the same commit


def _stage_mix(staging: Path, make_ds: Callable[..., Dataset]) -> None:
    """Five new files, one identical duplicate, one conflict (same name, other bytes)."""
    stager = Stager(staging)
    for i in range(5):
        stager.stage(make_ds(i))
    stager.stage(make_ds(1))
    stager.stage(make_ds(2, variant=1))


def _rows(archive: Path, manifest: str | None) -> list[dict[str, Any]]:
    with open_manifest(archive, manifest=manifest) as opened:
        rows = [r.to_dict() for r in opened.records()]
    return sorted(({k: v for k, v in r.items() if k not in (*_VOLATILE, "source")} for r in rows),
                  key=lambda r: (r["path"], r["status"]))  # fmt: skip


def test_a_commit_records_the_same_rows_in_postgresql_as_in_sqlite(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    reports = {}
    for name, manifest in (("sqlite", None), ("postgresql", pg_url)):
        staging, archive = tmp_path / name / "staging", tmp_path / name / "archive"
        staging.mkdir(parents=True)
        _stage_mix(staging, make_ds)
        reports[name] = commit(staging, archive, manifest=manifest).counts()
        assert staged_files(staging) == []
    assert reports["sqlite"] == reports["postgresql"] == {**reports["sqlite"], "committed": 5, "duplicates": 1,
                                                          "conflicts": 1}  # fmt: skip
    sqlite_rows = _rows(tmp_path / "sqlite" / "archive", None)
    assert sqlite_rows == _rows(tmp_path / "postgresql" / "archive", pg_url)
    assert {r["host"] for r in sqlite_rows} == {host_id()}
    # The PostgreSQL manifest keeps no file in the archive's state directory.
    assert not (tmp_path / "postgresql" / "archive" / ".dicomcommit" / "manifest.sqlite").exists()
    assert archive_files(tmp_path / "sqlite" / "archive") == archive_files(tmp_path / "postgresql" / "archive")


def test_review_show_resolve_and_report_work_on_postgresql(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    _stage_mix(staging, make_ds)
    assert main(["commit", str(staging), str(archive), "--manifest", pg_url]) == 3
    capsys.readouterr()
    assert main(["review", str(archive), "--manifest", pg_url, "--json"]) == 0
    (conflict,) = json.loads(capsys.readouterr().out)
    assert conflict["status"] == "conflict"
    assert main(["review", str(archive), "--manifest", pg_url, "--status", "all", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(",")[-1] == "host"
    assert len(lines) == 8
    assert main(["show", str(archive), str(conflict["id"]), "--manifest", pg_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["record"]["id"] == conflict["id"]
    assert main(["report", str(archive), "--manifest", pg_url, "-o", str(tmp_path / "r.html")]) == 0
    assert "1 open conflicts" in capsys.readouterr().out
    assert main(["resolve", str(archive), str(conflict["id"]), "--keep", "both", "--manifest", pg_url]) == 0
    with open_manifest(archive, manifest=pg_url) as opened:
        assert opened.records(Status.CONFLICT) == []
        assert opened.get(conflict["id"]).resolution == "both"
    assert main(["recover", str(archive), str(staging), "--manifest", pg_url, "--verify"]) == 0


def test_the_environment_variable_names_the_manifest_and_the_option_wins(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    monkeypatch.setenv(ENV_MANIFEST, pg_url)
    assert main(["commit", str(staging), str(archive)]) == 0
    assert len(_rows(archive, pg_url)) == 1
    other = tmp_path / "other.sqlite"
    Stager(staging).stage(make_ds(1))
    assert main(["commit", str(staging), str(archive), "--manifest", f"sqlite://{other}"]) == 0
    assert len(_rows(archive, str(other))) == 1
    assert len(_rows(archive, pg_url)) == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [("sqlite:///a/b.sqlite", "/a/b.sqlite"), ("rel/m.sqlite", "rel/m.sqlite"),
     ("postgresql://u@h:5/db", "postgresql://u@h:5/db"), ("postgres://h/db", "postgres://h/db")],
)  # fmt: skip
def test_manifest_locations(given: str, expected: str) -> None:
    assert manifest_url("/archive", given) == expected


@pytest.mark.parametrize("given", ["sqlite://relative.sqlite", "mysql://h/db", "s3://bucket/m", "sqlite:////x"])
def test_a_location_that_is_no_manifest_is_a_usage_error(tmp_path: Path, given: str) -> None:
    with pytest.raises(UsageError, match="manifest"):
        manifest_url(tmp_path, given)
    assert main(["review", str(tmp_path), "--manifest", given]) == 2


def test_the_schema_is_created_on_first_use_and_versioned(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(ManifestError, match="no manifest"):
        open_manifest(tmp_path, manifest=pg_url)  # review, show, report: never create one
    open_manifest(tmp_path, manifest=pg_url, create=True).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT version FROM dicomcommit_schema").fetchall() == [(1,)]
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"files", "runs", "leases", "claims", "settings"} <= tables
        conn.execute("UPDATE dicomcommit_schema SET version = 7")
    with pytest.raises(ManifestError, match="schema 7"):
        open_manifest(tmp_path, manifest=pg_url)


def test_an_unreachable_server_is_a_clear_error_before_anything_is_placed(
    tmp_path: Path, make_ds: Callable[..., Dataset], capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    with PostgresServer(tmp_path / "pg") as server:
        url = server.url()
    assert main(["commit", str(staging), str(archive), "--manifest", url]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the PostgreSQL manifest postgresql://" in err
    assert archive_files(archive) == {}
    assert len(staged_files(staging)) == 1


def test_a_password_never_appears_in_a_message(tmp_path: Path, pg_server: PostgresServer) -> None:
    url = pg_server.url().replace("postgres@", "postgres:s3cret@").rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(ManifestError) as caught:
        open_manifest(tmp_path, manifest=url)
    assert "s3cret" not in str(caught.value)
    assert "no_such_db" in str(caught.value)


def test_postgresql_takes_no_archive_lock(tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]) -> None:
    """Committers on many hosts arbitrate each name where it is created: the archive's lock,
    held here by someone else, stops an SQLite commit and not a PostgreSQL one."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    (archive / ".dicomcommit").mkdir(parents=True)
    with FileLock(archive / ".dicomcommit" / "lock"):
        with pytest.raises(LockTimeout):
            commit(staging, archive, lock_timeout=0.2)
        assert commit(staging, archive, manifest=pg_url, lock_timeout=0.2).counts()["committed"] == 1


def test_a_dry_run_on_postgresql_writes_nothing_not_even_the_schema(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    _stage_mix(staging, make_ds)
    report = commit(staging, archive, manifest=pg_url, dry_run=True)
    assert report.counts()["committed"] == 5
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('files')").fetchone() == (None,)
    commit(staging, archive, manifest=pg_url)
    Stager(staging).stage(make_ds(9))
    assert commit(staging, archive, manifest=pg_url, dry_run=True).counts()["committed"] == 1
    assert len(_rows(archive, pg_url)) == 7


def test_two_committers_on_one_staging_directory_record_each_file_once(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    """With no lock between them, the claims decide which committer takes which file."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    for i in range(600):
        stager.stage(make_ds(i % 500, variant=i // 550))
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=commit, args=(staging, archive), kwargs={"manifest": pg_url, "batch_size": 50})
             for _ in range(2)]  # fmt: skip
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert staged_files(staging) == []
    with open_manifest(archive, manifest=pg_url) as opened:
        rows = opened.records()
        assert opened.live_claims() == []
        assert opened.expired_claims() == []
    assert len(rows) == 600
    assert len({(r.host, r.source) for r in rows}) == 600
    committed = [r.path for r in rows if r.status is Status.COMMITTED]
    assert len(committed) == len(set(committed)) == 500
    assert sum(r.status is Status.CONFLICT for r in rows) == 50
    assert sum(r.status is Status.DUPLICATE for r in rows) == 50


def test_manifest_copy_moves_sqlite_to_postgresql_and_back_verified(
    tmp_path: Path, pg_url: str, pg_server: PostgresServer, make_ds: Callable[..., Dataset],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    _stage_mix(staging, make_ds)
    commit(staging, archive)
    before = _rows(archive, None)
    default = archive / ".dicomcommit" / "manifest.sqlite"
    assert main(["manifest", "copy", str(default), pg_url, "--json"]) == 0
    copied = json.loads(capsys.readouterr().out)
    assert (copied["rows"], copied["runs"], copied["verified"]) == (7, 1, True)
    assert _rows(archive, pg_url) == before
    # The old manifest now refuses to be used, naming the new one: nothing can split the record.
    assert main(["commit", str(staging), str(archive)]) == 1
    assert "was moved to postgresql://" in capsys.readouterr().err
    # Ids carry over, and the next row follows them.
    Stager(staging).stage(make_ds(7))
    commit(staging, archive, manifest=pg_url)
    with open_manifest(archive, manifest=pg_url) as opened:
        assert [r.id for r in opened.records()] == list(range(1, 9))
    back = tmp_path / "back.sqlite"
    assert main(["manifest", "copy", pg_url, f"sqlite://{back}"]) == 0
    assert len(_rows(archive, str(back))) == 8
    assert main(["review", str(archive), "--manifest", pg_url]) == 1
    # Into a manifest that is not empty: refused, nothing changed.
    assert main(["manifest", "copy", str(back), pg_server.create_database()]) == 0
    assert main(["manifest", "copy", str(tmp_path / "missing.sqlite"), str(back)]) == 1


def test_a_commit_that_had_the_manifest_open_when_it_moved_records_nothing_there(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    commit(staging, archive)
    with open_manifest(archive, create=True) as still_open:
        copy_manifest(archive / ".dicomcommit" / "manifest.sqlite", pg_url)
        with pytest.raises(ManifestError, match="moved to"):
            still_open.add([NewRecord(Status.COMMITTED, "x.dcm", "x.dcm", "s", 1, "ab" * 32, run="r")])
    with sqlite3.connect(archive / ".dicomcommit" / "manifest.sqlite") as db:
        assert db.execute("SELECT count(*) FROM files").fetchone() == (1,)


def test_names_that_are_not_utf8_round_trip_through_postgresql(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    tree, archive = tmp_path / "tree", tmp_path / "archive"
    tree.mkdir()
    name = os.fsdecode(b"scan-\xff\xfe.dcm")
    write_foreign(tree / name, make_ds(0))
    report = ingest(tree, archive, manifest=pg_url)
    assert report.counts()["committed"] == 1
    with open_manifest(archive, manifest=pg_url) as opened:
        (row,) = opened.records()
        assert row.source == f"{tree}/{name}"
        assert opened.find(row.source, row.sha256 or "") == row
    assert ingest(tree, archive, manifest=pg_url).counts()["duplicates"] == 1  # a rerun: the same key
    with open_manifest(archive, manifest=pg_url) as opened:
        assert len(opened.records()) == 1


def test_rebuilding_a_postgresql_manifest_is_refused(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "archive").mkdir()
    with pytest.raises(UsageError, match="PostgreSQL"):
        recover(tmp_path / "archive", rebuild_manifest=True, manifest=pg_url)


def test_each_row_carries_its_host(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-7")
    commit(staging, archive, manifest=pg_url)
    (row,) = _rows(archive, pg_url)
    assert row["host"] == "node-7"
    with open_manifest(archive, manifest=pg_url) as opened:
        (run,) = opened.runs()
        assert run.host == "node-7"


@pytest.mark.parametrize("copy", [False, True], ids=["link", "copy"])
def test_a_link_that_reports_eexist_after_it_happened_is_ours(
    tmp_path: Path, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch, copy: bool
) -> None:
    """NFS: a retransmitted LINK can answer EEXIST for the link its first try made. The
    target then is our inode: committed, and its directory made durable as for any link."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    ds = make_ds(0)
    if copy:  # another hard link: commit copies into .dicomcommit/tmp/, then links the copy
        write_foreign(staging / "a.dcm", ds)
        os.link(staging / "a.dcm", tmp_path / "other-name.dcm")
    else:
        Stager(staging).stage(ds)
    real_link, real_fsync = os.link, os.fsync
    replied: list[str] = []
    synced: set[tuple[int, int]] = set()

    def link_then_eexist(src: Any, dst: Any, **kwargs: Any) -> None:
        real_link(src, dst, **kwargs)
        if str(dst).endswith(".dcm") and not replied:
            replied.append(str(dst))
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)

    real_syncfs = _fs.syncfs
    synced_filesystems: set[int] = set()

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))
        real_fsync(fd)

    def syncfs(fd: int) -> None:  # where it covers the archive, one syncfs stands for each fsync
        synced_filesystems.add(os.fstat(fd).st_dev)
        real_syncfs(fd)

    monkeypatch.setattr(os, "link", link_then_eexist)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_fs, "syncfs", syncfs)
    report = commit(staging, archive, settle=0)
    assert replied, "the fault was injected"
    assert report.counts()["committed"] == 1
    (path,) = archive_files(archive)
    final = archive / path
    with open_manifest(archive) as opened:
        (row,) = opened.records()
    assert (row.status, row.path) == (Status.COMMITTED, path)
    if copy:
        assert row.detail.startswith("copied, not linked")  # not "linked by an interrupted earlier run"
    parent = os.stat(final.parent)
    assert (parent.st_dev, parent.st_ino) in synced or parent.st_dev in synced_filesystems


def test_resolve_on_postgresql_keeps_the_staged_file(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    _stage_mix(staging, make_ds)
    commit(staging, archive, manifest=pg_url)
    with open_manifest(archive, manifest=pg_url) as opened:
        (conflict,) = opened.records(Status.CONFLICT)
    row = resolve_conflict(archive, conflict.id, "staged", manifest=pg_url)
    assert (row.status, row.path) == (Status.COMMITTED, conflict.target)
    assert archive_files(archive)[row.path] == row.sha256


def test_a_rerun_right_after_a_killed_commit_takes_its_files_at_once(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    """The killed committer's lease would hold its claims for a minute; on the same machine
    its process is known to be gone, so its lease expires at once and the rerun resumes."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    for i in range(30):
        stager.stage(make_ds(i))
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": "commit:after-link:10"}
    argv = [sys.executable, "-m", "dicomcommit", "commit", str(staging), str(archive), "--manifest", pg_url]
    killed = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    with open_manifest(archive, manifest=pg_url) as opened:
        assert len(opened.live_claims()) == 30  # its lease is still live for the server
    report = commit(staging, archive, manifest=pg_url)
    assert (report.committed, report.claimed_elsewhere) == (30, 0)
    assert staged_files(staging) == []
    rows = _rows(archive, pg_url)
    assert len(rows) == 30
    assert len({r["path"] for r in rows}) == 30


def test_manifest_opens_a_url_given_alone(tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    commit(staging, archive, manifest=pg_url)
    with Manifest(pg_url) as opened:
        assert [r.status for r in opened.records()] == [Status.COMMITTED]
    with Manifest(archive, pg_url) as opened:
        assert len(opened.records()) == 1


def test_recover_from_another_host_finishes_a_dead_committers_claims_once_its_lease_expired(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    for i in range(6):
        stager.stage(make_ds(i))
    stager.stage(make_ds(0, variant=1))  # a conflict: kept in conflicts/ by the dead committer
    # Killed after linking its one batch, before recording it; the lease lasts 3 s.
    killed_commit(staging, archive, pg_url, "commit:before-manifest:1", host="node-a", lease=3.0)
    assert len(archive_files(archive)) == 6
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-b")
    early = recover(archive, manifest=pg_url)  # the lease is still live: its work is left alone
    assert (early.claims_finished, early.claims_ended, early.rows_added) == ([], [], [])
    with open_manifest(archive, manifest=pg_url) as opened:
        assert opened.records() == []
    time.sleep(3.5)
    report = recover(archive, manifest=pg_url)
    assert len(report.claims_finished) == 7
    assert report.rows_added == []
    rows = _rows(archive, pg_url)
    assert {r["host"] for r in rows} == {"node-a"}
    assert sorted(r["status"] for r in rows) == ["committed"] * 6 + ["conflict"]
    # The dead host comes back and reruns: its staged files are recorded already, and go.
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-a")
    rerun = commit(staging, archive, manifest=pg_url)
    assert staged_files(staging) == []
    assert rerun.conflicts + rerun.committed + rerun.duplicates == 7
    assert _rows(archive, pg_url) == rows  # nothing recorded twice
    assert recover(archive, staging, manifest=pg_url, check=True, verify=True).needs_attention is False


def test_recover_ends_the_claims_of_files_a_dead_committer_never_placed(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    for i in range(5):
        stager.stage(make_ds(i))
    killed_commit(staging, archive, pg_url, "commit:after-link:2", host="node-a", lease=1.0)
    time.sleep(1.5)
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-b")
    report = recover(archive, manifest=pg_url)
    assert (len(report.claims_finished), len(report.claims_ended)) == (2, 3)
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-a")
    assert commit(staging, archive, manifest=pg_url).committed == 5
    rows = _rows(archive, pg_url)
    assert len(rows) == 5
    assert len({r["path"] for r in rows}) == 5


def test_the_demo_runs_on_postgresql(tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--workers", "2", "--files", "20", "--staging", str(tmp_path / "s"), "--archive",
            str(tmp_path / "a"), "--manifest", pg_url]  # fmt: skip
    assert main(argv) == 0
    assert "every staged dataset is accounted for" in capsys.readouterr().out
    assert len(_rows(tmp_path / "a", pg_url)) == 40


def test_recover_does_not_report_claims_of_files_recorded_already_as_finished(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    """A killed after recording a batch and before removing it; B took those files over and
    was killed before recording them: their rows are A's, and B's claims just end."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    for i in range(10):
        stager.stage(make_ds(i))
    for crash in ("commit:after-manifest:1", "commit:before-manifest:1"):
        env = {**os.environ, "DICOMCOMMIT_CRASH_AT": crash, "DICOMCOMMIT_LEASE_SECONDS": "1"}
        argv = [sys.executable, "-m", "dicomcommit", "commit", str(staging), str(archive), "--manifest", pg_url,
                "--batch-size", "5"]  # fmt: skip
        assert subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120).returncode == -9
    time.sleep(1.5)
    report = recover(archive, manifest=pg_url)
    assert (report.claims_finished, report.claims_ended) == ([], [])
    rows = _rows(archive, pg_url)
    assert [r["status"] for r in rows] == ["committed"] * 5
    with open_manifest(archive, manifest=pg_url) as opened:
        assert opened.expired_claims() == []


def test_two_staging_directories_of_one_host_with_the_same_file_names_commit_at_once(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    """Modality exports name files IM0001.dcm...: a claim is of a file in its directory, so a
    commit of one such directory is not held up by another committer's claims in another."""
    archive = tmp_path / "archive"
    dirs = [tmp_path / "s0", tmp_path / "s1"]
    for k, staging in enumerate(dirs):
        staging.mkdir()
        for i in range(30):
            write_foreign(staging / f"IM{i:04}.dcm", make_ds(i + 1000 * k))
    with open_manifest(archive, manifest=pg_url, create=True) as other, other.leased():
        held = other.claim([Claim(f"IM{i:04}.dcm", None, None, 1, {}, "r", str(dirs[0])) for i in range(30)])
        assert len(held) == 30
        report = commit(dirs[1], archive, manifest=pg_url)
    assert (report.committed, report.claimed_elsewhere) == (30, 0)
    assert staged_files(dirs[1]) == []


def test_copying_to_sqlite_refuses_rows_of_two_hosts_that_share_a_key(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts ingested the same path with the same bytes: two rows in PostgreSQL, one key
    in SQLite (which has one host). The copy says so, and leaves the old manifest in use."""
    tree, archive = tmp_path / "tree", tmp_path / "archive"
    tree.mkdir()
    write_foreign(tree / "a.dcm", make_ds(0))
    for host in ("node-a", "node-b"):
        monkeypatch.setenv("DICOMCOMMIT_HOST", host)
        ingest(tree, archive, manifest=pg_url)
    assert len(_rows(archive, pg_url)) == 2
    with pytest.raises(ManifestError, match="hosts 'node-a' and 'node-b'"):
        copy_manifest(pg_url, tmp_path / "one-host.sqlite")
    assert len(_rows(archive, pg_url)) == 2  # not moved


def test_a_file_the_other_committer_removes_while_this_one_compares_it_is_left_to_that_one(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two committers of one staging directory, no lock: the other one recorded the file and
    removed it while this one, finding its name taken, opened it to compare the bytes. Seen
    in the four-host test; it stopped the run with "cannot commit this file (No such file)"."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    with Stager(staging) as stager:
        taken = stager.stage(make_ds(1))
        kept = stager.stage(make_ds(2))
    target = archive / _target_of(make_ds(1))
    target.parent.mkdir(parents=True)
    target.write_bytes(taken.read_bytes())  # its bytes, placed by the other committer
    real_hash = describing.Staged.hash

    def removed_first(self: describing.Staged, dir_fd: int) -> str:
        if self.name == taken.name and self.sha256 is None:
            taken.unlink()  # the other committer's unlink, after its manifest row
        return real_hash(self, dir_fd)

    monkeypatch.setattr(describing.Staged, "hash", removed_first)
    report = commit(staging, archive, manifest=pg_url)
    assert report.committed == 1  # the other file; the removed one is the other committer's
    assert not kept.exists()
    with open_manifest(archive, manifest=pg_url) as opened:
        assert [row.source for row in opened.records()] == [kept.name]


def _target_of(ds: Dataset) -> str:
    return f"{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
