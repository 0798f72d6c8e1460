"""Locating naming elements in Part 10 headers, and decoding their values as pydicom does.

pydicom builds a full Dataset for every element it passes, which costs more than
everything else commit does to a foreign file. This scanner only *locates* elements (tag,
VR, raw value bytes, and the Specific Character Set) in datasets in Explicit or Implicit VR
Little Endian (every compressed transfer syntax is Explicit VR Little Endian); any other
layout raises :class:`Unsupported`, and the caller asks pydicom.

Values are decoded by pydicom's own conversion (:func:`pydicom.dataelem.convert_raw_data_element`),
except where a shortcut is provably identical: text in the default, Latin-1 or UTF-8
character sets that decodes without error and is printable (str.isprintable), for the VRs
whose conversion is plain string handling, mirrored here step by step (checked by
hypothesis in the tests against pydicom itself). Everything else (bytes invalid in the
character set, NULs or control characters inside a value, odd numbers, AE, UR, UN,
sequences, other character sets) is left *pending* for :meth:`Scanned.finish`, which runs
pydicom's conversion: it may warn, so callers run it where they capture warnings.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.tag import BaseTag
from pydicom.uid import AllTransferSyntaxes, ImplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32, VR

from dicomcommit.naming import Attrs, Scalar, Value, to_value

# pydicom's own tables: the VRs it reads in explicit VR, and which of them have 4-byte lengths.
_KNOWN_VRS = frozenset(vr.value.encode() for vr in VR if len(vr.value) == 2)
_LONG_VRS = frozenset(vr.value.encode() for vr in EXPLICIT_VR_LENGTH_32)
_VR_IS_LONG = {vr: vr in _LONG_VRS for vr in _KNOWN_VRS}  # one lookup per element: known, and which length
_VR_NAMES = {vr: vr.decode() for vr in _KNOWN_VRS}
# pydicom reads these (and only these, of the little-endian syntaxes) as Explicit VR Little
# Endian; deflated, big-endian and unknown ones are left to it.
_EXPLICIT_SYNTAXES = frozenset(
    str(uid) for uid in AllTransferSyntaxes if uid.is_little_endian and not uid.is_implicit_VR and not uid.is_deflated
)
_IMPLICIT_SYNTAX = str(ImplicitVRLittleEndian)
_CHARSET_TAG = 0x00080005
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 2-byte length
_IMPLICIT_HEADER = struct.Struct("<HHI")  # group, element, 4-byte length
_LENGTH_32 = struct.Struct("<I")

# Specific Character Sets (as encoded, without padding) in which pydicom decodes a value
# without code extensions with one codec: Latin-1 ("iso8859", "latin_1") or UTF-8 ("UTF8"),
# named here as Python's fast paths know them. Others (multi-byte sets, ISO 2022 code
# extensions, several values) are pydicom's to decode.
_TEXT_ENCODINGS = {b"": "latin-1", b"ISO_IR 6": "latin-1", b"ISO_IR 100": "latin-1", b"ISO_IR 192": "utf-8"}
_DEFAULT_ENCODING = "latin-1"  # pydicom's default_encoding, "iso8859", for the VRs that ignore the character set
# The VRs pydicom decodes with the Specific Character Set; the others always use the default.
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})  # pydicom keeps the bytes: no name
# An IS that int() reads as pydicom does (pydicom falls back to float for anything else);
# 15 digits stay far below int()'s limit on digits and float's exact range.
_IS_ITEM = re.compile(r" *[+-]?[0-9]{1,15} *")
# A DS that float() reads: pydicom keeps its text, stripped.
_DS_ITEM = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *")


class Unsupported(Exception):
    """This header needs pydicom (another layout, an odd element)."""


class NeedMoreBytes(Unsupported):
    """The header goes on past the bytes given."""


class _Pending:
    """Marks a value the shortcut does not decode: pydicom's conversion does."""


