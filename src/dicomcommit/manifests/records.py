"""What the manifest holds: one row per staged file, by status; a row before it is stored
(:class:`NewRecord`) and after (:class:`Record`, with its id)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from dicomcommit.naming import Attrs


class Status(StrEnum):
    """What happened to a staged file (the manifest's ``status`` column)."""

    COMMITTED = "committed"  # it holds its final name (or, with on_conflict="suffix", a derived one)
    DUPLICATE = "duplicate"  # identical bytes hold the name; the staged copy was dropped
    CONFLICT = "conflict"  # other bytes hold the name; kept in .dicomcommit/conflicts/ for review
    INVALID = "invalid"  # not DICOM that can be named; kept in .dicomcommit/invalid/
    RESOLVED = "resolved"  # a person decided against these bytes; kept in rejected/ or replaced/


STATUSES: tuple[Status, ...] = tuple(Status)
#: The statuses a person reviews.
REVIEWED = frozenset({Status.CONFLICT, Status.INVALID})
#: The source of a row ``recover`` made for a file it found in the archive with no row.
FOUND_IN_ARCHIVE = "archive:"


def host_id() -> str:
    """This host's name in the manifest: ``DICOMCOMMIT_HOST`` when set (containers and
    cluster nodes often share a hostname), else the node name."""
    return os.environ.get("DICOMCOMMIT_HOST") or os.uname().nodename


def machine_id() -> str:
    """This boot of this machine and this PID namespace ("" where Linux's /proc does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as boot:
            return f"{boot.read().strip()}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def process_alive(pid: int) -> bool:
    """Whether a process *pid* exists here (a reused pid counts as alive: then the lease expires)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now() -> str:
    """The current time as the manifest stores it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """A run id: UTC time, then 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + os.urandom(3).hex()


@dataclass(frozen=True)
class _Row:
    status: Status
    target: str | None  # the final name the file wanted (None for invalid files)
    path: str  # where its bytes are now, relative to the archive
    source: str  # its name in the staging directory (or its path in an ingest source)
    size: int
    sha256: str | None  # None: a foreign file not hashed yet
    attrs: Attrs = field(default_factory=dict)
    run: str = ""
    time: str = ""
    detail: str = ""
    existing_sha256: str | None = None  # for a conflict: the hash of the file at its target

    def key(self) -> tuple[str, str]:
        """The rerun key on its host: its source, and its hash (or, not hashed, its path)."""
        return self.source, self.sha256 or self.path


@dataclass(frozen=True, kw_only=True)
class NewRecord(_Row):
    """An outcome to record; ``claims`` names the row ``recover`` made for the same bytes
    (found in the archive with no row) that this record takes over instead of adding one.
    ``host`` None: the host that records it (the manifest's :attr:`host`); ``""`` for rows
    that belong to no host (what ``recover`` finds in the archive)."""

    claims: int | None = None
    host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict, as :meth:`Record.to_dict` (``id`` None: not stored)."""
        data = asdict(self)
        del data["claims"]
        return {"id": None, **data, "host": self.host or ""}


@dataclass(frozen=True, kw_only=True)
class Record(_Row):
    """One stored row of the manifest."""

    id: int
    host: str = ""  # the host whose staging directory (or ingest tree) the file came from
    resolution: str | None = None  # how a person resolved it: existing, staged, both (or replaced)
    resolved_by: str | None = None  # user@host
    resolved_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict, ``id`` first."""
        data = asdict(self)
        return {"id": data.pop("id"), **data}


@dataclass(frozen=True)
class Claim:
    """A staged file a committer is working on (with a shared manifest): what ``recover``
    needs to finish its work from any host once the committer's lease has expired."""

    source: str
    target: str | None  # the name it asks for first (None: an invalid file)
    sha256: str | None  # its hash, when known before placing (the journal's)
    size: int
    attrs: Attrs
    run: str
    staging: str = ""  # the directory it is staged in (a host may have several)
    host: str = ""
    lease: str = ""


@dataclass(frozen=True)
class Run:
    """One commit run, as the ``runs`` table holds it."""

    id: str
    started: str
    finished: str | None
    staging: str
    template: str
    host: str
    pid: int
    counts: str | None  # JSON
