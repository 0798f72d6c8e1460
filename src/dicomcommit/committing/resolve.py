"""Resolve: a person's decision on a conflict, carried out without losing or exposing anything.

- ``existing``: the committed file stays; the conflicting copy moves to ``rejected/``.
- ``staged``: the committed file is hard-linked into ``replaced/`` first, then the
  conflicting file is renamed over the target: at no instant is the target missing or
  partial, and nothing is deleted.
- ``both``: the conflicting file is committed under ``<name>~<sha256 prefix>.<ext>``.

Each decision is recorded on the manifest rows (who, when, what), under the archive lock
(with a shared manifest: under a lock in PostgreSQL that resolve and recover take).
Every step can be repeated, so rerunning an interrupted resolve finishes it.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Literal

from dicomcommit._faults import point
from dicomcommit._fs import Placed
from dicomcommit.archives import BaseArchive, open_archive
from dicomcommit.committing.decide import Answer, File, Outcome, Place, Role, decide
from dicomcommit.errors import DicomCommitError, ResolveError, UsageError
from dicomcommit.layout import CONFLICTS_DIR, REJECTED_DIR, REPLACED_DIR
from dicomcommit.manifests import BaseManifest, Location, is_shared, manifest_url, open_manifest
from dicomcommit.manifests.records import Claim, Record, Status, now
from dicomcommit.naming import derived_name

#: The source of the claim a resolve holds on a conflict's bytes (with a shared manifest), so
#: that a committer of identical bytes sees them as someone's work in progress.
RESOLVE_CLAIM = "resolve:"

Keep = Literal["existing", "staged", "both"]
KEEP_CHOICES: tuple[Keep, ...] = ("existing", "staged", "both")


def resolve(
    archive_dir: str | os.PathLike[str],
    record_id: int,
    keep: Keep,
    *,
    lock_timeout: float | None = None,
    manifest: Location | None = None,
    endpoint_url: str | None = None,
) -> Record:
    """Resolve the conflict *record_id* by keeping *keep*; returns the updated row (the
    manifest at *manifest*, and *endpoint_url*, as for :func:`dicomcommit.commit`).

    Raises:
        UsageError: *keep* is not a choice, or the row is not an open conflict.
        ManifestError: no such row.
        LockTimeout, LockError: the archive lock was not taken.
        ResolveError: an operation on the archive failed; rerun to finish.
    """
    return resolve_many(archive_dir, keep, ids=[record_id], lock_timeout=lock_timeout, manifest=manifest,
                        endpoint_url=endpoint_url)[0]  # fmt: skip


def resolve_many(
    archive_dir: str | os.PathLike[str],
    keep: Keep,
    *,
    ids: list[int] | None = None,
    run: str | None = None,
    target: str | None = None,
    lock_timeout: float | None = None,
    manifest: Location | None = None,
    endpoint_url: str | None = None,
    who: str | None = None,
) -> list[Record]:
    """Resolve several conflicts the same way: the rows *ids*, or every open conflict
    (filtered by commit *run* and by a *target* glob such as ``PAT01/*``). The rows record
    *who* decided (by default this user at this host: ``alice@ws7``).

    Raises:
        As :func:`resolve`.
    """
    if keep not in KEEP_CHOICES:
        raise UsageError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    url = manifest_url(archive_dir, manifest)
    archive = open_archive(archive_dir, manifest=url, endpoint_url=endpoint_url)
    if is_shared(url):  # no lock: each name is arbitrated where it is created, which create() checks it can be
        archive.create()
        lock: AbstractContextManager[None] = nullcontext()
    else:
        lock = archive.lock(lock_timeout)
    who = who or decider()
    done = []
    with lock, open_manifest(archive_dir, manifest=url) as opened, opened.exclusive():
        if ids is not None:
            rows = [opened.get(record_id) for record_id in ids]
            for row in rows:
                if row.status is not Status.CONFLICT and row.resolution is None:
                    raise UsageError(f"#{row.id} is {row.status}, not a conflict: nothing to resolve")
                if row.status is not Status.CONFLICT and row.resolution != keep:  # (the same: rerun to finish)
                    raise UsageError(f"#{row.id} is not a conflict any more: {row.resolved_by} resolved it "
                                     f"(--keep {row.resolution}) at {row.resolved_at}")  # fmt: skip
        else:
            # Open conflicts, and decisions an interrupted run recorded but did not finish
            # (their conflict copy is still there): rerunning the same command finishes them.
            rows = [r for r in opened.records(Status.CONFLICT, run=run)
                    if target is None or fnmatch.fnmatchcase(r.target or "", target)]  # fmt: skip
            rows += [r for r in opened.records((Status.RESOLVED, Status.COMMITTED), run=run, resolved=True)
                     if r.resolution == keep and r.sha256 is not None and archive.size(_conflict_copy(r)) is not None
                     and (target is None or fnmatch.fnmatchcase(r.target or "", target))]  # fmt: skip
        rows = _intend(opened, rows, keep, who)
        with archive, opened.leased():
            if opened.shared:  # the names it is about to give these bytes are work in progress
                opened.claim([_claim_of(row) for row in rows])
            for row in rows:
                _guarded(archive, row, partial(_ACTIONS[keep], archive, row, opened, who))
                done.append(opened.get(row.id))
    return done


def decider() -> str:
    """Who decides, as the manifest records it: this user at this host (``alice@ws7``)."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _claim_of(row: Record) -> Claim:
    return Claim(f"{RESOLVE_CLAIM}{row.id}", row.target, row.sha256, row.size, row.attrs, "resolve")


def _intend(manifest: BaseManifest, rows: list[Record], keep: Keep, who: str) -> list[Record]:
    """Record the decision on each open conflict before any file is touched (one transaction):
    a resolve killed at any later step is then finished as decided, by rerunning it or by
    ``recover``, and nothing has to be guessed from which files exist."""
    for row in rows:
        if row.status is Status.CONFLICT and row.resolution not in (None, keep):
            raise UsageError(f"#{row.id}: an interrupted resolve decided --keep {row.resolution}; rerun that "
                             "(or recover) to finish it first")  # fmt: skip
    pending = [row for row in rows if row.status is Status.CONFLICT and row.resolution is None]
    if pending:
        with manifest.transaction():
            for row in pending:
                manifest.update(row.id, **_stamp(keep, who))
    return [manifest.get(row.id) for row in rows]


def _guarded(archive: BaseArchive, row: Record, action: Callable[[], None]) -> None:
    try:
        action()
    except DicomCommitError:
        raise
    except OSError as exc:
        where = f"{archive.location}/{row.path}"
        raise ResolveError(f"cannot resolve #{row.id} ({exc.strerror}); rerun to finish", where, exc) from exc


def _keep_existing(archive: BaseArchive, row: Record, manifest: BaseManifest, who: str) -> None:
    rejected = "/".join((*REJECTED_DIR, f"{_hash_of(row)}.dcm"))
    if row.status is Status.CONFLICT:  # decided, not carried out yet
        _link_rel(archive, _conflict_copy(row), rejected)
        archive.sync()
        point("resolve:after-link")
        with manifest.transaction():
            manifest.update(row.id, status=Status.RESOLVED, path=rejected, detail="kept the committed file; "
                            "this copy rejected", **_stamp("existing", who))  # fmt: skip
            _repoint_duplicates(manifest, row, rejected)
        point("resolve:after-manifest")
    _drop_conflict_copy(archive, row, manifest)


def _keep_both(archive: BaseArchive, row: Record, manifest: BaseManifest, who: str) -> None:
    assert row.target is not None
    derived_rel = derived_name(row.target, _hash_of(row))
    if row.status is Status.CONFLICT:  # decided, not carried out yet
        # The derived name, as commit --on-conflict suffix asks for it: ours once it holds these bytes.
        step = Place(Role.DERIVED, derived_rel, row.existing_sha256)
        placed = archive.link(_conflict_copy(row), derived_rel)
        answer = Answer(placed, archive.sha256(derived_rel) if placed is Placed.EXISTS else None)
        outcome = decide(step, answer, File(row.source, row.target, row.sha256), "record")
        if not isinstance(outcome, Outcome) or outcome.status is not Status.COMMITTED:
            raise ResolveError("a different file already holds this name", f"{archive.location}/{derived_rel}")
        archive.sync()
        point("resolve:after-link")
        with manifest.transaction():
            manifest.update(row.id, status=Status.COMMITTED, path=derived_rel,
                            detail=f"conflict with {row.target}; both kept", **_stamp("both", who))  # fmt: skip
            _repoint_duplicates(manifest, row, derived_rel)
        point("resolve:after-manifest")
    _drop_conflict_copy(archive, row, manifest)


def _keep_staged(archive: BaseArchive, row: Record, manifest: BaseManifest, who: str) -> None:
    assert row.target is not None
    if row.status is not Status.CONFLICT:  # carried out and recorded
        _drop_conflict_copy(archive, row, manifest)
        return
    current = archive.sha256(row.target)
    old = current if current not in (None, row.sha256) else row.existing_sha256
    replaced = "/".join((*REPLACED_DIR, f"{old}.dcm"))
    if current != row.sha256:  # not swapped yet (or interrupted before the swap)
        if _shared(manifest, row):
            raise UsageError(f"#{row.id}: its bytes are also another open conflict's; resolve that one first")
        if current is not None:
            _link_rel(archive, row.target, replaced)  # the old file keeps a name before it loses this one
            archive.sync()
        point("resolve:after-link")
        archive.replace(_conflict_copy(row), row.target)  # readers see the old file or the new one
        archive.sync()
        point("resolve:after-rename")
    with manifest.transaction():
        for other in manifest.records(Status.COMMITTED, path=row.target):
            if other.id != row.id:
                hashed = {"sha256": old} if other.sha256 is None else {}  # a foreign file: hashed now
                manifest.update(other.id, status=Status.RESOLVED, path=replaced,
                                detail=f"replaced by #{row.id}", **hashed, **_stamp("replaced", who))  # fmt: skip
        for duplicate in manifest.records(Status.DUPLICATE, path=row.target):
            if duplicate.sha256 in (None, old):  # duplicates of the old file follow it
                manifest.update(duplicate.id, path=replaced)
        manifest.update(row.id, status=Status.COMMITTED, path=row.target,
                        detail=f"conflict resolved: replaced the file committed before (kept at {replaced})",
                        **_stamp("staged", who))  # fmt: skip
        _repoint_duplicates(manifest, row, row.target)
    point("resolve:after-manifest")
    # A rename consumed it; an object store's replace is a write then a delete, which a crash can split.
    _drop_conflict_copy(archive, row, manifest)


_ACTIONS: dict[Keep, Callable[[BaseArchive, Record, BaseManifest, str], None]] = {
    "existing": _keep_existing,
    "staged": _keep_staged,
    "both": _keep_both,
}


def _stamp(resolution: str, who: str) -> dict[str, str]:
    return {"resolution": resolution, "resolved_by": who, "resolved_at": now()}


def _link_rel(archive: BaseArchive, src: str, dst: str) -> None:
    """Give the archive file *src* the extra name *dst*; fine if it already has it."""
    if archive.link(src, dst) is Placed.EXISTS:
        src_sha = archive.sha256(src)
        if src_sha is None or src_sha != archive.verified_sha256(dst):
            raise ResolveError("a different file already holds this name", f"{archive.location}/{dst}")


def _conflict_copy(row: Record) -> str:
    """Where commit kept the conflicting bytes (named by their hash, so known on every rerun)."""
    return "/".join((*CONFLICTS_DIR, f"{_hash_of(row)}.dcm"))


def _hash_of(row: Record) -> str:
    """A conflict's hash: commit always hashes a file whose name is taken."""
    if row.sha256 is None:
        raise UsageError(f"#{row.id} has no hash, so it was never a conflict: nothing to resolve")
    return row.sha256


def _repoint_duplicates(manifest: BaseManifest, row: Record, path: str) -> None:
    """Rows recorded as duplicates of this conflict's copy follow its bytes to *path*."""
    for duplicate in manifest.records(Status.DUPLICATE, path=_conflict_copy(row)):
        manifest.update(duplicate.id, path=path)


def _shared(manifest: BaseManifest, row: Record) -> bool:
    return any(r.id != row.id for r in manifest.records(Status.CONFLICT, path=_conflict_copy(row)))


def _drop_conflict_copy(archive: BaseArchive, row: Record, manifest: BaseManifest) -> None:
    """Remove the conflicts/ name once the bytes have their new name and no open conflict needs it."""
    if not _shared(manifest, row):
        archive.remove(_conflict_copy(row))
