"""The manifest's schema: the rerun key, and upgrading a manifest written by version 1."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomcommit import Manifest, NewRecord, Stager, Status, commit
from dicomcommit.errors import ManifestError
from dicomcommit.manifests.records import host_id
from dicomcommit.manifests.sqlite import SQLiteManifest, _attrs_json, default_path
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT

# The schema of dicomcommit's first manifests, as they were written.
_VERSION_1 = """
CREATE TABLE files (
    id INTEGER PRIMARY KEY, status TEXT NOT NULL, target TEXT, path TEXT NOT NULL, source TEXT NOT NULL,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, existing_sha256 TEXT, attrs TEXT NOT NULL, run TEXT NOT NULL,
    time TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', resolution TEXT, resolved_by TEXT, resolved_at TEXT,
    UNIQUE (source, sha256)
);
CREATE INDEX files_status ON files (status);
CREATE INDEX files_path ON files (path);
CREATE TABLE runs (
    id TEXT PRIMARY KEY, started TEXT NOT NULL, finished TEXT, staging TEXT NOT NULL, template TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, counts TEXT
);
INSERT INTO files (status, target, path, source, size, sha256, attrs, run, time, detail, resolution)
    VALUES ('conflict', 'a.dcm', '.dicomcommit/conflicts/ab.dcm', 's1', 10, 'ab', '{"PatientID":"P"}', 'r1',
            '2026-01-01T00:00:00Z', 'the target holds a different file', 'existing');
