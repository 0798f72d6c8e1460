"""Races of the shared (PostgreSQL) manifest, each found in review, each failing before its
fix: recover against live and dead committers, resolve against commit, writers against
``manifest copy``; and two edges (a renamed SQLite host, psycopg not installed)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydicom.dataset import Dataset

from dicomcommit import ManifestError, Stager, Status, _fs, commit, open_manifest, recover
from dicomcommit import resolve as resolve_conflict
from dicomcommit._faults import point as real_point
from dicomcommit.cli.main import main
from dicomcommit.committing import driver as driver_module
from dicomcommit.committing import recover as recover_module
from dicomcommit.committing import resolve as resolve_module
from dicomcommit.committing.sources import StagingDir
from dicomcommit.manifests import copying
from dicomcommit.manifests import postgres as postgres_module
from dicomcommit.manifests import records as records_module
from dicomcommit.manifests.copying import copy_manifest
from dicomcommit.manifests.postgres import PostgresManifest
from dicomcommit.manifests.records import FOUND_IN_ARCHIVE
from tests.conftest import archive_files, killed_commit, staged_files, write_foreign


def _hosts_by_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a thread named ``node-...`` be that host for the PostgreSQL manifests it opens (as
    DICOMCOMMIT_HOST would be in its own process); other threads keep DICOMCOMMIT_HOST."""

    def host_id() -> str:
        name = threading.current_thread().name
        return name if name.startswith("node-") else records_module.host_id()

    monkeypatch.setattr(postgres_module, "host_id", host_id)


def _node_b_paused_before_recording(
    monkeypatch: pytest.MonkeyPatch, staging: Path, archive: Path, url: str
) -> tuple[threading.Thread, threading.Event, threading.Event, list[BaseException]]:
    """A thread "node-b" (not started) that commits *staging* and stops once it has placed its
    files, before it records them: the event it sets then, the event that lets it go on, and
    the exceptions it raised."""
    reached, go = threading.Event(), threading.Event()

    def pausing_point(name: str) -> None:
        if name == "commit:before-manifest" and threading.current_thread().name == "node-b":
            reached.set()
            go.wait(60)
        real_point(name)

    monkeypatch.setattr(driver_module, "point", pausing_point)
    _hosts_by_thread(monkeypatch)
    failures: list[BaseException] = []

    def node_b() -> None:
        try:
            commit(staging, archive, manifest=url)
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    return threading.Thread(target=node_b, name="node-b"), reached, go, failures


def _rows(archive: Path, url: str) -> list[Any]:
    with open_manifest(archive, manifest=url) as opened:
        return opened.records()


