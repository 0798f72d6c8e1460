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
