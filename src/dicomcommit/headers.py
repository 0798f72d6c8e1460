"""Reading foreign files: only as much of the header as naming needs, and a content hash."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from dicomcommit.naming import Attrs, attrs_from_dataset
from dicomcommit.rawheader import NeedMoreBytes, Unsupported, scan

_CHUNK = 1 << 20
_RAW_READS = (4096, 65536)  # most headers fit the first; a few long ones the second


class NotDicom(Exception):
    """The file is not a DICOM Part 10 file we can name; ``str()`` is the reason."""


def read_attrs(fd: int, keywords: Sequence[str]) -> Attrs:
    """Read the values of *keywords* from the DICOM file open at *fd*.

    Parsing stops at the first top-level element past the last tag needed, so the bytes
    read do not grow with the pixel data. The common layouts are read by
    :mod:`dicomcommit.rawheader` from the first 4 KiB (or 64 KiB); pydicom reads the rest.

    Raises:
        NotDicom: no Part 10 preamble and File Meta, an empty dataset, or a header pydicom
            cannot parse (truncated, corrupt).
    """
    for size in _RAW_READS:
        data = os.pread(fd, size, 0)
        try:
            return scan(data, keywords)
        except NeedMoreBytes:
            if len(data) < size:
                break  # the file is all there is: let pydicom say what is wrong
        except Unsupported:
            break
    return _read_with_pydicom(fd, keywords)


def _read_with_pydicom(fd: int, keywords: Sequence[str]) -> Attrs:
    tags = [Tag(t) for t in (tag_for_keyword(k) for k in keywords) if t is not None]
    last = max(tags, default=Tag(0))

    def past_last(tag: BaseTag, vr: str | None, length: int) -> bool:
        return bool(tag > last)

    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as fileobj:
        try:
            ds = read_partial(fileobj, stop_when=past_last, specific_tags=list(tags))
        except InvalidDicomError as exc:
            raise NotDicom(f"not a DICOM Part 10 file: {exc}") from exc
        except Exception as exc:  # pydicom raises many types on corrupt input
            raise NotDicom(f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise NotDicom("DICOM File Meta Information has no Transfer Syntax UID")
    return attrs_from_dataset(ds, keywords)


@dataclass(frozen=True)
class Described:
    """What naming needs of one file: size, attributes, or why it is not DICOM."""

    size: int
    attrs: Attrs
    invalid: str | None


def describe(path: str, keywords: Sequence[str]) -> Described:
    """Read the header of the file at *path* (for worker processes).

    Raises:
        OSError: the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        try:
            return Described(size, read_attrs(fd, keywords), None)
        except NotDicom as exc:
            return Described(size, {}, str(exc))
    finally:
        os.close(fd)


def hash_at(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> tuple[str, int] | None:
    """(sha256, size) of the regular file at *path* (relative to *dir_fd*, if given).

    A symlink there is not followed. Returns None when nothing is there, or when it is a
    symlink, a directory or a special file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        return hash_file(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def sha256_at(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> str | None:
    """The hash of the regular file at *path*; None as :func:`hash_at`."""
    found = hash_at(path, dir_fd=dir_fd)
    return None if found is None else found[0]


def hash_file(fd: int) -> tuple[str, int]:
    """Return (sha256 hex, size) of the whole file open at *fd*."""
    os.lseek(fd, 0, os.SEEK_SET)
    digest = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
