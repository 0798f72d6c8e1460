"""Commit: give each staged file its final name, never replacing a file, losing none.

Per batch, under the archive lock:

1. find each file's naming attributes: from the stager's journal while the file is
   provably the one its line describes (inode, size, nanosecond mtime), else from its
   header, once a foreign file has settled (``settle``) and is proven whole (declared
   lengths against its size; its pixel data is never read to name it); files whose bytes
   may not be durable yet (foreign ones) are flushed together, once;
2. render each target and hard-link the file there (``link`` fails if the name is taken;
   a file with other hard links is copied first, then linked);
3. taken by our own inode: an interrupted earlier run already did it -> committed;
   taken by identical bytes (the staged file is always hashed now, whatever its journal
   says) -> duplicate of the row that records them (committed, if none does); by other
   bytes -> conflict, and the staged bytes are linked into ``.dicomcommit/conflicts/``
   (or, with ``on_conflict="suffix"``, under a derived name);
4. fsync every touched directory once, record the batch in the manifest in one
   transaction, and only then unlink the staged files.

A crash anywhere leaves each staged file in place until its outcome is recorded; a rerun
finds its earlier links (same inode) and records them, so commit converges.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

from dicomcommit import _fs
from dicomcommit._faults import point
from dicomcommit.archives.filesystem import archive_lock, check_dirs, check_lock_timeout, check_seconds, new_run_id
from dicomcommit.committing.describing import Describer, Staged
from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.committing.planning import plan
from dicomcommit.dicom.headers import Described
from dicomcommit.errors import CommitError, ConflictError, DicomCommitError, UsageError, names_os_errors
from dicomcommit.hashing import sha256_at
from dicomcommit.layout import CONFLICTS_DIR, INVALID_DIR, TMP_DIR
from dicomcommit.manifests.sqlite import FOUND_IN_ARCHIVE, Manifest, Record
from dicomcommit.naming import DEFAULT_TEMPLATE, Template, derived_name, parse_template
from dicomcommit.scanning import scan_staging
from dicomcommit.staging.journal import JournalIndex

log = logging.getLogger("dicomcommit")

OnConflict = Literal["record", "suffix", "error"]
SourceMode = Literal["staging", "copy", "move"]
ON_CONFLICT_CHOICES: tuple[OnConflict, ...] = ("record", "suffix", "error")
DEFAULT_BATCH = 2000
DEFAULT_SETTLE = 2.0  # seconds a foreign file must go unmodified before commit takes it

Progress = Callable[[int, int], None]
_T = TypeVar("_T")


@names_os_errors("commit")
def commit(
    staging_dir: str | os.PathLike[str],
    archive_dir: str | os.PathLike[str],
    *,
    template: str = DEFAULT_TEMPLATE,
    on_conflict: OnConflict = "record",
    durable: bool = True,
    dry_run: bool = False,
    allow_collisions: bool = False,
    batch_size: int = DEFAULT_BATCH,
    lock_timeout: float | None = None,
    progress: Progress | None = None,
    settle: float = DEFAULT_SETTLE,
) -> CommitReport:
    """Commit every staged file in *staging_dir* into *archive_dir*.

    Args:
        template: the final name, relative to the archive, over DICOM keywords.
        on_conflict: a different file already holds the name: ``record`` keeps the staged
            file in ``.dicomcommit/conflicts/`` and records it; ``suffix`` commits it under
            ``<name>~<sha256 prefix>.<ext>``; ``error`` stops, leaving it staged.
        durable: fsync files and touched directories (once per batch) before recording.
        dry_run: report what would happen; change nothing, take no lock.
        allow_collisions: accept a template without ``SOPInstanceUID``.
        batch_size: files per lock hold and manifest transaction.
        lock_timeout: seconds to wait for the archive lock (None: wait as long as it takes).
        progress: called as ``progress(done, total)`` after each batch.
        settle: seconds a foreign file (one no stager wrote, or whose journal line does not
            describe it) must have gone unmodified before it is taken: a younger one may still
            be growing, and is left in place for the next run (0: take it at once).

    Raises:
        UsageError: bad arguments (TemplateError for the template).
        ConflictError: with ``on_conflict="error"``, at the first conflict; what came
            before it is committed and recorded, the conflicting file stays staged.
        LockTimeout: the archive lock was not acquired in *lock_timeout* seconds.
        CommitError: an OS error on a named file; that file is still staged.
    """
    if on_conflict not in ON_CONFLICT_CHOICES:
        raise UsageError(f"on_conflict must be one of {', '.join(ON_CONFLICT_CHOICES)}, not {on_conflict!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, not {batch_size}")
    check_seconds("settle", settle)
    check_lock_timeout(lock_timeout)
    parsed = parse_template(template, allow_collisions=allow_collisions)
    staging, archive = check_dirs(Path(staging_dir), Path(archive_dir))
    scan = scan_staging(staging)
    report = CommitReport(run=new_run_id(), dry_run=dry_run, left_in_place=scan.skipped)
    for name, reason in scan.skipped:
        log.warning("left in staging: %s (%s)", staging / name, reason)
    if dry_run:
        plan(staging, archive, scan.files, parsed, report, settle=settle)
        return report
    commit_names(staging, archive, scan.files, parsed, report, on_conflict=on_conflict, durable=durable,
                 batch_size=batch_size, lock_timeout=lock_timeout, progress=progress, settle=settle)  # fmt: skip
    return report


def commit_names(
    staging: Path,
    archive: Path,
    names: list[str],
    template: Template,
    report: CommitReport,
    *,
    on_conflict: OnConflict = "record",
    durable: bool = True,
    batch_size: int = DEFAULT_BATCH,
    lock_timeout: float | None = None,
    progress: Progress | None = None,
    mode: SourceMode = "staging",
    described: dict[str, Described] | None = None,
    settle: float = 0,
) -> None:
    """Commit the files *names* (relative to *staging*), adding to *report*.

    *mode* and *described* serve ingest: see :class:`_Committer`.
    """
    committer = _Committer(staging, archive, template, on_conflict=on_conflict, durable=durable, report=report,
                           mode=mode, described=described, settle=settle)  # fmt: skip
    committer.run(names, batch_size, lock_timeout, progress)


class _Committer:
    """Commits files from *staging* (a staging directory, or an ingest source).

    *mode* ``staging``: link, then remove the staged file; ``move``: the same for an ingest
    source (copying across filesystems); ``copy``: copy onto the archive's filesystem and
    link the copy, leaving the source alone. Outside ``staging`` mode, files that are not
    DICOM are reported and left in place instead of being set aside.
    """

    def __init__(
        self,
        staging: Path,
        archive: Path,
        template: Template,
        *,
        on_conflict: OnConflict,
        durable: bool,
        report: CommitReport,
        mode: SourceMode = "staging",
        described: dict[str, Described] | None = None,
        settle: float = 0,
    ) -> None:
        self.staging, self.archive, self.template = staging, archive, template
        self.on_conflict, self.durable, self.report = on_conflict, durable, report
        self.mode = mode
        self.placed: set[str] = set()  # archive paths this batch committed (their rows are not in yet)
        self.prefix = "" if mode == "staging" else f"{staging}/"
        self.journal = JournalIndex(staging) if mode == "staging" else None  # ingest sources have none
        self.facts = Describer(staging, template.keywords, journal=self.journal, copy=mode == "copy", settle=settle,
                               described=described)  # fmt: skip

    def run(self, names: list[str], batch_size: int, lock_timeout: float | None, progress: Progress | None) -> None:
        lock = archive_lock(self.archive, lock_timeout)
        with Manifest(self.archive, create=True, durable=self.durable) as manifest:
            self.manifest = manifest
            manifest.start_run(self.report.run, staging=str(self.staging), template=self.template.text)
            try:
                for start in range(0, len(names), batch_size):
                    with lock:
                        self._batch(names[start : start + batch_size], manifest)
                    if progress is not None:
                        progress(min(start + batch_size, len(names)), len(names))
                if self.journal is not None:
                    with lock:
                        self.journal.refresh()
                        self.journal.prune()
            finally:
                if self.journal is not None:
                    self.journal.close()
            manifest.finish_run(self.report.run, self.report.counts())

    def _batch(self, names: list[str], manifest: Manifest) -> None:
        if self.journal is not None:
            self.journal.refresh()
        self.tree = _fs.DirTree(self.archive, durable=self.durable, tmp=TMP_DIR)
        self.staging_fd = self.facts.dir_fd = _fs.open_root(self.staging)
        self.placed.clear()
        done: list[tuple[Record, str]] = []
        try:
            described = (self._guarded(name, partial(self.facts.describe, name)) for name in names)
            batch = [staged for staged in described if staged is not None]
            unsynced = [staged.name for staged in batch if staged.unsynced]
            if self.durable and unsynced:
                # Bytes first, names after: a name must never point at data a power cut can lose.
                _fs.flush_files(self.staging_fd, unsynced)
            for staged in batch:
                record = self._guarded(staged.name, partial(self._outcome, staged))
                if record is not None:
                    done.append((record, staged.name))
        finally:
            # Whatever happened, what was linked gets recorded before any staged file goes.
            try:
                self._finish(done, manifest)
            finally:
                self.tree.close()
                os.close(self.staging_fd)

    def _finish(self, done: list[tuple[Record, str]], manifest: Manifest) -> None:
        if self.durable:
            try:
                self.tree.fsync_touched()
            except OSError as exc:
                raise CommitError(
                    f"cannot fsync the archive ({exc.strerror}); nothing recorded", self.archive, exc
                ) from exc
        point("commit:before-manifest")
        stored = manifest.add(record for record, _ in done)
        point("commit:after-manifest")
        for record, name in done:
            self.report.count(stored.get(record.key(), record))
            if self.mode == "copy":
                continue
            try:
                _fs.unlink_quietly(self.staging_fd, name)
            except OSError as exc:  # recorded already: a rerun finds it linked and removes it
                msg = f"committed and recorded, but not removed from staging ({exc.strerror}); rerun commit"
                raise CommitError(msg, self.staging / name, exc) from exc
            point("commit:after-unlink")

    def _guarded(self, name: str, step: Callable[[], _T]) -> _T:
        """Run *step* for the staged file *name*, turning OS errors into a CommitError naming it."""
        try:
            return step()
        except DicomCommitError:
            raise
        except OSError as exc:
            raise CommitError(f"cannot commit staged file ({exc.strerror})", self.staging / name, exc) from exc

    def _outcome(self, staged: Staged) -> Record | None:
        try:
            return self._decide(staged)
        finally:
            staged.close()

    def _decide(self, staged: Staged) -> Record | None:
        if staged.left is not None:
            self.report.left_in_place.append((staged.name, staged.left))
            log.info("left in %s for a later run: %s (%s)", self.staging, staged.name, staged.left)
            return None
        if staged.invalid is None:
            return self._place(staged)
        if self.mode == "staging":
            return self._set_aside(staged, staged.invalid)
        self.report.left_in_place.append((staged.name, staged.invalid))
        return None

    def _place(self, staged: Staged) -> Record | None:
        target = self.template.render(staged.attrs)
        dirs, fname = _fs.split_rel(target)
        placed = self._link(staged, dirs, fname)
        if placed is not _fs.Placed.EXISTS:
            return self._committed(staged, target, target, placed)
        existing = self._existing_sha256(dirs, fname)
        sha256 = staged.hash(self.staging_fd)
        if staged.claimed is not None and staged.claimed != sha256:
            return self._journal_was_wrong(staged)
        if existing == sha256:
            return self._identical(staged, target, target, detail="identical file already committed")
        if self.on_conflict == "error":
            raise ConflictError(str(self.staging / staged.name), str(self.archive / target))
        if self.on_conflict == "suffix":
            record = self._commit_suffixed(staged, target, existing)
            if record is not None:
                return record
        return self._keep_conflict(staged, target, existing)

    def _journal_was_wrong(self, staged: Staged) -> Record | None:
        """The journal's line does not describe these bytes (edited after staging, or a false
        line): nothing of it is used; the file is named from its own header, as a foreign one."""
        log.warning("%s: its bytes are not the ones its journal line describes; named from its header",
                    self.staging / staged.name)  # fmt: skip
        staged.claimed = None
        staged.attrs = {}
        self.facts.read_foreign(staged)
        if self.durable and staged.unsynced and staged.left is None:
            _fs.flush_files(self.staging_fd, [staged.name])  # bytes durable before any name
        return self._decide(staged)

    def _committed(
        self,
        staged: Staged,
        target: str,
        path: str,
        placed: _fs.Placed,
        *,
        detail: str = "",
        existing: str | None = None,
    ) -> Record:
        if placed is _fs.Placed.SAME_INODE:
            return self._already_there(staged, target, path, how="linked by an interrupted earlier run",
                                       duplicate="already committed and recorded", linked=True)  # fmt: skip
        notes = [detail] if detail else []
        if staged.nlink > 1 and self.mode != "copy":
            notes.append(f"copied, not linked: the file has {staged.nlink - 1} other hard link(s)")
        self.placed.add(path)
        return self._record(staged, "committed", target, path, detail="; ".join(notes), existing=existing)

    def _identical(self, staged: Staged, target: str, path: str, *, detail: str) -> Record:
        """The same bytes are at *path* already."""
        how = "identical bytes were already there with no manifest row (an interrupted earlier run); recorded now"
        return self._already_there(staged, target, path, how=how, duplicate=detail)

    def _already_there(
        self, staged: Staged, target: str, path: str, *, how: str, duplicate: str, linked: bool = False
    ) -> Record:
        """This file's bytes are at *path* already (our own earlier link, or identical bytes):
        a duplicate of the row that records them; or, when no row does (an interrupted run
        placed them but did not record them), committed now. When ``recover`` recorded them
        as found in the archive, this file claims that row: it is where they came from."""
        recorded = None if path in self.placed else self._committed_row(path)
        if path in self.placed or (recorded is not None and not recorded.source.startswith(FOUND_IN_ARCHIVE)):
            if recorded is not None and recorded.source == self.prefix + staged.name:
                # This very file, recorded already: still linked (killed before the unlink), it
                # is committed; copied again (a rerun of ingest), a duplicate. The same key
                # either way, so nothing is recorded twice, even when its hash was not read now.
                again = self._record(staged, "committed" if linked else "duplicate", target, path, detail=duplicate)
                return replace(again, sha256=again.sha256 or recorded.sha256)
            return self._record(staged, "duplicate", target, path, detail=duplicate)
        self.placed.add(path)
        committed = self._record(staged, "committed", target, path, detail=how)
        return committed if recorded is None else replace(committed, id=recorded.id)

    def _commit_suffixed(self, staged: Staged, target: str, existing: str | None) -> Record | None:
        derived_rel = derived_name(target, staged.hash(self.staging_fd))
        dirs, derived = _fs.split_rel(derived_rel)
        placed = self._link(staged, dirs, derived)
        if placed is not _fs.Placed.EXISTS:
            detail = f"conflict with {target} (sha256 {existing}); committed under a derived name"
            return self._committed(staged, target, derived_rel, placed, detail=detail, existing=existing)
        if self._existing_sha256(dirs, derived) == staged.sha256:
            return self._identical(staged, target, derived_rel, detail="identical file already at the derived name")
        return None

    def _keep_conflict(self, staged: Staged, target: str, existing: str | None) -> Record:
        fname = f"{staged.hash(self.staging_fd)}.dcm"
        path = "/".join((*CONFLICTS_DIR, fname))
        if self._link(staged, CONFLICTS_DIR, fname) is _fs.Placed.EXISTS and self._open_conflict(path):
            # conflict copies are named by their hash: these bytes are already kept, and reviewed
            return self._record(
                staged, "duplicate", target, path, detail="identical to a recorded conflict", existing=existing
            )
        what = "a symlink or special file" if existing is None else f"a different file (sha256 {existing[:12]}…)"
        self.placed.add(path)
        return self._record(staged, "conflict", target, path, detail=f"the target holds {what}", existing=existing)

    def _set_aside(self, staged: Staged, reason: str) -> Record:
        fname = staged.hash(self.staging_fd)
        self._link(staged, INVALID_DIR, fname)  # named by hash: an identical copy is already kept
        return self._record(staged, "invalid", None, "/".join((*INVALID_DIR, fname)), detail=reason)

    def _committed_row(self, path: str) -> Record | None:
        """The manifest's committed row for the archive file *path*, if it has one."""
        rows = self.manifest.records("committed", path=path)
        return rows[0] if rows else None

    def _open_conflict(self, path: str) -> bool:
        """Whether a conflict row (in this batch or the manifest) keeps the bytes at *path*."""
        return path in self.placed or bool(self.manifest.records("conflict", path=path))

    def _link(self, staged: Staged, dirs: tuple[str, ...], fname: str) -> _fs.Placed:
        # The archive never shares an inode with a tree ingest copies from (nor, link_in sees
        # to it, with a file that has other hard links).
        try:
            placed = self.tree.link_in(self.staging_fd, staged.name, dirs, fname,
                                       open_src=partial(staged.open, self.staging_fd), copy=self.mode == "copy",
                                       nlink=staged.nlink)  # fmt: skip
        except DicomCommitError:
            raise
        except OSError as exc:
            where = "/".join((str(self.archive), *dirs, fname))
            raise CommitError(f"cannot link {self.staging / staged.name} ({exc.strerror})", where, exc) from exc
        if placed is _fs.Placed.CREATED:
            point("commit:after-link")
        return placed

    def _existing_sha256(self, dirs: tuple[str, ...], fname: str) -> str | None:
        """The hash of the file at a taken name; None when it is a symlink or not a file."""
        return sha256_at(fname, dir_fd=self.tree.dir_fd(dirs))

    def _record(
        self, staged: Staged, status: str, target: str | None, path: str, *, detail: str, existing: str | None = None
    ) -> Record:
        attrs = {k: staged.attrs.get(k) for k in self.template.keywords}
        return Record(
            status=status,
            target=target,
            path=path,
            source=self.prefix + staged.name,
            size=staged.size,
            sha256=staged.sha256 or staged.claimed,
            attrs=attrs,
            run=self.report.run,
            detail=detail,
            existing_sha256=existing,
        )
