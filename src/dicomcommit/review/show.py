"""Review: what a manifest row is, and for a conflict, how its two files differ."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.tag import Tag

from dicomcommit.archives import BaseArchive, open_archive
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Record, Status
from dicomcommit.review.loading import Loaded, decode, load

PIXEL_DATA = Tag(0x7FE0, 0x0010)
VALUE_WIDTH = 64


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
    first, second = decode(existing), decode(staged)
    for loaded, pixels in ((existing, first), (staged, second)):
        if isinstance(pixels, str):
            return True, f"pixel data differs (encoded bytes; {loaded.path}: {pixels})"
    assert isinstance(first, np.ndarray)
    assert isinstance(second, np.ndarray)
    if first.shape != second.shape:
        return True, f"pixel data differs: {first.shape} and {second.shape} pixels"
    unequal = pixel_mask(existing, first, second)
    if not unequal.any():
        return False, "pixel data identical after decoding"
    where = flat(unequal)
    rows, cols = np.flatnonzero(where.any(axis=1)), np.flatnonzero(where.any(axis=0))
    return True, (f"pixel data differs: {int(np.count_nonzero(unequal)):,} of {unequal.size:,} pixels, "
                  f"rows {rows[0]}-{rows[-1]}, columns {cols[0]}-{cols[-1]}")  # fmt: skip


def pixel_mask(loaded: Loaded, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Where two decoded images of one shape differ, per pixel (frames kept): a pixel
    differs when any of its samples does."""
    unequal: np.ndarray = np.not_equal(first, second)
    colour = loaded.dataset is not None and loaded.dataset.get("SamplesPerPixel", 1) > 1
    return np.any(unequal, axis=-1) if colour else unequal


def flat(mask: np.ndarray) -> np.ndarray:
    """A (rows, columns) mask of where :func:`pixel_mask` is true in any frame."""
    return np.any(mask, axis=0) if mask.ndim == 3 else mask


def label(tag: int) -> str:
    """The keyword of *tag*, or what kind of element it is when the dictionary has none."""
    keyword = pydicom.datadict.keyword_for_tag(tag)
    if keyword:
        return keyword
    if tag & 0xFFFF == 0:
        return "(group length)"  # retired outside the File Meta, still written by older tools
    return "(private)" if (tag >> 16) % 2 else "(unknown)"


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
