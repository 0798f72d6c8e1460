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

from dicomcommit.archives import BaseArchive
from dicomcommit.dicom.headers import NotDicom, read_attrs
from dicomcommit.errors import ArchiveError
from dicomcommit.layout import CONFLICTS_DIR, INVALID_DIR, REJECTED_DIR, REPLACED_DIR
from dicomcommit.manifests import open_manifest, set_aside
from dicomcommit.manifests.records import NewRecord, Status, now
from dicomcommit.naming import Template, parse_template

_LOST = "rebuilt from the archive by recover --rebuild-manifest; its staged name and history were lost"


def rebuild(archive: BaseArchive, template: str, manifest: str) -> str | None:
    """Set the SQLite manifest file *manifest* of *archive* aside and start a new one with
    the rows of dicomcommit's own folders; call under the archive lock. Returns where the
    old manifest went (None when there was none).

    Raises:
        TemplateError: *template* cannot be used.
        ManifestError: the new manifest cannot be written.
    """
    parsed = parse_template(template, allow_collisions=True)
    kept = set_aside(manifest)
    rows: list[NewRecord] = []
    resolutions: dict[str, str] = {}  # resolved copies, and how they were resolved
    for sha256, rel, size in _state_files(archive, CONFLICTS_DIR):
        target = _target_of(archive, rel, parsed)
        existing = None if target is None else _sha256_or_none(archive, target)
        detail = f"{_LOST}; the target holds sha256 {existing}" if existing else _LOST
        rows.append(_row(Status.CONFLICT, target, rel, size, sha256, detail=detail, existing=existing))
    for sha256, rel, size in _state_files(archive, INVALID_DIR):
        rows.append(_row(Status.INVALID, None, rel, size, sha256, detail=f"{_LOST}, with the reason it was refused"))
    for folder, how in ((REJECTED_DIR, "existing"), (REPLACED_DIR, "replaced")):
        for sha256, rel, size in _state_files(archive, folder):
            rows.append(_row(Status.RESOLVED, None, rel, size, sha256, detail=_LOST))
            resolutions[rel] = how
    with open_manifest(archive.location, manifest=manifest, create=True) as rebuilt:
        rebuilt.add(rows)
        with rebuilt.transaction():
            for row in rebuilt.records(Status.RESOLVED):
                rebuilt.update(row.id, resolution=resolutions.get(row.path))
    return kept


def _state_files(archive: BaseArchive, folder: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """(sha256, archive-relative path, size) of each regular file in one of our folders."""
    found = []
    for rel in archive.files(folder):
        hashed = archive.hash(rel)
        if hashed is not None:
            found.append((hashed[0], rel, hashed[1]))
    return found


def _sha256_or_none(archive: BaseArchive, rel: str) -> str | None:
    """The hash of the file at *rel*; None also when a directory on its way is not a real one."""
    try:
        return archive.sha256(rel)
    except ArchiveError:
        return None


def _target_of(archive: BaseArchive, rel: str, template: Template) -> str | None:
    """The name a kept conflict wanted, from its header; None when it cannot be read."""
    try:
        with archive.open(rel) as file:
            attrs = read_attrs(file.fileno(), template.keywords, name=f"{archive.location}/{rel}")
    except (NotDicom, OSError):
        return None
    return template.render(attrs)


def _row(
    status: Status, target: str | None, rel: str, size: int, sha256: str, *, detail: str, existing: str | None = None
) -> NewRecord:
    return NewRecord(status, target, rel, f"rebuilt:{rel}", size, sha256, run="recover", time=now(), detail=detail,
                     existing_sha256=existing, host="")  # fmt: skip
