"""Resolve: a person's decision on a conflict, carried out without losing or exposing anything.

- ``existing``: the committed file stays; the conflicting copy moves to ``rejected/``.
- ``staged``: the committed file is hard-linked into ``replaced/`` first, then the
  conflicting file is renamed over the target: at no instant is the target missing or
  partial, and nothing is deleted.
- ``both``: the conflicting file is committed under ``<name>~<sha256 prefix>.<ext>``.

Each decision is recorded on the manifest rows (who, when, what), under the archive lock.
Every step can be repeated, so rerunning an interrupted resolve finishes it.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import socket
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

from dicomcommit import _fs
from dicomcommit._faults import point
from dicomcommit.archives.filesystem import archive_lock
from dicomcommit.errors import CommitError, DicomCommitError, UsageError
from dicomcommit.hashing import sha256_at
from dicomcommit.layout import CONFLICTS_DIR, REJECTED_DIR, REPLACED_DIR
from dicomcommit.manifests.sqlite import Manifest, Record, now
from dicomcommit.naming import derived_name

Keep = Literal["existing", "staged", "both"]
KEEP_CHOICES: tuple[Keep, ...] = ("existing", "staged", "both")


def resolve(
    archive_dir: str | os.PathLike[str], record_id: int, keep: Keep, *, lock_timeout: float | None = None
) -> Record:
    """Resolve the conflict *record_id* by keeping *keep*; returns the updated row.

    Raises:
        UsageError: *keep* is not a choice, or the row is not an open conflict.
        ManifestError: no such row.
        CommitError: a filesystem operation failed; rerun to finish.
    """
    return resolve_many(archive_dir, keep, ids=[record_id], lock_timeout=lock_timeout)[0]


def resolve_many(
    archive_dir: str | os.PathLike[str],
    keep: Keep,
    *,
    ids: list[int] | None = None,
    run: str | None = None,
    target: str | None = None,
    lock_timeout: float | None = None,
) -> list[Record]:
    """Resolve several conflicts the same way: the rows *ids*, or every open conflict
    (filtered by commit *run* and by a *target* glob such as ``PAT01/*``).

    Raises:
        As :func:`resolve`.
    """
    if keep not in KEEP_CHOICES:
        raise UsageError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    archive = Path(archive_dir)
    lock = archive_lock(archive, lock_timeout)
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    done = []
    with lock, Manifest(archive) as manifest:
        if ids is not None:
            rows = [manifest.get(record_id) for record_id in ids]
            for row in rows:
                if row.status != "conflict" and row.resolution is None:
                    raise UsageError(f"#{row.id} is {row.status}, not a conflict: nothing to resolve")
        else:
            # Open conflicts, and decisions an interrupted run recorded but did not finish
            # (their conflict copy is still there): rerunning the same command finishes them.
            rows = [r for r in manifest.records("conflict", run=run)
                    if target is None or fnmatch.fnmatchcase(r.target or "", target)]  # fmt: skip
            rows += [r for r in manifest.records(("resolved", "committed"), run=run, resolved=True)
                     if r.resolution == keep and r.sha256 is not None and (archive / _conflict_copy(r)).is_file()
                     and (target is None or fnmatch.fnmatchcase(r.target or "", target))]  # fmt: skip
        rows = _intend(manifest, rows, keep, who)
        tree = _fs.DirTree(archive)
        try:
            for row in rows:
                _guarded(archive, row, partial(_ACTIONS[keep], archive, row, tree, manifest, who))
                done.append(manifest.get(row.id or 0))
        finally:
            tree.close()
    return done


def _intend(manifest: Manifest, rows: list[Record], keep: Keep, who: str) -> list[Record]:
    """Record the decision on each open conflict before any file is touched (one transaction):
    a resolve killed at any later step is then finished as decided, by rerunning it or by
    ``recover``, and nothing has to be guessed from which files exist."""
    for row in rows:
        if row.status == "conflict" and row.resolution not in (None, keep):
            raise UsageError(f"#{row.id}: an interrupted resolve decided --keep {row.resolution}; rerun that "
                             "(or recover) to finish it first")  # fmt: skip
    pending = [row for row in rows if row.status == "conflict" and row.resolution is None]
    if pending:
        with manifest.transaction():
            for row in pending:
                manifest.update(row.id or 0, **_stamp(keep, who))
    return [manifest.get(row.id or 0) for row in rows]


def _guarded(archive: Path, row: Record, action: Callable[[], None]) -> None:
    try:
        action()
    except DicomCommitError:
        raise
    except OSError as exc:
        raise CommitError(
            f"cannot resolve #{row.id} ({exc.strerror}); rerun to finish", archive / row.path, exc
        ) from exc


def _keep_existing(archive: Path, row: Record, tree: _fs.DirTree, manifest: Manifest, who: str) -> None:
    rejected = "/".join((*REJECTED_DIR, f"{_hash_of(row)}.dcm"))
    if row.status == "conflict":  # decided, not carried out yet
        _link_rel(tree, _conflict_copy(row), rejected)
        tree.fsync_touched()
        point("resolve:after-link")
        with manifest.transaction():
            manifest.update(row.id or 0, status="resolved", path=rejected, detail="kept the committed file; "
                            "this copy rejected", **_stamp("existing", who))  # fmt: skip
            _repoint_duplicates(manifest, row, rejected)
        point("resolve:after-manifest")
    _drop_conflict_copy(archive, row, manifest)


def _keep_both(archive: Path, row: Record, tree: _fs.DirTree, manifest: Manifest, who: str) -> None:
    assert row.target is not None
    derived_rel = derived_name(row.target, _hash_of(row))
    if row.status == "conflict":  # decided, not carried out yet
        _link_rel(tree, _conflict_copy(row), derived_rel)
        tree.fsync_touched()
        point("resolve:after-link")
        with manifest.transaction():
            manifest.update(row.id or 0, status="committed", path=derived_rel,
                            detail=f"conflict with {row.target}; both kept", **_stamp("both", who))  # fmt: skip
            _repoint_duplicates(manifest, row, derived_rel)
        point("resolve:after-manifest")
    _drop_conflict_copy(archive, row, manifest)


def _keep_staged(archive: Path, row: Record, tree: _fs.DirTree, manifest: Manifest, who: str) -> None:
    assert row.target is not None
    if row.status != "conflict":
        return  # carried out and recorded
    dirs, fname = _fs.split_rel(row.target)
    target_fd = tree.dir_fd(dirs, create=False)
    current = sha256_at(fname, dir_fd=target_fd)
    old = current if current not in (None, row.sha256) else row.existing_sha256
    replaced = "/".join((*REPLACED_DIR, f"{old}.dcm"))
    if current != row.sha256:  # not swapped yet (or interrupted before the swap)
        if _shared(manifest, row):
            raise UsageError(f"#{row.id}: its bytes are also another open conflict's; resolve that one first")
        if current is not None:
            _link_rel(tree, row.target, replaced)  # the old file keeps a name before it loses this one
            tree.fsync_touched()
        point("resolve:after-link")
        src_dirs, src_name = _fs.split_rel(_conflict_copy(row))
        # rename(2) replaces the target atomically: readers see the old file or the new one
        os.rename(src_name, fname, src_dir_fd=tree.dir_fd(src_dirs), dst_dir_fd=target_fd)
        _fs.fsync_dir(target_fd)
        _fs.fsync_dir(tree.dir_fd(src_dirs))
        point("resolve:after-rename")
    with manifest.transaction():
        for other in manifest.records("committed", path=row.target):
            if other.id != row.id:
                hashed = {"sha256": old} if other.sha256 is None else {}  # a foreign file: hashed now
                manifest.update(other.id or 0, status="resolved", path=replaced,
                                detail=f"replaced by #{row.id}", **hashed, **_stamp("replaced", who))  # fmt: skip
        for duplicate in manifest.records("duplicate", path=row.target):
            if duplicate.sha256 in (None, old):  # duplicates of the old file follow it
                manifest.update(duplicate.id or 0, path=replaced)
        manifest.update(row.id or 0, status="committed", path=row.target,
                        detail=f"conflict resolved: replaced the file committed before (kept at {replaced})",
                        **_stamp("staged", who))  # fmt: skip
        _repoint_duplicates(manifest, row, row.target)
    point("resolve:after-manifest")


_ACTIONS: dict[str, Callable[[Path, Record, _fs.DirTree, Manifest, str], None]] = {
    "existing": _keep_existing,
    "staged": _keep_staged,
    "both": _keep_both,
}


def _stamp(resolution: str, who: str) -> dict[str, str]:
    return {"resolution": resolution, "resolved_by": who, "resolved_at": now()}


def _link_rel(tree: _fs.DirTree, src: str, dst: str) -> None:
    """Give the archive file *src* the extra name *dst*; fine if it already has it."""
    src_dirs, src_name = _fs.split_rel(src)
    dst_dirs, dst_name = _fs.split_rel(dst)
    dst_fd = tree.dir_fd(dst_dirs)
    placed = _fs.link_noclobber(tree.dir_fd(src_dirs), src_name, dst_fd, dst_name, where=str(tree.root / dst))
    if placed is _fs.Placed.EXISTS:
        src_sha = sha256_at(src_name, dir_fd=tree.dir_fd(src_dirs))
        if src_sha is None or src_sha != sha256_at(dst_name, dir_fd=dst_fd):
            raise CommitError("a different file already holds this name", tree.root / dst)
    tree.touch(dst_dirs)


def _conflict_copy(row: Record) -> str:
    """Where commit kept the conflicting bytes (named by their hash, so known on every rerun)."""
    return "/".join((*CONFLICTS_DIR, f"{_hash_of(row)}.dcm"))


def _hash_of(row: Record) -> str:
    """A conflict's hash: commit always hashes a file whose name is taken."""
    if row.sha256 is None:
        raise UsageError(f"#{row.id} has no hash, so it was never a conflict: nothing to resolve")
    return row.sha256


def _repoint_duplicates(manifest: Manifest, row: Record, path: str) -> None:
    """Rows recorded as duplicates of this conflict's copy follow its bytes to *path*."""
    for duplicate in manifest.records("duplicate", path=_conflict_copy(row)):
        manifest.update(duplicate.id or 0, path=path)


def _shared(manifest: Manifest, row: Record) -> bool:
    return any(r.id != row.id for r in manifest.records("conflict", path=_conflict_copy(row)))


def _drop_conflict_copy(archive: Path, row: Record, manifest: Manifest) -> None:
    """Remove the conflicts/ name once the bytes have their new name and no open conflict needs it."""
    if not _shared(manifest, row):
        (archive / _conflict_copy(row)).unlink(missing_ok=True)
