"""Ingest: commit an existing tree of DICOM files through the same safe protocol.

The tree may hold any names, nested folders and non-DICOM files. DICOM files are copied
(or, with ``move``, moved) into the archive under their header-derived names, with the
same no-clobber links, duplicate and conflict handling, and manifest as ``commit``. Other
files are reported and left where they are. Only headers are read to name a file; its
content is read again only when its name is taken and the bytes must be compared. Rerunning
on the same tree finds everything a duplicate.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from dicomcommit.archives import open_archive
from dicomcommit.checks import check_batch_size, check_dirs, check_lock_timeout, check_seconds
from dicomcommit.committing.driver import DEFAULT_BATCH, DEFAULT_SETTLE, OnConflict, Progress, check_on_conflict, run
from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.committing.sources import SourceTree
from dicomcommit.dicom.headers import Described, describe
from dicomcommit.errors import IngestError, UsageError, names_os_errors
from dicomcommit.manifests import manifest_url
from dicomcommit.manifests.records import new_run_id
from dicomcommit.naming import DEFAULT_TEMPLATE, parse_template
from dicomcommit.scanning import scan_staging


@names_os_errors("ingest", IngestError)
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
    settle: float | None = None,
    manifest: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
) -> CommitReport:
    """Commit every DICOM file below *source_dir* into *archive_dir* (a directory, or
    ``s3://bucket/prefix`` with a *manifest*; its requests in flight are the default 32).

    Args:
        move: remove each source file once its bytes are committed or recorded (default:
            copy, and leave the source tree as it was).
        settle: seconds a file must have gone unmodified before it is taken; a younger one
            may still be written, and is left for a later run. Default: 2 with *move* (a
            source still growing must not lose its tail with its name), 0 for a copy.
        jobs: processes reading headers in parallel, from 1 to :func:`usable_cpus`.
        Others: as :func:`dicomcommit.commit`.

    Returns:
        The report; ``left_in_place`` lists the files that are not DICOM, and the folders
        that cannot be read, with why.

    Raises:
        UsageError: *jobs* out of range, or as ``commit`` (a bad batch size, lock timeout,
            directory).
        TemplateError, ConflictError, LockTimeout, LockError, ArchiveError: as ``commit``.
        IngestError: an OS error on a named file; that file is still in the source tree.
    """
    cpus = usable_cpus()
    if not 1 <= jobs <= cpus:
        raise UsageError(f"jobs must be from 1 to {cpus} (the CPUs this process may use), not {jobs}")
    # Checked before the walk, which can take minutes on a big tree.
    check_on_conflict(on_conflict)
    check_batch_size(batch_size)
    check_lock_timeout(lock_timeout)
    settle = (DEFAULT_SETTLE if move else 0.0) if settle is None else settle
    check_seconds("settle", settle)
    parsed = parse_template(template, allow_collisions=allow_collisions)
    url = manifest_url(archive_dir, manifest)
    source, archive = check_dirs(Path(source_dir), archive_dir, what="source")
    # A source tree is no staging directory: a file named *.part there is just a name.
    scan = scan_staging(source, include_hidden=True, skip_parts=False)
    report = CommitReport(run=new_run_id(), dry_run=dry_run, left_in_place=list(scan.skipped))
    with _readers(jobs) as pool:
        described = None if pool is None else _ReadAhead(source, scan.files, parsed.keywords, pool)
        tree = SourceTree(source, settle=settle, move=move, described=described)
        store = open_archive(archive, durable=durable, manifest=url, endpoint_url=endpoint_url)
        run(tree, store, scan.files, parsed, report, manifest=url,
            on_conflict=on_conflict, durable=durable, batch_size=batch_size, lock_timeout=lock_timeout,
            progress=progress)  # fmt: skip
    return report


def usable_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask, where there is one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _readers(jobs: int) -> Iterator[ProcessPoolExecutor | None]:
    """*jobs* header-reading processes (None for one job: the commit reads them itself)."""
    if jobs == 1:
        yield None
        return
    with ProcessPoolExecutor(jobs, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            yield pool
        finally:
            pool.shutdown(cancel_futures=True)  # a commit that stopped early waits for no more reads


class _ReadAhead:
    """Headers read (and hashed) by worker processes while the commit goes on: the workers
    read the files in the order commit takes them, and commit takes each description as it
    comes (a file that failed there is read again by commit, which reports the error)."""

    def __init__(self, source: Path, names: list[str], keywords: tuple[str, ...], pool: ProcessPoolExecutor) -> None:
        read = partial(_describe_or_none, keywords=keywords)
        self._order = iter(names)
        self._results = pool.map(read, [f"{source}/{name}" for name in names], chunksize=64)
        self._early: dict[str, Described] = {}

    def pop(self, name: str, default: None = None, /) -> Described | None:
        found = self._early.pop(name, None)
        if found is not None:
            return found
        for ahead, result in zip(self._order, self._results, strict=False):
            if ahead == name:
                return result
            if result is not None:  # commit skipped a name (gone): kept, in case it comes back
                self._early[ahead] = result
        return default


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when the ingest that started it is killed.

    A worker of a parent that was SIGKILLed would otherwise wait for its next task for
    minutes: its siblings hold the task pipe open, so it never sees end-of-file. Linux can
    send a signal when the parent dies; elsewhere this does nothing more than the check.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        # The signal goes when the *thread* that forked us ends: ingest runs the pool in the
        # calling thread, which waits in the pool until the work is done.
        libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL))
    # The parent may have died before prctl took effect; then we were already adopted.
    if os.getppid() != parent:
        os._exit(1)


def _describe_or_none(path: str, keywords: tuple[str, ...]) -> Described | None:
    try:
        return describe(path, keywords)
    except OSError:
        return None  # commit reads it again, and reports the error with the file's name
