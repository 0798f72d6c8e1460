"""Archives: where committed files go.

:class:`~dicomcommit.archives.base.BaseArchive` is the interface; a POSIX directory is the
one implementation today (:class:`~dicomcommit.archives.filesystem.FilesystemArchive`);
:class:`~dicomcommit.archives.rehearsal.Rehearsal` stands in for one in a dry run.
:func:`open_archive` is the one place that picks an implementation.
"""

from __future__ import annotations

import os

from dicomcommit.archives.base import BaseArchive
from dicomcommit.archives.filesystem import FilesystemArchive


def open_archive(location: str | os.PathLike[str], *, durable: bool = True) -> BaseArchive:
    """The archive at *location* (a directory; it may not exist yet)."""
    return FilesystemArchive(location, durable=durable)


__all__ = ["BaseArchive", "FilesystemArchive", "open_archive"]
