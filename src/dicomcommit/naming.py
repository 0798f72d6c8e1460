"""Final names: templates over DICOM keywords, rendered into safe archive-relative paths.

Every path component is sanitized *after* substitution, so no header value, however
hostile, can add a path separator, climb out with ``..``, or be expanded a second time.
The same values always give the same name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import IS

from dicomcommit.errors import TemplateError

DEFAULT_TEMPLATE = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

#: Rendered for an attribute that is absent or empty, and for a component that sanitizes to nothing.
MISSING = "UNKNOWN"
#: Joins the values of a multi-valued attribute (``ORIGINAL\\PRIMARY`` -> ``ORIGINAL_PRIMARY``).
MULTI_VALUE_SEPARATOR = "_"
MAX_COMPONENT_BYTES = 255

#: Captured at stage time whatever the template, so that most templates need no header re-parse.
COMMON_KEYWORDS = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
    "SeriesNumber",
    "SeriesDescription",
    "AcquisitionNumber",
    "InstanceNumber",
)

Scalar: TypeAlias = str | int | float
Value: TypeAlias = Scalar | list[Scalar] | None
Attrs: TypeAlias = dict[str, Value]

# Path separators, NUL and the characters Windows refuses: replaced so that an archive
# copied to any share keeps its names.
_FORBIDDEN = frozenset('/\\<>:"|?*')
# Control, format, surrogate, private-use and unassigned code points.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_HASH_SUFFIX_CHARS = 16
# A component of printable ASCII, without forbidden characters, and neither starting nor
# ending with a dot or a space, is already safe: the fast path for UIDs and IDs.
_SAFE_EDGE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in _FORBIDDEN and chr(c) != ".")
_PLAIN = re.compile(f"[{re.escape(_SAFE_EDGE)}](?:[{re.escape(_SAFE_EDGE)} .]*[{re.escape(_SAFE_EDGE)}])?")


@dataclass(frozen=True)
class _Field:
    keyword: str
    spec: str


@dataclass(frozen=True)
class Template:
    """A validated naming template; build one with :func:`parse_template`."""

    text: str
    components: tuple[tuple[tuple[str, _Field | None], ...], ...]
    #: The DICOM keywords the template uses, in order of first use.
    keywords: tuple[str, ...]

    def render(self, attrs: Mapping[str, Value]) -> str:
        """Return the archive-relative path (``/``-separated) for these attribute values.

        Never raises for any value: missing ones become :data:`MISSING`, and every
        component is sanitized.
        """
        parts = []
        for component in self.components:
            pieces = []
            for literal, field in component:
                pieces.append(literal)
                if field is not None:
                    value = attrs.get(field.keyword)
                    # The common case first: a plain text value, no format spec.
                    pieces.append(value if type(value) is str and value and not field.spec else
                                  _render_value(value, field.spec))  # fmt: skip
            parts.append(sanitize_component("".join(pieces)))
        # Sanitizing each component already makes this impossible; the check stays as a last line.
        for part in parts:
            if part in ("", ".", "..") or "/" in part or "\0" in part:
                raise AssertionError(f"rendered name {'/'.join(parts)!r} would leave the archive root")
        return "/".join(parts)


def parse_template(text: str, *, allow_collisions: bool = False) -> Template:
    """Validate *text* and return a :class:`Template`.

    Fields are DICOM keywords with an optional Python format spec (``{InstanceNumber:05d}``).

    Raises:
        TemplateError: for an empty or absolute template, an empty, ``.`` or ``..`` component,
            an unknown keyword, attribute or index access, a conversion (``!r``), a nested
            field, or a template without ``SOPInstanceUID`` unless *allow_collisions*.
    """
    if not text or text.startswith(("/", "\\")):
        raise TemplateError(f"template must be a non-empty relative path: {text!r}")
    components = []
    for raw in text.split("/"):
        if raw in ("", ".", ".."):
            raise TemplateError(f"template component {raw!r} is not allowed in {text!r}")
        components.append(tuple(_parse_component(raw, text)))
    keywords = dict.fromkeys(f.keyword for component in components for _, f in component if f is not None)
    template = Template(text, tuple(components), tuple(keywords))
    if "SOPInstanceUID" not in template.keywords and not allow_collisions:
        raise TemplateError(
            f"template {text!r} has no {{SOPInstanceUID}}: different instances would share "
            "names by design; pass allow_collisions=True (--allow-collisions) if you mean it"
        )
    return template


def _parse_component(raw: str, text: str) -> Iterable[tuple[str, _Field | None]]:
    try:
        parsed = list(string.Formatter().parse(raw))
    except ValueError as exc:
        raise TemplateError(f"template {text!r}: {exc}") from None
    for literal, name, spec, conversion in parsed:
        if name is None:
            yield literal, None
            continue
        if conversion is not None or "{" in (spec or ""):
            raise TemplateError(f"template {text!r}: conversions and nested fields are not allowed")
        if not name.isidentifier() or tag_for_keyword(name) is None:
            raise TemplateError(f"template {text!r}: {name!r} is not a DICOM keyword")
        _check_spec(spec or "", name, text)
        yield literal, _Field(name, spec or "")


# Python's format-spec mini-language: [[fill]align][sign][z][#][0][width][grouping][.precision][type]
_SPEC = re.compile(
    r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d+)?[,_]?(?:\.(?P<precision>\d+))?(?P<type>[bcdeEfFgGnosxX%])?"
)


def _is_text(keyword: str) -> bool:
    """Whether *keyword*'s value is text rather than a number (IS and DS are numbers as text)."""
    tag = tag_for_keyword(keyword)
    return tag is not None and dictionary_VR(tag) not in ("IS", "DS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV")


