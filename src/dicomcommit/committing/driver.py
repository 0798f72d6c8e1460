"""Commit: give each staged file its final name, never replacing a file, losing none.

Per batch, under the archive's lock (with an SQLite manifest: one host), or with none (a
shared manifest, PostgreSQL: each file is first claimed in the manifest under this
committer's lease, and each name is arbitrated where it is created):

1. find each file's naming attributes (:mod:`~dicomcommit.committing.describing`: from the
   stager's journal while the file is provably the one its line describes, else from its
   header once a foreign file has settled and is proven whole); the bytes of files that
   may not be durable yet (foreign ones) are flushed together, once;
2. ask the archive for each name with a create-only placement, and let
   :func:`~dicomcommit.committing.decide.decide` say what its answer means: committed, a
   duplicate, a conflict (kept in ``.dicomcommit/conflicts/``, or committed under a derived
   name), or the next name to ask for;
3. make the batch's names durable, record the batch in the manifest in one transaction,
   and only then let the source remove the files.

A crash anywhere leaves each staged file in place until its outcome is recorded; a rerun
finds its earlier links (same inode) and records them, so commit converges. A dry run is
the same engine against an archive that records what it would do, a copy of the manifest
in memory, and a source that removes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

from dicomcommit import _fs
from dicomcommit._faults import point
from dicomcommit._fs import Placed
from dicomcommit._gc import collections_paused
from dicomcommit.archives import BaseArchive, open_archive
from dicomcommit.archives.base import Payload
from dicomcommit.archives.rehearsal import Rehearsal
from dicomcommit.checks import check_batch_size, check_dirs, check_lock_timeout, check_seconds
from dicomcommit.committing.decide import (
    ON_CONFLICT_CHOICES,
    Answer,
    File,
    Holder,
    Leave,
    OnConflict,
    Outcome,
    Place,
    Recorded,
    Redescribe,
    Refuse,
    Role,
    Step,
    decide,
    first,
)
from dicomcommit.committing.describing import Describer, Staged
from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.committing.sources import Source, StagingDir
from dicomcommit.errors import ArchiveError, ConflictError, DicomCommitError, UsageError, names_os_errors
from dicomcommit.manifests import BaseManifest, Location, is_shared, manifest_url, open_manifest
from dicomcommit.manifests.records import Claim, NewRecord, Record, Status, new_run_id
from dicomcommit.naming import DEFAULT_TEMPLATE, Template, parse_template
from dicomcommit.scanning import scan_staging

log = logging.getLogger("dicomcommit")

DEFAULT_BATCH = 2000
DEFAULT_SETTLE = 2.0  # seconds a foreign file must go unmodified before commit takes it

Progress = Callable[[int, int], None]
_CREATED = Answer(Placed.CREATED)
_T = TypeVar("_T")
__all__ = ["DEFAULT_BATCH", "DEFAULT_SETTLE", "ON_CONFLICT_CHOICES", "OnConflict", "Progress", "commit", "run"]


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
    manifest: Location | None = None,
    endpoint_url: str | None = None,
    jobs: int | None = None,
) -> CommitReport:
    """Commit every staged file in *staging_dir* into *archive_dir* (a directory, or
    ``s3://bucket/prefix``: then *manifest* is required).

    Args:
        template: the final name, relative to the archive, over DICOM keywords.
        on_conflict: a different file already holds the name: ``record`` keeps the staged
            file in ``.dicomcommit/conflicts/`` and records it; ``suffix`` commits it under
            ``<name>~<sha256 prefix>.<ext>``; ``error`` stops, leaving it staged.
        durable: make bytes and touched directories durable (once per batch) before recording:
            one ``syncfs`` where it is as good as fsync, else an fsync of each.
        dry_run: report what would happen, by running the same engine against an archive
            and a manifest that only record what it would do; change nothing, take no lock.
        allow_collisions: accept a template without ``SOPInstanceUID``.
        batch_size: files per lock hold and manifest transaction.
        lock_timeout: seconds to wait for the archive lock (None: wait as long as it takes).
        progress: called as ``progress(done, total)`` as each file's outcome is decided
            (*done* counts up to *total*, the files found; a file another committer took
            counts as done). It is called under the batch's lock, once per file: keep it quick.
        settle: seconds a foreign file (one no stager wrote, or whose journal line does not
            describe it) must have gone unmodified before it is taken: a younger one may still
            be growing, and is left in place for the next run (0: take it at once).
        manifest: where the manifest is: a path, ``sqlite:///path`` or
            ``postgresql://user@host:port/dbname`` (default: ``$DICOMCOMMIT_MANIFEST``, else
            ``ARCHIVE/.dicomcommit/manifest.sqlite``). With PostgreSQL, committers on many
            hosts commit into one archive at once, and no archive lock is taken.
        endpoint_url: (an object store) its endpoint, instead of ``$AWS_ENDPOINT_URL`` or
            the AWS chain's default.
        jobs: (an object store) requests in flight at most (default 32).

    Raises:
        UsageError: bad arguments (TemplateError for the template).
        ConflictError: with ``on_conflict="error"``, at the first conflict; what came
            before it is committed and recorded, the conflicting file stays staged (a dry
            run raises it too, where the real run would).
        LockTimeout: the archive lock was not acquired in *lock_timeout* seconds.
        LockError, ArchiveError: the archive's lock or a directory in it cannot be used.
        CommitError: an OS error on a named file; that file is still staged.
    """
    check_on_conflict(on_conflict)
    check_batch_size(batch_size)
    check_seconds("settle", settle)
    check_lock_timeout(lock_timeout)
    parsed = parse_template(template, allow_collisions=allow_collisions)
    url = manifest_url(archive_dir, manifest)
    staging, archive = check_dirs(Path(staging_dir), archive_dir)
    scan = scan_staging(staging)
    report = CommitReport(run=new_run_id(), dry_run=dry_run, left_in_place=scan.skipped)
    for name, reason in scan.skipped:
        log.warning("left in staging: %s (%s)", staging / name, reason)
    store = open_archive(archive, durable=durable, manifest=url, endpoint_url=endpoint_url, jobs=jobs)
    run(StagingDir(staging, settle=settle), store, scan.files, parsed, report, manifest=url, on_conflict=on_conflict,
        durable=durable, batch_size=batch_size, lock_timeout=lock_timeout, progress=progress)  # fmt: skip
    return report


def check_on_conflict(on_conflict: str) -> None:
    """Refuse a conflict policy that is not one of :data:`ON_CONFLICT_CHOICES`.

    Raises:
        UsageError: naming the value.
    """
    if on_conflict not in ON_CONFLICT_CHOICES:
        raise UsageError(f"on_conflict must be one of {', '.join(ON_CONFLICT_CHOICES)}, not {on_conflict!r}")


def run(
    source: Source,
    archive: BaseArchive,
    names: list[str],
    template: Template,
    report: CommitReport,
    *,
    manifest: Location | None = None,
    on_conflict: OnConflict = "record",
    durable: bool = True,
    batch_size: int = DEFAULT_BATCH,
    lock_timeout: float | None = None,
    progress: Progress | None = None,
) -> None:
    """Commit the files *names* of *source* into *archive*, adding to *report* (for a dry run
    when ``report.dry_run``); the manifest is at *manifest* (see :func:`commit`)."""
    url = manifest_url(archive.location, manifest)
    if report.dry_run:
        archive, source = Rehearsal(archive), source.rehearsal()
    lock: AbstractContextManager[None]
    if is_shared(url):  # each name is arbitrated where it is created, each file by its claim
        check_lock_timeout(lock_timeout)
        archive.create()
        lock = nullcontext()
    else:
        lock = archive.lock(lock_timeout)  # before the manifest: it checks the state directory first
    opened = open_manifest(archive.location, manifest=url, create=True, durable=durable, rehearse=report.dry_run)
    with opened:
        committer = _Committer(source, archive, opened, template=template, on_conflict=on_conflict, report=report,
                               durable=durable)  # fmt: skip
        committer.run(names, batch_size, lock, progress)


class _Gone(Exception):
    """The staged file is gone: another committer committed it and removed it."""


class _Committer:
    """One commit run: batches of *source*'s files into *archive*, recorded in *manifest*."""

    def __init__(
        self,
        source: Source,
        archive: BaseArchive,
        manifest: BaseManifest,
        *,
        template: Template,
        on_conflict: OnConflict,
        report: CommitReport,
        durable: bool,
    ) -> None:
        self.durable = durable
        self.root = str(source.root)
        self.source, self.archive, self.manifest, self.template = source, archive, manifest, template
        self.on_conflict, self.report = on_conflict, report
        self.placed: set[str] = set()  # archive names this batch placed (their rows are not in yet)
        self.targets: dict[str, str] = {}  # this batch's rendered targets, by file name
        self.payloads: dict[str, Payload] = {}  # and what the archive is handed, by file name
        self.progress: Progress | None = None
        self.done, self.total = 0, 0  # files decided so far (for progress), of all
        self.facts = Describer(source.root, template.keywords, journal=source.journal, copy=source.copies,
                               settle=source.settle, described=source.described)  # fmt: skip

    def run(
        self, names: list[str], batch_size: int, lock: AbstractContextManager[None], progress: Progress | None
    ) -> None:
        with self.manifest.leased():
            self.archive.owner = self.manifest.lease or ""  # names its temporary copies
            self.manifest.start_run(self.report.run, staging=str(self.source.root), template=self.template.text)
            self.progress, self.done, self.total = progress, 0, len(names)
            try:
                for start in range(0, len(names), batch_size):
                    with lock:
                        self._batch(names[start : start + batch_size])
                with lock:
                    self.source.finish()
            finally:
                self.source.close()
            self.manifest.finish_run(self.report.run, self.report.counts())

    def _batch(self, names: list[str]) -> None:
        with collections_paused():  # a batch makes no cycles: collections would only re-walk it
            self._batch_of(names)

    def _batch_of(self, names: list[str]) -> None:
        self.source.start_batch()
        self.facts.dir_fd = self.source.dir_fd
        self.placed.clear()
        self.targets.clear()
        self.payloads.clear()
        done: list[tuple[NewRecord, str]] = []
        try:
            described = (self._guarded(name, partial(self.facts.describe, name)) for name in names)
            batch = [staged for staged in described if staged is not None]
            if self.manifest.shared:
                batch = self._claimed(batch)
            self._decided(len(names) - len(batch))  # gone, or another committer's: nothing to decide
            # Bytes first, names after: a name must never point at data a power cut can lose.
            if self.durable:
                self.source.flush([staged.name for staged in batch if staged.unsynced])
            if self.on_conflict != "error":  # (which stops at a conflict: nothing is sent past it)
                self.archive.prepare(self._first_placements(batch))
            for staged in batch:
                record = self._guarded(staged.name, partial(self._outcome, staged))
                if record is not None:
                    done.append((record, staged.name))
                self._decided(1)
        finally:
            # Whatever happened, what was placed gets recorded before any staged file goes.
            try:
                self._finish(done)
            finally:
                self.archive.release()
                self.source.end_batch()

    def _decided(self, files: int) -> None:
        """Count *files* more as decided, and tell the progress callback (a call per file: no I/O here)."""
        if files:
            self.done += files
            if self.progress is not None:
                self.progress(self.done, self.total)

    def _finish(self, done: list[tuple[NewRecord, str]]) -> None:
        try:
            self.archive.sync()
        except OSError as exc:
            msg = f"cannot make the archive's new names durable ({exc.strerror}); nothing recorded"
            raise ArchiveError(msg, self.archive.location, exc) from exc
        point("commit:before-manifest")
        stored = self.manifest.add(record for record, _ in done)
        point("commit:after-manifest")
        for record, name in done:
            # A dry run's rows are predictions: they are reported as they would be recorded.
            self.report.count(record if self.report.dry_run else stored.get(record.key(), record))
            self.source.release(name)

    def _claimed(self, batch: list[Staged]) -> list[Staged]:
        """The files of *batch* this committer claims (the others are another committer's
        now). Each claim carries the file's hash, so that ``recover`` can finish it from any
        host: a foreign file is hashed first."""
        claims = []
        for staged in batch:
            if staged.left is None and staged.claimed is None:
                self._guarded(staged.name, partial(staged.hash, self.source.dir_fd))
                staged.close()  # the hash is kept: a batch holds no fd per file
            target = None if staged.left is not None else self._target(staged)
            claims.append(Claim(self.source.prefix + staged.label, target, staged.sha256 or staged.claimed, staged.size,
                                {k: staged.attrs.get(k) for k in self.template.keywords}, self.report.run,
                                self.root))  # fmt: skip
        granted = self.manifest.claim(claims)
        mine = []
        for staged, claim in zip(batch, claims, strict=True):
            if claim.source in granted:
                mine.append(staged)
            else:  # as a file another committer took under the lock would be: not this run's
                staged.close()
                self.report.claimed_elsewhere += 1
                log.info("%s: claimed by another committer, which commits it", self.source.root / staged.name)
        return mine

    def _first_placements(self, batch: list[Staged]) -> list[tuple[Payload, str]]:
        """The name each file of *batch* asks for first (its target), for the archive to start
        at once; a target two files want is asked for by the first one only (the second asks
        after it, as the decision needs)."""
        first_of: dict[str, Staged] = {}
        for staged in batch:
            target = None if staged.left is not None else self._target(staged)
            if target is not None:
                first_of.setdefault(target, staged)
        return [(self._payload(staged), target) for target, staged in first_of.items()]

    def _guarded(self, name: str, step: Callable[[], _T]) -> _T:
        """Run *step* for the file *name*, turning OS errors into the source's error naming it."""
        try:
            return step()
        except DicomCommitError:
            raise
        except OSError as exc:
            raise self.source.failure(f"cannot commit this file ({exc.strerror})", self.source.root / name,
                                      exc) from exc  # fmt: skip

    def _outcome(self, staged: Staged) -> NewRecord | None:
        try:
            return self._decide(staged)
        except _Gone:  # another committer took it between its claim and ours (committed, and recorded)
            return None
        except FileNotFoundError:
            # Without the archive lock, the other committer of this staging directory may
            # have recorded it and removed it while this one read it (to compare its bytes
            # with what holds its name): nothing of it was placed here yet.
            if self.manifest.shared and not _fs.exists_at(self.source.dir_fd, staged.name):
                return None
            raise
        finally:
            staged.close()

    def _decide(self, staged: Staged) -> NewRecord | None:
        """Ask the archive for names, as :func:`decide` says, until the file has its outcome."""
        if staged.left is not None:
            self.report.left_in_place.append((staged.name, staged.left))
            log.info("left in %s for a later run: %s (%s)", self.source.root, staged.name, staged.left)
            return None
        if staged.invalid is not None and self.source.sets_aside_invalid:
            staged.hash(self.source.dir_fd)  # kept under its hash
        file = self._file(staged)
        step: Step = first(file, set_aside_invalid=self.source.sets_aside_invalid)
        while isinstance(step, Place):
            answer = self._ask(staged, step)
            if file.sha256 is None and staged.sha256 is not None:
                file = replace(file, sha256=staged.sha256)
            step = decide(step, answer, file, self.on_conflict)
        if isinstance(step, Leave):
            self.report.left_in_place.append((staged.name, step.reason))
            return None
        if isinstance(step, Refuse):
            raise ConflictError(str(self.source.root / staged.name), f"{self.archive.location}/{step.target}")
        if isinstance(step, Redescribe):
            return self._journal_was_wrong(staged)
        if step.status in (Status.COMMITTED, Status.CONFLICT):
            self.placed.add(step.path)
        return self._record(staged, file, step)

    def _target(self, staged: Staged) -> str | None:
        """The name its attributes render to (None: invalid), rendered once per file."""
        if staged.invalid is not None:
            return None
        target = self.targets.get(staged.name)
        if target is None:
            target = self.targets[staged.name] = self.template.render(staged.attrs)
        return target

    def _file(self, staged: Staged) -> File:
        target = self._target(staged)
        extra_links = staged.nlink - 1 if not self.source.copies else 0
        # A shared manifest names a file by its host and source; an SQLite one (one host) by its source.
        host = self.manifest.host if self.manifest.shared else ""
        return File(self.source.prefix + staged.label, target, staged.sha256, staged.claimed, extra_links,
                    staged.invalid, host)  # fmt: skip

    def _ask(self, staged: Staged, step: Place) -> Answer:
        """Place *staged* at ``step.rel``, and gather what the decision needs to know of a taken name."""
        placed = self._place(staged, step.rel)
        if placed is Placed.CREATED:
            return _CREATED
        if step.role is Role.INVALID_COPY:
            return Answer(placed)
        in_run = step.rel in self.placed
        source = self.source.prefix + staged.label
        rows: list[Record] = []
        busy = False
        if step.role is Role.CONFLICT_COPY:  # named by the bytes' hash: no need to read what is there
            if not in_run:
                rows, busy = self.manifest.holders(Status.CONFLICT, step.rel, staged.hash(self.source.dir_fd), source)
            return Answer(placed, open_conflict=in_run or busy or bool(rows))
        existing, recorded, sha256 = None, None, None
        if placed is Placed.EXISTS:
            existing = self.archive.sha256(step.rel)
            sha256 = staged.hash(self.source.dir_fd)  # the bytes must be compared
            if existing == sha256:  # it may be dropped as a duplicate: the hash there must be proven
                existing = self.archive.verified_sha256(step.rel)
            if existing != sha256:
                recorded = self._recorded(source, sha256)
        if not in_run:
            # (EXISTS) another committer's file with these bytes, claimed and not recorded yet,
            # holds the name as an earlier file of this run would.
            rows, busy = self.manifest.holders(Status.COMMITTED, step.rel, sha256, source)
        holder = None
        if rows:
            holder = Holder(rows[0].id, rows[0].source, rows[0].sha256, rows[0].host if self.manifest.shared else "")
        return Answer(placed, existing, placed_this_run=in_run or busy, holder=holder, recorded=recorded)

    def _recorded(self, source: str, sha256: str) -> Recorded | None:
        """The manifest's row of this very file, if it has one and a file of its size is at its path
        (kept copies are named by their hash; ``recover --verify`` checks the bytes themselves)."""
        row = self.manifest.find(source, sha256)
        if row is None or row.status is Status.INVALID or self.archive.size(row.path) != row.size:
            return None
        return Recorded(row.path, row.status)

    def _place(self, staged: Staged, rel: str) -> Placed:
        # The archive never shares an inode with a tree ingest copies from (nor, a file that
        # has other hard links is copied, with any name outside the archive).
        payload = self._payload(staged)
        try:
            placed = self.archive.place(payload, rel)
        except DicomCommitError:
            raise
        except FileNotFoundError as exc:
            # Without the archive lock, another committer may have taken it since its claim.
            if self.manifest.shared and not _fs.exists_at(self.source.dir_fd, staged.name):
                raise _Gone from exc
            raise self.source.failure(f"cannot link {payload.path} ({exc.strerror})", f"{self.archive.location}/{rel}",
                                      exc) from exc  # fmt: skip
        except OSError as exc:
            where = f"{self.archive.location}/{rel}"
            raise self.source.failure(f"cannot link {payload.path} ({exc.strerror})", where, exc) from exc
        if placed is Placed.CREATED:
            point("commit:after-link")
        if placed is not Placed.EXISTS and staged.sha256 is None:  # an object store hashed what it sent
            staged.sha256 = self.archive.known_sha256(rel)
        return placed

    def _payload(self, staged: Staged) -> Payload:
        """How the archive reads *staged* (made once per file and batch)."""
        payload = self.payloads.get(staged.name)
        if payload is None:
            dir_fd = self.source.dir_fd
            payload = Payload(dir_fd, staged.name, self.root, staged.nlink, self.source.copies,
                              partial(staged.open, dir_fd))  # fmt: skip
            self.payloads[staged.name] = payload
        return payload

    def _journal_was_wrong(self, staged: Staged) -> NewRecord | None:
        """The journal's line does not describe these bytes (edited after staging, or a false
        line): nothing of it is used; the file is named from its own header, as a foreign one."""
        log.warning("%s: its bytes are not the ones its journal line describes; named from its header",
                    self.source.root / staged.name)  # fmt: skip
        staged.claimed = None
        staged.attrs = {}
        self.targets.pop(staged.name, None)
        self.facts.read_foreign(staged)
        if self.durable and staged.unsynced and staged.left is None:
            self.source.flush([staged.name])  # bytes durable before any name
        return self._decide(staged)

    def _record(self, staged: Staged, file: File, outcome: Outcome) -> NewRecord:
        return NewRecord(
            status=outcome.status,
            target=None if outcome.status is Status.INVALID else file.target,
            path=outcome.path,
            source=file.source,
            size=staged.size,
            sha256=staged.sha256 or staged.claimed or outcome.sha256,
            attrs={k: staged.attrs.get(k) for k in self.template.keywords},
            run=self.report.run,
            detail=outcome.detail,
            existing_sha256=outcome.existing_sha256,
            claims=outcome.claims,
        )
