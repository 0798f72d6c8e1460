"""Whether a foreign Part 10 file is structurally whole, judged from its element headers.

Commit and ingest take files that other tools wrote (cp, storescp, scripts). A file that is
still being written, or was cut short, must not become a final file, and neither must junk
behind a valid preamble. :func:`check_complete` walks the element headers the way pydicom
reads them and seeks over every value, so it costs a few KiB of reads whatever the size of
the pixel data. Only undefined-length sequences, items and encapsulated pixel data are
walked into; anything with a defined length is skipped by its length, which must fit.
"""

from __future__ import annotations

import os
import struct
import zlib

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

__all__ = ["Incomplete", "check_complete"]

_FIRST_READ = 64 * 1024  # one pread holds the whole header of nearly every file
_DATASET_READ = 4096  # a later read of element headers, after a value larger than the window
_ITEM_READ = 64  # a read of an item header: pixel data fragments must not be read along with it
_INFLATE_READ = 1 << 20  # compressed bytes inflated at a time
_PREAMBLE_END = 132  # 128-byte preamble + b"DICM"
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_ITEM_GROUP = 0xFFFE
_PIXEL_DATA = (0x7FE0, 0x0010)
_ITEM_END_ELEM = 0xE00D
_TRANSFER_SYNTAX = 0x0010
_NOT_PART10 = "not a DICOM Part 10 file"
_NO_DATA_SET = "no data set after the File Meta"
_UNPARSABLE = "cannot be parsed past the File Meta"

# Element headers, as (group, element, VR, 2-byte length) or (group, element, 4-byte length):
# the VR is unpacked as a number because a table lookup by number is the fastest way to it.
_EXPLICIT = {little: struct.Struct("<HHHH" if little else ">HHHH").unpack_from for little in (True, False)}
_IMPLICIT = {little: struct.Struct("<HHL" if little else ">HHL").unpack_from for little in (True, False)}
_LENGTH = {little: struct.Struct("<L" if little else ">L").unpack_from for little in (True, False)}


def _header_sizes(little: bool) -> bytes:
    """A table from an explicit VR (as unpacked) to its header size: 12 bytes with a 4-byte length, 8, or 0 (no VR)."""
    table = bytearray(0x10000)
    for vr in STANDARD_VR:
        table[int.from_bytes(str(vr).encode(), "little" if little else "big")] = (
            12 if vr in EXPLICIT_VR_LENGTH_32 else 8
        )
    return bytes(table)


_HEADER_SIZES = {little: _header_sizes(little) for little in (True, False)}
# pydicom reads an undefined-length UN as a sequence (PS3.5 6.2.2)
_SEQUENCE_VRS = {
    little: {int.from_bytes(vr, "little" if little else "big") for vr in (b"SQ", b"UN")} for little in (True, False)
}
_ITEM_NAMES = {_ITEM: "item", _ITEM_END: "item delimiter", _SEQUENCE_END: "sequence delimiter"}


class Incomplete(ValueError):
    """The file is not structurally whole: cut short, still being written, or junk.

    ``str()`` is the reason, short and lowercase, shown to users and kept in the manifest.
    """


def check_complete(fd: int, size: int) -> None:
    """Raise :class:`Incomplete` unless the Part 10 file open at *fd* (*size* bytes) is structurally whole.

    Whole means: the preamble and ``DICM`` prefix, a File Meta group with a Transfer Syntax UID,
    and a data set after it whose every element, item and delimiter ends within the file, encoded
    as the transfer syntax says (a deflated data set is inflated in memory and must end).

    Raises:
        Incomplete: ``truncated at byte {size} of {needed}`` when something declared runs past the
            end of the file (*needed* is where it would end); ``no data set after the File Meta``;
            ``cannot be parsed past the File Meta: ...`` with what is wrong and at which byte;
            ``not a DICOM Part 10 file (...)``; or, with a deflated data set,
            ``truncated at byte {size}: the deflated data set does not end``.
        OSError: reading *fd* failed.
    """
    if size < _PREAMBLE_END:
        raise Incomplete(f"{_NOT_PART10} (no preamble and DICM prefix)")
    walker = _Walker(fd, size, _pread(fd, _FIRST_READ, 0, size))
    if walker.buf[128:_PREAMBLE_END] != b"DICM":
        raise Incomplete(f"{_NOT_PART10} (no preamble and DICM prefix)")
    pos, syntax = _file_meta(walker)
    if pos == size:
        raise Incomplete(_NO_DATA_SET)
    # pydicom reads every other transfer syntax (all the compressed ones) as Explicit VR Little Endian
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    if syntax == DeflatedExplicitVRLittleEndian:
        data = _inflate(fd, pos, size)
        if not data:
            raise Incomplete(_NO_DATA_SET)
        walker, pos = _Walker(-1, len(data), data, inflated=True), 0
    if _is_implicit(walker, pos, implicit, top=True):
        _walk_implicit(walker, pos, little, top=True)
    else:
        _walk_explicit(walker, pos, little, top=True)


