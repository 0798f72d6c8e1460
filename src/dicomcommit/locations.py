"""What kind of place a location names: an archive on an object store (``s3://bucket/prefix``)
or a directory; a manifest many hosts share (PostgreSQL) or an SQLite file."""

from __future__ import annotations

import os

OBJECT_STORE_SCHEMES = ("s3://",)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_object_store(location: str | os.PathLike[str]) -> bool:
    """Whether *location* is an object-store archive's URL (``s3://bucket/prefix``), not a directory."""
    return isinstance(location, str) and location.startswith(OBJECT_STORE_SCHEMES)


def is_shared(url: str) -> bool:
    """Whether the manifest *url* is one many hosts share (PostgreSQL)."""
    return url.startswith(POSTGRES_SCHEMES)


def is_other_url(location: str | os.PathLike[str]) -> bool:
    """Whether *location* looks like a URL (``scheme:/...``) of no kind we know: taken as a
    path, it would quietly become a local directory (``s3:/bucket`` with one slash, ``gs://``)."""
    if not isinstance(location, str) or is_object_store(location):
        return False
    scheme, sep, rest = location.partition(":")
    return bool(sep) and scheme.isalnum() and rest.startswith("/")
