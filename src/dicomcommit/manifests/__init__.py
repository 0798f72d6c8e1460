"""Manifests: the record of what happened to every staged file.

:class:`~dicomcommit.manifests.base.BaseManifest` is the interface; SQLite, in the archive's
state directory, is the one implementation today (:class:`Manifest`). :func:`open_manifest`
is the one place that picks an implementation.
"""

from __future__ import annotations

import os

from dicomcommit.manifests.base import BaseManifest
from dicomcommit.manifests.sqlite import SQLiteManifest, set_aside

#: The default manifest: SQLite, at ``ARCHIVE/.dicomcommit/manifest.sqlite``.
Manifest = SQLiteManifest


def open_manifest(
    archive: str | os.PathLike[str], *, create: bool = False, durable: bool = True, rehearse: bool = False
) -> BaseManifest:
    """The manifest of *archive*.

    Args:
        create: create it if missing (commit does; review, show and report do not).
        durable: a committed transaction survives a power loss.
        rehearse: for a dry run: a copy in memory (empty when there is no manifest yet), so
            that the run writes as a real one would and changes nothing.

    Raises:
        ManifestError: there is none and *create* is False (and not *rehearse*), or it
            cannot be opened.
    """
    if rehearse:
        return SQLiteManifest.rehearsal_of(archive)
    return SQLiteManifest(archive, create=create, durable=durable)


__all__ = ["BaseManifest", "Manifest", "open_manifest", "set_aside"]