class _Walker:
    """The bytes walked: a window onto the file moved by pread, or a whole inflated data set (no fd)."""

    __slots__ = ("base", "buf", "fd", "inflated", "size")

    def __init__(self, fd: int, size: int, buf: bytes, inflated: bool = False) -> None:
        self.fd, self.size, self.buf, self.base, self.inflated = fd, size, buf, 0, inflated

    def need(self, pos: int, n: int, read: int = _DATASET_READ) -> tuple[bytes, int]:
        """The buffer holding bytes *pos* to *pos* + *n*, and where *pos* is in it.

        Raises:
            Incomplete: the file (or the inflated data set) ends before *pos* + *n*.
        """
        off = pos - self.base
        if off >= 0 and off + n <= len(self.buf):
            return self.buf, off
        if pos + n > self.size:
            raise self.past_end(pos + n)
        # never reached with an inflated data set: its buffer holds all of it
        self.buf, self.base = _pread(self.fd, max(n, read), pos, self.size), pos
        return self.buf, 0

    def at_end(self, pos: int, top: bool) -> bool:
        """Whether the top-level data set ends at *pos*; if not, move the window onto the element there.

        Raises:
            Incomplete: *pos* is past the end, or an item of undefined length (not *top*) lacks its delimiter.
        """
        if pos == self.size and top:
            return True
        if pos > self.size:
            raise self.past_end(pos)
        self.need(pos, 8)  # the next header: a partial one, or a missing item delimiter, is truncation
        return False

    def zeros_to_end(self, pos: int) -> bool:
        """Whether the bytes from *pos* to the end are all NUL (padding some writers leave)."""
        while pos < self.size:
            chunk = self.buf[pos - self.base :] if self.inflated else _pread(self.fd, _DATASET_READ, pos, self.size)
            if chunk.strip(b"\0"):
                return False
            pos += len(chunk)
        return True

    def padding_end(self, pos: int, *, first: bool) -> int:
        """The end of a data set followed by NUL padding from *pos* (pydicom stops there too).

        Raises:
            Incomplete: the padding is all there is after the File Meta.
        """
        if first:
            raise Incomplete(_NO_DATA_SET)
        return self.size

    def past_end(self, needed: int) -> Incomplete:
        """The error for something that would end at *needed*, past the end."""
        if self.inflated:
            return Incomplete(f"{_UNPARSABLE}: the inflated data set ends at byte {self.size}, not {needed}")
        return Incomplete(f"truncated at byte {self.size} of {needed}")

    def broken(self, what: str, pos: int) -> Incomplete:
        """The error for a data set that cannot be parsed at *pos*."""
        return Incomplete(f"{_UNPARSABLE}: {what} at {'inflated byte' if self.inflated else 'byte'} {pos}")


def _pread(fd: int, n: int, pos: int, size: int) -> bytes:
    """Up to *n* bytes at *pos*, as many as the file's *size* holds.

    Raises:
        Incomplete: the file holds fewer bytes than *size* (it shrank while being checked).
    """
    want = min(n, size - pos)
    data = os.pread(fd, want, pos)
    if len(data) < want:
        raise Incomplete(f"truncated at byte {pos + len(data)} of {size}")
    return data


def _file_meta(w: _Walker) -> tuple[int, str]:
    """Where the File Meta group ends, and its Transfer Syntax UID.

    File Meta is always Explicit VR Little Endian. It ends at the first tag of another group:
    the group length may be wrong or missing (pydicom ignores it), so it only tells how far a
    File Meta cut short was meant to go.

    Raises:
        Incomplete: no File Meta or Transfer Syntax UID, or the file ends inside the File Meta.
    """
    size, pos, syntax, declared_end = w.size, _PREAMBLE_END, "", 0
    header, length32, sizes = _EXPLICIT[True], _LENGTH[True], _HEADER_SIZES[True]
    while pos < size:
        if pos + 8 > size:
            raise Incomplete(f"truncated at byte {size} of {max(pos + 8, declared_end)}")
        buf, off = w.need(pos, 8)
        group, elem, vr, length = header(buf, off)
        if group != 2:
            break
        hs = sizes[vr]
        if not hs:
            raise Incomplete(f"cannot be parsed in the File Meta: {_invalid_vr(group, elem, vr, True)} at byte {pos}")
        if hs == 12:
            if pos + 12 > size:
                raise Incomplete(f"truncated at byte {size} of {max(pos + 12, declared_end)}")
            buf, off = w.need(pos, 12)
            length = length32(buf, off + 8)[0]
            if length == _UNDEFINED:
                raise Incomplete(
                    f"cannot be parsed in the File Meta: undefined length in {_tag(group, elem)} at byte {pos}"
                )
        end = pos + hs + length
        if end > size:
            raise Incomplete(f"truncated at byte {size} of {max(end, declared_end)}")
        if elem == 0 and length == 4:
            declared_end = end + length32(*w.need(pos + hs, 4))[0]
        elif elem == _TRANSFER_SYNTAX:
            buf, off = w.need(pos + hs, length)
            # pydicom drops a UI value's trailing padding the same way
            syntax = buf[off : off + length].decode("latin-1").rstrip("\0 ")
        pos = end
    if pos == _PREAMBLE_END:
        raise Incomplete(f"{_NOT_PART10} (no File Meta after the DICM prefix)")
    if not syntax:
        raise Incomplete(f"{_NOT_PART10} (no Transfer Syntax UID in the File Meta)")
    return pos, syntax


