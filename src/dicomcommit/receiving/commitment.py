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

    @property
    def staged_name(self) -> str:
        """Its name in staging (the source is ``AE@host:port/<staged name>``)."""
        return self.source.rpartition("/")[2]

    @property
    def ae_title(self) -> str:
        """The calling AE title that sent it."""
        return self.source.rpartition("/")[0].rpartition("@")[0]


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


@dataclass(frozen=True)
class Decider:
    """Decides reports against the manifest and the archive; use after a commit pass that
    began after the request was recorded."""

    store: CommitmentStore
    manifest: BaseManifest
    archive: BaseArchive
    staging: Path

    def decide(self, request: Request) -> Report | None:
        """The report for *request*; None while one of its instances is still staged."""
        committed: list[Item] = []
        failed: list[tuple[str, str, int]] = []
        for item in request.items:
            reason = self._failure(item, request.ae_title)
            if reason == _WAIT:
                return None
            if reason is None:
                committed.append(item)
            else:
                failed.append((*item, reason))
        return Report(request.txn, tuple(committed), tuple(failed))

    def _failure(self, item: Item, requester: str) -> int | None:
        """None: stored, and its bytes verified in the archive; else the failure reason (or _WAIT).

        What counts is the version of the instance the requester sent last (or, when it sent
        none, the last one received): a second version that is a conflict is not committed,
        although its first version is.
        """
        sop_class, uid = item
        received = self.store.received(uid)
        if not received:
            return NO_SUCH_INSTANCE
        received = [r for r in received if r.ae_title == requester] or received
        latest = max(received, key=lambda r: r.staged_name)  # staged names begin with the staging time
        if latest.sop_class != sop_class:
            return CLASS_INSTANCE_CONFLICT
        row = self.manifest.find(latest.source, latest.sha256)
        if row is None:  # no outcome yet: still staged (commit takes it next), else it is not stored
            return _WAIT if (self.staging / latest.staged_name).exists() else PROCESSING_FAILURE
        if row.status in _STORED and _verified(self.archive, row.path, latest.sha256):
            return None
        return PROCESSING_FAILURE


_WAIT = -1


def _verified(archive: BaseArchive, rel: str, sha256: str) -> bool:
    """Whether the archive holds exactly these bytes at *rel* (read and hashed, or proven by the store)."""
    try:
        return archive.verified_sha256(rel) == sha256
    except (OSError, DicomCommitError):
        return False