def _check_spec(spec: str, keyword: str, text: str) -> None:
    """Refuse a format spec that could drop the value (a precision cuts text: ``{SOPInstanceUID:.0}``
    names every file alike) or make a component longer than any filesystem takes."""
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise TemplateError(f"template {text!r}: {spec!r} is not a format spec")
    width, precision, kind = match["width"], match["precision"], match["type"]
    if precision is not None and (kind is None or kind not in "eEfFgG%"):
        raise TemplateError(f"template {text!r}: the precision in {{{keyword}:{spec}}} would cut the value short")
    if kind not in (None, "s") and _is_text(keyword):
        # a UID or code read as a number loses digits: "0012" and "12", or 20-digit UIDs under :g
        raise TemplateError(f"template {text!r}: {{{keyword}:{spec}}} formats a text value as a number")
    for number in (width, precision):
        if number is not None and int(number) > MAX_COMPONENT_BYTES:
            raise TemplateError(
                f"template {text!r}: {{{keyword}:{spec}}} asks for more than {MAX_COMPONENT_BYTES} characters"
            )


def _render_value(value: Value, spec: str) -> str:
    if value is None or value in ("", []):
        return MISSING
    if isinstance(value, list):
        return MULTI_VALUE_SEPARATOR.join(_render_scalar(item, spec) for item in value)
    return _render_scalar(value, spec)


def _render_scalar(value: Scalar, spec: str) -> str:
    if not spec:
        return str(value)
    candidates: list[Scalar] = [value]
    if isinstance(value, str):  # a DS/IS kept as text, or a number in a string VR
        for convert in (int, float):
            with contextlib.suppress(ValueError):
                candidates.append(convert(value))
    for candidate in candidates:
        try:
            return format(candidate, spec)
        except (ValueError, TypeError, OverflowError):  # {InstanceNumber:c} of 2000000: OverflowError
            continue
    return str(value)  # a spec that fits no form of the value: the plain value, deterministically


def sanitize_component(text: str) -> str:
    """Return *text* as one safe path component.

    NFC-normalized; separators, NUL, control and Windows-reserved characters become ``_``;
    surrounding white space is stripped, leading dots become ``_`` and trailing dots are
    dropped (so ``.`` and ``..`` cannot survive); an empty result becomes :data:`MISSING`;
    more than 255 UTF-8 bytes are cut and given a hash suffix of the full text.
    """
    if _PLAIN.fullmatch(text) and len(text) <= MAX_COMPONENT_BYTES:
        return text  # the common case (UIDs, IDs): nothing to change, and NFC is identity on ASCII
    return _sanitize(text)