def _inflate(fd: int, pos: int, size: int) -> bytes:
    """The data set deflated from *pos* to the end of the file (raw deflate, as pydicom reads it).

    Raises:
        Incomplete: the deflate stream does not end within the file, or is corrupt.
    """
    inflater, parts, start = zlib.decompressobj(-zlib.MAX_WBITS), [], pos
    try:
        while pos < size and not inflater.eof:
            chunk = _pread(fd, _INFLATE_READ, pos, size)
            parts.append(inflater.decompress(chunk))
            pos += len(chunk)
    except zlib.error as exc:
        raise Incomplete(f"{_UNPARSABLE}: invalid deflate stream from byte {start} ({exc})") from None
    if not inflater.eof:
        # where the stream would end is unknown until it does
        raise Incomplete(f"truncated at byte {size}: the deflated data set does not end")
    return b"".join(parts)


def _is_implicit(w: _Walker, pos: int, implicit: bool, top: bool) -> bool:
    """Whether the data set at *pos* is read as implicit VR, decided as pydicom decides it.

    pydicom looks at the first element's VR: two capital letters are explicit VR, anything else
    implicit. At the top level it follows what it finds either way; inside a sequence an item
    only ever switches from explicit to implicit (an undefined-length UN holds implicit VR).
    """
    if implicit and not top:
        return True
    if pos + 6 > w.size:
        return implicit
    buf, off = w.need(pos, 6)
    return not (0x40 < buf[off + 4] < 0x5B and 0x40 < buf[off + 5] < 0x5B)


# The two walks below run for every element of every foreign file, so they keep the window in
# locals, never build a tag number (group and element are compared apart: group << 16 | elem
# allocates an int per element, a quarter of the walk's time), and leave rare cases to helpers.


def _walk_explicit(w: _Walker, pos: int, little: bool, top: bool) -> int:
    """Walk explicit-VR elements from *pos*; return where the data set ends.

    The top-level data set ends at the end of the file (or where NUL padding starts); an item of
    undefined length ends after its item delimiter.

    Raises:
        Incomplete: an element runs past the end, or the data set cannot be parsed.
    """
    header, length32, sizes = _EXPLICIT[little], _LENGTH[little], _HEADER_SIZES[little]
    buf, base, first = w.buf, w.base, True
    off, stop = pos - base, len(buf) - 8  # stop: the last offset with a whole 8-byte header in the window
    while True:
        if off > stop:
            if w.at_end(base + off, top):
                return base + off
            off, buf, base = base + off - w.base, w.buf, w.base
            stop = len(buf) - 8
        group, elem, vr, length = header(buf, off)
        if top and (group == 0 or group >= _ITEM_GROUP):
            return _padding_or_misplaced(w, base + off, (group, elem), first=first)
        first = False  # pydicom reads tags out of order too: only their groups are checked
        hs = sizes[vr]
        if hs == 8:
            off += 8 + length
            continue
        if not hs:  # no VR: the item delimiter that ends an item of undefined length, or junk
            if group == _ITEM_GROUP and elem == _ITEM_END_ELEM and not top:
                return base + off + 8
            if group == _ITEM_GROUP:
                raise _misplaced(w, base + off, (group, elem))
            raise w.broken(_invalid_vr(group, elem, vr, little), base + off)
        if off + 4 > stop:  # the 4-byte length is not in the window
            buf, off = w.need(base + off, 12)
            base, stop = w.base, len(buf) - 8
        length = length32(buf, off + 8)[0]
        if length != _UNDEFINED:
            off += 12 + length
            continue
        pos = _walk_undefined(w, base + off, (group, elem), vr, little)
        off, buf, base = pos - w.base, w.buf, w.base
        stop = len(buf) - 8


