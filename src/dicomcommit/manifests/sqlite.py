"""The manifest: an SQLite record of what happened to every staged file.

``ARCHIVE/.dicomcommit/manifest.sqlite`` by default (or any path given as ``--manifest``);
any SQLite tool can read it. Paths in it are relative to the archive root. A row is keyed
by its source and its hash (or, not hashed yet, its path), so a commit rerun after a
crash never records the same staged file twice; each row also names its host. One host writes it: SQLite's own
documentation rules out network filesystems, and its WAL mode needs every process on one
host; the archive lock serializes commit. Many hosts use PostgreSQL
(:mod:`~dicomcommit.manifests.postgres`).

``sha256`` is NULL for a foreign file (one not staged by :class:`~dicomcommit.Stager`) that
took its name without a collision: commit reads only its header. ``recover --verify``
hashes those files and fills the column in.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dicomcommit._faults import point
from dicomcommit.errors import ManifestDamaged, ManifestError
from dicomcommit.layout import MANIFEST_NAME, STATE_DIR
from dicomcommit.manifests.base import BaseManifest
from dicomcommit.manifests.records import REVIEWED, NewRecord, Record, Run, Status, host_id, now
from dicomcommit.naming import Attrs, Value

_REVIEWED = "status IN ('conflict', 'invalid')"  # the condition of the partial index files_review
_RESOLUTION_COLUMNS = ("resolution", "resolved_by", "resolved_at")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    target TEXT,              -- the final name the file wanted (NULL for invalid files)
    path TEXT NOT NULL,       -- where its bytes are now
    source TEXT NOT NULL,     -- its name in the staging directory
    size INTEGER NOT NULL,
    sha256 TEXT,              -- NULL: a foreign file not hashed yet (recover --verify fills it in)
    existing_sha256 TEXT,     -- for a conflict: the hash of the file already at target
    attrs TEXT NOT NULL,      -- the naming attributes, JSON
    run TEXT NOT NULL,
    time TEXT NOT NULL,       -- ISO 8601, UTC
    detail TEXT NOT NULL DEFAULT '',
    resolution TEXT,          -- how a conflict was resolved: existing, staged, both (or replaced)
    resolved_by TEXT,         -- user@host
    resolved_at TEXT,         -- ISO 8601, UTC
    host TEXT NOT NULL DEFAULT ''  -- the host the file came from ('': found in the archive)
);
-- The rerun key: a staged file's bytes, or (not hashed yet) where they went. Stagers name
-- files by time, so rows arrive in key order: cheap appends. One host writes an SQLite
-- manifest: the key leaves the host out, so a host renamed between a crash and its rerun
-- (a container recreated) still finds its rows.
CREATE UNIQUE INDEX IF NOT EXISTS files_key ON files (source, coalesce(sha256, path));
-- Lookups by path, on its last 24 characters only: rows arrive in no path order, and a
-- small index costs a batch far fewer pages.
CREATE INDEX IF NOT EXISTS files_path_tail ON files (substr(path, -24));
-- Only the rows a person reviews: the committed majority costs this index nothing.
CREATE INDEX IF NOT EXISTS files_review ON files (status) WHERE status IN ('conflict', 'invalid');
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    finished TEXT,
    staging TEXT NOT NULL,
    template TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    counts TEXT
);
-- moved_to: the URL a "manifest copy" moved the rows to (then this file is not used again)
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Version 1 (user_version 0) had sha256 NOT NULL and UNIQUE (source, sha256); version 2 no host.
SCHEMA_VERSION = 3
_OLD_COLUMNS = "id, status, target, path, source, size, sha256, existing_sha256, attrs, run, time, detail, " \
    "resolution, resolved_by, resolved_at"  # fmt: skip
_COLUMNS = "status, target, path, source, size, sha256, existing_sha256, attrs, run, time, detail, host"
_ALL_COLUMNS = f"id, {_COLUMNS}, {', '.join(_RESOLUTION_COLUMNS)}"
# An older row's host: its run's; '' for rows of no host (found in the archive, rebuilt).
_OLD_HOST = "coalesce((SELECT host FROM runs WHERE runs.id = run), " \
    "CASE WHEN source LIKE 'archive:%' OR source LIKE 'rebuilt:%' THEN '' ELSE ? END)"  # fmt: skip


def failure(path: Path, exc: Exception, what: str) -> ManifestError:
    """The error for an SQLite or OS failure on the manifest at *path*: a damaged file says
    how to rebuild it (rerunning cannot help it); anything else, what failed."""
    if isinstance(exc, sqlite3.DatabaseError) and any(
        sign in str(exc) for sign in ("malformed", "not a database", "corrupt")
    ):
        if path.parent.name == STATE_DIR and path.name == MANIFEST_NAME:
            archive, option = str(path.parent.parent), ""
        else:
            archive, option = "ARCHIVE", f" --manifest {path}"
        return ManifestDamaged(
            f"the manifest {path} is damaged ({exc}); no command can use it, and rerunning will not help. "
            "No file was lost: staged files stay staged until their rows are in, and any a batch had "
            "already linked are finished by the rebuild. Rebuild it from the archive (the damaged file is "
            f"kept aside): dicomcommit recover {archive} [STAGING] --rebuild-manifest{option}"
        )
    return ManifestError(f"{what} {path}: {exc}")


def default_path(archive_dir: str | os.PathLike[str]) -> Path:
    """Where an archive's manifest is by default: ``ARCHIVE/.dicomcommit/manifest.sqlite``."""
    return Path(archive_dir) / STATE_DIR / MANIFEST_NAME


