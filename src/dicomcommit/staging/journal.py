"""The staging journal: what a stager knew about each file it staged.

A stager appends one JSON line per staged file (name, sha256, size, naming attributes) to
a journal of its own, ``STAGING/.dicomcommit/journal/<uuid>.jsonl``, before the file's final
rename. Commit reads these lines instead of re-parsing headers. One journal per process
rather than one sidecar per file: creating and deleting thousands of small files is what
slows a filesystem down.

The journal is a cache, not a source of truth: a lost, torn or false line only sends that
file down the slow path (read its header, as for a foreign file). A record stands for a
file only while the file is provably the one it describes: the same inode, size and
modification time to the nanosecond, which the stager sets itself to a value no later
write reproduces (see :func:`dicomcommit._fs.write_exclusive`); and before commit drops a
file as a duplicate, it hashes the file's bytes whatever the journal says.

A stager holds an ``flock`` on its journal for as long as it lives, from before its first
``.part`` file exists: commit only removes a journal whose writer is gone and whose files
have all been committed, and ``recover`` only takes a ``.part`` file whose writer is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomcommit.layout import PART_SUFFIX, STATE_DIR
from dicomcommit.naming import Attrs

JOURNAL_DIR = (STATE_DIR, "journal")
_CHUNK = 1 << 20
_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class StagedRecord:
    """What the stager recorded about one staged file."""

    name: str
    sha256: str
    size: int
    durable: bool
    attrs: Attrs
    ino: int | None = None  # the file's identity when it was written (None: a line of an older version)
    mtime_ns: int | None = None
    origin: str | None = None  # where it came from, when not from this host's own process (``AE@host:port``)

    def describes(self, st: os.stat_result) -> bool:
        """Whether the file *st* describes is still the one the stager wrote: the same inode,
        size and nanosecond mtime. An edit in place changes the mtime; a copy, the inode."""
        return self.size == st.st_size and self.ino == st.st_ino and self.mtime_ns == st.st_mtime_ns

    def covers(self, keywords: Iterable[str]) -> bool:
        """Whether every keyword a template needs was recorded."""
        return self.attrs.keys() >= set(keywords)

    def to_line(self) -> bytes:
        """Encode as one journal line."""
        # Absent attributes stay as null: commit must tell "recorded as absent" from "not recorded".
        fields = {"name": self.name, "sha256": self.sha256, "size": self.size, "durable": self.durable,
                  "ino": self.ino, "mtime_ns": self.mtime_ns}  # fmt: skip
        fields["attrs"] = self.attrs
        if self.origin is not None:
            fields["origin"] = self.origin
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> StagedRecord | None:
        """Decode a journal line; ``None`` for a torn or foreign line."""
        try:
            raw: Any = json.loads(line)
            record = cls(raw["name"], raw["sha256"], raw["size"], raw["durable"], raw["attrs"],
                         raw.get("ino"), raw.get("mtime_ns"), raw.get("origin"))  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        valid = (
            isinstance(record.name, str)
            and isinstance(record.sha256, str)
            and isinstance(record.size, int)
            and isinstance(record.attrs, dict)
            and isinstance(record.ino, int | None)
            and isinstance(record.mtime_ns, int | None)
            and isinstance(record.origin, str | None)
        )
        return record if valid else None


def labelled(name: str, origin: str | None) -> str:
    """A staged file's name in the manifest's ``source`` column: its staged name, after the
    origin its journal line gives (``CALLING_AE@host:port/<name>`` for a received instance)."""
    return name if origin is None else f"{origin}/{name}"


def journal_dir(staging: Path) -> Path:
    """The journal directory of a staging directory."""
    return staging.joinpath(*JOURNAL_DIR)


def part_name(name: str, owner: str) -> str:
    """The unfinished (``.part``) name of the staged file *name*, written by the stager *owner*."""
    return f"{name}.{owner}{PART_SUFFIX}"


def part_owner(part: str) -> str | None:
    """The stager that writes the ``.part`` file *part*; None for one of another tool."""
    stem = part.removesuffix(PART_SUFFIX)
    owner = stem.rpartition(".")[2]
    return owner if len(owner) == 32 and all(c in "0123456789abcdef" for c in owner) else None


def owner_alive(staging: Path, owner: str) -> bool:
    """Whether the stager *owner* still runs: it holds its journal's lock while it lives."""
    try:
        fd = os.open(journal_dir(staging) / f"{owner}{_SUFFIX}", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # its journal exists before its first .part does: it is gone (and pruned)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases our shared lock, if we got it
    return False


class JournalWriter:
    """Appends records to this process's journal; thread-safe, and fork-aware."""

    def __init__(self, staging: Path) -> None:
        self._dir = journal_dir(staging)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._owner = ""

    def append(self, record: StagedRecord) -> None:
        """Append *record* in one ``write`` (``O_APPEND``: lines never interleave)."""
        line = record.to_line()
        with self._lock:
            fd = self._open()
            os.write(fd, line)

    def owner(self) -> str:
        """This process's journal id, opening (and locking) the journal first if needed.

        Each ``.part`` file carries it (:func:`part_name`), so ``recover`` can tell a live
        writer's unfinished file from an abandoned one by this journal's lock.
        """
        with self._lock:
            self._open()
            return self._owner

    def _open(self) -> int:
        if self._fd is not None and self._pid == os.getpid():
            return self._fd
        # A forked child writes its own journal; the parent's fd (and its flock) stays with the parent.
        self._dir.mkdir(parents=True, exist_ok=True)
        base = uuid.uuid4().hex
        temp = self._dir / f"{base}.new"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        # Lock before the name becomes visible to commit, so it never sees an unlocked live journal.
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temp, self._dir / f"{base}{_SUFFIX}")
        self._fd, self._pid, self._owner = fd, os.getpid(), base
        return fd

    def close(self) -> None:
        """Close the journal (releasing its lock)."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


class JournalIndex:
    """Reads every journal of a staging directory, incrementally.

    Keeps where each record is (journal, offset, length), not the record itself, so memory
    stays small for hundreds of thousands of staged files; :meth:`get` reads the line back.
    """

    def __init__(self, staging: Path) -> None:
        self._dir = journal_dir(staging)
        self._staging = staging
        self._where: dict[str, tuple[str, int, int]] = {}
        self._offsets: dict[str, int] = {}
        self._names: dict[str, list[str]] = {}
        self._fds: dict[str, int] = {}

    def refresh(self) -> None:
        """Read the complete lines appended to any journal since the last refresh."""
        try:
            with os.scandir(self._dir) as listing:
                entries = [e.name for e in listing if e.name.endswith(_SUFFIX)]
        except FileNotFoundError:
            return
        for journal in entries:
            self._read_new(journal)

    def _read_new(self, journal: str) -> None:
        offset = self._offsets.get(journal, 0)
        try:
            fd = self._fds.get(journal)
            if fd is None:
                fd = self._fds[journal] = os.open(self._dir / journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        names = self._names.setdefault(journal, [])
        # A chunk at a time: memory stays flat however long the journal is.
        while chunk := os.pread(fd, _CHUNK, offset):
            end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
            if not end:
                if len(chunk) < _CHUNK:
                    break
                # A megabyte without a line end is no record of ours: skip it (the journal is
                # only a cache; files it described take the slow path).
                offset += len(chunk)
                continue
            start = 0
            while start < end:
                stop = chunk.index(b"\n", start)
                name = _peek_name(chunk[start:stop])
                if name is not None:
                    self._where[name] = (journal, offset + start, stop - start)
                    names.append(name)
                start = stop + 1
            offset += end
        self._offsets[journal] = offset

    def get(self, name: str) -> StagedRecord | None:
        """The record for the staged file *name*, if a journal has one."""
        where = self._where.get(name)
        if where is None:
            return None
        journal, offset, length = where
        record = StagedRecord.from_line(os.pread(self._fds[journal], length, offset))
        return record if record is not None and record.name == name else None

    def prune(self) -> None:
        """Remove journals whose writer has exited and whose staged files are all gone.

        Call under the archive lock. A journal still locked by a live stager is kept.
        """
        try:
            with os.scandir(self._staging) as listing:  # one listing, not a stat per staged name
                present = {entry.name for entry in listing}
        except FileNotFoundError:
            present = set()
        for journal, names in list(self._names.items()):
            if not present.isdisjoint(names):
                continue
            path = self._dir / journal
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # its stager is alive and may append more
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
            for name in names:
                self._where.pop(name, None)
            del self._names[journal], self._offsets[journal]
            os.close(self._fds.pop(journal))

    def close(self) -> None:
        """Close the journals this index has open."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


_NAME_PREFIX = b'{"name":"'


def _peek_name(line: bytes) -> str | None:
    """The staged name a line is about, without parsing the whole line.

    Our writer puts the name first, and staged names need no JSON escaping; other lines
    (hand-edited, or from another writer) take the full parse.
    """
    if line.startswith(_NAME_PREFIX):
        end = line.find(b'"', len(_NAME_PREFIX))
        if end > 0 and b"\\" not in line[:end]:
            return line[len(_NAME_PREFIX) : end].decode(errors="replace")
    record = StagedRecord.from_line(line)
    return None if record is None else record.name
