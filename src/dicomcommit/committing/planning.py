"""Dry runs: what a commit would do, found by looking, without changing anything.

Looking first is only safe because nothing is written: the real commit never checks
before it links.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.dicom.headers import NotDicom, read_attrs, read_foreign
from dicomcommit.hashing import sha256_at
from dicomcommit.layout import CONFLICTS_DIR
from dicomcommit.manifests.sqlite import Record
from dicomcommit.naming import Template
from dicomcommit.staging.journal import JournalIndex


def plan(
    staging: Path,
    archive: Path,
    names: list[str],
    template: Template,
    report: CommitReport,
    *,
    leave_invalid: bool = False,
    settle: float = 0,
    source_prefix: str = "",
) -> None:
    """Fill *report* with the outcome each staged file would have.

    With *leave_invalid* (ingest), files that are not DICOM would be left in place; files
    no stager wrote that changed less than *settle* seconds ago would be left for a later
    run. Sources are recorded as *source_prefix* + name, as the real run records them.
    """
    journal = JournalIndex(staging)
    journal.refresh()
    try:
        _plan(staging, archive, names, template, report=report, journal=journal, leave_invalid=leave_invalid,
              settle_ns=int(settle * 1e9), prefix=source_prefix)  # fmt: skip
    finally:
        journal.close()


def _plan(
    staging: Path,
    archive: Path,
    names: list[str],
    template: Template,
    *,
    report: CommitReport,
    journal: JournalIndex,
    leave_invalid: bool,
    settle_ns: int,
    prefix: str,
) -> None:
    planned: dict[str, str] = {}  # target -> the staged file this run would commit there
    hashes: dict[str, str] = {}  # staged file -> sha256, known from its journal or read when needed
    kept: set[str] = set()  # sha256 of conflicts this run would keep

    def sha256_of(name: str) -> str:  # like commit: a foreign file is hashed only on a collision
        if name not in hashes:
            hashes[name] = sha256_at(staging / name) or ""
        return hashes[name]

    for name in names:
        try:
            fd = os.open(staging / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            size = st.st_size
            record = journal.get(name)
            if record is not None and record.describes(st) and record.covers(template.keywords):
                attrs = record.attrs  # its hash is read when it matters, as commit does
            elif (record is None or not record.describes(st)) and time.time_ns() - st.st_mtime_ns < settle_ns:
                report.left_in_place.append((name, "modified less than the settle time ago; may still be written"))
                continue
            else:
                try:
                    read = read_attrs if record is not None and record.describes(st) else read_foreign
                    attrs = read(fd, template.keywords, name=str(staging / name))
                except NotDicom as exc:
                    if leave_invalid:
                        report.left_in_place.append((name, str(exc)))
                    else:
                        report.count(Record("invalid", None, "", prefix + name, size, None, detail=str(exc),
                                            run=report.run))  # fmt: skip
                    continue
        finally:
            os.close(fd)
        target = template.render(attrs)
        existing = sha256_of(planned[target]) if target in planned else _hash_at(archive / target)
        status = "committed"
        if existing is None:
            planned[target] = name
        elif existing == (sha256 := sha256_of(name)) or sha256 in kept or _kept_conflict(archive, sha256):
            status = "duplicate"
        else:
            status = "conflict"
            kept.add(sha256)
        report.count(Record(status, target, target, prefix + name, size, hashes.get(name), attrs=attrs,
                            run=report.run))  # fmt: skip


def _kept_conflict(archive: Path, sha256: str) -> bool:
    return archive.joinpath(*CONFLICTS_DIR, f"{sha256}.dcm").exists()


def _hash_at(path: Path) -> str | None:
    """The hash of what is at *path*; None if nothing is; "" if something that is not a file is."""
    found = sha256_at(path)
    if found is not None:
        return found
    return "" if os.path.lexists(path) else None
