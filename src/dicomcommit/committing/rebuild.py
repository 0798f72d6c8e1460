"""Rebuild a damaged manifest from the archive itself (``recover --rebuild-manifest``).

The filesystem is the truth for what is committed: every archive file outside
``.dicomcommit/`` gets a ``committed`` row from :func:`dicomcommit.recovery.recover`'s
reconciliation, as any unrecorded file does. This module sets the damaged file aside (it is
kept, never deleted) and recovers what only dicomcommit's own folders say: the open
conflicts (``conflicts/<sha256>.dcm``, named again by the template from their header), the
invalid files, and the resolved copies (``rejected/``, ``replaced/``). What the damaged
manifest alone knew (which staged file a row came from, reasons, who resolved what) is lost;
the rows say so.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from dicomcommit.dicom.headers import NotDicom, read_attrs
from dicomcommit.hashing import hash_at, sha256_at
from dicomcommit.layout import CONFLICTS_DIR, INVALID_DIR, MANIFEST_NAME, REJECTED_DIR, REPLACED_DIR, STATE_DIR
from dicomcommit.manifests.sqlite import Manifest, Record, now
from dicomcommit.naming import Template, parse_template

_LOST = "rebuilt from the archive by recover --rebuild-manifest; its staged name and history were lost"


def rebuild(archive: Path, template: str) -> str | None:
    """Set the manifest of *archive* aside and start a new one with the rows of
    dicomcommit's own folders; call under the archive lock. Returns where the old manifest
    went (None when there was none).

    Raises:
        TemplateError: *template* cannot be used.
        ManifestError: the new manifest cannot be written.
    """
    parsed = parse_template(template, allow_collisions=True)
    kept = _set_aside(archive / STATE_DIR)
    rows: list[Record] = []
    for sha256, rel, size in _state_files(archive, CONFLICTS_DIR):
        target = _target_of(archive / rel, parsed)
        existing = None if target is None else sha256_at(archive / target)
        detail = f"{_LOST}; the target holds sha256 {existing}" if existing else _LOST
        rows.append(_row("conflict", target, rel, size, sha256, detail=detail, existing=existing))
    for sha256, rel, size in _state_files(archive, INVALID_DIR):
        rows.append(_row("invalid", None, rel, size, sha256, detail=f"{_LOST}, with the reason it was refused"))
    for folder, how in ((REJECTED_DIR, "existing"), (REPLACED_DIR, "replaced")):
        for sha256, rel, size in _state_files(archive, folder):
            rows.append(replace(_row("resolved", None, rel, size, sha256, detail=_LOST), resolution=how))
    with Manifest(archive, create=True) as manifest:
        manifest.add(rows)
    return kept


def _set_aside(state: Path) -> str | None:
    """Rename the manifest (and its WAL files) to ``manifest.sqlite.damaged-<time>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = None
    for suffix in ("", "-wal", "-shm"):
        path = state / f"{MANIFEST_NAME}{suffix}"
        if os.path.lexists(path):
            aside = state / f"{MANIFEST_NAME}.damaged-{stamp}{suffix}"
            os.rename(path, aside)  # a fresh name: nothing to clobber
            kept = kept or str(aside)
    return kept


def _state_files(archive: Path, folder: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """(sha256, archive-relative path, size) of each regular file in one of our folders."""
    directory = archive.joinpath(*folder)
    if not directory.is_dir():
        return []
    found = []
    for name in sorted(os.listdir(directory)):
        hashed = hash_at(directory / name)
        if hashed is not None:
            found.append((hashed[0], "/".join((*folder, name)), hashed[1]))
    return found


def _target_of(path: Path, template: Template) -> str | None:
    """The name a kept conflict wanted, from its header; None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        attrs = read_attrs(fd, template.keywords, name=str(path))
    except (NotDicom, OSError):
        return None
    finally:
        os.close(fd)
    return template.render(attrs)


def _row(
    status: str, target: str | None, rel: str, size: int, sha256: str, *, detail: str, existing: str | None = None
) -> Record:
    return Record(status, target, rel, f"rebuilt:{rel}", size, sha256, run="recover", time=now(), detail=detail,
                  existing_sha256=existing)  # fmt: skip
