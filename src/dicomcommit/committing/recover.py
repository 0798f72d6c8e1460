"""Recover: bring an archive (and its staging directory) back to a consistent state.

After a crash anywhere, rerunning commit already converges. ``recover`` also:

- finishes staged files that a killed commit had linked to their target (same inode), under
  the template of the run that linked them (the ``runs`` table records each run's);
- moves ``.part`` files aside, and records them, when they are older than a threshold and
  their writer is gone (a stager's: its journal lock is free; another tool's: no process
  has the file open); younger or live ones are reported and left alone;
- removes dicomcommit's own leftover temp copies (``.dicomcommit/tmp/``);
- adds manifest rows for archive files that have none (the filesystem is the truth);
- reports, loudly and without "fixing" them, rows whose bytes are missing or differ;
- with ``verify``, hashes every recorded file, and fills in the hash of rows that have
  none (foreign files that commit named from their header alone);
- with ``rebuild_manifest``, sets a damaged manifest aside and rebuilds its rows from the
  archive tree (see :mod:`dicomcommit.committing.rebuild`).

The lock is never deleted: a lock held by a dead process is released by the kernel.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomcommit import _fs
from dicomcommit.archives import BaseArchive, open_archive
from dicomcommit.archives.base import Payload
from dicomcommit.checks import check_dir, check_seconds
from dicomcommit.committing.driver import OnConflict, run
from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.committing.rebuild import rebuild
from dicomcommit.committing.resolve import KEEP_CHOICES, resolve
from dicomcommit.committing.sources import StagingDir
from dicomcommit.dicom.headers import NotDicom, read_attrs
from dicomcommit.errors import ArchiveError
from dicomcommit.hashing import hash_file, sha256_at
from dicomcommit.layout import CONFLICTS_DIR, INVALID_DIR, PART_SUFFIX, TMP_DIR
from dicomcommit.manifests import BaseManifest, open_manifest
from dicomcommit.manifests.records import FOUND_IN_ARCHIVE, NewRecord, Record, Status, new_run_id, now
from dicomcommit.naming import DEFAULT_TEMPLATE, Template, derived_name, parse_template
from dicomcommit.scanning import scan_staging
from dicomcommit.staging.journal import JournalIndex, owner_alive, part_owner

DEFAULT_PART_AGE = 3600.0


@dataclass
class RecoverReport:
    """What recover found, and (unless ``check``) what it did."""

    check: bool = False
    finished: list[str] = field(default_factory=list)  # staged files completed as committed
    parts_moved: list[str] = field(default_factory=list)  # abandoned .part files, set aside
    parts_left: list[str] = field(default_factory=list)  # young or still open .part files
    tmp_removed: list[str] = field(default_factory=list)  # our own leftover temp copies
    rows_added: list[str] = field(default_factory=list)  # archive files that had no row
    missing: list[str] = field(default_factory=list)  # rows whose bytes are gone
    mismatched: list[str] = field(default_factory=list)  # rows whose bytes differ in size or hash
    hashed: list[str] = field(default_factory=list)  # (verify) rows that had no hash, now filled in
    resolves_finished: list[str] = field(default_factory=list)  # resolve --keep staged killed mid-way
    set_aside: str | None = None  # (rebuild_manifest) where the damaged manifest was kept

    @property
    def needs_attention(self) -> bool:
        """Check mode: anything to repair or report. Repair mode: anything it could not repair."""
        if self.missing or self.mismatched:
            return True
        repairs = self.finished or self.parts_moved or self.tmp_removed or self.rows_added or self.resolves_finished
        return self.check and bool(repairs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {**self.__dict__, "needs_attention": self.needs_attention}


def recover(
    archive_dir: str | os.PathLike[str],
    staging_dir: str | os.PathLike[str] | None = None,
    *,
    check: bool = False,
    part_age: float = DEFAULT_PART_AGE,
    verify: bool = False,
    template: str | None = None,
    lock_timeout: float | None = None,
    rebuild_manifest: bool = False,
) -> RecoverReport:
    """Reconcile *archive_dir* (and *staging_dir*) after a crash; see the module docstring.

    Args:
        check: only report what would be done; change nothing.
        part_age: seconds after which a ``.part`` file no process has open is abandoned.
        verify: also hash every committed file against the manifest (reads the whole archive),
            and fill in the rows that have no hash yet.
        template: the template to finish linked files with, overriding the one their run
            recorded (default: each file's run's own, found by where its inode is).
        rebuild_manifest: set the manifest aside and rebuild it from the archive (for a
            damaged one); *template* then names conflicts (default: the default template).

    Raises:
        UsageError: a directory does not exist.
        LockTimeout: the archive lock was not acquired in *lock_timeout* seconds.
        ManifestDamaged: the manifest is damaged (and *rebuild_manifest* was not given).
    """
    archive = Path(archive_dir)
    staging = None if staging_dir is None else Path(staging_dir)
    check_dir(archive, "archive")
    if staging is not None:
        check_dir(staging, "staging directory")
    check_seconds("part_age", part_age)
    report = RecoverReport(check=check)
    store = open_archive(archive)
    lock = store.lock(lock_timeout)
    if rebuild_manifest and not check:
        with lock:
            report.set_aside = rebuild(store, template or DEFAULT_TEMPLATE)
    with open_manifest(archive, create=True) as manifest, store:
        _finish_resolves(archive, manifest, check=check, report=report, lock_timeout=lock_timeout)
        if staging is not None:
            _finish_linked(staging, store, manifest, template, check=check, report=report)
        with lock:
            if staging is not None:
                _abandoned_parts(staging, store, manifest, part_age=part_age, check=check, report=report)
            _temp_copies(store, check, report)
            _reconcile(store, manifest, verify, check, report)
    return report


def _finish_resolves(
    archive: Path, manifest: BaseManifest, *, check: bool, report: RecoverReport, lock_timeout: float | None
) -> None:
    """Decisions a killed ``resolve`` recorded (it records each before touching a file) but
    did not finish: carried out now, as decided."""
    for row in manifest.records(Status.CONFLICT):
        if row.resolution in KEEP_CHOICES:
            report.resolves_finished.append(f"#{row.id} {row.target} (--keep {row.resolution})")
            if not check:
                resolve(archive, row.id, row.resolution, lock_timeout=lock_timeout)


def _finish_linked(
    staging: Path,
    archive: BaseArchive,
    manifest: BaseManifest,
    template: str | None,
    *,
    check: bool,
    report: RecoverReport,
) -> None:
    """Staged files a killed commit had linked into the archive (the same inode is there),
    finished as that run would have: under its template and conflict policy. A file with
    other links that are not in the archive is no commit's business here: commit takes it
    (copying it) when it has settled."""
    if template is not None:
        candidates = [parse_template(template, allow_collisions=True)]
    else:
        texts = dict.fromkeys([*manifest.run_templates(), DEFAULT_TEMPLATE])
        candidates = [parse_template(text, allow_collisions=True) for text in texts]
    groups: dict[tuple[Template, OnConflict], list[str]] = {}
    journal = JournalIndex(staging)
    journal.refresh()
    try:
        for name in scan_staging(staging).files:
            with contextlib.suppress(FileNotFoundError):  # a running commit may take it meanwhile
                found = _placement_of(staging, archive, name, candidates, journal)
                if found is not None:
                    groups.setdefault(found, []).append(name)
    finally:
        journal.close()
    report.finished = sorted(name for names in groups.values() for name in names)
    if check:
        return
    for (parsed, on_conflict), names in groups.items():
        run(StagingDir(staging), archive, names, parsed, CommitReport(run=new_run_id()), on_conflict=on_conflict)


def _placement_of(
    staging: Path, archive: BaseArchive, name: str, candidates: list[Template], journal: JournalIndex
) -> tuple[Template, OnConflict] | None:
    """Where a killed commit linked *name*, as (template, conflict policy): at its target
    under one of the candidate templates, at the derived name of ``--on-conflict suffix``,
    or kept in ``conflicts/`` or ``invalid/``. None when its inode is nowhere there."""
    st = os.stat(staging / name, follow_symlinks=False)

    def there(rel: str) -> bool:
        return archive.holds(staging / name, rel)

    sha256 = sha256_at(staging / name) if st.st_nlink > 1 else None  # one name: linked nowhere
    if sha256 is None:
        return None
    if there("/".join((*INVALID_DIR, sha256))):
        return candidates[0], "record"
    keywords = tuple(dict.fromkeys(k for t in candidates for k in t.keywords))
    record = journal.get(name)
    try:
        if record is not None and record.describes(st) and record.covers(keywords):
            attrs = record.attrs
        else:
            fd = os.open(staging / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                attrs = read_attrs(fd, keywords, name=str(staging / name))
            finally:
                os.close(fd)
    except NotDicom:
        return None
    kept = there("/".join((*CONFLICTS_DIR, f"{sha256}.dcm")))
    for candidate in candidates:
        target = candidate.render(attrs)
        if there(target) or (kept and archive.exists(target)):
            return candidate, "record"
        if there(derived_name(target, sha256)):
            return candidate, "suffix"
    return None


def _abandoned_parts(
    staging: Path, archive: BaseArchive, manifest: BaseManifest, *, part_age: float, check: bool, report: RecoverReport
) -> None:
    open_inodes = _open_inodes()
    cutoff = time.time() - part_age
    staging_fd = _fs.open_root(staging)
    records = []
    try:
        with os.scandir(staging) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        for entry in entries:
            try:  # a live stager renames its .part files at any moment
                if not entry.name.endswith(PART_SUFFIX) or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            owner = part_owner(entry.name)
            # A stager's .part is live while its journal is locked (from before the file exists
            # to the stager's exit: it may still rename a file it closed long ago); another
            # tool's, while a process has it open.
            live = owner_alive(staging, owner) if owner else (st.st_dev, st.st_ino) in open_inodes
            if st.st_mtime > cutoff or live:
                report.parts_left.append(entry.name)
                continue
            report.parts_moved.append(entry.name)
            if not check:
                with contextlib.suppress(FileNotFoundError):
                    records.append(_set_aside_part(staging, staging_fd, entry.name, archive))
        archive.sync()
        manifest.add(records)
        for record in records:
            _fs.unlink_quietly(staging_fd, record.source)
    finally:
        archive.release()
        os.close(staging_fd)


def _set_aside_part(staging: Path, staging_fd: int, name: str, archive: BaseArchive) -> NewRecord:
    fd = _fs.open_read(name, staging_fd)
    try:
        sha256, size = hash_file(fd)
        where = "/".join((*INVALID_DIR, sha256))
        payload = Payload(staging_fd, name, str(staging), os.fstat(fd).st_nlink, False, lambda: fd)
        archive.place(payload, where)
    finally:
        os.close(fd)
    detail = f"unfinished stage ({PART_SUFFIX}) abandoned by a writer that is gone; set aside by recover"
    return NewRecord(Status.INVALID, None, where, name, size, sha256, run="recover", time=now(), detail=detail)


def _open_inodes() -> set[tuple[int, int]]:
    """(device, inode) of every file any process has open (Linux /proc; empty elsewhere)."""
    found: set[tuple[int, int]] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except FileNotFoundError:
        return found
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            found.add((st.st_dev, st.st_ino))
    return found


def _temp_copies(archive: BaseArchive, check: bool, report: RecoverReport) -> None:
    """Copies made across filesystems live only inside a locked batch: any left are ours to remove."""
    for rel in archive.files(TMP_DIR):
        report.tmp_removed.append(rel.rpartition("/")[2])
        if not check:
            archive.remove(rel)


def _reconcile(archive: BaseArchive, manifest: BaseManifest, verify: bool, check: bool, report: RecoverReport) -> None:
    """The filesystem is the truth: rows for unrecorded files; loud reports for missing bytes."""
    by_path: dict[str, Record] = {}
    hashes: dict[int, str] = {}
    for record in manifest.records():
        if record.status is not Status.DUPLICATE:
            by_path.setdefault(record.path, record)
        try:
            sha256 = _check_bytes(archive, record, verify, report)
        except ArchiveError as exc:  # a directory on its way swapped for a symlink: reported, never followed
            report.mismatched.append(f"#{record.id} {record.path}: {exc}")
            continue
        if sha256 is not None and record.sha256 is None:
            report.hashed.append(f"#{record.id} {record.path}")
            hashes[record.id] = sha256
    if hashes and not check:
        with manifest.transaction():
            for record_id, sha256 in hashes.items():
                manifest.update(record_id, sha256=sha256)
    added = []
    for rel in archive.files():
        if rel in by_path:
            continue
        found = archive.hash(rel)
        if found is None:
            report.mismatched.append(f"{rel}: not a regular file (a symlink?), left alone")
            continue
        report.rows_added.append(rel)
        if not check:
            sha256, size = found
            detail = "in the archive with no manifest row; recorded by recover"
            source = f"{FOUND_IN_ARCHIVE}{rel}"
            added.append(NewRecord(Status.COMMITTED, rel, rel, source, size, sha256, run="recover", time=now(),
                                   detail=detail))  # fmt: skip
    manifest.add(added)


def _check_bytes(archive: BaseArchive, record: Record, verify: bool, report: RecoverReport) -> str | None:
    """Report missing or differing bytes; with *verify*, return the hash of the bytes there
    (None for a duplicate: its bytes are another row's)."""
    if record.status is Status.DUPLICATE:  # its bytes are another row's: they must be there
        if not archive.exists(record.path):
            report.missing.append(f"#{record.id} duplicate of {record.path}")
        elif verify and record.sha256 not in (None, archive.sha256(record.path)):
            report.mismatched.append(f"#{record.id} duplicate of {record.path}: its bytes are not these")
        return None
    if not archive.exists(record.path):
        report.missing.append(f"#{record.id} {record.status} {record.path}")
        return None
    size = archive.size(record.path)
    if size != record.size:
        what = "not a regular file" if size is None else f"{size} bytes"
        report.mismatched.append(f"#{record.id} {record.path}: {what}, the manifest says {record.size}")
        return None
    if not verify:
        return None
    sha256 = archive.sha256(record.path)
    if sha256 is None or record.sha256 not in (None, sha256):
        report.mismatched.append(f"#{record.id} {record.path}: sha256 {sha256}, the manifest says {record.sha256}")
        return None
    return sha256
