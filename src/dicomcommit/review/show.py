"""Review: what a manifest row is, and for a conflict, how its two files differ."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicomcommit.archives import BaseArchive, open_archive
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Record, Status

PIXEL_DATA = Tag(0x7FE0, 0x0010)
VALUE_WIDTH = 64

log = logging.getLogger("dicomcommit")


@dataclass(frozen=True)
class ElementDiff:
    """One header element that differs: its tag, keyword and both values (shortened)."""

    tag: str
    keyword: str
    existing: str
    staged: str


@dataclass
class FileDiff:
    """How the committed file and the conflicting one differ."""

    elements: list[ElementDiff] = field(default_factory=list)
    pixels_differ: bool | None = None  # None: neither has pixel data; False: the same image, however encoded
    pixels: str = "no pixel data"  # the comparison in words: identical, after decoding, or where they differ
    error: str | None = None  # a file could not be read


@dataclass
class FileInfo:
    """Where a file lies, its size and hash (size and hash None when it is gone)."""

    path: str
    size: int | None
    sha256: str | None


@dataclass
class Shown:
    """Everything ``show`` prints about a row."""

    record: Record
    existing: FileInfo | None = None
    staged: FileInfo | None = None
    diff: FileDiff | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "record": self.record.to_dict(),
            "existing": None if self.existing is None else asdict(self.existing),
            "staged": None if self.staged is None else asdict(self.staged),
            "diff": None if self.diff is None else asdict(self.diff),
        }


def show(
    archive_dir: str | Path,
    record_id: int,
    *,
    manifest: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
) -> Shown:
    """The row *record_id* (of the manifest at *manifest*, as for :func:`dicomcommit.commit`;
    *endpoint_url* for an object store); for an open conflict, both files and their differences.

    Raises:
        ManifestError: no manifest, or no such row.
    """
    with open_manifest(archive_dir, manifest=manifest) as opened:
        record = opened.get(record_id)
    shown = Shown(record)
    if record.status is Status.CONFLICT and record.target is not None:
        with open_archive(archive_dir, endpoint_url=endpoint_url) as archive:
            shown.existing = _info(archive, record.target)
            shown.staged = _info(archive, record.path)
            shown.diff = diff_loaded(load(Path(record.target), archive), load(Path(record.path), archive))
    return shown


def _info(archive: BaseArchive, rel: str) -> FileInfo:
    path = f"{archive.location}/{rel}"
    found = archive.hash(rel)  # chunked: a 50 MB file is not read into memory at once
    if found is None:
        return FileInfo(path, None, None)
    return FileInfo(path, found[1], found[0])


@contextlib.contextmanager
def warnings_logged(path: str | os.PathLike[str]) -> Iterator[None]:
    """Log each distinct warning raised inside the block once, naming *path*.

    pydicom warns about the values it reads (``Invalid value for VR IS``) without saying
    in which file, issues each warning twice (``warnings`` and its logger), and converts
    values lazily: wrap everything that touches one file's dataset.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Its own copy of each: pydicom warns once per element, and may say the same twice.
            warnings.simplefilter("always", UserWarning)
            yield
    finally:
        for text in dict.fromkeys(str(w.message) for w in caught):
            log.warning("%s: %s", path, text)


@dataclass
class Loaded:
    """A DICOM file read whole with each element's value converted, or why it could not be."""

    path: str  # for messages: a local path, or the archive's location and the name in it
    dataset: Dataset | None = None
    elements: dict[int, Any] = field(default_factory=dict)
    error: str | None = None


def load(path: Path, archive: BaseArchive | None = None) -> Loaded:
    """Read *path* (a name in *archive*, if given) and convert every element (File Meta
    included), logging pydicom's warnings once.

    Never raises for a file that cannot be read: ``error`` says why.
    """
    shown = str(path) if archive is None else f"{archive.location}/{path.as_posix()}"
    with warnings_logged(shown):
        try:
            if archive is None:
                ds = pydicom.dcmread(path)
            else:
                with archive.open(path.as_posix()) as file:
                    ds = pydicom.dcmread(file)
            # Values are converted on first access: an unknown VR raises here, not in dcmread.
            return Loaded(shown, ds, _elements(ds))
        except Exception as exc:  # pydicom raises many types on unreadable input
            return Loaded(shown, error=str(exc) or type(exc).__name__)