class SQLiteManifest(BaseManifest):
    """The SQLite manifest in the file *path*.

    Args:
        path: the file (``ARCHIVE/.dicomcommit/manifest.sqlite`` by default, :func:`default_path`).
        create: create the file (and its directory) if missing.
        durable: ``synchronous=FULL``: a committed transaction survives a power loss.

    Raises:
        ManifestError: there is no manifest and *create* is False, it cannot be opened, or
            ``manifest copy`` moved its rows elsewhere.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False, durable: bool = True) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.host = host_id()
        self._immutable = False
        if self.path.is_symlink() or self.path.parent.is_symlink():
            raise ManifestError(f"{self.path} (or its directory) is a symlink; refusing to follow it")
        if not create and not self.path.is_file():
            if self.path.parent.name == STATE_DIR and self.path.name == MANIFEST_NAME:
                msg = f"no manifest at {self.path}: nothing has been committed to this archive"
            else:
                msg = f"no manifest at {self.path}"
            raise ManifestError(f"{msg} (a manifest elsewhere: --manifest URL or DICOMCOMMIT_MANIFEST)")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            if not create and os.statvfs(self.path).f_flag & os.ST_RDONLY:
                # Read-only media: WAL needs a writable -shm file, but nothing can change here.
                uri = f"file:{quote(str(self.path.resolve()))}?immutable=1"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
                self._immutable = True
                return
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            # For a new file only: 16 KiB pages store a row in about 800 bytes instead of 930,
            # and WAL checkpoints (every 1000 pages) come four times less often.
            self._db.execute("PRAGMA page_size=16384")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            # 16 MiB of page cache: the rerun key of 100,000 rows stays in memory.
            self._db.execute("PRAGMA cache_size=-16384")
            self._upgrade(create)
            self._refuse_if_moved()
        except (OSError, sqlite3.Error) as exc:
            raise failure(self.path, exc, "cannot open the manifest") from exc
        except ManifestError:
            self._db.close()
            raise

    def read_only(self) -> str | None:
        """Why the file cannot be written (its filesystem is read-only, or the file or its
        directory, where SQLite writes its journal, is not writable by this user)."""
        if self._immutable:
            return f"the manifest {self.path} is on a read-only filesystem"
        for path in (self.path, self.path.parent):
            if not os.access(path, os.W_OK):
                return f"this user ({getpass.getuser()}) cannot write {path}"
        return None

    def _refuse_if_moved(self) -> None:
        moved = self._db.execute("SELECT value FROM settings WHERE name='moved_to'").fetchone()
        if moved is not None:
            raise _moved(self.path, moved[0])

    def _upgrade(self, create: bool) -> None:
        """Create the schema, or bring an older one up to date, in one transaction."""
        if self._version() == SCHEMA_VERSION:
            return  # the common case takes no write lock
        with _Transaction(self._db, self.path, guard=False):  # (no settings table yet to read)
            if self._version() == SCHEMA_VERSION:
                return  # another process got here first
            has_files = self._db.execute("SELECT 1 FROM sqlite_master WHERE name='files'").fetchone()
            if not create and not has_files:
                raise ManifestError(f"{self.path} is not a dicomcommit manifest")
            if has_files:  # an older version: rebuild the table with today's columns and constraints
                for old in ("files_status", "files_path", "files_key", "files_path_tail", "files_review"):
                    self._db.execute(f"DROP INDEX IF EXISTS {old}")
                self._db.execute("ALTER TABLE files RENAME TO files_old")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            if has_files:
                self._db.execute(f"INSERT INTO files ({_OLD_COLUMNS}, host) SELECT {_OLD_COLUMNS}, {_OLD_HOST} "
                                 "FROM files_old", (self.host,))  # fmt: skip
                self._db.execute("DROP TABLE files_old")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ManifestError(f"{self.path} has schema {version}, newer than this dicomcommit's {SCHEMA_VERSION}")
        return version

    def add(self, records: Iterable[NewRecord]) -> dict[tuple[str, str], Record]:
        """Insert *records* in one transaction; return the stored rows (with their ids and
        times) of those that need review (conflicts, invalid files), by :meth:`NewRecord.key`.

        A row whose key (source and sha256, or source and path when not hashed) is there
        already is kept as is: a rerun records nothing twice. A duplicate found by hashing
        also fills in the hash of the unhashed row of the same source at the same path (a
        foreign file committed earlier). A record that ``claims`` a row (one ``recover``
        made for a file it found in the archive, :data:`FOUND_IN_ARCHIVE`) updates that row:
        it takes the record's source, attributes, run and detail.
        """
        stamp = now()  # one time per batch: the time it was recorded
        records = list(records)
        claims = [(_db(r.source), _attrs_json(r.attrs), r.run, _db(r.detail), r.sha256, self._host(r), r.claims)
                  for r in records if r.claims is not None]  # fmt: skip
        records = [r for r in records if r.claims is None]
        rows = [
            (r.status.value, _db(r.target), _db(r.path), _db(r.source), r.size, r.sha256, r.existing_sha256,
             _attrs_json(r.attrs), r.run, r.time or stamp, _db(r.detail), self._host(r))
            for r in records
        ]  # fmt: skip
        hashed = [(r.sha256, _db(r.source), _db(r.path)) for r in records
                  if r.status is Status.DUPLICATE and r.sha256]  # fmt: skip
        reviewed = [r.key() for r in records if r.status in REVIEWED]
        with self.transaction():
            self._db.executemany("UPDATE files SET sha256=? WHERE source=? AND path=? AND sha256 IS NULL", hashed)
            self._db.executemany(f"INSERT OR IGNORE INTO files ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            # OR IGNORE: a file recorded already under its own key keeps that row.
            self._db.executemany(
                "UPDATE OR IGNORE files SET source=?, attrs=?, run=?, detail=?, sha256=coalesce(?, sha256), host=? "
                "WHERE id=?",
                claims,
            )
            point("commit:in-manifest")
            # The few rows a person reviews are reported with their ids: read them back by key.
            stored = {key: self._by_key(key) for key in reviewed}
        return {key: record for key, record in stored.items() if record is not None}

    def _host(self, record: NewRecord) -> str:
        return self.host if record.host is None else record.host

    def find(self, source: str, sha256: str, *, host: str | None = None) -> Record | None:
        """The row of the file *source* with these bytes, if one is stored (its rerun key;
        one host writes an SQLite manifest, so *host* is not part of it)."""
        try:
            return self._by_key((source, sha256))
        except sqlite3.Error as exc:
            raise failure(self.path, exc, "cannot read the manifest") from exc

    def _by_key(self, key: tuple[str, str]) -> Record | None:
        source, hashed = _db(key[0]), _db(key[1])
        row = self._db.execute(f"SELECT {_ALL_COLUMNS} FROM files WHERE source=? AND coalesce(sha256, path)=?",
                               (source, hashed)).fetchone()  # fmt: skip
        return None if row is None else _record(row)

    def update(self, record_id: int, **fields: str | None) -> None:
        """Change columns of the row *record_id* (status, path, detail, sha256, resolution...);
        call inside :meth:`transaction` to group several updates."""
        allowed = {"status", "path", "detail", "sha256", *_RESOLUTION_COLUMNS}
        if not fields or not set(fields) <= allowed:
            raise ValueError(f"can update only {sorted(allowed)}, not {sorted(fields)}")
        assignments = ", ".join(f"{name}=?" for name in fields)
        values = (_db(value) if name in _TEXT_COLUMNS else value for name, value in fields.items())
        self._db.execute(f"UPDATE files SET {assignments} WHERE id=?", (*values, record_id))

    def start_run(self, run: str, *, staging: str, template: str) -> None:
        """Record the start of a commit run."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO runs (id, started, staging, template, host, pid) VALUES (?,?,?,?,?,?)",
                (run, now(), _db(staging), _db(template), self.host, os.getpid()),
            )

    def runs(self) -> list[Run]:
        """Every commit run, in the order they started."""
        try:
            cursor = self._db.execute(
                "SELECT id, started, finished, staging, template, host, pid, counts FROM runs ORDER BY started, id"
            )
            return [Run(i, st, f, _py(sg), _py(t), h, p, c) for i, st, f, sg, t, h, p, c in cursor]
        except sqlite3.Error as exc:
            raise failure(self.path, exc, "cannot read the manifest") from exc

    def load(self, records: Sequence[Record], runs: Sequence[Run]) -> None:
        """Store copied rows and runs as they are (see :class:`BaseManifest`)."""
        with self.transaction():
            if self._db.execute("SELECT (SELECT count(*) FROM files) + (SELECT count(*) FROM runs)").fetchone()[0]:
                raise ManifestError(f"{self.path} is not empty: a copy goes into a new manifest")
            self._db.executemany(
                "INSERT INTO runs (id, started, finished, staging, template, host, pid, counts) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [(r.id, r.started, r.finished, _db(r.staging), _db(r.template), r.host, r.pid, r.counts) for r in runs],
            )
            self._db.executemany(
                f"INSERT INTO files ({_ALL_COLUMNS}) VALUES ({','.join('?' * 16)})",
                [(r.id, str(r.status), _db(r.target), _db(r.path), _db(r.source), r.size, r.sha256, r.existing_sha256,
                  json.dumps(r.attrs, ensure_ascii=False), r.run, r.time, _db(r.detail), r.host, r.resolution,
                  r.resolved_by, r.resolved_at) for r in records],
            )  # fmt: skip

    @contextlib.contextmanager
    def moving(self, to: str) -> Iterator[None]:
        """Hold writers off, then mark this file moved to *to* (see :class:`BaseManifest`)."""
        with self.transaction():  # BEGIN IMMEDIATE: other writers wait
            yield
            self._db.execute("INSERT OR REPLACE INTO settings (name, value) VALUES ('moved_to', ?)", (to,))

    def run_templates(self) -> list[str]:
        """The templates commit runs used, those of unfinished (killed) runs first, newest first."""
        cursor = self._db.execute(
            "SELECT template FROM runs GROUP BY template ORDER BY max(finished IS NULL) DESC, max(started) DESC"
        )
        return [_py(template) for (template,) in cursor]

    def finish_run(self, run: str, counts: dict[str, int]) -> None:
        """Record the end of a commit run and its counts."""
        with self.transaction():
            self._db.execute("UPDATE runs SET finished=?, counts=? WHERE id=?", (now(), json.dumps(counts), run))

    def records(
        self,
        status: Status | str | Sequence[Status | str] | None = None,
        *,
        run: str | None = None,
        path: str | None = None,
        resolved: bool = False,
    ) -> list[Record]:
        """Rows in id order, filtered by status (one or several), run and path; with
        *resolved*, only rows a person decided on (``resolution`` set)."""
        where: list[str] = []
        args: list[str | bytes | None] = []
        if status is not None:
            statuses = [str(status)] if isinstance(status, str) else [str(s) for s in status]
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
            if set(statuses) <= REVIEWED:
                where.append(_REVIEWED)  # spelled as in the index, so that SQLite uses it
        if run is not None:
            where.append("run = ?")
            args.append(run)
        if path is not None:
            # "+path": keeps SQLite from rewriting substr(path, -24) into a form the index lacks
            where.append("substr(path, -24) = substr(?, -24) AND +path = ?")
            args += [_db(path), _db(path)]
        if resolved:
            where.append("resolution IS NOT NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        try:
            cursor = self._db.execute(f"SELECT {_ALL_COLUMNS} FROM files{clause} ORDER BY id", args)
            return [_record(row) for row in cursor]
        except sqlite3.Error as exc:
            raise failure(self.path, exc, "cannot read the manifest") from exc

    def get(self, record_id: int) -> Record:
        """The row *record_id*.

        Raises:
            ManifestError: no such row.
        """
        try:
            row = self._db.execute(f"SELECT {_ALL_COLUMNS} FROM files WHERE id=?", (record_id,)).fetchone()
        except sqlite3.Error as exc:
            raise failure(self.path, exc, "cannot read the manifest") from exc
        if row is None:
            raise ManifestError(f"no manifest row {record_id} in {self.path}")
        return _record(row)

    def transaction(self) -> _Transaction:
        """A write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error).

        Raises:
            ManifestError: SQLite failed (disk full, I/O error...); nothing was recorded.
        """
        return _Transaction(self._db, self.path)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def rehearsal(self) -> SQLiteManifest:
        """A copy of this manifest in memory, for a dry run (see :class:`BaseManifest`)."""
        copy = sqlite3.connect(":memory:", isolation_level=None)
        try:
            self._db.backup(copy)
        except sqlite3.Error as exc:
            copy.close()
            raise failure(self.path, exc, "cannot read the manifest") from exc
        return SQLiteManifest._on(copy, self.path)

    @classmethod
    def rehearsal_of(cls, path: str | os.PathLike[str]) -> SQLiteManifest:
        """A copy in memory of the manifest in the file *path* (empty when there is none),
        for a dry run. The file is only read, as any reader does (no pragma, no upgrade: an
        older schema is upgraded in the copy); SQLite may create its -wal and -shm files for
        the read and removes them again."""
        path = Path(path)
        copy = sqlite3.connect(":memory:", isolation_level=None)
        if path.is_file() and not path.is_symlink():
            try:
                real = sqlite3.connect(path, timeout=60, isolation_level=None)
                try:
                    real.backup(copy)
                finally:
                    real.close()
            except sqlite3.Error as exc:
                copy.close()
                raise failure(path, exc, "cannot read the manifest") from exc
        manifest = cls._on(copy, path)
        manifest._upgrade(create=True)
        return manifest

    @classmethod
    def in_memory(cls, location: str) -> SQLiteManifest:
        """An empty manifest in memory (a dry run's copy of another kind of manifest)."""
        manifest = cls._on(sqlite3.connect(":memory:", isolation_level=None), Path(location))
        manifest._upgrade(create=True)
        return manifest

    @classmethod
    def _on(cls, db: sqlite3.Connection, path: Path) -> SQLiteManifest:
        manifest = cls.__new__(cls)
        manifest.path, manifest.location, manifest._db = path, f"{path} (in memory)", db
        manifest.host = host_id()
        return manifest


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``. With *guard*, it refuses a manifest that ``manifest
    copy`` moved (whose own transaction this one waited for)."""

    def __init__(self, db: sqlite3.Connection, path: Path, *, guard: bool = True) -> None:
        self._db = db
        self._path = path
        self._guard = guard

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            moved = self._guard and self._db.execute("SELECT value FROM settings WHERE name='moved_to'").fetchone()
        except sqlite3.Error as exc:
            raise failure(self._path, exc, "cannot write the manifest") from exc
        if moved:
            self._db.execute("ROLLBACK")
            raise _moved(self._path, moved[0])

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
        except sqlite3.Error as error:
            if exc_type is None:
                raise failure(self._path, error, "cannot write the manifest") from error
        if isinstance(exc, sqlite3.Error):
            raise failure(self._path, exc, "cannot write the manifest") from exc


# Columns that hold names, which can be any bytes a filesystem allows: a name that is not
# UTF-8 (os.fsdecode gives it surrogates) is stored as a BLOB of its bytes, losslessly;
# every other value stays TEXT, as any SQLite tool expects.
_TEXT_COLUMNS = frozenset({"target", "path", "source", "detail"})


def _moved(path: Path, to: str) -> ManifestError:
    return ManifestError(f"the manifest {path} was moved to {to} (dicomcommit manifest copy); "
                         f"use that one: --manifest {to} (or DICOMCOMMIT_MANIFEST)")  # fmt: skip


def _db(text: str | None) -> str | bytes | None:
    """*text* as the manifest stores it (see _TEXT_COLUMNS)."""
    if text is None or text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def _py(value: str | bytes | None) -> Any:
    """A stored name back as the str the filesystem calls take (inverse of :func:`_db`)."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _attrs_json(attrs: Attrs) -> str:
    """``_dumps(attrs)``, twice as fast for the usual case of string values (one call per row)."""
    items = (f"{_quote(k)}:{_quote(v) if isinstance(v, str) else _scalar(v)}" for k, v in attrs.items())
    return "{" + ",".join(items) + "}"


def _scalar(value: Value) -> str:
    """A non-text value as JSON: an int (a number, never a bool) without the encoder's call."""
    return str(value) if type(value) is int else _dumps(value)


def _record(row: tuple[Any, ...]) -> Record:
    (record_id, status, target, path, source, size, sha256, existing, attrs, run, time, detail, host, *resolved) = row
    return Record(
        status=Status(status),
        target=_py(target),
        path=_py(path),
        source=_py(source),
        size=size,
        sha256=sha256,
        attrs=json.loads(attrs),
        run=run,
        time=time,
        detail=_py(detail),
        existing_sha256=existing,
        id=record_id,
        host=host,
        resolution=resolved[0],
        resolved_by=resolved[1],
        resolved_at=resolved[2],
    )


def set_aside(path: str | os.PathLike[str]) -> str | None:
    """Rename the manifest file *path* (and its WAL files) to ``<name>.damaged-<time>``;
    returns where it went (None when there was none)."""
    path = Path(path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = None
    for suffix in ("", "-wal", "-shm"):
        old = path.with_name(f"{path.name}{suffix}")
        if os.path.lexists(old):
            aside = path.with_name(f"{path.name}.damaged-{stamp}{suffix}")
            os.rename(old, aside)  # a fresh name: nothing to clobber
            kept = kept or str(aside)
    return kept