_PENDING = _Pending()


# A located element: its VR (as written, or the dictionary's in implicit VR), value bytes and offset.
_Located = tuple[str, bytes, int]


@dataclass
class Scanned:
    """The located naming elements of one file: decoded where the shortcut applies.

    *attrs* maps every keyword (in the order asked) to its value; the keywords in *pending*
    still wait for :meth:`finish`, which decodes them with *charset* (the Specific Character
    Set element, if the dataset has one).
    """

    attrs: Attrs
    pending: dict[str, RawDataElement]
    charset: RawDataElement | None

    def finish(self) -> Attrs:
        """Decode the pending values with pydicom's conversion, and return all the values.

        pydicom may warn (an invalid byte for the character set, an unknown character set,
        a value breaking its VR's rules); capture warnings around this call.

        Raises:
            Exception: whatever pydicom raises for a value it cannot decode (an IS too big
                for a float, numbers whose bytes do not divide into values...).
        """
        if self.pending:
            encodings = _encodings(self.charset)
            for keyword, raw in self.pending.items():
                self.attrs[keyword] = to_value(convert_raw_data_element(raw, encoding=encodings).value)
            self.pending = {}
        return self.attrs


def scan(data: bytes, keywords: Sequence[str], *, complete: bool = False) -> Scanned:
    """Locate the elements of *keywords* in *data*, the first bytes of a Part 10 file.

    *complete* says that *data* is the whole file: a dataset ending with the bytes then ends
    there; otherwise the scanner asks for more.

    Raises:
        Unsupported: the layout is not one this scanner reads (the caller asks pydicom).
        NeedMoreBytes: *data* ends before the last needed element.
    """
    pairs, wanted, last = _plan(tuple(keywords))
    if data[128:132] != b"DICM":
        raise Unsupported("no Part 10 preamble")
    explicit, pos = _file_meta(data)
    found = _dataset(data, pos, explicit, last, wanted, complete=complete)
    charset = found.pop(_CHARSET_TAG, None)
    text_encoding = _DEFAULT_ENCODING if charset is None else _TEXT_ENCODINGS.get(charset[1].rstrip(b"\0 "))
    shortcut = _pydicom_defaults()
    attrs: Attrs = {}
    pending: dict[str, RawDataElement] = {}
    for keyword, tag in pairs:
        if tag is None or (located := found.get(tag)) is None:
            attrs[keyword] = None
            continue
        quick = _quick(located[0], located[1], text_encoding) if shortcut else _PENDING
        if isinstance(quick, _Pending):
            attrs[keyword] = None  # keeps the keyword order; finish() fills it in
            pending[keyword] = _raw(tag, located, explicit)
        else:
            attrs[keyword] = quick
    charset_raw = None if charset is None or not pending else _raw(_CHARSET_TAG, charset, explicit)
    return Scanned(attrs, pending, charset_raw)


def _raw(tag: int, located: _Located, explicit: bool) -> RawDataElement:
    """The element as pydicom's reader gives it: no VR in implicit VR (its conversion looks it up)."""
    vr, value, offset = located
    return RawDataElement(BaseTag(tag), vr if explicit else None, len(value), value, offset, not explicit, True)


@functools.lru_cache(maxsize=64)
def _plan(keywords: tuple[str, ...]) -> tuple[tuple[tuple[str, int | None], ...], frozenset[int], int]:
    """(keyword, tag) pairs, the set of tags to locate (with the character set's), and the last tag to read."""
    pairs = tuple((keyword, tag_for_keyword(keyword)) for keyword in keywords)
    tags = frozenset(tag for _, tag in pairs if tag is not None)
    return pairs, tags | {_CHARSET_TAG}, max(tags, default=-1)


