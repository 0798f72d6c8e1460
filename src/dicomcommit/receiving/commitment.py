"""Storage Commitment, decided: what the receiver received, the requests it accepted, and
for each listed instance whether it is safely stored (committed, or found identical in the
archive, and its bytes verified there) or why not.

Kept in ``STAGING/.dicomcommit/receiver.sqlite``, every write durable: a request that got a
Success response, and the report decided for it, survive a restart until the report is
delivered. The instances received are written before commit may take their files, so an
instance that got a C-STORE Success is never reported as "never received".
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicomcommit.archives import BaseArchive
from dicomcommit.errors import DicomCommitError, ReceiveError
from dicomcommit.layout import STATE_DIR
from dicomcommit.manifests import BaseManifest
from dicomcommit.manifests.records import Status, now

DB_NAME = "receiver.sqlite"
#: Failure reasons of the N-EVENT-REPORT (PS3.4 J.3.2.1.2 / C.14.1.1.1)
PROCESSING_FAILURE = 0x0110
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
_STORED = (Status.COMMITTED, Status.DUPLICATE)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS received (
    uid TEXT NOT NULL,      -- SOP Instance UID
    class TEXT NOT NULL,    -- SOP Class UID
    source TEXT NOT NULL,   -- its source in the manifest (CALLING_AE@host:port/<staged name>)
    sha256 TEXT NOT NULL,
    time TEXT NOT NULL,
    PRIMARY KEY (uid, source)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    txn TEXT PRIMARY KEY,   -- Transaction UID
    ae TEXT NOT NULL,       -- the requester's calling AE title
    address TEXT NOT NULL,  -- where it called from (host:port)
    items TEXT NOT NULL,    -- JSON [[class, uid], ...]
    time TEXT NOT NULL,
    report TEXT,            -- JSON, once decided
    sent TEXT,              -- when the requester acknowledged the report
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT ''  -- why the last delivery failed
);
"""

Item = tuple[str, str]  # (SOP Class UID, SOP Instance UID)


@dataclass(frozen=True)
class Received:
    """An instance the receiver staged (and answered Success for)."""

    uid: str
    sop_class: str
    source: str
    sha256: str


@dataclass(frozen=True)
class Report:
    """The outcome of one Storage Commitment request."""

    txn: str
    committed: tuple[Item, ...]
    failed: tuple[tuple[str, str, int], ...]  # (class, uid, failure reason)

    def to_json(self) -> str:
        return json.dumps({"committed": self.committed, "failed": self.failed})

    @classmethod
    def from_json(cls, txn: str, text: str) -> Report:
        raw = json.loads(text)
        return cls(txn, tuple((c, u) for c, u in raw["committed"]), tuple((c, u, r) for c, u, r in raw["failed"]))


@dataclass(frozen=True)
class Request:
    """A Storage Commitment request accepted (N-ACTION answered Success), not yet acknowledged."""

    txn: str
    ae_title: str
    address: str
    items: tuple[Item, ...]
    report: Report | None
    attempts: int


