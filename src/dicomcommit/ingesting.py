"""Ingest: commit an existing tree of DICOM files through the same safe protocol.

The tree may hold any names, nested folders and non-DICOM files. DICOM files are copied
(or, with ``move``, moved) into the archive under their header-derived names, with the
same no-clobber links, duplicate and conflict handling, and manifest as ``commit``. Other
files are reported and left where they are. Only headers are read to name a file; its
content is read again only when its name is taken and the bytes must be compared. Rerunning
on the same tree finds everything a duplicate.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from dicomcommit.archive import check_dirs, new_run_id
from dicomcommit.committing import DEFAULT_BATCH, CommitReport, OnConflict, Progress, commit_names
from dicomcommit.errors import UsageError, names_os_errors
from dicomcommit.headers import Described, describe
from dicomcommit.naming import DEFAULT_TEMPLATE, parse_template
from dicomcommit.planning import plan
from dicomcommit.scanning import scan_staging


@names_os_errors("ingest")
def ingest(
    source_dir: str | os.PathLike[str],
    archive_dir: str | os.PathLike[str],
    *,
    move: bool = False,
    template: str = DEFAULT_TEMPLATE,
    on_conflict: OnConflict = "record",
    jobs: int = 1,
    durable: bool = True,
    dry_run: bool = False,
    allow_collisions: bool = False,
    batch_size: int = DEFAULT_BATCH,
    lock_timeout: float | None = None,
    progress: Progress | None = None,
) -> CommitReport:
    """Commit every DICOM file below *source_dir* into *archive_dir*.

    Args:
        move: remove each source file once its bytes are committed or recorded (default:
            copy, and leave the source tree as it was).
        jobs: processes reading headers in parallel.
        Others: as :func:`dicomcommit.commit`.

    Returns:
        The report; ``left_in_place`` lists the files that are not DICOM, with why.

    Raises:
        UsageError, TemplateError, ConflictError, LockTimeout, CommitError: as ``commit``.
    """
    if jobs < 1:
        raise UsageError(f"jobs must be at least 1, not {jobs}")
    parsed = parse_template(template, allow_collisions=allow_collisions)
    source, archive = check_dirs(Path(source_dir), Path(archive_dir), what="source")
    scan = scan_staging(source, include_hidden=True)
    report = CommitReport(run=new_run_id(), dry_run=dry_run, left_in_place=list(scan.skipped))
    if dry_run:
        plan(source, archive, scan.files, parsed, report, leave_invalid=True)
        return report
    described = _describe_all(source, scan.files, parsed.keywords, jobs) if jobs > 1 else None
    commit_names(source, archive, scan.files, parsed, report, on_conflict=on_conflict, durable=durable,
                 batch_size=batch_size, lock_timeout=lock_timeout, progress=progress,
                 mode="move" if move else "copy", described=described)  # fmt: skip
    return report


def _describe_all(source: Path, names: list[str], keywords: tuple[str, ...], jobs: int) -> dict[str, Described]:
    """Hash and read headers in *jobs* processes; a file that fails here is read again later."""
    read = partial(_describe_or_none, keywords=keywords)
    with ProcessPoolExecutor(jobs) as pool:
        results = pool.map(read, [str(source / name) for name in names], chunksize=64)
        return {name: result for name, result in zip(names, results, strict=True) if result is not None}


def _describe_or_none(path: str, keywords: tuple[str, ...]) -> Described | None:
    try:
        return describe(path, keywords)
    except OSError:
        return None  # commit reads it again, and reports the error with the file's name
