"""Archives: where committed files go.

:class:`~dicomcommit.archives.base.BaseArchive` is the interface. Two implementations: a
POSIX directory (:class:`~dicomcommit.archives.filesystem.FilesystemArchive`) and a prefix
of an S3 bucket (:class:`~dicomcommit.archives.s3.S3Archive`, ``s3://bucket/prefix``);
:class:`~dicomcommit.archives.rehearsal.Rehearsal` stands in for one in a dry run.
:func:`open_archive` is the one place that picks an implementation.
"""

from __future__ import annotations

import os
from pathlib import Path

from dicomcommit.archives.base import BaseArchive
from dicomcommit.archives.filesystem import FilesystemArchive
from dicomcommit.errors import UsageError
from dicomcommit.locations import is_object_store, is_shared


def open_archive(
    location: str | os.PathLike[str],
    *,
    durable: bool = True,
    manifest: str | None = None,
    endpoint_url: str | None = None,
    jobs: int | None = None,
) -> BaseArchive:
    """The archive at *location*: a directory (it may not exist yet), or ``s3://bucket/prefix``.

    Args:
        durable: (a directory) fsync what changes.
        manifest: the manifest's location (from ``manifest_url``): with an SQLite file, an
            object-store archive is locked by a file next to it (``<manifest>.lock``).
        endpoint_url: (an object store) its endpoint, instead of the AWS chain's.
        jobs: (an object store) requests in flight at most.

    Raises:
        UsageError: an object-store URL without boto3 installed, or a malformed one.
    """
    if not is_object_store(location):
        return FilesystemArchive(location, durable=durable)
    try:  # boto3 (the "s3" extra) is imported only for an object-store archive
        from dicomcommit.archives.s3 import DEFAULT_JOBS, S3Archive  # noqa: PLC0415
    except ImportError as exc:
        raise UsageError(f"an object-store archive needs boto3 ({exc}): pip install 'dicomcommit[s3]'") from exc
    lock_file = None if manifest is None or is_shared(manifest) else Path(f"{manifest}.lock")
    return S3Archive(os.fspath(location), endpoint_url=endpoint_url, jobs=jobs or DEFAULT_JOBS, lock_file=lock_file)


__all__ = ["BaseArchive", "FilesystemArchive", "open_archive"]
