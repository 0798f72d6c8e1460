"""Reading foreign files: only as much of the header as naming needs, and a content hash.

A file's naming attributes have one definition: its encoded bytes, decoded as pydicom
decodes them (:func:`attrs_from_bytes`). The stager applies it to the bytes it writes,
commit to the file it finds (:func:`read_attrs`), so the two always agree.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from dicomcommit.dicom.completeness import Incomplete, check_complete
from dicomcommit.dicom.rawheader import NeedMoreBytes, Unsupported, scan
from dicomcommit.naming import Attrs, attrs_from_dataset

_RAW_READS = (4096, 65536)  # most headers fit the first; a few long ones the second

_LOG = logging.getLogger("dicomcommit")
# The pydicom messages of the header this thread (or task) is reading, if it is reading one.
_HELD: ContextVar[list[str] | None] = ContextVar("dicomcommit_held_pydicom_messages", default=None)
# warnings.catch_warnings swaps process-wide state and restores it on exit: two threads
# inside it at once could restore each other's filters for good. One at a time, then; only
# values pydicom decodes for us get here, not the common ones.
_CATCHING = threading.RLock()


class NotDicom(Exception):
    """The file is not a DICOM Part 10 file we can name; ``str()`` is the reason."""


class _HoldBack(logging.Filter):
    """Holds back the pydicom logger's warnings about a header being read here.

    pydicom reports a problem twice (``warn_and_log``: its logger, then a warning);
    :func:`_diagnostics` logs each problem once, naming the file.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        held = _HELD.get()
        if held is None or record.levelno < logging.WARNING:
            return True
        held.append(record.getMessage())
        return False


logging.getLogger("pydicom").addFilter(_HoldBack())


@contextlib.contextmanager
def _diagnostics(name: str) -> Iterator[None]:
    """Run pydicom with its warnings captured: each distinct one is logged once, as a
    ``dicomcommit`` warning naming the file, and none is raised (even where warnings are
    errors). A warning another thread issues meanwhile is caught here too (and logged
    under this file's name): warnings have no per-thread capture before Python 3.14."""
    held: list[str] = []
    token = _HELD.set(held)
    try:
        with _CATCHING, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield
            finally:
                held.extend(str(warning.message) for warning in caught)
    finally:
        _HELD.reset(token)
        for message in dict.fromkeys(held):
            _LOG.warning("%s: %s", name or "a DICOM file", message)


def attrs_from_bytes(data: bytes | memoryview, keywords: Sequence[str], *, name: str = "") -> Attrs:
    """The naming values of *keywords* in *data*, a whole Part 10 file, as pydicom decodes them.

    The one definition of a file's naming attributes: values are what
    ``attrs_from_dataset(pydicom.dcmread(file), keywords)`` gives (the character set
    applied, padding and NULs stripped, person-name groups and multi-values as pydicom
    splits them), read from the header only. pydicom's warnings (bytes invalid in the
    character set, decoded with replacement characters...) are logged once each, with
    *name*.

    Raises:
        NotDicom: no Part 10 preamble and File Meta, or a header or naming value pydicom
            cannot decode.
    """
    view = memoryview(data)
    total = len(view)
    sizes = [size for size in _RAW_READS if size < total] + [total]
    return _read(
        lambda size: bytes(view[:size]),
        sizes,
        total=total,
        keywords=keywords,
        name=name,
        reopen=lambda: io.BytesIO(view),
    )


def read_attrs(fd: int, keywords: Sequence[str], *, name: str = "") -> Attrs:
    """Read the values of *keywords* from the DICOM file open at *fd*.

    The same values as :func:`attrs_from_bytes` gives for the file's bytes. The common
    layouts are located by :mod:`dicomcommit.dicom.rawheader` in the first 4 KiB (or 64 KiB);
    pydicom reads the rest, stopping at the first top-level element past the last tag
    needed, so the bytes read do not grow with the pixel data. *name* names the file in
    the lines logged for pydicom's warnings.

    Raises:
        NotDicom: no Part 10 preamble and File Meta, or a header or naming value pydicom
            cannot decode (truncated, corrupt).
    """

    def reopen() -> BinaryIO:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.fdopen(os.dup(fd), "rb")

    return _read(
        lambda size: os.pread(fd, size, 0), _RAW_READS, total=None, keywords=keywords, name=name, reopen=reopen
    )


def _read(
    head: Callable[[int], bytes],
    sizes: Sequence[int],
    *,
    total: int | None,
    keywords: Sequence[str],
    name: str,
    reopen: Callable[[], BinaryIO],
) -> Attrs:
    """Scan the first *sizes* bytes (as *head* gives them) in turn; else pydicom reads *reopen*.

    *total* is the file's size when known; else a short read says where it ends.
    """
    for size in sizes:
        data = head(size)
        complete = len(data) < size or len(data) == total
        try:
            scanned = scan(data, keywords, complete=complete)
        except NeedMoreBytes:
            if complete:
                break  # the file is all there is: let pydicom say what is wrong
            continue
        except Unsupported:
            break
        if not scanned.pending:
            return scanned.attrs
        with _diagnostics(name):
            try:
                return scanned.finish()
            except Exception as exc:  # pydicom raises many types for values it cannot decode
                raise NotDicom(f"undecodable naming value ({type(exc).__name__}: {exc})") from exc
    with _diagnostics(name), reopen() as fileobj:
        return _read_with_pydicom(fileobj, keywords)


def _read_with_pydicom(fileobj: BinaryIO, keywords: Sequence[str]) -> Attrs:
    """pydicom's reading of a header, up to the last tag needed (for layouts the scanner does not read).

    Raises:
        NotDicom: as :func:`read_attrs`.
    """
    tags = [Tag(t) for t in (tag_for_keyword(k) for k in keywords) if t is not None]
    last = max(tags, default=Tag(0))

    def past_last(tag: BaseTag, vr: str | None, length: int) -> bool:
        return bool(tag > last)

    try:
        ds = read_partial(fileobj, stop_when=past_last, specific_tags=list(tags))
    except InvalidDicomError as exc:
        raise NotDicom(f"not a DICOM Part 10 file: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise NotDicom(f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise NotDicom("DICOM File Meta Information has no Transfer Syntax UID")
    try:
        return attrs_from_dataset(ds, keywords)  # values are decoded here, on access
    except Exception as exc:
        raise NotDicom(f"undecodable naming value ({type(exc).__name__}: {exc})") from exc


def read_foreign(fd: int, keywords: Sequence[str], *, name: str = "") -> Attrs:
    """Read the naming values of a file no stager vouches for, open at *fd*: as
    :func:`read_attrs`, once the file is proven whole (every element's declared length fits
    the file, and the data set parses: :func:`dicomcommit.completeness.check_complete`).

    Raises:
        NotDicom: not a Part 10 file, incomplete ("truncated at byte N of M"), no data set
            after the File Meta, a data set that cannot be parsed, or as read_attrs.
    """
    try:
        check_complete(fd, os.fstat(fd).st_size)
    except Incomplete as exc:
        raise NotDicom(str(exc)) from exc
    return read_attrs(fd, keywords, name=name)


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
            return Described(size, read_foreign(fd, keywords, name=path), None)
        except NotDicom as exc:
            return Described(size, {}, str(exc))
    finally:
        os.close(fd)
