"""Where commit takes files from, and each source's own rules.

- :class:`StagingDir`: files a :class:`~dicomcommit.Stager` (or another tool) put in a
  staging directory. The stager's journal names them without reading them; a file that
  is not DICOM is set aside in the archive (``invalid/``); a committed file leaves staging.
- :class:`SourceTree`: an existing tree that ``ingest`` copies (or, with ``move``, moves)
  into the archive. It has no journal; a file that is not DICOM stays where it is.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomcommit import _fs
from dicomcommit._faults import point
from dicomcommit.committing.describing import Prefetched
from dicomcommit.errors import CommitError, IngestError
from dicomcommit.staging.journal import JournalIndex


@dataclass
class Source:
    """A directory commit takes files from, named relative to *root*. Open a batch with
    :meth:`start_batch` (then :attr:`dir_fd` is its directory) and end it with :meth:`end_batch`."""

    root: Path
    settle: float = 0.0  # seconds a file no stager vouches for must go unmodified before it is taken
    rehearsing: bool = False  # a dry run: nothing is flushed, removed or pruned
    dir_fd: int = -1
    #: How the manifest names its files: their name relative to root, after this.
    prefix: str = ""
    #: Copy files into the archive, and leave them (rather than link, then remove them).
    copies: bool = False
    #: Keep files that are not DICOM in the archive's ``invalid/`` (rather than leave them).
    sets_aside_invalid: bool = True
    journal: JournalIndex | None = None
    #: What worker processes read ahead of commit (ingest ``--jobs``), by name.
    described: Prefetched | None = None

    def rehearsal(self) -> Source:
        """A copy of this source for a dry run: it flushes, removes and prunes nothing."""
        return dataclasses.replace(self, rehearsing=True)

    def start_batch(self) -> None:
        """Open the directory for a batch (and read what the journal gained since the last)."""
        if self.journal is not None:
            self.journal.refresh()
        self.dir_fd = _fs.open_root(self.root)

    def end_batch(self) -> None:
        """Close the batch's directory."""
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def flush(self, names: list[str]) -> None:
        """Make the bytes of *names* durable: they are about to get names in the archive."""
        if names and not self.rehearsing:
            _fs.flush_files(self.dir_fd, names)

    def release(self, name: str) -> None:
        """The file *name* is committed and recorded: what the source does with it now.

        Raises:
            CommitError: it could not be removed (a rerun finds it recorded and removes it).
        """
        if self.copies or self.rehearsing:
            return
        try:
            _fs.unlink_quietly(self.dir_fd, name)
        except OSError as exc:  # recorded already: a rerun finds it linked and removes it
            msg = f"committed and recorded, but not removed from {self.root} ({exc.strerror}); rerun"
            raise self.failure(msg, self.root / name, exc) from exc
        point("commit:after-unlink")

    def finish(self) -> None:
        """After the last batch (under the lock): drop journal lines of committed files."""
        if self.journal is not None and not self.rehearsing:
            self.journal.refresh()
            self.journal.prune()

    def close(self) -> None:
        """Release the journal."""
        if self.journal is not None:
            self.journal.close()

    def failure(self, message: str, path: str | os.PathLike[str], exc: OSError | None = None) -> CommitError:
        """The error for an OS failure on one of its files (which stays where it is)."""
        return CommitError(message, path, exc)


@dataclass
class StagingDir(Source):
    """A staging directory, with the journal of its stagers."""

    def __post_init__(self) -> None:
        self.journal = JournalIndex(self.root)


@dataclass
class SourceTree(Source):
    """A tree ``ingest`` copies (or, with *move*, moves) from; named in the manifest by path."""

    move: bool = False
    # Not arguments here: they follow from root and move.
    prefix: str = field(init=False, default="")
    copies: bool = field(init=False, default=True)
    sets_aside_invalid: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.prefix, self.copies = f"{self.root}/", not self.move

    def failure(self, message: str, path: str | os.PathLike[str], exc: OSError | None = None) -> CommitError:
        return IngestError(message, path, exc)
