"""Finding the files waiting in a staging directory."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from dicomcommit.layout import PART_SUFFIX, STAGED_SUFFIX

# The name a Stager gives a file: its staging time in nanoseconds (16 hex digits), a UUID4.
_STAGED_NAME = re.compile(rf"([0-9a-f]{{16}})-[0-9a-f]{{32}}{re.escape(STAGED_SUFFIX)}")


@dataclass
class Scan:
    """Regular files to commit (relative paths, sorted), and what is left alone, with why."""

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def scan_staging(staging: Path, *, include_hidden: bool = False, skip_parts: bool = True) -> Scan:
    """List the staged files below *staging*, recursively, oldest first.

    Hidden entries (names starting with ``.``, such as the journal directory) are ignored,
    unless *include_hidden* (for ingest, where a hidden folder may hold DICOM files).
    Symlinks (never followed) and special files are listed as skipped and left where they
    are; so are ``.part`` files (unfinished stages), unless not *skip_parts* (for ingest:
    in a tree no stager writes to, ``x.part`` is a file like any other). A folder below
    *staging* that cannot be read is listed as skipped (``"name/"``), and the walk goes on.

    Raises:
        OSError: *staging* itself cannot be read.
    """
    walk = _Walk(Scan(), include_hidden, skip_parts)
    walk.walk(staging, "")
    # Oldest first, so the file staged first wins its name; ties by name, deterministically.
    # Age is the staging time a stager's name carries, else the file's mtime.
    walk.timed.sort()
    walk.scan.files = [rel for _, rel in walk.timed]
    return walk.scan


@dataclass
class _Walk:
    scan: Scan
    include_hidden: bool
    skip_parts: bool
    timed: list[tuple[int, str]] = field(default_factory=list)  # (mtime, name) of each file found

    def walk(self, directory: Path, prefix: str) -> None:
        try:
            listing = os.scandir(directory)
        except FileNotFoundError:
            return  # a folder removed while we walk (by its tool, or an ingest --move)
        except OSError as exc:
            if not prefix:
                raise  # the tree itself: nothing to do is not what the caller should hear
            # One folder we may not read (permissions, a broken mount) must not stop the others.
            self.scan.skipped.append((prefix, f"cannot be read ({exc.strerror})"))
            return
        with listing:  # one DirEntry at a time: a list of 100,000 would cost 150 MB
            try:
                for entry in listing:
                    self._entry(entry, prefix)
            except OSError as exc:  # the listing broke off midway (an I/O error, a stale NFS handle)
                if not prefix:
                    raise
                self.scan.skipped.append((prefix, f"cannot be read to the end ({exc.strerror})"))

    def _entry(self, entry: os.DirEntry[str], prefix: str) -> None:
        try:
            self._look_at(entry, prefix)
        except FileNotFoundError:
            pass  # another committer may take any file between the listing and a look at it
        except OSError as exc:  # its type or age cannot be read (in a folder we may list, not search)
            self.scan.skipped.append((prefix + entry.name, f"cannot be read ({exc.strerror})"))

    def _look_at(self, entry: os.DirEntry[str], prefix: str) -> None:
        if entry.name.startswith(".") and not self.include_hidden:
            return
        rel = prefix + entry.name
        if entry.is_symlink():
            self.scan.skipped.append((rel, "symlink, not followed"))
        elif entry.is_dir(follow_symlinks=False):
            self.walk(Path(entry.path), rel + "/")
        elif not entry.is_file(follow_symlinks=False):
            self.scan.skipped.append((rel, "not a regular file"))
        elif self.skip_parts and entry.name.endswith(PART_SUFFIX):
            self.scan.skipped.append((rel, f"unfinished stage ({PART_SUFFIX})"))
        else:
            staged = _STAGED_NAME.fullmatch(entry.name) if self.skip_parts and not prefix else None
            # A stager's name starts with its staging time (ns, hex): no stat needed to order it.
            when = int(staged[1], 16) if staged else entry.stat(follow_symlinks=False).st_mtime_ns
            self.timed.append((when, rel))