class CommitmentStore:
    """The receiver's durable state in a staging directory; thread-safe.

    Raises:
        ReceiveError: the database cannot be opened or written (when constructed, and by
            every method).
    """

    def __init__(self, staging: Path) -> None:
        self.path = staging / STATE_DIR / DB_NAME
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a Success sent is a promise kept
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise ReceiveError(f"cannot open the receiver's state {self.path}: {exc}") from exc

    def _write(self, sql: str, rows: Sequence[tuple[object, ...]]) -> None:
        with self._lock:
            try:
                with self._db:
                    self._db.executemany(sql, rows)
            except sqlite3.Error as exc:
                raise ReceiveError(f"cannot write the receiver's state {self.path}: {exc}") from exc

    def add_received(self, received: Iterable[Received]) -> None:
        """Record instances received (before commit may take their files from staging)."""
        at = now()
        rows = [(r.uid, r.sop_class, r.source, r.sha256, at) for r in received]
        if rows:
            self._write("INSERT OR IGNORE INTO received VALUES (?, ?, ?, ?, ?)", rows)

    def received(self, uid: str) -> list[Received]:
        """What was received with the SOP Instance UID *uid*."""
        with self._lock:
            rows = self._db.execute("SELECT uid, class, source, sha256 FROM received WHERE uid = ?", (uid,)).fetchall()
        return [Received(*row) for row in rows]

    def add_request(self, txn: str, ae_title: str, address: str, items: Sequence[Item]) -> None:
        """Record a request (a repeated Transaction UID starts it again: its report is decided anew)."""
        self._write("INSERT OR REPLACE INTO requests (txn, ae, address, items, time) VALUES (?, ?, ?, ?, ?)",
                    [(txn, ae_title, address, json.dumps(list(items)), now())])  # fmt: skip

    def pending(self) -> list[Request]:
        """The requests whose report the requester has not acknowledged, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT txn, ae, address, items, report, attempts FROM requests WHERE sent IS NULL ORDER BY time"
            ).fetchall()
        return [Request(txn, ae, address, tuple((c, u) for c, u in json.loads(items)),
                        None if report is None else Report.from_json(txn, report), attempts)
                for txn, ae, address, items, report, attempts in rows]  # fmt: skip

    def decided(self, report: Report) -> None:
        """Keep the report decided for its request (delivered as it is, however often retried)."""
        self._write("UPDATE requests SET report = ? WHERE txn = ?", [(report.to_json(), report.txn)])

    def sent(self, txn: str) -> None:
        """The requester acknowledged the report of *txn*."""
        self._write("UPDATE requests SET sent = ?, error = '' WHERE txn = ?", [(now(), txn)])

    def failed(self, txn: str, error: str) -> None:
        """A delivery of the report of *txn* failed: it is tried again later."""
        self._write("UPDATE requests SET attempts = attempts + 1, error = ? WHERE txn = ?", [(error, txn)])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def decide(
    request: Request, store: CommitmentStore, manifest: BaseManifest, archive: BaseArchive, staging: Path
) -> Report | None:
    """The report for *request*; None while one of its instances is still staged (waiting
    for commit). Call after a commit pass that began after the request was recorded."""
    committed: list[Item] = []
    failed: list[tuple[str, str, int]] = []
    for sop_class, uid in request.items:
        reason = _failure((sop_class, uid), store, manifest, archive, staging)
        if reason is _WAIT:
            return None
        if reason is None:
            committed.append((sop_class, uid))
        else:
            failed.append((sop_class, uid, reason))
    return Report(request.txn, tuple(committed), tuple(failed))


_WAIT = -1


def _failure(
    item: Item, store: CommitmentStore, manifest: BaseManifest, archive: BaseArchive, staging: Path
) -> int | None:
    """None: stored, and its bytes verified in the archive; else the failure reason (or _WAIT)."""
    sop_class, uid = item
    received = store.received(uid)
    if not received:
        return NO_SUCH_INSTANCE
    if all(r.sop_class != sop_class for r in received):
        return CLASS_INSTANCE_CONFLICT
    waiting = False
    for r in received:
        if r.sop_class != sop_class:
            continue
        row = manifest.find(r.source, r.sha256)
        if row is None:
            # No outcome yet: still staged (commit will take it), else it is not stored.
            waiting = waiting or (staging / r.source.rpartition("/")[2]).exists()
            continue
        if row.status in _STORED and _verified(archive, row.path, r.sha256):
            return None
    return _WAIT if waiting else PROCESSING_FAILURE


def _verified(archive: BaseArchive, rel: str, sha256: str) -> bool:
    """Whether the archive holds exactly these bytes at *rel* (read and hashed, or proven by the store)."""
    try:
        return archive.verified_sha256(rel) == sha256
    except (OSError, DicomCommitError):
        return False
