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
  archive tree (see :mod:`dicomcommit.committing.rebuild`);
- with a shared manifest (PostgreSQL, many hosts), finishes the files of committers whose
  lease expired, from any host: each claim says what the file asked for and its hash, so
  what the archive holds says whether it was placed (recorded now, with its own host and
  source) or not (the claim ends; a rerun on its host commits it).

With an SQLite manifest, recover holds the archive lock (never deleted: a lock held by a
dead process is released by the kernel). With a shared one it takes no archive lock: it
leaves alone what live leases are working on, and holds a lock in PostgreSQL that only
resolve and other recovers wait for.
"""

from __future__ import annotations

import contextlib
import os
import time
from contextlib import AbstractContextManager, nullcontext
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
from dicomcommit.committing.resolve import KEEP_CHOICES, RESOLVE_CLAIM, resolve
from dicomcommit.committing.sources import StagingDir
from dicomcommit.dicom.headers import NotDicom, read_attrs
from dicomcommit.errors import ArchiveError, UsageError
from dicomcommit.hashing import hash_file, sha256_at
from dicomcommit.layout import CONFLICTS_DIR, INVALID_DIR, PART_SUFFIX, TMP_DIR
from dicomcommit.locations import is_object_store
from dicomcommit.manifests import BaseManifest, Location, is_shared, manifest_url, open_manifest
from dicomcommit.manifests.records import FOUND_IN_ARCHIVE, Claim, NewRecord, Record, Status, new_run_id, now
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
    claims_finished: list[str] = field(default_factory=list)  # (shared) a dead committer's placed files, recorded
    claims_ended: list[str] = field(default_factory=list)  # (shared) a dead committer's files it had not placed
    set_aside: str | None = None  # (rebuild_manifest) where the damaged manifest was kept

    @property
    def needs_attention(self) -> bool:
        """Check mode: anything to repair or report. Repair mode: anything it could not repair."""
        if self.missing or self.mismatched:
            return True
        repairs = (self.finished or self.parts_moved or self.tmp_removed or self.rows_added or self.resolves_finished
                   or self.claims_finished or self.claims_ended)  # fmt: skip
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
    manifest: Location | None = None,
    endpoint_url: str | None = None,
    jobs: int | None = None,
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
        manifest: where the manifest is (see :func:`dicomcommit.commit`).
        endpoint_url, jobs: for an object-store archive (``s3://bucket/prefix``), as for
            :func:`dicomcommit.commit`; it is reconciled with a listing of its prefix.

    Raises:
        UsageError: a directory does not exist; *rebuild_manifest* with a PostgreSQL manifest.
        LockTimeout: the archive lock was not acquired in *lock_timeout* seconds.
        ManifestDamaged: the manifest is damaged (and *rebuild_manifest* was not given).
    """
    archive = archive_dir if is_object_store(archive_dir) else Path(archive_dir)
    staging = None if staging_dir is None else Path(staging_dir)
    check_dir(archive, "archive")
    if staging is not None:
        check_dir(staging, "staging directory")
    check_seconds("part_age", part_age)
    url = manifest_url(archive, manifest)
    report = RecoverReport(check=check)
    store = open_archive(archive, manifest=url, endpoint_url=endpoint_url, jobs=jobs)
    lock: AbstractContextManager[None] = nullcontext() if is_shared(url) else store.lock(lock_timeout)
    if rebuild_manifest and is_shared(url):
        raise UsageError("--rebuild-manifest rebuilds a damaged SQLite manifest from the archive; "
                         "a PostgreSQL database is repaired with PostgreSQL's own tools (backups, WAL)")  # fmt: skip
    if rebuild_manifest and not check:
        with lock:
            report.set_aside = rebuild(store, template or DEFAULT_TEMPLATE, url)
    with open_manifest(archive, manifest=url, create=True) as opened, store:
        _finish_resolves(archive, opened, url, check=check, report=report, lock_timeout=lock_timeout,
                         endpoint_url=endpoint_url)  # fmt: skip
        with opened.exclusive():
            _finish_claims(store, opened, check=check, report=report)
        if staging is not None:
            _finish_linked(staging, store, opened, template, url, check=check, report=report)
        with lock, opened.exclusive():
            if staging is not None:
                _abandoned_parts(staging, store, opened, part_age=part_age, check=check, report=report)
            _temp_copies(store, opened, check, report)
            _reconcile(store, opened, verify, check, report)
    return report