def _walk_implicit(w: _Walker, pos: int, little: bool, top: bool) -> int:
    """Walk implicit-VR elements from *pos*; return where the data set ends (as :func:`_walk_explicit`).

    Raises:
        Incomplete: an element runs past the end, or the data set cannot be parsed.
    """
    header = _IMPLICIT[little]
    buf, base, first = w.buf, w.base, True
    off, stop = pos - base, len(buf) - 8
    while True:
        if off > stop:
            if w.at_end(base + off, top):
                return base + off
            off, buf, base = base + off - w.base, w.buf, w.base
            stop = len(buf) - 8
        group, elem, length = header(buf, off)
        if top and (group == 0 or group >= _ITEM_GROUP):
            return _padding_or_misplaced(w, base + off, (group, elem), first=first)
        first = False  # pydicom reads tags out of order too: only their groups are checked
        if not top and group == _ITEM_GROUP:
            if elem == _ITEM_END_ELEM:
                return base + off + 8
            raise _misplaced(w, base + off, (group, elem))
        if length != _UNDEFINED:
            off += 8 + length
            continue
        pos = _walk_undefined(w, base + off, (group, elem), None, little)
        off, buf, base = pos - w.base, w.buf, w.base
        stop = len(buf) - 8


def _walk_undefined(w: _Walker, pos: int, tag: tuple[int, int], vr: int | None, little: bool) -> int:
    """Walk the undefined-length element at *pos* (with *vr*, None in implicit VR); return where it ends.

    Only encapsulated pixel data and sequences have an undefined length. An explicit VR says
    which is a sequence (SQ, or UN); without a VR, a sequence is what holds items, as pydicom
    decides for tags it does not know.

    Raises:
        Incomplete: the element is neither, or does not end after its delimiter.
    """
    implicit = vr is None
    start = pos + (8 if implicit else 12)
    if tag == _PIXEL_DATA:
        return _walk_items(w, start, little, implicit, fragments=True)
    if vr is None:
        buf, off = w.need(start, 8, _ITEM_READ)
        group, elem, _ = _IMPLICIT[little](buf, off)
        sequence = (group << 16 | elem) in (_ITEM, _SEQUENCE_END)
    else:
        sequence = vr in _SEQUENCE_VRS[little]
    if not sequence:
        raise w.broken(f"undefined length in {_tag(*tag)}, neither a sequence nor pixel data", pos)
    return _walk_items(w, start, little, implicit, fragments=False)


def _walk_items(w: _Walker, pos: int, little: bool, implicit: bool, fragments: bool) -> int:
    """Walk the items of an undefined-length sequence (or pixel data *fragments*) to its delimiter.

    An item of defined length is skipped by its length; one of undefined length holds a data
    set, walked up to its item delimiter. A fragment always has a defined length.

    Raises:
        Incomplete: an item runs past the end, or something else comes before the delimiter.
    """
    header = _IMPLICIT[little]
    while True:
        buf, off = w.need(pos, 8, _ITEM_READ)
        group, elem, length = header(buf, off)
        tag = group << 16 | elem
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise w.broken(f"{_tag(group, elem)} where an item should be", pos)
        if length != _UNDEFINED:
            pos += 8 + length
            if pos > w.size:
                raise w.past_end(pos)
        elif fragments:
            raise w.broken("pixel data fragment of undefined length", pos)
        elif _is_implicit(w, pos + 8, implicit, top=False):
            pos = _walk_implicit(w, pos + 8, little, top=False)
        else:
            pos = _walk_explicit(w, pos + 8, little, top=False)


def _padding_or_misplaced(w: _Walker, pos: int, tag: tuple[int, int], *, first: bool) -> int:
    """At the top level, a tag no data element has: NUL padding to the end of the file (the
    data set ends at *pos*, as pydicom reads it), or a data set that cannot be parsed.

    Raises:
        Incomplete: not padding, or padding with no data set before it.
    """
    if tag == (0, 0) and w.zeros_to_end(pos):
        return w.padding_end(pos, first=first)
    raise _misplaced(w, pos, tag)


def _misplaced(w: _Walker, pos: int, tag: tuple[int, int]) -> Incomplete:
    """The error for a *tag* no data element has: group 0000 (a command), or an item tag."""
    group, elem = tag
    if group == 0:
        return w.broken(f"command element {_tag(group, elem)} in the data set", pos)
    name = _ITEM_NAMES.get(group << 16 | elem, "tag")
    return w.broken(f"{name} {_tag(group, elem)} where a data element should be", pos)


def _invalid_vr(group: int, elem: int, vr: int, little: bool) -> str:
    raw = vr.to_bytes(2, "little" if little else "big")
    shown = raw.decode() if raw.isalpha() else f"0x{raw.hex().upper()}"
    return f"invalid VR {shown} in {_tag(group, elem)}"


def _tag(group: int, elem: int) -> str:
    return f"({group:04X},{elem:04X})"