def _pydicom_defaults() -> bool:
    """True when pydicom converts values as the shortcut mirrors (its default configuration)."""
    return not (
        config.datetime_conversion
        or config.use_DS_numpy
        or config.use_IS_numpy
        or config.use_DS_decimal
        or config.use_none_as_empty_text_VR_value
        or config.data_element_callback
        or hooks.raw_element_kwargs
        or hooks.raw_element_vr is not raw_element_vr
        or hooks.raw_element_value is not raw_element_value
        or config.settings.reading_validation_mode == config.RAISE  # pydicom would raise on invalid values
    )


def _encodings(charset: RawDataElement | None) -> str | list[str]:
    """The Python encodings pydicom reads text with (it may warn about the character set)."""
    if charset is None:
        return default_encoding
    return convert_encodings(convert_raw_data_element(charset).value)


def _file_meta(data: bytes) -> tuple[bool, int]:
    """Whether the dataset is explicit VR, and where it starts (group 0002 is explicit VR LE)."""
    pos, syntax = 132, None
    while pos + 8 <= len(data):
        group, elem, vr, length = _EXPLICIT_HEADER.unpack_from(data, pos)
        if group != 0x0002:
            break
        if vr not in _KNOWN_VRS:
            raise Unsupported("File Meta not in explicit VR")  # pydicom retries it as implicit
        start = pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise NeedMoreBytes("truncated File Meta")
            (length,) = _LENGTH_32.unpack_from(data, pos + 8)
            start = pos + 12
        if length == _UNDEFINED:
            raise Unsupported("File Meta element of undefined length")
        if start + length > len(data):
            raise NeedMoreBytes("truncated File Meta")
        if elem == 0x0010:
            syntax = data[start : start + length].decode("latin-1").rstrip("\0 ").strip()  # as pydicom's UI
        pos = start + length
    if syntax is None:
        raise Unsupported("no Transfer Syntax UID")
    if syntax == _IMPLICIT_SYNTAX:
        return False, pos
    if syntax in _EXPLICIT_SYNTAXES:
        return True, pos
    raise Unsupported(f"transfer syntax {syntax}")


def _dataset(
    data: bytes, pos: int, explicit: bool, last: int, wanted: frozenset[int], *, complete: bool
) -> dict[int, _Located]:
    """The wanted top-level elements, up to *last*: located, not decoded."""
    if pos + 6 <= len(data):
        if data[pos : pos + 2] == b"\0\0":
            raise Unsupported("a Command Set (group 0000) before the dataset")  # pydicom reads it as implicit VR
        # pydicom checks the first VR and follows the data, not the transfer syntax, with a warning.
        looks_explicit = 0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B
        if looks_explicit != explicit:
            raise Unsupported("the dataset's VR encoding differs from its transfer syntax")
    found: dict[int, _Located] = {}
    pos = (_walk_explicit if explicit else _walk_implicit)(data, pos, last, wanted, found)
    if pos < 0:
        return found  # stopped at the first tag past the last one wanted
    if pos == len(data) and complete:
        return found  # the dataset ended before the last wanted tag
    raise NeedMoreBytes("header longer than the bytes read")


# The walks below run once per element up to the last tag wanted (a hundred or more in a CT
# header): one loop each, with no call per element, is what keeps the stager's naming cheap.


def _walk_explicit(data: bytes, pos: int, last: int, wanted: frozenset[int], found: dict[int, _Located]) -> int:
    """Put the wanted elements into *found*; return -1 past *last*, else where the bytes ran out."""
    end = len(data)
    header, long_length, vrs = _EXPLICIT_HEADER.unpack_from, _LENGTH_32.unpack_from, _VR_IS_LONG
    while pos + 8 <= end:
        group, elem, raw_vr, length = header(data, pos)
        tag = group << 16 | elem
        if tag > last:
            return -1
        is_long = vrs.get(raw_vr)
        if is_long is None:
            raise Unsupported(f"an unknown VR {raw_vr!r}")  # pydicom guesses; we do not
        start = pos + 8
        if is_long:
            if pos + 12 > end:
                break
            (length,) = long_length(data, start)
            start += 4
            if length == _UNDEFINED:
                if tag in wanted:
                    raise Unsupported("a naming attribute of undefined length")
                pos = _skip_undefined(data, start, True)
                continue
        if tag in wanted:
            if start + length > end:
                break
            found[tag] = (_VR_NAMES[raw_vr], data[start : start + length], start)
        pos = start + length
    return pos