def _finish_resolves(
    archive: str | os.PathLike[str],
    manifest: BaseManifest,
    url: str,
    *,
    check: bool,
    report: RecoverReport,
    lock_timeout: float | None,
    endpoint_url: str | None,
) -> None:
    """Decisions a killed ``resolve`` recorded (it records each before touching a file) but
    did not finish: carried out now, as decided."""
    for row in manifest.records(Status.CONFLICT):
        if row.resolution in KEEP_CHOICES:
            report.resolves_finished.append(f"#{row.id} {row.target} (--keep {row.resolution})")
            if not check:
                resolve(archive, row.id, row.resolution, lock_timeout=lock_timeout, manifest=url,
                        endpoint_url=endpoint_url)  # fmt: skip


def _finish_linked(
    staging: Path,
    archive: BaseArchive,
    manifest: BaseManifest,
    template: str | None,
    url: str,
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
        run(StagingDir(staging), archive, names, parsed, CommitReport(run=new_run_id()), manifest=url,
            on_conflict=on_conflict)  # fmt: skip


def _placement_of(
    staging: Path, archive: BaseArchive, name: str, candidates: list[Template], journal: JournalIndex
) -> tuple[Template, OnConflict] | None:
    """Where a killed commit linked *name*, as (template, conflict policy): at its target
    under one of the candidate templates, at the derived name of ``--on-conflict suffix``,
    or kept in ``conflicts/`` or ``invalid/``. None when its inode is nowhere there."""
    st = os.stat(staging / name, follow_symlinks=False)

    def there(rel: str) -> bool:
        return archive.holds(staging / name, rel)

    # One name: linked nowhere (an object store keeps copies: any staged file may have been placed).
    sha256 = sha256_at(staging / name) if st.st_nlink > 1 or archive.keeps_copies else None
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


def _temp_copies(archive: BaseArchive, manifest: BaseManifest, check: bool, report: RecoverReport) -> None:
    """Copies made across filesystems live only inside a batch, which the archive lock keeps
    out (or, with a shared manifest, whose lease is live): any others are ours to remove."""
    listed = archive.files(TMP_DIR)
    live = manifest.live_leases()  # read after the listing: a copy listed is one whose lease exists by now
    for rel in listed:
        name = rel.rpartition("/")[2]
        if _fs.tmp_owner(name) in live:
            continue
        report.tmp_removed.append(name)
        if not check:
            archive.remove(rel)


def _reconcile(archive: BaseArchive, manifest: BaseManifest, verify: bool, check: bool, report: RecoverReport) -> None:
    """The filesystem is the truth: rows for unrecorded files; loud reports for missing bytes.

    The archive is listed before the manifest is read, in one snapshot with the live claims:
    a file another host placed after the listing is not seen, and one placed before it is
    either recorded or claimed (a committer records a file and ends its claim at once)."""
    by_path: dict[str, Record] = {}
    hashes: dict[int, str] = {}
    listed = archive.files()
    with manifest.snapshot():
        records = manifest.records()
        # Live claims, and dead ones not settled yet (a lease may have expired while this ran):
        # their files are a committer's, or its recover's, to record.
        in_flight = _claimed_names(manifest.live_claims() + manifest.expired_claims())
    for record in records:
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
    for rel in listed:
        if rel in by_path or rel in in_flight:
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
                                   detail=detail, host=""))  # fmt: skip
    manifest.add(added)


def _check_bytes(archive: BaseArchive, record: Record, verify: bool, report: RecoverReport) -> str | None:
    """Report missing or differing bytes; with *verify*, return the hash of the bytes there
    (None for a duplicate: its bytes are another row's)."""
    if record.status is Status.DUPLICATE:  # its bytes are another row's: they must be there
        if not archive.exists(record.path):
            report.missing.append(f"#{record.id} duplicate of {record.path}")
        elif verify and record.sha256 not in (None, archive.verified_sha256(record.path)):
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
    sha256 = archive.verified_sha256(record.path)
    if sha256 is None or record.sha256 not in (None, sha256):
        report.mismatched.append(f"#{record.id} {record.path}: sha256 {sha256}, the manifest says {record.sha256}")
        return None
    return sha256