def _sanitize(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    chars = ["_" if c in _FORBIDDEN or unicodedata.category(c) in _FORBIDDEN_CATEGORIES else c for c in text]
    cleaned = "".join(chars).strip().rstrip(". ")
    stripped = cleaned.lstrip(".")
    cleaned = "_" * (len(cleaned) - len(stripped)) + stripped
    if not cleaned:
        return MISSING
    if len(cleaned.encode()) <= MAX_COMPONENT_BYTES:
        return cleaned
    return _shorten(cleaned)


def _shorten(text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:_HASH_SUFFIX_CHARS]
    stem, dot, ext = text.rpartition(".")
    suffix = f"{dot}{ext}" if dot and stem and 0 < len(ext.encode()) <= 8 else ""
    if suffix:
        text = stem
    budget = MAX_COMPONENT_BYTES - len(suffix.encode()) - _HASH_SUFFIX_CHARS - 1
    cut = text.encode()[:budget].decode(errors="ignore")
    return f"{cut}~{digest}{suffix}"


def derived_name(rel: str, sha256: str) -> str:
    """The name a second, different file wanting *rel* is committed under (``--on-conflict
    suffix``, ``resolve --keep both``): ``<stem>~<first 12 hex digits of its sha256>.<ext>``."""
    head, slash, fname = rel.rpartition("/")
    stem, dot, ext = fname.rpartition(".")
    derived = f"{stem}~{sha256[:12]}.{ext}" if dot and stem else f"{fname}~{sha256[:12]}"
    return f"{head}{slash}{derived}"


def attrs_from_dataset(ds: Dataset, keywords: Iterable[str]) -> Attrs:
    """Read the values of *keywords* from *ds* as JSON-friendly values (absent -> ``None``).

    For a dataset pydicom read from a file. A file's naming attributes are defined by its
    encoded bytes (:func:`dicomcommit.headers.attrs_from_bytes`): an in-memory dataset may
    hold values its encoding changes (text its character set cannot encode, trailing NULs,
    empty person-name groups).
    """
    attrs: Attrs = {}
    for keyword, tag in _tags(tuple(keywords)):
        # By tag, not by keyword: pydicom's keyword lookup costs more than the value itself.
        # get_item() skips __getitem__'s conversions for elements already converted.
        elem = None if tag is None else ds.get_item(tag)
        if elem is None:
            attrs[keyword] = None
        else:
            attrs[keyword] = to_value(elem.value if isinstance(elem, DataElement) else ds[tag].value)
    return attrs


@functools.lru_cache(maxsize=64)
def _tags(keywords: tuple[str, ...]) -> tuple[tuple[str, int | None], ...]:
    return tuple((keyword, tag_for_keyword(keyword)) for keyword in keywords)


def to_value(raw: object) -> Value:
    """Turn a value as pydicom decodes it into a JSON-friendly :data:`Value`.

    Empty items of a multi-value are dropped (``A\\`` is the single value ``A``), an
    empty value is ``None``, and so are binary and sequence values, which name no file.
    Never raises.
    """
    if isinstance(raw, str):  # most values (UIDs, dates, codes, text): as _to_scalar does, sooner
        return str(raw) or None
    if isinstance(raw, MultiValue | list | tuple):
        items = [_to_scalar(item) for item in raw]
        scalars = [item for item in items if item is not None]
        if len(scalars) == 1:
            return scalars[0]  # "A\\" is the single value A
        return scalars or None
    return _to_scalar(raw)


def _to_scalar(raw: object) -> Scalar | None:
    if raw is None or isinstance(raw, bytes | bytearray | Dataset):
        return None  # binary and sequence values do not name files
    if isinstance(raw, IS | int) and not isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, float) and not hasattr(raw, "original_string"):
        return raw
    text = str(raw)  # PersonName, UID, DSfloat (its original string) and plain text
    return text or None
