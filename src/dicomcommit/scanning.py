"""Finding the files waiting in a staging directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dicomcommit.staging import PART_SUFFIX


@dataclass
class Scan:
    """Regular files to commit (relative paths, sorted), and what is left alone, with why."""

    files: list[str] = field(default_factory=list)
    mtimes: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def scan_staging(staging: Path) -> Scan:
    """List the staged files below *staging*, recursively, oldest first.

    Hidden entries (names starting with ``.``, such as the journal directory) are ignored.
    ``.part`` files (unfinished stages), symlinks (never followed) and special files are
    listed as skipped and left where they are.
    """
    scan = Scan()
    _walk(staging, "", scan)
    # Oldest first, so the file staged first wins its name; ties by name, deterministically.
    scan.files.sort(key=lambda rel: (scan.mtimes[rel], rel))
    scan.mtimes.clear()
    return scan


def _walk(directory: Path, prefix: str, scan: Scan) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if entry.is_symlink():
                scan.skipped.append((rel, "symlink, not followed"))
            elif entry.is_dir(follow_symlinks=False):
                _walk(Path(entry.path), rel + "/", scan)
            elif not entry.is_file(follow_symlinks=False):
                scan.skipped.append((rel, "not a regular file"))
            elif entry.name.endswith(PART_SUFFIX):
                scan.skipped.append((rel, "unfinished stage (.part)"))
            else:
                scan.files.append(rel)
                scan.mtimes[rel] = entry.stat(follow_symlinks=False).st_mtime_ns