def test_recover_after_a_takeover_of_a_found_in_archive_row_does_not_wedge_the_hosts_rerun(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """T holds bytes S recorded only as found in the archive (source ``archive:T``, host "").
    node-a stages an identical copy F of S and commits: T is EXISTS with identical bytes,
    its holder is the archive: row, so decide() says COMMITTED *taking over* that row
    (claims=row id). node-a is SIGKILLed before recording. After its lease expired,
    ``recover`` on node-b finishes the claim: _claimed_outcome sees a committed row at T and
    records F as a DUPLICATE row (node-a, F, S). When node-a comes back and reruns, decide()
    again takes over the archive: row, and the UPDATE gives that row the key (node-a, F, S),
    which the DUPLICATE row already holds: a unique violation, on every rerun. F (and every
    other file of its batch) stays staged forever."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    # T placed by a run whose record is elsewhere (another manifest): found by recover.
    other = tmp_path / "other-staging"
    other.mkdir()
    Stager(other).stage(make_ds(0))
    commit(other, archive, manifest=f"sqlite://{tmp_path}/elsewhere.sqlite")
    assert len(recover(archive, manifest=pg_url).rows_added) == 1
    (found,) = _rows(archive, pg_url)
    assert found.source.startswith(FOUND_IN_ARCHIVE)
    # node-a: an identical copy of T's bytes, and another file in the same batch.
    stager = Stager(staging)
    stager.stage(make_ds(0))
    stager.stage(make_ds(1))
    killed_commit(staging, archive, pg_url, "commit:before-manifest:1", host="node-a", lease=1.0)
    time.sleep(1.5)
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-b")
    finished = recover(archive, manifest=pg_url)
    assert len(finished.claims_finished) == 2
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-a")
    commit(staging, archive, manifest=pg_url)  # raises ManifestError: duplicate key value ... files_key
    assert staged_files(staging) == []


def test_a_lease_that_expires_while_recover_runs_does_not_turn_its_files_into_found_in_archive_rows(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """node-a is SIGKILLed after linking its batch, before recording it (lease 3 s). A
    recover starts on node-b while the lease is still live: _finish_claims finds no expired
    claim. The lease expires during a slow step of the same recover (here _temp_copies is
    slowed down; in real life: _finish_linked running a commit, the walk of a large archive).
    _reconcile then excludes only the names of *live* claims, so node-a's placed,
    claimed-but-unrecorded files are recorded as found in the archive (source ``archive:T``,
    host ""), although a claim names their staged file and host. The next recover finishes
    the claims as DUPLICATE rows of those archive: rows; node-a's rerun then takes over the
    archive: rows and hits the unique key held by the DUPLICATE rows: it fails on every
    rerun, its files stay staged."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    for i in range(3):
        stager.stage(make_ds(i))
    killed_commit(staging, archive, pg_url, "commit:before-manifest:1", host="node-a", lease=3.0)
    killed_at = time.monotonic()
    assert len(archive_files(archive)) == 3
    real_temp_copies = recover_module._temp_copies

    def slow_temp_copies(*args: Any, **kwargs: Any) -> None:
        time.sleep(max(0.0, killed_at + 3.5 - time.monotonic()))  # a slow step: the lease expires meanwhile
        real_temp_copies(*args, **kwargs)

    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-b")
    monkeypatch.setattr(recover_module, "_temp_copies", slow_temp_copies)
    first = recover(archive, manifest=pg_url)
    monkeypatch.setattr(recover_module, "_temp_copies", real_temp_copies)
    assert first.claims_finished == []  # the lease was live when claims were looked at
    # node-a's three files are claimed (by an expired lease): not "in the archive with no row".
    assert first.rows_added == []


def test_recover_does_not_give_a_live_committers_placement_to_a_dead_claim_with_the_same_bytes(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """node-a claimed F1 (bytes S, target T) and was SIGKILLed before placing it; its lease
    expired. ``recover`` reads the live claims' hashes (``busy``) once, before it examines the
    archive claim by claim. Meanwhile node-b, live, claims F2 (identical bytes S) and links
    it at T (CREATED), and has not recorded it yet. recover then finds S at T with no row,
    and records node-a's F1 as COMMITTED at T, though F1 was never placed (it is still
    staged); then node-b records F2 as COMMITTED at T as well: two committed rows for one
    name, one of them for a file that is not there."""
    staging_a, staging_b, archive = tmp_path / "a", tmp_path / "b", tmp_path / "archive"
    staging_a.mkdir()
    staging_b.mkdir()
    stager_a = Stager(staging_a)
    stager_a.stage(make_ds(5))  # linked before the kill
    stager_a.stage(make_ds(0))  # claimed, never placed
    Stager(staging_b).stage(make_ds(0))  # identical bytes, on node-b
    killed_commit(staging_a, archive, pg_url, "commit:after-link:1", host="node-a", lease=1.0)
    time.sleep(1.5)
    b, placed, go, failures = _node_b_paused_before_recording(monkeypatch, staging_b, archive, pg_url)
    real_outcome = recover_module._claimed_outcome

    def outcome_after_node_b_linked(*args: Any, **kwargs: Any) -> Any:
        if not b.is_alive() and not placed.is_set():
            b.start()
            assert placed.wait(60), "node-b did not link its file"
        return real_outcome(*args, **kwargs)

    monkeypatch.setattr(recover_module, "_claimed_outcome", outcome_after_node_b_linked)
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-c")
    recover(archive, manifest=pg_url)
    go.set()
    b.join(60)
    assert not failures, failures
    rows = _rows(archive, pg_url)
    target = next(r.path for r in rows if r.host == "node-b")
    committed = [(r.host, r.source) for r in rows if r.path == target and r.status is Status.COMMITTED]
    assert len(committed) == 1, committed


def test_recover_does_not_end_a_dead_claim_whose_file_holds_its_name_because_a_live_one_has_the_same_bytes(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """node-a linked F1 (bytes S) at T and was SIGKILLed before recording it; its lease
    expired. node-b, live, commits F2 (identical bytes): T is taken by S, node-a's claim on S
    makes it a duplicate (holders() busy), and node-b is about to record that. recover runs
    now: since a live claim has S, it does not look at node-a's claim at all and *ends* it,
    reporting "nothing of it placed", though F1 holds T. Its _reconcile leaves T alone (node-b's
    live claim targets it). node-b records its DUPLICATE. T, which holds F1's inode, now has
    no committed row at all (only node-b's duplicate), and the report is wrong about F1."""
    staging_a, staging_b, archive = tmp_path / "a", tmp_path / "b", tmp_path / "archive"
    staging_a.mkdir()
    staging_b.mkdir()
    Stager(staging_a).stage(make_ds(0))
    Stager(staging_b).stage(make_ds(0))  # identical bytes, on node-b
    killed_commit(staging_a, archive, pg_url, "commit:before-manifest:1", host="node-a", lease=1.0)
    time.sleep(1.5)
    b, decided, go, failures = _node_b_paused_before_recording(monkeypatch, staging_b, archive, pg_url)
    b.start()
    assert decided.wait(60), "node-b did not decide"
    monkeypatch.setenv("DICOMCOMMIT_HOST", "node-c")
    report = recover(archive, manifest=pg_url)
    go.set()
    b.join(60)
    assert not failures, failures
    assert report.claims_ended == [], report.claims_ended  # F1 was placed: not "nothing of it placed"
    assert len(recover(archive, manifest=pg_url).claims_finished) == 1
    rows = _rows(archive, pg_url)
    (target,) = {r.path for r in rows}
    assert [r.status for r in rows if r.path == target].count(Status.COMMITTED) == 1, rows


def test_recover_leaves_the_temporary_copy_of_a_committer_that_started_while_it_ran(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """_temp_copies reads the set of live leases, then lists ``.dicomcommit/tmp/`` and
    removes every copy whose owner is not in that set. A committer that starts between the
    two (its lease is newer than the set) and copies a file (another filesystem, or a file
    with other hard links) has its copy removed under it, live lease and all: its link of
    the copy then fails (ENOENT), and the commit stops with "cannot link ... (No such file or
    directory)"."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(tmp_path / "first").stage(make_ds(9))
    commit(tmp_path / "first", archive, manifest=pg_url)  # an archive and a manifest exist
    write_foreign(staging / "a.dcm", make_ds(0))
    os.link(staging / "a.dcm", tmp_path / "another-name.dcm")  # so commit copies it via .dicomcommit/tmp/
    copied, go = threading.Event(), threading.Event()
    real_link = _fs.link_noclobber

    def link_after_recover(src_dir_fd: int, src: str, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "committer" and src.endswith(".part"):
            copied.set()
            go.wait(60)
        return real_link(src_dir_fd, src, *args, **kwargs)

    monkeypatch.setattr(_fs, "link_noclobber", link_after_recover)
    failures: list[BaseException] = []

    def committer() -> None:
        try:
            commit(staging, archive, manifest=pg_url)
        except BaseException as exc:  # reported below
            failures.append(exc)

    c = threading.Thread(target=committer, name="committer")
    real_live = PostgresManifest.live_leases

    def live_then_a_committer_starts(self: PostgresManifest) -> set[str]:
        live = real_live(self)
        c.start()
        assert copied.wait(60), "the committer made no copy"
        return live

    monkeypatch.setattr(PostgresManifest, "live_leases", live_then_a_committer_starts)
    report = recover(archive, manifest=pg_url)
    go.set()
    c.join(60)
    assert report.tmp_removed == [], "recover removed the copy of a committer whose lease is live"
    assert not failures, failures


def test_resolve_keep_both_concurrent_with_a_suffix_commit_of_the_same_bytes_leaves_one_committed_row(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A conflict C (bytes S) is resolved ``--keep both``: resolve links its conflict copy at
    the derived name D = T~S, then records C as COMMITTED at D. With PostgreSQL no lock keeps
    commits out in between (SQLite's archive lock does). A commit with ``--on-conflict
    suffix`` of an identical copy of S, landing in that window, finds T taken by other bytes,
    asks for D, finds S there with no row and no claim, and records it COMMITTED at D
    ("identical bytes were already there with no manifest row"); then resolve records C as
    COMMITTED at D too: two committed rows for one name."""
    staging, again, archive = tmp_path / "staging", tmp_path / "again", tmp_path / "archive"
    staging.mkdir()
    again.mkdir()
    stager = Stager(staging)
    stager.stage(make_ds(0))
    stager.stage(make_ds(0, variant=1))
    commit(staging, archive, manifest=pg_url)
    (conflict,) = [r for r in _rows(archive, pg_url) if r.status is Status.CONFLICT]
    Stager(again).stage(make_ds(0, variant=1))  # the conflicting bytes, sent again

    def commit_meanwhile(name: str) -> None:
        real_point(name)
        if name == "resolve:after-link":
            commit(again, archive, manifest=pg_url, on_conflict="suffix")

    monkeypatch.setattr(resolve_module, "point", commit_meanwhile)
    resolved = resolve_conflict(archive, conflict.id, "both", manifest=pg_url)
    committed = [r.id for r in _rows(archive, pg_url) if r.path == resolved.path and r.status is Status.COMMITTED]
    assert len(committed) == 1, committed


def test_a_commit_that_had_the_manifest_open_during_a_copy_writes_nothing_more_to_the_old_one(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``manifest copy`` runs between a commit's last batch and its end (no file is claimed
    then, so the copy is allowed). The commit then records the end of its run with
    finish_run(), which did not check whether the manifest moved: the end went into the old
    manifest only. Every write now waits out the copy and then refuses, naming the new one."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    for i in range(2):
        stager.stage(make_ds(i))
    new = f"sqlite://{tmp_path}/new.sqlite"

    finish = StagingDir.finish

    def copy_after_the_last_batch(self: StagingDir) -> None:  # (progress is called per file, inside a batch)
        copy_manifest(pg_url, new)
        finish(self)

    monkeypatch.setattr(StagingDir, "finish", copy_after_the_last_batch)
    with pytest.raises(ManifestError, match="moved to"):
        commit(staging, archive, manifest=pg_url)
    with open_manifest(archive, manifest=new) as opened:
        assert len(opened.records()) == 2
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs WHERE finished IS NOT NULL").fetchone() == (0,)


def test_resolve_that_opened_the_manifest_before_a_copy_does_not_record_its_decision_in_the_old_one(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """resolve opens the PostgreSQL manifest (not moved yet); ``manifest copy`` to SQLite then
    completes (here: while resolve takes its resolve/recover lock). update(), which resolve
    records every decision with, checks nothing: resolve --keep existing records the
    resolution in the old manifest only, and carries it out in the archive (the conflict
    copy goes to rejected/ and leaves conflicts/). The new manifest still lists the conflict
    as open, at a conflicts/ path that no longer exists."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    stager = Stager(staging)
    stager.stage(make_ds(0))
    stager.stage(make_ds(0, variant=1))
    commit(staging, archive, manifest=pg_url)
    (conflict,) = [r for r in _rows(archive, pg_url) if r.status is Status.CONFLICT]
    new = f"sqlite://{tmp_path}/new.sqlite"
    real_exclusive = PostgresManifest.exclusive

    def copied_meanwhile(self: PostgresManifest) -> Any:
        copy_manifest(pg_url, new)
        return real_exclusive(self)

    monkeypatch.setattr(PostgresManifest, "exclusive", copied_meanwhile)
    with contextlib.suppress(ManifestError):  # refused, naming the new manifest: what moving() promises
        resolve_conflict(archive, conflict.id, "existing", manifest=pg_url)
    monkeypatch.setattr(PostgresManifest, "exclusive", real_exclusive)
    with open_manifest(archive, manifest=new) as opened:
        row = opened.get(conflict.id)
    assert (archive / row.path).exists(), f"the new manifest's row #{row.id} ({row.status}) points at {row.path}, gone"


def test_recover_blocked_by_a_copy_does_not_add_its_rows_to_the_old_manifest(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgresManifest.add() checked ``moved_to`` *before* its first write, and that write
    then waited for the copy's EXCLUSIVE table lock: a writer that checked while the copy was
    still running went on after the copy committed, into the old manifest. Here recover, run
    during the copy, would record a file it found in the archive. Every write transaction
    now takes its lock first and checks after it: recover is refused, naming the new one."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    commit(staging, archive, manifest=pg_url)
    # A file in the archive that no row records (its run's manifest was elsewhere).
    other = tmp_path / "other"
    other.mkdir()
    Stager(other).stage(make_ds(1))
    commit(other, archive, manifest=f"sqlite://{tmp_path}/elsewhere.sqlite")
    new = f"sqlite://{tmp_path}/new.sqlite"
    holding, release = threading.Event(), threading.Event()
    real_verify = copying._verify

    def slow_verify(*args: Any) -> None:
        real_verify(*args)
        holding.set()
        release.wait(60)

    monkeypatch.setattr(copying, "_verify", slow_verify)
    results: dict[str, Any] = {}
    copier = threading.Thread(target=lambda: results.setdefault("copy", copying.copy_manifest(pg_url, new)))
    copier.start()
    assert holding.wait(60)

    def recovering() -> None:
        try:
            recover(archive, manifest=pg_url)
        except ManifestError as exc:
            results["refused"] = exc

    recoverer = threading.Thread(target=recovering)
    recoverer.start()
    blocked = False
    with psycopg.connect(pg_url, autocommit=True) as conn:  # wait until recover's write waits for the copy
        for _ in range(600):
            waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                   "AND datname = current_database()").fetchone()  # fmt: skip
            if waiting and waiting[0]:
                blocked = True
                break
            time.sleep(0.05)
    release.set()
    copier.join(60)
    recoverer.join(60)
    assert blocked, "recover never waited for the copy's lock"
    assert results["copy"].rows == 1  # the copy went through
    assert "moved to" in str(results["refused"])  # and recover's write was refused
    with open_manifest(archive, manifest=new) as opened:
        new_rows = len(opened.records())
    with psycopg.connect(pg_url, autocommit=True) as conn:
        old_rows = conn.execute("SELECT count(*) FROM files").fetchone()
    assert old_rows == (new_rows,), f"the old manifest has {old_rows[0] if old_rows else '?'} rows, the copy {new_rows}"


def test_a_dry_run_on_a_postgresql_manifest_that_was_moved_is_refused(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset]
) -> None:
    """After ``manifest copy`` moved a PostgreSQL manifest, every use of it is refused,
    naming the new one (BaseManifest.moving()) -- except a dry run: PostgresManifest opened
    with ``rehearse=True`` skips the moved_to check, so ``commit --dry-run`` silently predicts
    from the old, frozen rows. (A dry run on a moved SQLite manifest is refused.)"""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    commit(staging, archive, manifest=pg_url)
    copy_manifest(pg_url, f"sqlite://{tmp_path}/new.sqlite")
    Stager(staging).stage(make_ds(1))
    with pytest.raises(ManifestError, match="moved to"):
        commit(staging, archive, manifest=pg_url, dry_run=True)


def test_sqlite_a_rerun_after_a_crash_records_nothing_twice_when_the_host_name_changed(
    tmp_path: Path, make_ds: Callable[..., Dataset]
) -> None:
    """One host, the SQLite manifest. A commit is SIGKILLed after recording its batch and
    before removing the staged files (commit:after-manifest). The machine then comes back
    under another host name (a container recreated gets a new hostname, its volumes kept;
    here DICOMCOMMIT_HOST stands for the node name host_id() falls back to). The rerun finds
    the file still linked at its target (SAME_INODE) and the row of this very file, but
    decide() now compares (source, host), not source alone: the row is taken for another
    file's, and the staged file is recorded a second time, as a duplicate of itself. Before
    this change (a4aa970) the rerun recorded nothing twice (committed: 1 row)."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    Stager(staging).stage(make_ds(0))
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": "commit:after-manifest:1", "DICOMCOMMIT_HOST": "container-1"}
    argv = [sys.executable, "-m", "dicomcommit", "commit", str(staging), str(archive)]
    killed = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    rerun = subprocess.run(argv, env={**os.environ, "DICOMCOMMIT_HOST": "container-2"}, capture_output=True,
                           check=False, timeout=120)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    assert staged_files(staging) == []
    with open_manifest(archive) as opened:
        rows = [(r.status, r.host) for r in opened.records()]
    assert len(rows) == 1, rows


def test_a_postgresql_url_without_psycopg_installed_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """psycopg is an optional dependency (``dicomcommit[postgresql]``). On an installation
    without it, ``--manifest postgresql://...`` (or DICOMCOMMIT_MANIFEST set on a host that
    was not given the extra) ends in ModuleNotFoundError with a traceback, which main()
    keeps for bugs only, instead of a one-line error saying what to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "dicomcommit.manifests.postgres", raising=False)
    monkeypatch.delitem(sys.modules, "psycopg.conninfo", raising=False)
    (tmp_path / "archive").mkdir()
    code = main(["review", str(tmp_path / "archive"), "--manifest", "postgresql://etl@db.example/archive"])
    assert code != 0
    assert "psycopg" in capsys.readouterr().err


@pytest.mark.parametrize("manifest", ["sqlite", "postgresql"])
def test_a_batch_of_foreign_files_keeps_no_fd_per_file(
    tmp_path: Path, pg_url: str, make_ds: Callable[..., Dataset], manifest: str
) -> None:
    """A shared manifest's claims hash foreign files first; each fd is closed once hashed, so
    a batch of 300 commits under a limit of 100 spare fds (it held one per file: EMFILE)."""
    import resource  # noqa: PLC0415 -- POSIX only, as the test

    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    for i in range(300):
        write_foreign(staging / f"f{i}.dcm", make_ds(i))
    url = pg_url if manifest == "postgresql" else str(tmp_path / "m.sqlite")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 100, hard))
    try:
        report = commit(staging, archive, manifest=url, batch_size=300)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert report.counts()["committed"] == 300
