"""A minimal reader of naming values from Part 10 headers, for the common layouts.

pydicom builds a full Dataset for every element it passes, which costs more than
everything else commit does to a foreign file. This scanner reads element headers and
decodes only the values naming needs, for datasets in Explicit or Implicit VR Little
Endian (every compressed transfer syntax is Explicit VR Little Endian) in the default,
Latin-1 or UTF-8 character sets. Anything else raises :class:`Unsupported`, and the
caller asks pydicom. Its output equals what pydicom gives (checked by the tests over
every file in the pydicom wheel).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import UID

from dicomcommit.naming import Attrs, Scalar, Value

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_TRIMMED_ITEMS = frozenset(["LO", "LT", "PN", "SH", "ST", "UC", "UT"])
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_CHARSET_TAG = 0x00080005
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class Unsupported(Exception):
    """This header needs pydicom (another layout, a character set, an odd element)."""


class NeedMoreBytes(Unsupported):
    """The header goes on past the bytes given."""


def scan(data: bytes, keywords: Sequence[str]) -> Attrs:
    """Naming values of *keywords* from *data*, the first bytes of a Part 10 file.

    Raises:
        Unsupported: the layout is not one this scanner reads, or *data* ends before the
            last needed tag (the caller may retry with more bytes, or use pydicom).
    """
    wanted = {tag: kw for kw in keywords if (tag := tag_for_keyword(kw)) is not None}
    if data[128:132] != b"DICM":
        raise Unsupported("no Part 10 preamble")
    syntax, pos = _file_meta(data)
    if not wanted:
        raise Unsupported("no keyword to read")
    found = _dataset(data, pos, _is_explicit_little_endian(syntax), max(wanted), set(wanted))
    charset = _text(found.pop(_CHARSET_TAG, (b"", "CS"))[0], "latin-1")
    if charset not in _CHARSETS:
        raise Unsupported(f"character set {charset!r}")
    encoding = _CHARSETS[charset]
    return {kw: _value(*found[tag], encoding) if tag in found else None for tag, kw in wanted.items()}


def _is_explicit_little_endian(syntax: str) -> bool:
    """True for Explicit VR Little Endian datasets (all compressed syntaxes), False for Implicit."""
    uid = UID(syntax)
    try:
        little, implicit, deflated = uid.is_little_endian, uid.is_implicit_VR, uid.is_deflated
    except ValueError:
        raise Unsupported(f"unknown transfer syntax {syntax}") from None
    if not little or deflated:
        raise Unsupported(f"transfer syntax {syntax}")
    return not implicit


def _file_meta(data: bytes) -> tuple[str, int]:
    """The transfer syntax, and where the dataset starts (group 0002 is explicit VR LE)."""
    pos, syntax = 132, None
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if length == _UNDEFINED or start + length > len(data):
            raise NeedMoreBytes("odd or truncated File Meta")
        if elem == 0x0010:
            syntax = data[start : start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    if syntax is None:
        raise Unsupported("no Transfer Syntax UID")
    return syntax, pos


def _dataset(data: bytes, pos: int, explicit: bool, last: int, wanted: set[int]) -> dict[int, tuple[bytes, str]]:
    """Raw values of the wanted top-level elements (and the character set), up to *last*."""
    found: dict[int, tuple[bytes, str]] = {}
    wanted = wanted | {_CHARSET_TAG}
    while True:
        if pos + 8 > len(data):
            if pos == len(data):
                return found  # the dataset ended before the last wanted tag
            raise NeedMoreBytes("header longer than the bytes read")
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | elem
        if tag > last:
            return found
        vr, length, start = _element_header(data, pos, explicit, tag)
        if length == _UNDEFINED:
            if tag in wanted:
                raise Unsupported("a naming attribute of undefined length")
            pos = _skip_undefined(data, start, explicit)
            continue
        if start + length > len(data):
            raise NeedMoreBytes("header longer than the bytes read")
        if tag in wanted:
            found[tag] = (data[start : start + length], vr)
        pos = start + length


def _skip_undefined(data: bytes, pos: int, explicit: bool) -> int:
    """Skip a sequence of undefined length: its items, up to its delimiter. Returns the end."""
    while pos + 8 <= len(data):
        tag, length = struct.unpack_from("<II", data, pos)
        tag = (tag & 0xFFFF) << 16 | tag >> 16  # (group, element) are two little-endian shorts
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise Unsupported("malformed sequence")
        pos = pos + length if length != _UNDEFINED else _skip_item(data, pos, explicit)
    raise NeedMoreBytes("header longer than the bytes read")


def _skip_item(data: bytes, pos: int, explicit: bool) -> int:
    """Skip the elements of an item of undefined length, up to its delimiter."""
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        tag = group << 16 | elem
        if tag == _ITEM_END:
            return pos + 8
        _, length, start = _element_header(data, pos, explicit, tag)
        pos = _skip_undefined(data, start, explicit) if length == _UNDEFINED else start + length
    raise NeedMoreBytes("header longer than the bytes read")


def _element_header(data: bytes, pos: int, explicit: bool, tag: int) -> tuple[str, int, int]:
    if not explicit:
        (length,) = struct.unpack_from("<I", data, pos + 4)
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"  # private or unknown: skipped by length, never decoded
        return vr, length, pos + 8
    raw_vr = data[pos + 4 : pos + 6]
    if not raw_vr.isalpha() or not raw_vr.isupper():
        raise Unsupported(f"a malformed VR {raw_vr!r}")
    if raw_vr in _LONG_VRS:
        (length,) = struct.unpack_from("<I", data, pos + 8)
        return raw_vr.decode("ascii"), length, pos + 12
    (length,) = struct.unpack_from("<H", data, pos + 6)
    return raw_vr.decode("ascii", "replace"), length, pos + 8


def _value(raw: bytes, vr: str, encoding: str) -> Value:
    if vr in _NUMBER_FORMATS:
        fmt = _NUMBER_FORMATS[vr]
        count = len(raw) // struct.calcsize(fmt)
        numbers: list[Scalar] = list(struct.unpack(f"<{count}{fmt}", raw[: count * struct.calcsize(fmt)]))
        return _one_or_list(numbers)
    if vr not in _TEXT_VRS:
        raise Unsupported(f"a naming value of VR {vr}")
    text = _text(raw, encoding)
    if not text:
        return None
    parts = text.split("\\") if vr not in ("LT", "ST", "UT", "UR") else [text]
    # As pydicom: free text loses trailing spaces per item, codes only at the value's end;
    # numbers are parsed from stripped items.
    if vr in ("DS", "IS"):
        parts = [part.strip(" ") for part in parts]
    elif vr in _TRIMMED_ITEMS:
        parts = [part.rstrip("\0 ") for part in parts]
    items = [_scalar(part, vr) for part in parts]
    values = [item for item in items if item is not None]
    return _one_or_list(values)


def _text(raw: bytes, encoding: str) -> str:
    return raw.decode(encoding).rstrip("\0 ")


def _scalar(text: str, vr: str) -> Scalar | None:
    if vr == "IS":
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            raise Unsupported(f"IS value {text!r}") from None
    if vr == "UI":
        text = str(UID(text.rstrip("\0")))
    return text or None


def _one_or_list(values: list[Scalar]) -> Value:
    if not values:
        return None
    return values[0] if len(values) == 1 else values