def _claimed_names(claims: list[Claim]) -> set[str]:
    """The names files being committed now may take: their targets, and derived names."""
    names = set()
    for claim in claims:
        if claim.target is not None:
            names.add(claim.target)
            if claim.sha256 is not None:
                names.add(derived_name(claim.target, claim.sha256))
    return names


def _finish_claims(archive: BaseArchive, manifest: BaseManifest, *, check: bool, report: RecoverReport) -> None:
    """(Shared manifest) the files of committers whose lease expired: recorded where the
    archive holds their bytes, under their own host, source and run; the others' claims end
    (their files are still staged on their hosts, and a rerun there commits them)."""
    stale = manifest.expired_claims()
    if not stale:
        return
    busy = {claim.sha256 for claim in manifest.live_claims()}  # checked again as the claims are settled
    taken: set[str] = set()  # names recorded by this settlement
    records: dict[tuple[str, str], NewRecord] = {}
    for claim in stale:
        if claim.source.startswith(RESOLVE_CLAIM):
            continue  # a killed resolve's: it ends (its decision is recorded, and finished above)
        if claim.sha256 is not None and manifest.find(claim.source, claim.sha256, host=claim.host) is not None:
            continue  # recorded already (by another committer of its host that took the claim over): it just ends
        record = None if claim.sha256 in busy else _claimed_outcome(archive, manifest, claim, taken)
        if record is not None:
            records[claim.host, claim.source] = record
            taken.add(record.path)
    settled = stale if check else manifest.settle_claims(stale, list(records.values()))
    for claim in settled:  # a lease renewed meanwhile keeps its claims: not reported
        what = f"{claim.host}:{claim.source}"
        record = records.get((claim.host, claim.source))
        if record is not None:
            report.claims_finished.append(f"{what} -> {record.status} {record.path}")
        elif claim.source.startswith(RESOLVE_CLAIM):
            pass
        elif claim.sha256 is None or manifest.find(claim.source, claim.sha256, host=claim.host) is None:
            report.claims_ended.append(f"{what} (nothing of it placed; still staged on {claim.host or 'its host'})")


def _claimed_outcome(archive: BaseArchive, manifest: BaseManifest, claim: Claim, taken: set[str]) -> NewRecord | None:
    """The record of a dead committer's claimed file, from where its bytes are (None: nowhere)."""
    if claim.sha256 is None:
        return None  # nothing proves which bytes are its own
    sha256 = claim.sha256
    detail = "finished by recover after its committer's lease expired"
    if claim.target is None:
        places = [(Status.INVALID, "/".join((*INVALID_DIR, sha256)), "")]
    else:
        places = [(Status.COMMITTED, claim.target, ""),
                  (Status.COMMITTED, derived_name(claim.target, sha256), " (under a derived name)"),
                  (Status.CONFLICT, "/".join((*CONFLICTS_DIR, f"{sha256}.dcm")), "")]  # fmt: skip
    for status, rel, how in places:
        if archive.verified_sha256(rel) != sha256:  # (its staged file is dropped once this is recorded)
            continue
        rows = [] if status is Status.INVALID else manifest.records(status, path=rel)
        final, takes = status, None
        if rows and rows[0].source.startswith(FOUND_IN_ARCHIVE) and rows[0].sha256 in (None, sha256):
            takes = rows[0].id  # found in the archive with no row: it is where they came from (as commit decides)
        elif rows or rel in taken:
            final = Status.DUPLICATE
        existing = archive.sha256(claim.target) if status is Status.CONFLICT and claim.target else None
        return NewRecord(final, claim.target, rel, claim.source, claim.size, sha256, attrs=claim.attrs, run=claim.run,
                         time=now(), detail=detail + how, existing_sha256=existing, host=claim.host,
                         claims=takes)  # fmt: skip
    return None
