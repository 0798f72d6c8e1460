"""Finding the files waiting in a staging directory."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomcommit.staging import PART_SUFFIX


@dataclass
class Scan:
    """Regular files to commit (relative paths, sorted), and what is left alone, with why."""

    files: list[str] = field(default_factory=list)
    _timed: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def scan_staging(staging: Path, *, include_hidden: bool = False) -> Scan:
    """List the staged files below *staging*, recursively, oldest first.

    Hidden entries (names starting with ``.``, such as the journal directory) are ignored,
    unless *include_hidden* (for ingest, where a hidden folder may hold DICOM files).
    ``.part`` files (unfinished stages), symlinks (never followed) and special files are
    listed as skipped and left where they are.
    """
    scan = Scan()
    _walk(staging, "", scan, include_hidden)
    # Oldest first, so the file staged first wins its name; ties by name, deterministically.
    scan._timed.sort()
    scan.files = [rel for _, rel in scan._timed]
    scan._timed.clear()
    return scan


def _walk(directory: Path, prefix: str, scan: Scan, include_hidden: bool) -> None:
    try:
        listing = os.scandir(directory)
    except FileNotFoundError:
        return  # a folder removed while we walk (by its tool, or an ingest --move)
    with listing:  # one DirEntry at a time: a list of 100,000 would cost 150 MB
        for entry in listing:
            # Another committer may take any file between the listing and a look at it.
            with contextlib.suppress(FileNotFoundError):
                _look_at(entry, prefix, scan, include_hidden)


def _look_at(entry: os.DirEntry[str], prefix: str, scan: Scan, include_hidden: bool) -> None:
    if entry.name.startswith(".") and not include_hidden:
        return
    rel = prefix + entry.name
    if entry.is_symlink():
        scan.skipped.append((rel, "symlink, not followed"))
    elif entry.is_dir(follow_symlinks=False):
        _walk(Path(entry.path), rel + "/", scan, include_hidden)
    elif not entry.is_file(follow_symlinks=False):
        scan.skipped.append((rel, "not a regular file"))
    elif entry.name.endswith(PART_SUFFIX):
        scan.skipped.append((rel, "unfinished stage (.part)"))
    else:
        scan._timed.append((entry.stat(follow_symlinks=False).st_mtime_ns, rel))
