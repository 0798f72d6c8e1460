"""The manifest's interface: what commit, review, resolve and recover ask of any manifest.

An implementation stores rows (:class:`~dicomcommit.manifests.records.Record`) and runs;
:func:`dicomcommit.manifests.open_manifest` picks it from a location.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Self

from dicomcommit.manifests.records import Claim, NewRecord, Record, Run, Status


class BaseManifest(ABC):
    """A manifest. Use it as a context manager, or :meth:`close` it.

    A manifest that is :attr:`shared` is written by committers on many hosts at once: no
    lock on the archive serializes them; each file a committer works on is claimed
    (:meth:`claim`) under a lease that expires when its committer stops renewing it
    (:meth:`leased`), and ``recover`` finishes expired claims from any host. A manifest
    that is not shared has one host, whose archive lock serializes commit: claiming then
    always succeeds and writes nothing.
    """

    #: Where it is, for messages (a path, or a URL without its password).
    location: str
    #: This process's host id (:func:`~dicomcommit.manifests.records.host_id`): the rows it adds carry it.
    host: str
    #: Whether committers on several hosts may write it at once (no archive lock).
    shared: bool = False

    @abstractmethod
    def add(self, records: Iterable[NewRecord]) -> dict[tuple[str, str], Record]:
        """Store *records* in one transaction; return the stored rows of those a person
        reviews (conflicts, invalid files), by :meth:`NewRecord.key`.

        A record whose key is stored already is kept as it is (a rerun records nothing
        twice); one with ``claims`` updates that row instead of adding one.
        """

    @abstractmethod
    def update(self, record_id: int, **fields: str | None) -> None:
        """Change columns of the row *record_id*; inside :meth:`transaction` to group them."""

    @abstractmethod
    def records(
        self,
        status: Status | str | Sequence[Status | str] | None = None,
        *,
        run: str | None = None,
        path: str | None = None,
        resolved: bool = False,
    ) -> list[Record]:
        """Rows in id order, filtered by status (one or several), run and path; with
        *resolved*, only rows a person decided on."""

    @abstractmethod
    def find(self, source: str, sha256: str, *, host: str | None = None) -> Record | None:
        """The row of the file *source* (of *host*, default this one) with these bytes, if
        one is stored (its rerun key)."""

    @abstractmethod
    def get(self, record_id: int) -> Record:
        """The row *record_id*.

        Raises:
            ManifestError: no such row.
        """

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A write transaction, rolled back on error.

        Raises:
            ManifestError: the manifest could not be written; nothing was recorded.
        """

    @abstractmethod
    def start_run(self, run: str, *, staging: str, template: str) -> None:
        """Record the start of a commit run."""

    @abstractmethod
    def finish_run(self, run: str, counts: dict[str, int]) -> None:
        """Record the end of a commit run and its counts."""

    @abstractmethod
    def run_templates(self) -> list[str]:
        """The templates commit runs used, those of unfinished (killed) runs first, newest first."""

    @abstractmethod
    def runs(self) -> list[Run]:
        """Every commit run, in the order they started."""

    @abstractmethod
    def load(self, records: Sequence[Record], runs: Sequence[Run]) -> None:
        """Store rows and runs copied from another manifest as they are (ids included), in
        one transaction (``manifest copy``).

        Raises:
            ManifestError: this manifest is not empty.
        """

    @abstractmethod
    def moving(self, to: str) -> AbstractContextManager[None]:
        """A transaction in which nobody else writes (reads go on); when it ends without an
        error, this manifest is marked as moved to *to*: every later use is refused, naming
        *to*, and so is every later write of a commit that had it open already."""

    def leased(self) -> AbstractContextManager[None]:
        """Hold a lease for this process while committing: renewed in the background, given
        up at exit (a shared manifest; nothing otherwise)."""
        return nullcontext()

    def claim(self, claims: Sequence[Claim]) -> set[str]:
        """Claim files before placing them; returns the sources this process got (the
        others are claimed by a live committer). Needs :meth:`leased`. A claim ends when
        :meth:`add` records the file, or when the lease is given up."""
        return {claim.source for claim in claims}

    @property
    def lease(self) -> str | None:
        """This process's lease, inside :meth:`leased` on a shared manifest."""
        return None

    def holders(self, status: Status, path: str, sha256: str | None, source: str) -> tuple[list[Record], bool]:
        """The rows of *status* at *path*, and whether another file with the bytes *sha256*
        is claimed (by a live committer, or by a dead one that ``recover`` will finish), read
        in one snapshot: identical bytes at a name that no row records are then that file's
        work in progress, not an interrupted run's."""
        return self.records(status, path=path), False

    def live_leases(self) -> set[str]:
        """The leases that have not expired."""
        return set()

    def expired_claims(self) -> list[Claim]:
        """Claims whose lease has expired (their committer is gone), for ``recover``."""
        return []

    def settle_claims(self, claims: Sequence[Claim], records: Sequence[NewRecord]) -> list[Claim]:
        """Record what ``recover`` found of expired *claims* (*records*, with their hosts) and
        end the claims, in one transaction; returns those settled (a lease renewed in the
        meantime keeps its claims, and their records are not added)."""
        return []

    def live_claims(self) -> list[Claim]:
        """Claims of live leases: files being committed now."""
        return []

    def snapshot(self) -> AbstractContextManager[None]:
        """Reads that see one moment of the manifest (a shared one changes meanwhile)."""
        return nullcontext()

    def exclusive(self) -> AbstractContextManager[None]:
        """What resolve and recover hold against each other on a shared manifest (a lock
        that frees itself when its session dies); nothing otherwise (the archive lock)."""
        return nullcontext()

    def read_only(self) -> str | None:
        """Why nothing can be written to this manifest (read-only media, no permission, a
        standby server), or None when it can be: for a page to offer no decisions."""
        return None

    @abstractmethod
    def rehearsal(self) -> BaseManifest:
        """A copy for a dry run: it reads as this manifest does, and what is written to it
        stays in memory, gone at :meth:`close`."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())