def _walk_implicit(data: bytes, pos: int, last: int, wanted: frozenset[int], found: dict[int, _Located]) -> int:
    """As :func:`_walk_explicit`, for Implicit VR Little Endian."""
    end = len(data)
    header = _IMPLICIT_HEADER.unpack_from
    while pos + 8 <= end:
        group, elem, length = header(data, pos)
        tag = group << 16 | elem
        if tag > last:
            return -1
        start = pos + 8
        if length == _UNDEFINED:
            if tag in wanted:
                raise Unsupported("a naming attribute of undefined length")
            pos = _skip_undefined(data, start, False)
            continue
        if tag in wanted:
            if start + length > end:
                break
            found[tag] = (_implicit_vr(tag), data[start : start + length], start)
        pos = start + length
    return pos


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR as written or b"", value length, value offset) of the element at *pos*.

    Raises:
        Unsupported: a VR pydicom does not know (it guesses; we do not).
        NeedMoreBytes: the header's 4-byte length is past *data*.
    """
    if not explicit:
        group, elem, length = _IMPLICIT_HEADER.unpack_from(data, pos)
        return group << 16 | elem, b"", length, pos + 8
    group, elem, raw_vr, length = _EXPLICIT_HEADER.unpack_from(data, pos)
    if raw_vr not in _KNOWN_VRS:
        raise Unsupported(f"an unknown VR {raw_vr!r}")
    if raw_vr not in _LONG_VRS:
        return group << 16 | elem, raw_vr, length, pos + 8
    if pos + 12 > len(data):
        raise NeedMoreBytes("header longer than the bytes read")
    (length,) = _LENGTH_32.unpack_from(data, pos + 8)
    return group << 16 | elem, raw_vr, length, pos + 12


def _implicit_vr(tag: int) -> str:
    """The dictionary VR of a wanted tag in implicit VR. An ambiguous one (US or SS) pydicom
    resolves from other elements of the dataset: that is pydicom's work."""
    try:
        vr: str = dictionary_VR(tag)
    except KeyError:
        raise Unsupported(f"no dictionary VR for {tag:08X}") from None
    if vr in AMBIGUOUS_VR:
        raise Unsupported(f"ambiguous VR {vr}")
    return vr


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
        if group << 16 | elem == _ITEM_END:
            return pos + 8
        _, _, length, start = _element(data, pos, explicit)
        pos = _skip_undefined(data, start, explicit) if length == _UNDEFINED else start + length
    raise NeedMoreBytes("header longer than the bytes read")


def _quick(vr: str, value: bytes, text_encoding: str | None) -> Value | _Pending:
    """The value pydicom's conversion gives, where that is provably plain; else _PENDING.

    *text_encoding* is the codec of the dataset's character set, if it is a plain one.
    """
    rule = _TEXT_RULES.get(vr)
    if rule is None:
        return _not_text(vr, value)
    encoding = text_encoding if vr in _CHARSET_VRS else _DEFAULT_ENCODING
    # pydicom strips trailing spaces and NULs from the value's end for all of these VRs (for
    # SH, LO, UC per item, which comes to the same: only the last item ends the value).
    stripped = value.rstrip(b"\0 ")
    if not stripped:
        return None  # padding only: pydicom's empty string (or IS's, DS's) for each of these VRs
    if encoding is None:
        return _PENDING
    try:
        text = stripped.decode(encoding)  # pydicom decodes the whole value: padding decodes alike
    except UnicodeDecodeError:
        return _PENDING  # pydicom decodes it with replacement characters, and warns
    # NULs, ESC (which starts a code extension), other controls, and white space other than
    # the space (which str.strip() would take): pydicom's to decode and strip.
    return rule(text) if text.isprintable() else _PENDING


