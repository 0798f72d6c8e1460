"""Manifests: the record of what happened to every staged file.

:class:`~dicomcommit.manifests.base.BaseManifest` is the interface. Two implementations:
SQLite (one host; by default ``ARCHIVE/.dicomcommit/manifest.sqlite``) and PostgreSQL
(many hosts committing into one archive at once). :func:`open_manifest` is the one place
that picks one, from a location: ``--manifest URL``, else ``DICOMCOMMIT_MANIFEST``, else
the archive's default file.
"""

from __future__ import annotations

import os

from dicomcommit.errors import UsageError
from dicomcommit.locations import POSTGRES_SCHEMES, is_object_store, is_shared
from dicomcommit.manifests.base import BaseManifest
from dicomcommit.manifests.sqlite import SQLiteManifest, default_path, set_aside

#: The environment variable that names the manifest when ``--manifest`` is not given.
ENV_MANIFEST = "DICOMCOMMIT_MANIFEST"

Location = str | os.PathLike[str]


def manifest_url(archive: Location, manifest: Location | None = None) -> str:
    """The manifest an archive's commands use: *manifest* (a path, ``sqlite:///path`` or
    ``postgresql://user@host:port/dbname``), else ``$DICOMCOMMIT_MANIFEST``, else the
    archive's default SQLite file. An SQLite location comes back as a plain path.

    Raises:
        UsageError: a URL of another scheme, or an ``sqlite:`` URL that is not ``sqlite:///path``;
            no manifest given for an object-store archive (it has no default file).
    """
    given = os.fspath(manifest) if manifest is not None else os.environ.get(ENV_MANIFEST) or None
    if given is None or given == "":
        if is_object_store(archive):
            raise UsageError(f"an object-store archive ({archive}) keeps no manifest on the store: give "
                             "--manifest (an SQLite file on this host, or postgresql://user@host/dbname for "
                             "many hosts)")  # fmt: skip
        return str(default_path(archive))
    if given.startswith(POSTGRES_SCHEMES):
        return given
    if given.startswith("sqlite:"):
        path = given.removeprefix("sqlite://")
        if not path.startswith("/") or path.startswith("//"):
            raise UsageError(f"an SQLite manifest is sqlite:///absolute/path (or a plain path), not {given!r}")
        return path
    scheme, sep, _ = given.partition("://")
    if sep and scheme.isalnum():
        raise UsageError(f"unknown manifest URL {given!r}: a path, sqlite:///path or postgresql://user@host/dbname")
    return given


def open_manifest(
    archive: Location,
    *,
    manifest: Location | None = None,
    create: bool = False,
    durable: bool = True,
    rehearse: bool = False,
) -> BaseManifest:
    """The manifest of *archive*, at *manifest* (see :func:`manifest_url`).

    Args:
        create: create it if missing (commit does; review, show and report do not).
        durable: a committed transaction survives a power loss.
        rehearse: for a dry run: a copy in memory (empty when there is no manifest yet), so
            that the run writes as a real one would and changes nothing.

    Raises:
        UsageError: *manifest* is not a manifest location.
        ManifestError: there is none and *create* is False (and not *rehearse*), or it
            cannot be opened.
    """
    url = manifest_url(archive, manifest)
    if is_shared(url):
        try:  # psycopg (the "postgresql" extra) is imported only for a PostgreSQL manifest
            from dicomcommit.manifests.postgres import PostgresManifest  # noqa: PLC0415
        except ImportError as exc:
            raise UsageError(
                f"a PostgreSQL manifest needs psycopg ({exc}): pip install 'dicomcommit[postgresql]'"
            ) from exc

        if rehearse:
            return PostgresManifest.rehearsal_of(url)
        return PostgresManifest(url, create=create, durable=durable)
    if rehearse:
        return SQLiteManifest.rehearsal_of(url)
    return SQLiteManifest(url, create=create, durable=durable)


def Manifest(  # noqa: N802 -- the public name of 0.1, when it was the SQLite class
    archive: Location, manifest: Location | None = None, *, create: bool = False, durable: bool = True
) -> BaseManifest:
    """The manifest of *archive* (at *manifest*, ``$DICOMCOMMIT_MANIFEST`` or the default
    file), as :func:`open_manifest`; or the manifest *archive* itself when it is a URL
    (``Manifest("postgresql://...")``)."""
    if manifest is None and os.fspath(archive).startswith((*POSTGRES_SCHEMES, "sqlite:")):
        archive, manifest = ".", archive
    return open_manifest(archive, manifest=manifest, create=create, durable=durable)


__all__ = [
    "ENV_MANIFEST",
    "BaseManifest",
    "Manifest",
    "SQLiteManifest",
    "is_shared",
    "manifest_url",
    "open_manifest",
    "set_aside",
]
