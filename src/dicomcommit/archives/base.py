"""The archive's interface: the place files go to, with create-only placement at its core.

Every name below an archive is relative (``a/b/c.dcm``, ``/``-separated); dicomcommit's own
files live below ``.dicomcommit/``. An implementation never replaces what holds a name,
except in :meth:`BaseArchive.replace`, which carries out a person's recorded decision.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import BinaryIO, Self

from dicomcommit._fs import Placed

__all__ = ["BaseArchive", "Payload", "Placed"]


@dataclass
class Payload:
    """A file to place, as its source hands it over: its name in an open directory, and
    how to read its bytes."""

    dir_fd: int
    name: str
    root: str  # the directory *dir_fd* is open on
    nlink: int  # more than 1: other names share its inode, so it is copied, never linked
    copy: bool  # copy its bytes even when it could be linked (ingest's copy mode)
    open: Callable[[], int]  # an fd on its bytes (opened once by the source)

    @property
    def path(self) -> str:
        """Its path, for messages, and for a dry run to hash it later."""
        return f"{self.root}/{self.name}"


class BaseArchive(ABC):
    """An archive. Each batch of placements ends with :meth:`sync`, then :meth:`release`."""

    #: Where it is, for messages.
    location: str
    #: Whether its names are copies of the bytes placed, never the placed file itself (an
    #: object store): :meth:`holds` then compares bytes, and a staged file with one link may
    #: have been placed.
    keeps_copies: bool = False
    #: Who is placing files (a committer's lease, with a shared manifest): its temporary
    #: copies carry it, so that ``recover`` removes only those of committers that are gone.
    owner: str = ""

    @abstractmethod
    def create(self) -> None:
        """Create the archive (and its state directory) if it is not there yet.

        Raises:
            ArchiveError: it cannot be created, or its state directory is not a real directory.
        """

    @abstractmethod
    def lock(self, timeout: float | None) -> AbstractContextManager[None]:
        """What commit and resolve hold per batch (a lock on the archive, or nothing when
        each name is arbitrated where it is created).

        Raises:
            LockTimeout: not acquired in *timeout* seconds (None: wait as long as it takes).
            LockError: it cannot be taken at all.
        """

    @abstractmethod
    def place(self, payload: Payload, rel: str) -> Placed:
        """Give *payload* the name *rel* if, and only if, nothing holds it: ``CREATED``;
        ``SAME_INODE`` when the payload itself holds it already (an interrupted earlier
        run); ``EXISTS`` when anything else does (nothing changed).

        Raises:
            NoClobberUnsupported: the archive offers no create-only placement.
            ArchiveError: a component of *rel* is not a real directory.
            OSError: anything else.
        """

    def check(self) -> None:  # noqa: B027 -- nothing to check for a directory: a missing one is an empty archive
        """Check, without writing anything, that the archive can be read (a dry run's check).

        Raises:
            ArchiveError: it cannot (an object store's bucket is missing, or refuses).
        """

    def prepare(self, placements: list[tuple[Payload, str]]) -> None:  # noqa: B027 -- a hint, empty by default
        """A hint: the batch will ask :meth:`place` for these (payload, name) pairs first, in
        this order. An archive whose placements are round trips (an object store) may start
        them all now; :meth:`place` then answers with their outcome. A directory ignores it."""

    @abstractmethod
    def hash(self, rel: str) -> tuple[str, int] | None:
        """(sha256, size) of the file at *rel*; None when nothing is there, or not a regular file."""

    def sha256(self, rel: str) -> str | None:
        """The hash of the file at *rel*; None as :meth:`hash`."""
        found = self.hash(rel)
        return None if found is None else found[0]

    def verified_sha256(self, rel: str) -> str | None:
        """The hash of the bytes at *rel*, proven: computed from them, or by the store that
        checked them on the way in; what a file may be dropped as a duplicate on. None as
        :meth:`hash`. (A directory's :meth:`hash` reads the bytes already.)"""
        return self.sha256(rel)

    def known_sha256(self, rel: str) -> str | None:
        """The hash of what this archive just placed at *rel*, when it knows it without reading
        anything (an object store hashes what it uploads); None otherwise (a link reads nothing)."""
        return None

    @abstractmethod
    def size(self, rel: str) -> int | None:
        """The size of the regular file at *rel*; None when nothing (or no regular file) is there."""

    @abstractmethod
    def exists(self, rel: str) -> bool:
        """Whether anything (a file, a symlink, a directory...) holds the name *rel*."""

    @abstractmethod
    def holds(self, path: str | os.PathLike[str], rel: str) -> bool:
        """Whether the local file *path* itself (not a copy) holds the name *rel*."""

    @abstractmethod
    def link(self, src: str, dst: str) -> Placed:
        """Give the archive file *src* the extra name *dst*, create-only (as :meth:`place`)."""

    @abstractmethod
    def replace(self, src: str, dst: str) -> None:
        """Move the file *src* to *dst* atomically, replacing what is there: readers see the
        old file or the new one, never neither. Only for a person's recorded decision."""

    @abstractmethod
    def remove(self, rel: str) -> None:
        """Remove the name *rel*; already gone is fine."""

    @abstractmethod
    def files(self, folder: tuple[str, ...] = ()) -> list[str]:
        """Sorted names of the files below *folder* (default: the whole archive, outside
        ``.dicomcommit/``), symlinks to files and special files included (not what a
        symlinked directory holds)."""

    @abstractmethod
    def open(self, rel: str) -> BinaryIO:
        """The regular file at *rel*, open for reading (a symlink there is not followed).

        Raises:
            OSError: it cannot be opened.
        """

    @abstractmethod
    def sync(self) -> None:
        """Make every name placed, linked or removed since the last sync durable.

        Raises:
            OSError: they may not be.
        """

    @abstractmethod
    def release(self) -> None:
        """Let go of what the batch held (open directories); the archive stays usable."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