def diff_files(existing: Path, staged: Path) -> FileDiff:
    """Compare two DICOM files element by element (File Meta included), and their pixels."""
    return diff_loaded(load(existing), load(staged))


def diff_loaded(existing: Loaded, staged: Loaded) -> FileDiff:
    """Compare two files read by :func:`load` (a file that could not be read gives ``error``)."""
    for loaded in (existing, staged):
        if loaded.error is not None:
            return FileDiff(error=f"cannot read both files as DICOM: {loaded.error}")
    diff = FileDiff()
    ea, eb = existing.elements, staged.elements
    for tag in sorted(set(ea) | set(eb)):
        if tag == PIXEL_DATA:
            continue
        va, vb = ea.get(tag), eb.get(tag)
        if va != vb:
            diff.elements.append(ElementDiff(str(Tag(tag)), label(tag), _short(va), _short(vb)))
    if PIXEL_DATA in ea or PIXEL_DATA in eb:
        diff.pixels_differ, diff.pixels = _compare_pixels(existing, staged)
    return diff


def _compare_pixels(existing: Loaded, staged: Loaded) -> tuple[bool, str]:
    """Whether the two images differ, and how: by their encoded bytes when those are equal,
    else by their decoded pixels (another transfer syntax may hold the same image)."""
    a, b = existing.elements.get(PIXEL_DATA), staged.elements.get(PIXEL_DATA)
    if a is None or b is None:
        return True, "pixel data in one file only"
    if a == b:
        return False, "pixel data identical"
    decoded = []
    for loaded in (existing, staged):
        assert loaded.dataset is not None
        with warnings_logged(loaded.path):
            try:
                decoded.append(loaded.dataset.pixel_array)
            except Exception as exc:  # no decoder for this transfer syntax, corrupt data...
                reason = " ".join(str(exc).split())[:120] or type(exc).__name__
                return True, f"pixel data differs (encoded bytes; {loaded.path} cannot be decoded: {reason})"
    first, second = decoded
    if first.shape != second.shape:
        return True, f"pixel data differs: {first.shape} and {second.shape} pixels"
    unequal = first != second
    if not unequal.any():
        return False, "pixel data identical after decoding"
    colour = existing.dataset is not None and existing.dataset.get("SamplesPerPixel", 1) > 1
    where = unequal.any(axis=-1) if colour else unequal  # a pixel differs when any of its samples does
    rows = where.any(axis=tuple(i for i in range(where.ndim) if i != where.ndim - 2)).nonzero()[0]
    cols = where.any(axis=tuple(range(where.ndim - 1))).nonzero()[0]
    return True, (f"pixel data differs: {int(where.sum()):,} of {where.size:,} pixels, "
                  f"rows {rows[0]}-{rows[-1]}, columns {cols[0]}-{cols[-1]}")  # fmt: skip


def label(tag: int) -> str:
    """The keyword of *tag*, or what kind of element it is when the dictionary has none."""
    keyword = pydicom.datadict.keyword_for_tag(tag)
    if keyword:
        return keyword
    if tag & 0xFFFF == 0:
        return "(group length)"  # retired outside the File Meta, still written by older tools
    return "(private)" if (tag >> 16) % 2 else "(unknown)"


def _elements(ds: Dataset) -> dict[int, Any]:
    found = {int(elem.tag): elem.value for elem in ds.file_meta} if hasattr(ds, "file_meta") else {}
    found.update({int(elem.tag): elem.value for elem in ds})
    return found


def _short(value: object) -> str:
    if value is None:
        return "(absent)"
    if isinstance(value, bytes):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, pydicom.sequence.Sequence):
        text = f"<sequence of {len(value)} items>"
    else:
        text = str(value)
    return text if len(text) <= VALUE_WIDTH else f"{text[: VALUE_WIDTH - 1]}…"