def _not_text(vr: str, value: bytes) -> Value | _Pending:
    if not value:
        return None  # pydicom's empty value, for every VR: no name
    if vr in _NUMBER_FORMATS:
        return _numbers(value, _NUMBER_FORMATS[vr])
    # Binary values name nothing; AE, AT, UR, UN and SQ are pydicom's.
    return None if vr in _BINARY_VRS else _PENDING


def _numbers(value: bytes, fmt: str) -> Value | _Pending:
    size = struct.calcsize(fmt)
    if len(value) % size:
        return _PENDING  # pydicom raises (or keeps bytes as UN): its answer, not ours
    numbers: list[Scalar] = list(struct.unpack(f"<{len(value) // size}{fmt}", value))
    return _one_or_list(numbers)


def _one_or_list(values: list[Scalar]) -> Value:
    """As :func:`dicomcommit.naming.to_value` turns pydicom's value: empty items dropped."""
    kept = [v for v in values if v != ""]
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else kept


# Each rule gets the value's text: decoded as pydicom does, without trailing spaces, printable
# (no NUL, control character or white space but the space), not empty. The single-value case
# (no backslash) comes first: it is nearly every value. Backslashes are one byte in every
# codec here, never part of another character.


def _codes(text: str) -> Value | _Pending:
    # CS, AS, DA, DT, TM: split at backslashes, items kept as they are (inner spaces too).
    return text if "\\" not in text else _one_or_list(list[Scalar](text.split("\\")))


def _uids(text: str) -> Value | _Pending:
    # pydicom's UID() strips white space around each item.
    if "\\" not in text:
        return text.strip() or None
    return _one_or_list([item.strip() for item in text.split("\\")])


def _texts(text: str) -> Value | _Pending:
    # SH, LO, UC: each item loses its trailing spaces, not its leading ones.
    return text if "\\" not in text else _one_or_list([item.rstrip(" ") for item in text.split("\\")])


def _single_text(text: str) -> Value | _Pending:
    # ST, LT, UT: one value, backslashes included.
    return text


def _person_names(text: str) -> Value | _Pending:
    if "=" not in text:
        return text if "\\" not in text else _one_or_list(list[Scalar](text.split("\\")))
    return _one_or_list([_person_name(item) for item in text.split("\\")])


def _person_name(item: str) -> str:
    # pydicom's PersonName splits the decoded text into component groups at "=" and drops
    # the empty ones at the end ("Wang^XiaoDong=王^小東=" is "Wang^XiaoDong=王^小東").
    groups = item.split("=")
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _integers(text: str) -> Value | _Pending:
    items = text.split("\\")
    if not all(_IS_ITEM.fullmatch(item) for item in items):
        return _PENDING  # empty or blank items, floats, signs with spaces: pydicom's IS decides
    return _one_or_list([int(item) for item in items])


def _decimals(text: str) -> Value | _Pending:
    items = text.split("\\")
    if not all(_DS_ITEM.fullmatch(item) for item in items):
        return _PENDING
    return _one_or_list([item.strip(" ") for item in items])  # DSfloat keeps its stripped text


_TEXT_RULES: dict[str, Callable[[str], Value | _Pending]] = {
    "CS": _codes,
    "AS": _codes,
    "DA": _codes,
    "DT": _codes,
    "TM": _codes,
    "UI": _uids,
    "SH": _texts,
    "LO": _texts,
    "UC": _texts,
    "ST": _single_text,
    "LT": _single_text,
    "UT": _single_text,
    "PN": _person_names,
    "IS": _integers,
    "DS": _decimals,
}