INSERT INTO runs VALUES ('r1', '2026-01-01T00:00:00Z', NULL, '/staging', '{SOPInstanceUID}.dcm', 'h', 1, NULL);
"""


def _row(path: str, source: str, sha256: str | None, status: str = "committed") -> NewRecord:
    return NewRecord(Status(status), path, path, source, 10, sha256, run="r")


def _manifest_file(archive: Path) -> Path:
    path = archive / ".dicomcommit" / "manifest.sqlite"
    path.parent.mkdir(parents=True)
    return path


def test_a_version_1_manifest_is_upgraded_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(_manifest_file(tmp_path))
    db.executescript(_VERSION_1)
    db.close()
    with Manifest(tmp_path) as manifest:  # upgraded by any writable open, not only by commit
        (old,) = manifest.records()
        manifest.add([_row("b.dcm", "s2", None)])
        rows = manifest.records()
    assert (old.id, old.status, old.sha256, old.attrs, old.resolution) == (1, "conflict", "ab", {"PatientID": "P"},
                                                                           "existing")  # fmt: skip
    assert [r.sha256 for r in rows] == ["ab", None]
    db = sqlite3.connect(tmp_path / ".dicomcommit" / "manifest.sqlite")
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)
        # An old row's host is its run's; a new row's, this host's.
        assert db.execute("SELECT host FROM files ORDER BY id").fetchall() == [("h",), (host_id(),)]
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert "files_old" not in tables
        assert "files_path" not in tables
    finally:
        db.close()


def test_a_new_manifest_has_16_kib_pages(tmp_path: Path) -> None:
    Manifest(tmp_path, create=True).close()
    db = sqlite3.connect(tmp_path / ".dicomcommit" / "manifest.sqlite")
    try:
        assert db.execute("PRAGMA page_size").fetchone() == (16384,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


@pytest.mark.parametrize(("durable", "level"), [(True, 2), (False, 1)])
def test_a_durable_manifest_syncs_every_transaction(tmp_path: Path, durable: bool, level: int) -> None:
    """Staged files are unlinked once their rows are committed: in durable mode a committed
    transaction must survive a power cut (synchronous=FULL is 2; NORMAL, 1, may lose it)."""
    with SQLiteManifest(default_path(tmp_path), create=True, durable=durable) as manifest:
        assert manifest._db.execute("PRAGMA synchronous").fetchone() == (level,)


def test_lookups_by_path_and_by_review_status_use_indexes(tmp_path: Path) -> None:
    """A resolve looks rows up by path, a review by status: neither may scan the table."""
    plans: list[str] = []
    with SQLiteManifest(default_path(tmp_path), create=True) as manifest:
        manifest.add([_row(f"P/{i}.dcm", f"s{i}", f"{i:064x}") for i in range(500)])
        manifest._db.execute("ANALYZE")  # the planner then knows the table is big
        manifest._db.set_trace_callback(plans.append)
        target = manifest.records("committed", path="P/7.dcm")
        manifest.records("conflict")
        manifest._db.set_trace_callback(None)
        for sql in plans:
            detail = " ".join(row[3] for row in manifest._db.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "USING INDEX" in detail, (sql, detail)
    assert [r.source for r in target] == ["s7"]
    assert len(plans) == 2


def test_a_newer_manifest_is_refused(tmp_path: Path) -> None:
    Manifest(tmp_path, create=True).close()
    db = sqlite3.connect(tmp_path / ".dicomcommit" / "manifest.sqlite")
    db.execute("PRAGMA user_version=9")
    db.close()
    with pytest.raises(ManifestError, match="schema 9"):
        Manifest(tmp_path)


def test_a_foreign_sqlite_file_is_not_taken_for_a_manifest(tmp_path: Path) -> None:
    sqlite3.connect(_manifest_file(tmp_path)).close()
    with pytest.raises(ManifestError, match="not a dicomcommit manifest"):
        Manifest(tmp_path)


def test_the_rerun_key_is_the_source_and_its_hash_or_its_path(tmp_path: Path) -> None:
    with Manifest(tmp_path, create=True) as manifest:
        manifest.add([_row("a.dcm", "s", None), _row("a.dcm", "s", "ff")])
        manifest.add([_row("a.dcm", "s", None), _row("a.dcm", "s", "ff")])  # a rerun: nothing new
        assert len(manifest.records()) == 2
        manifest.add([_row("b.dcm", "s", None)])  # the same source name, another file later
        assert len(manifest.records()) == 3
        manifest.add([_row("c.dcm", "s", "ff")])  # the same bytes of the same staged file
        assert len(manifest.records()) == 3


def test_a_duplicate_fills_in_the_hash_of_the_same_files_row(tmp_path: Path) -> None:
    with Manifest(tmp_path, create=True) as manifest:
        manifest.add([_row("a.dcm", "s", None), _row("b.dcm", "t", None)])
        manifest.add([_row("a.dcm", "s", "aa", "duplicate"), _row("b.dcm", "other", "bb", "duplicate")])
        rows = {(r.path, r.source): r for r in manifest.records()}
    assert rows["a.dcm", "s"].sha256 == "aa"
    assert rows["a.dcm", "s"].status == "committed"
    assert rows["b.dcm", "t"].sha256 is None  # another source's bytes say nothing of this row
    assert rows["b.dcm", "other"].status == "duplicate"
    assert len(rows) == 3


_values = st.one_of(
    st.none(), st.text(), st.integers(), st.floats(allow_nan=False), st.lists(st.one_of(st.text(), st.integers()))
)


@given(st.dictionaries(st.text(), _values))
def test_attrs_are_stored_as_plain_json(attrs: dict[str, Any]) -> None:
    encoded = _attrs_json(attrs)
    assert encoded == json.dumps(attrs, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(encoded) == attrs


def test_a_dry_run_reads_a_version_1_manifest_without_upgrading_it(tmp_path: Path) -> None:
    """A dry run is a reader: the file keeps its schema and its bytes; the copy in memory is upgraded."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    path = _manifest_file(archive)
    db = sqlite3.connect(path)
    db.executescript(_VERSION_1)
    db.close()
    before = path.read_bytes()
    Stager(staging).stage(synthetic_dataset(ROOT, 1))
    report = commit(staging, archive, dry_run=True)
    assert report.committed == 1
    assert path.read_bytes() == before
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (0,)
    finally:
        db.close()
