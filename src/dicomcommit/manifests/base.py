"""The manifest's interface: what commit, review, resolve and recover ask of any manifest.

An implementation stores rows (:class:`~dicomcommit.manifests.records.Record`) and runs;
:func:`dicomcommit.manifests.open_manifest` picks it from a location.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Self

from dicomcommit.manifests.records import NewRecord, Record, Status


class BaseManifest(ABC):
    """A manifest. Use it as a context manager, or :meth:`close` it."""

    #: Where it is, for messages (a path or a URL).
    location: str

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
    def find(self, source: str, sha256: str) -> Record | None:
        """The row of the file *source* with these bytes, if one is stored (its rerun key)."""

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
