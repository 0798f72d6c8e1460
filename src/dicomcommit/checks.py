"""The checks every command makes on its arguments before it touches anything."""

from __future__ import annotations

import math
import os
from pathlib import Path

from dicomcommit.errors import UsageError
from dicomcommit.locations import is_object_store, is_other_url


def check_lock_timeout(timeout: float | None) -> None:
    """Refuse a lock timeout that is not None or a finite number of seconds, 0 or more.

    Raises:
        UsageError: naming the value (filelock would take a negative one as "forever").
    """
    if timeout is not None:
        check_seconds("lock_timeout", timeout, "or None")


def check_seconds(what: str, seconds: float, alternative: str = "") -> None:
    """Refuse a duration that is not a finite number of seconds, 0 or more (nan, inf, -1).

    Raises:
        UsageError: naming *what* and the value.
    """
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
        tail = f" {alternative}" if alternative else ""
        raise UsageError(f"{what} must be a finite number of seconds, 0 or more{tail}; not {seconds!r}")


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size under 1.

    Raises:
        UsageError: naming the value.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, not {batch_size}")


def check_dir(path: str | os.PathLike[str], what: str) -> None:
    """Check that *path* is a directory (an object-store URL passes: the store is asked when used).

    Raises:
        UsageError: it does not exist or is not one, naming *what* it is for.
    """
    if not is_object_store(path) and not Path(path).is_dir():
        raise UsageError(f"{what} {path} does not exist or is not a directory")


def check_dirs(
    staging: Path, archive: str | os.PathLike[str], *, what: str = "staging directory"
) -> tuple[Path, str | Path]:
    """Check that *staging* is a directory, *archive* is one or is missing (or is an
    object-store URL, returned as it is), and neither holds the other.

    Raises:
        UsageError: naming which of the two is wrong.
    """
    check_dir(staging, what)
    if is_object_store(archive):
        return staging, os.fspath(archive)
    if is_other_url(archive):
        raise UsageError(f"unknown archive URL {archive!r}: a directory, or s3://bucket/prefix")
    archive = Path(archive)
    if archive.exists() and not archive.is_dir():
        raise UsageError(f"archive {archive} is not a directory")
    s, a = staging.resolve(), archive.resolve()
    if s == a or s in a.parents or a in s.parents:
        raise UsageError(f"{what} {staging} and archive {archive} must not contain each other")
    return staging, archive
