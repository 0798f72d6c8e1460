"""What commit knows of a file before it places it: size, links, naming attributes, and
whether it may be taken now, from the stager's journal while the file is provably the one
its line describes, else from the file's own header once it has settled and is whole."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dicomcommit import _fs
from dicomcommit.dicom.headers import Described, NotDicom, read_attrs, read_foreign
from dicomcommit.hashing import hash_file
from dicomcommit.naming import Attrs
from dicomcommit.staging.journal import JournalIndex, labelled


@dataclass
class Staged:
    """One staged file and what naming needs; opened only when its bytes must be read."""

    name: str
    size: int
    mtime_ns: int = 0  # when its bytes last changed
    nlink: int = 1  # more than 1: other names share its inode (copied, never linked)
    sha256: str | None = None  # hashed from its bytes, when a comparison needs it
    claimed: str | None = None  # the hash its journal line claims (trusted only to commit it)
    attrs: Attrs = field(default_factory=dict)
    unsynced: bool = False  # its bytes may not be durable yet
    invalid: str | None = None  # why it is not DICOM we can name
    left: str | None = None  # why it stays where it is for now (too young to be complete)
    origin: str | None = None  # where its journal line says it came from (a DICOM peer)
    fd: int | None = None

    @property
    def label(self) -> str:
        """Its name in the manifest (see :func:`~dicomcommit.staging.journal.labelled`)."""
        return labelled(self.name, self.origin)

    def open(self, dir_fd: int) -> int:
        """An fd on the file (in *dir_fd*), opened once, without following a symlink."""
        if self.fd is None:
            self.fd = _fs.open_read(self.name, dir_fd)
        return self.fd

    def close(self) -> None:
        """Close the fd, if open: a batch keeps no fds open."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def hash(self, dir_fd: int) -> str:
        """The hash of the file's bytes (read once; never taken from the journal)."""
        if self.sha256 is None:
            self.sha256, _ = hash_file(self.open(dir_fd))
        return self.sha256


class Prefetched(Protocol):
    """What worker processes read ahead of commit (ingest ``--jobs``): taken once per name."""

    def pop(self, name: str, default: None = None, /) -> Described | None:
        """The description of *name* (forgotten once taken), or None when there is none."""


class Describer:
    """Describes the files of one source (a staging directory with its *journal*, or an
    ingest tree: *described* holds what worker processes read); set :attr:`dir_fd` to the
    source's directory fd for each batch."""

    def __init__(
        self,
        source: Path,
        keywords: Sequence[str],
        *,
        journal: JournalIndex | None,
        copy: bool,
        settle: float,
        described: Prefetched | None,
    ) -> None:
        self.source, self.keywords, self.journal, self.copy = source, keywords, journal, copy
        self._prefix = f"{source}/"  # for messages: a str join, not a Path per file
        self.settle_ns = int(settle * 1e9)
        self.described = described
        self.dir_fd = -1

    def describe(self, name: str) -> Staged | None:
        """Size and attributes: from the journal (fast path), else from the file itself.
        None when the file is gone or is no longer a regular file (left in place)."""
        try:
            st = os.stat(name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None  # another committer took it
        if not stat.S_ISREG(st.st_mode):
            return None  # swapped for something else since the scan; left in place
        staged = Staged(name, st.st_size, st.st_mtime_ns, st.st_nlink)
        known = None if self.described is None else self.described.pop(name)
        if known is not None and known.size == st.st_size and not self._too_young(staged):
            staged.attrs, staged.invalid = known.attrs, known.invalid
            staged.unsynced = not self.copy
            return staged
        record = None if self.journal is None else self.journal.get(name)
        if record is not None and record.describes(st):
            staged.claimed, staged.unsynced, staged.origin = record.sha256, not record.durable, record.origin
            if record.covers(self.keywords):
                staged.attrs = record.attrs
                return staged
            return self._read_header(staged, whole=True)  # a stager's file is complete
        return self.read_foreign(staged)

    def read_foreign(self, staged: Staged) -> Staged:
        """Name a file no stager vouches for from its header, once it has settled."""
        return staged if self._too_young(staged) else self._read_header(staged, whole=False)

    def _too_young(self, staged: Staged) -> bool:
        """Whether a foreign file changed less than the settle time ago (then it stays for now)."""
        age = time.time_ns() - staged.mtime_ns
        if age >= self.settle_ns:
            return False
        staged.left = (f"modified {max(age, 0) / 1e9:.1f} s ago, may still be written; "
                       f"taken once unchanged for {self.settle_ns / 1e9:g} s")  # fmt: skip
        return True

    def _read_header(self, staged: Staged, *, whole: bool) -> Staged:
        """Name a file from its header; unless it is known *whole*, prove it is first."""
        read = read_attrs if whole else read_foreign
        try:
            fd = staged.open(self.dir_fd)
            # A foreign writer may not have made its bytes durable; copies are fsynced themselves.
            staged.unsynced = not self.copy
            try:
                staged.attrs = read(fd, self.keywords, name=self._prefix + staged.name)
            except NotDicom as exc:
                staged.invalid = str(exc)
        finally:
            staged.close()  # a batch keeps no fds open; EXDEV copies reopen
        return staged
