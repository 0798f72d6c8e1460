"""check_complete: every file pydicom reads passes, cut or junk files never do, pixel data is never read."""

from __future__ import annotations

import os
import random
import re
import struct
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import data_element_generator
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from dicomcommit.dicom.completeness import Incomplete, check_complete

PREAMBLE = bytes(128) + b"DICM"
TRUNCATED = re.compile(r"truncated at byte (\d+)(?: of (\d+)|: the deflated data set does not end)")

# Files in the wheel that pydicom reads without complaint but that are not whole; each must be
# refused, with this reason.
BROKEN = {
    # pydicom's own fixture for a cut file: the pixel data ends 62 bytes early
    "MR_truncated.dcm": "truncated at byte 9630 of 9692",
    # pydicom's fixture for a cut file: it ends inside a sequence of defined length
    "rtplan_truncated.dcm": "truncated at byte 2129 of 2394",
    # pydicom guesses the encoding of a data set without a transfer syntax; we do not
    "meta_missing_tsyntax.dcm": "not a DICOM Part 10 file (no Transfer Syntax UID in the File Meta)",
}


def wheel_file(name: str) -> Path:
    """A file that ships inside the pydicom wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not in the pydicom wheel"
    return Path(str(path))


TEST_FILES = wheel_file("CT_small.dcm").parent


def dcmread(path: Path) -> pydicom.FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd values it still reads
        return pydicom.dcmread(path)


def read_fully(path: Path) -> bool:
    """Whether pydicom reads the Part 10 file at *path* and every value in it without an error."""
    if not path.is_file() or path.read_bytes()[128:132] != b"DICM":
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd values it still reads
            for elem in pydicom.dcmread(path).iterall():
                _ = elem.value
    except Exception:  # any failure means pydicom does not read it fully
        return False
    return True


READABLE = sorted(p for p in map(Path, get_testdata_files()) if read_fully(p))
WHOLE = [p for p in READABLE if p.name not in BROKEN]


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(TEST_FILES)) for p in paths]


def reason(path: Path, size: int | None = None) -> str | None:
    """check_complete's reason for the file at *path* (of *size* bytes, or its real size), None if it passes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        check_complete(fd, os.fstat(fd).st_size if size is None else size)
    except Incomplete as exc:
        return str(exc)
    finally:
        os.close(fd)
    return None


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def meta_end(path: Path) -> int:
    """Where the File Meta of the file at *path* ends, as pydicom finds it."""
    with path.open("rb") as fp:
        fp.seek(132)
        for _ in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2):
            pass
        return fp.tell()


def element_starts(ds: pydicom.FileDataset) -> set[int]:
    """Where the top-level elements of *ds* (not deflated) start in its file."""
    starts = set()
    value_tell: int | None
    implicit: bool | None
    for elem in ds.elements():  # as read: raw elements, and sequences already parsed
        if isinstance(elem, RawDataElement):
            value_tell, implicit = elem.value_tell, elem.is_implicit_VR
        else:
            value_tell, implicit = elem.file_tell, ds.original_encoding[0]
        assert value_tell is not None
        starts.add(value_tell - (8 if implicit or elem.VR not in EXPLICIT_VR_LENGTH_32 else 12))
    return starts


def not_between(cut: int, starts: set[int]) -> int:
    """*cut*, or the next byte that does not start an element: a cut there would leave a whole file."""
    while cut in starts:
        cut += 1
    return cut


def deflate_end(data: bytes, start: int) -> int:
    """Where the deflate stream that starts at *start* ends (pydicom ignores the bytes after it)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[start:])
    assert inflater.eof
    return len(data) - len(inflater.unused_data)


def assert_truncated_at(text: str | None, cut: int) -> None:
    assert text is not None, f"a file cut at byte {cut} passed"
    match = TRUNCATED.fullmatch(text)
    assert match, text
    assert int(match[1]) == cut
    assert match[2] is None or int(match[2]) > cut


def explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One Explicit VR Little Endian element."""
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHL", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def undefined(group: int, elem: int, vr: bytes) -> bytes:
    return struct.pack("<HH2sHL", group, elem, vr, 0, 0xFFFFFFFF)


def item(group: int, elem: int, length: int = 0) -> bytes:
    return struct.pack("<HHL", group, elem, length)


ITEM, ITEM_END, SEQUENCE_END = item(0xFFFE, 0xE000, 0xFFFFFFFF), item(0xFFFE, 0xE00D), item(0xFFFE, 0xE0DD)


@pytest.fixture(scope="module")
def explicit_meta() -> bytes:
    """The preamble and File Meta (Explicit VR Little Endian) of CT_small.dcm."""
    path = wheel_file("CT_small.dcm")
    return path.read_bytes()[: meta_end(path)]


def test_the_wheel_has_files_of_every_kind() -> None:
    names = {p.name for p in WHOLE}
    assert len(WHOLE) > 100
    assert {"image_dfl.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm", "MR_small_implicit.dcm"} <= names
    assert {p.name for p in READABLE} >= BROKEN.keys()


@pytest.mark.parametrize("path", WHOLE, ids=ids(WHOLE))
def test_every_file_pydicom_reads_passes(path: Path) -> None:
    assert reason(path) is None


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_pydicom_tolerates_are_refused(name: str) -> None:
    assert reason(wheel_file(name)) == BROKEN[name]


@pytest.mark.parametrize("path", WHOLE, ids=ids(WHOLE))
def test_every_file_cut_short_is_refused(path: Path, tmp_path: Path) -> None:
    data, end, ds = path.read_bytes(), meta_end(path), dcmread(path)
    whole = len(data)
    if ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        starts, whole = set(), deflate_end(data, end)
    else:
        starts = element_starts(ds)
    cuts = {whole // 3, whole // 2, whole - 1, end + 3}  # end + 3: inside the first element's header
    if starts:
        cuts.add(max(starts) + 6)  # inside the last element's header
    for cut in sorted(not_between(cut, starts) for cut in cuts):
        text = reason(write(tmp_path / f"cut{cut}", data[:cut]))
        if cut <= end:
            assert text is not None, f"a file cut at byte {cut} (in its File Meta) passed"
        else:
            assert_truncated_at(text, cut)


def test_the_same_cut_is_seen_through_a_smaller_size() -> None:
    path = wheel_file("CT_small.dcm")
    assert_truncated_at(reason(path, 20000), 20000)


def test_a_file_shorter_than_its_size_is_refused() -> None:
    path = wheel_file("CT_small.dcm")
    size = path.stat().st_size
    assert reason(path, size + 100) == f"truncated at byte {size} of {size + 100}"


def test_a_partial_header_after_the_last_element_is_truncation(tmp_path: Path) -> None:
    path = wheel_file("MR_small.dcm")
    data = path.read_bytes()
    for extra in range(1, 8):
        text = reason(write(tmp_path / f"plus{extra}", data + bytes(extra)))
        assert text == f"truncated at byte {len(data) + extra} of {len(data) + 8}"


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "SC_rgb_jpeg.dcm"])
def test_other_encodings_pass(name: str) -> None:
    # SC_rgb_jpeg.dcm has a compressed syntax but an Implicit VR data set: pydicom switches, so do we
    assert reason(wheel_file(name)) is None


def test_a_deflated_file_passes_and_fails_cut_short(tmp_path: Path) -> None:
    path = wheel_file("image_dfl.dcm")
    assert reason(path) is None
    data = path.read_bytes()
    end = deflate_end(data, meta_end(path))
    for cut in (meta_end(path) + 10, len(data) // 2, end - 1):
        text = reason(write(tmp_path / f"cut{cut}", data[:cut]))
        assert text == f"truncated at byte {cut}: the deflated data set does not end"
    # this file has 8 bytes after its deflate stream (a gzip trailer); like pydicom, nothing reads them
    assert len(data) - end == 8
    assert reason(write(tmp_path / "trailer", data[: end + 3])) is None


def test_a_deflated_file_with_a_corrupt_stream_is_refused(tmp_path: Path) -> None:
    path = wheel_file("image_dfl.dcm")
    data = path.read_bytes()
    end = meta_end(path)
    text = reason(write(tmp_path / "junk", data[:end] + b"\xff" * 100))
    assert text is not None
    assert text.startswith(f"cannot be parsed past the File Meta: invalid deflate stream from byte {end}")


def test_encapsulated_pixel_data_cut_inside_its_fragments_is_refused(tmp_path: Path) -> None:
    path = wheel_file("JPEG2000.dcm")
    data = path.read_bytes()
    pixels = dcmread(path).get_item(0x7FE00010)
    assert isinstance(pixels, RawDataElement)
    assert pixels.length == 0xFFFFFFFF
    start = pixels.value_tell  # the basic offset table item
    for cut in (start + 4, start + 8, start + 20, (start + len(data)) // 2, len(data) - 8, len(data) - 3):
        assert_truncated_at(reason(write(tmp_path / f"cut{cut}", data[:cut])), cut)
    # cut right before the sequence delimiter: it is what is missing
    assert reason(write(tmp_path / "nodelim", data[:-8])) == f"truncated at byte {len(data) - 8} of {len(data)}"


def test_a_fifty_megabyte_file_is_checked_without_reading_its_pixel_data(tmp_path: Path) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Big^File"
    ds.add_new(0x7FE00010, "OB", bytes(50 * 1024 * 1024))
    path = tmp_path / "big.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    del ds
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        before = read_chars()
        check_complete(fd, size)
        read = read_chars() - before
        with pytest.raises(Incomplete, match=f"^truncated at byte {size - 1} of {size}$"):
            check_complete(fd, size - 1)
    finally:
        os.close(fd)
    assert read < 1024 * 1024


def read_chars() -> int:
    """Bytes this process has read so far (rchar of /proc/self/io)."""
    match = re.search(r"^rchar: (\d+)$", Path("/proc/self/io").read_text(), re.MULTILINE)
    assert match
    return int(match[1])


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_after_the_preamble_are_refused(seed: int, tmp_path: Path) -> None:
    junk = random.Random(seed).randbytes(4096)
    text = reason(write(tmp_path / "junk", PREAMBLE + junk))
    assert text == "not a DICOM Part 10 file (no File Meta after the DICM prefix)"


@pytest.mark.parametrize(
    "junk",
    [bytes(1024), b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * 20, b""],
    ids=["zeros", "text", "nothing"],
)
def test_junk_after_the_preamble_is_refused(junk: bytes, tmp_path: Path) -> None:
    text = reason(write(tmp_path / "junk", PREAMBLE + junk))
    assert text == "not a DICOM Part 10 file (no File Meta after the DICM prefix)"


def test_a_file_meta_alone_is_refused(explicit_meta: bytes, tmp_path: Path) -> None:
    assert reason(write(tmp_path / "meta", explicit_meta)) == "no data set after the File Meta"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_after_a_file_meta_are_refused(name: str, seed: int, tmp_path: Path) -> None:
    path = wheel_file(name)
    meta = path.read_bytes()[: meta_end(path)]
    junk = random.Random(seed).randbytes(random.Random(seed).randrange(1, 8192))
    assert reason(write(tmp_path / "junk", meta + junk)) is not None


def test_zeros_after_a_file_meta_are_refused(explicit_meta: bytes, tmp_path: Path) -> None:
    assert reason(write(tmp_path / "junk", explicit_meta + bytes(1024))) == "no data set after the File Meta"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_nul_padding_after_the_last_element_is_accepted_as_pydicom_does(name: str, tmp_path: Path) -> None:
    path = write(tmp_path / "padded", wheel_file(name).read_bytes() + bytes(16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmread(path)  # pydicom reads it
    assert reason(path) is None


def test_tags_out_of_order_are_accepted_as_pydicom_does(explicit_meta: bytes, tmp_path: Path) -> None:
    for data in (PATIENT + SOP_CLASS, PATIENT + PATIENT):
        assert reason(write(tmp_path / "unordered", explicit_meta + data)) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"DICM", bytes(131), bytes(128) + b"DICN" + bytes(100), b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" * 20],
    ids=["empty", "prefix only", "short", "wrong prefix", "no preamble"],
)
def test_a_file_without_preamble_is_refused(data: bytes, tmp_path: Path) -> None:
    assert reason(write(tmp_path / "file", data)) == "not a DICOM Part 10 file (no preamble and DICM prefix)"


def test_a_cut_inside_the_file_meta_counts_to_its_group_length(explicit_meta: bytes, tmp_path: Path) -> None:
    text = reason(write(tmp_path / "cut", explicit_meta[:150]))
    assert text == f"truncated at byte 150 of {len(explicit_meta)}"


PATIENT = explicit(0x0010, 0x0010, b"PN", b"Doe^")
SOP_CLASS = explicit(0x0008, 0x0016, b"UI", SecondaryCaptureImageStorage.encode() + b"\0")
NEXT = len(SOP_CLASS)  # where the element after SOP_CLASS starts
IN_SEQUENCE = NEXT + 12  # where the first item of an undefined-length element after SOP_CLASS starts
UNPARSABLE = [
    ("bad VR", SOP_CLASS + struct.pack("<HH2sH", 0x10, 0x10, b"XY", 0), "invalid VR XY in (0010,0010)", NEXT),
    ("binary VR", SOP_CLASS + struct.pack("<HH2sH", 0x10, 0x10, b"\1\2", 0), "invalid VR 0x0102 in (0010,0010)", NEXT),
    (
        "undefined OB",
        SOP_CLASS + undefined(0x0010, 0x0010, b"OB") + SEQUENCE_END,
        "undefined length in (0010,0010), neither a sequence nor pixel data",
        NEXT,
    ),
    ("item end", SOP_CLASS + ITEM_END, "item delimiter (FFFE,E00D) where a data element should be", NEXT),
    ("item", SOP_CLASS + item(0xFFFE, 0xE000), "item (FFFE,E000) where a data element should be", NEXT),
    ("command", explicit(0x0000, 0x0002, b"UI", b"1.2\0"), "command element (0000,0002) in the data set", 0),
    (
        "not an item",
        SOP_CLASS + undefined(0x0008, 0x1115, b"SQ") + PATIENT,
        "(0010,0010) where an item should be",
        IN_SEQUENCE,
    ),
    (
        "fragment",
        SOP_CLASS + undefined(0x7FE0, 0x0010, b"OB") + ITEM + SEQUENCE_END,
        "pixel data fragment of undefined length",
        IN_SEQUENCE,
    ),
    (
        "no item end",
        SOP_CLASS + undefined(0x0008, 0x1115, b"SQ") + ITEM + PATIENT + SEQUENCE_END,
        "sequence delimiter (FFFE,E0DD) where a data element should be",
        IN_SEQUENCE + 8 + len(PATIENT),
    ),
]


@pytest.mark.parametrize(
    ("dataset", "what", "offset"), [case[1:] for case in UNPARSABLE], ids=[c[0] for c in UNPARSABLE]
)
def test_a_data_set_that_cannot_be_parsed_is_refused(
    explicit_meta: bytes, dataset: bytes, what: str, offset: int, tmp_path: Path
) -> None:
    text = reason(write(tmp_path / "bad", explicit_meta + dataset))
    assert text == f"cannot be parsed past the File Meta: {what} at byte {len(explicit_meta) + offset}"


def test_nested_undefined_lengths_pass_and_must_end(explicit_meta: bytes, tmp_path: Path) -> None:
    inner = (
        undefined(0x0008, 0x1199, b"SQ") + ITEM + explicit(0x0008, 0x1150, b"UI", b"1.2\0") + ITEM_END + SEQUENCE_END
    )
    implicit_item = ITEM + struct.pack("<HHL", 0x0008, 0x1150, 4) + b"1.2\0" + ITEM_END
    un = undefined(0x0009, 0x1010, b"UN") + implicit_item + SEQUENCE_END  # UN of undefined length: implicit inside
    defined_item = item(0xFFFE, 0xE000, len(PATIENT)) + PATIENT
    outer = undefined(0x0008, 0x1115, b"SQ") + ITEM + inner + un + ITEM_END + defined_item + SEQUENCE_END
    fragments = undefined(0x7FE0, 0x0010, b"OB") + item(0xFFFE, 0xE000) + item(0xFFFE, 0xE000, 4) + b"\xff\xd8\xff\xd9"
    whole = explicit_meta + SOP_CLASS + outer + fragments + SEQUENCE_END
    assert reason(write(tmp_path / "whole", whole)) is None
    between_elements = len(explicit_meta) + len(SOP_CLASS) + len(outer)  # a cut there leaves a whole file
    for cut in range(len(explicit_meta) + len(SOP_CLASS) + 1, len(whole)):
        if cut != between_elements:
            assert_truncated_at(reason(write(tmp_path / "cut", whole[:cut])), cut)


def test_a_deflate_stream_that_ends_must_hold_a_whole_data_set(tmp_path: Path) -> None:
    path = wheel_file("image_dfl.dcm")
    data, end = path.read_bytes(), meta_end(path)
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[end:])
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    cut = len(inflated) - 10
    redeflated = deflater.compress(inflated[:cut]) + deflater.flush()
    text = reason(write(tmp_path / "short", data[:end] + redeflated))
    assert text == f"cannot be parsed past the File Meta: the inflated data set ends at byte {cut}, not {len(inflated)}"


def test_an_explicit_data_set_in_an_implicit_syntax_is_read_as_pydicom_reads_it(tmp_path: Path) -> None:
    path = wheel_file("MR_small_implicit.dcm")
    mixed = write(tmp_path / "mixed", path.read_bytes()[: meta_end(path)] + SOP_CLASS + PATIENT)
    assert reason(mixed) is None
    with pytest.warns(UserWarning, match="Expected implicit VR, but found explicit VR"):
        assert pydicom.dcmread(mixed).PatientName == "Doe^"


def test_incomplete_is_a_value_error(tmp_path: Path) -> None:
    fd = os.open(write(tmp_path / "empty", b""), os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match=r"^not a DICOM Part 10 file \(no preamble and DICM prefix\)$"):
            check_complete(fd, 0)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def implicit_meta() -> bytes:
    """The preamble and File Meta (Implicit VR Little Endian) of MR_small_implicit.dcm."""
    path = wheel_file("MR_small_implicit.dcm")
    return path.read_bytes()[: meta_end(path)]


def encode(group: int, elem: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    """One Little Endian element, implicit or explicit VR."""
    return struct.pack("<HHL", group, elem, len(value)) + value if implicit else explicit(group, elem, vr, value)


def sequence(group: int, elem: int, implicit: bool) -> bytes:
    """An undefined-length sequence of one undefined-length item."""
    header = struct.pack("<HHL", group, elem, 0xFFFFFFFF) if implicit else undefined(group, elem, b"SQ")
    return header + ITEM + encode(0x0008, 0x1150, b"UI", b"1.2\0", implicit) + ITEM_END + SEQUENCE_END


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("before", range(13))
def test_headers_across_the_read_windows(
    before: int, implicit: bool, explicit_meta: bytes, implicit_meta: bytes, tmp_path: Path
) -> None:
    # a filler value makes the next header start *before* bytes ahead of the end of the first read
    # (64 KiB); then many short elements cross the later, smaller reads at every alignment
    meta = implicit_meta if implicit else explicit_meta
    head = meta + encode(0x0008, 0x0016, b"UI", SecondaryCaptureImageStorage.encode() + b"\0", implicit)
    filler = encode(0x0009, 0x1001, b"OB", bytes(64 * 1024 - before - len(head) - (8 if implicit else 12)), implicit)
    pieces = [
        head,
        filler,
        encode(0x0009, 0x1002, b"OB", b"abcd", implicit),
        encode(0x0009, 0x1003, b"LO", b"ab", implicit),
        sequence(0x0009, 0x1004, implicit),
        *(encode(0x0011, elem, b"LO", b"0123456789", implicit) for elem in range(0x1000, 0x1400)),
        encode(0x7FE0, 0x0010, b"OB", bytes(100), implicit),
    ]
    data = b"".join(pieces)
    path = write(tmp_path / "big-header.dcm", data)
    assert len(dcmread(path)) == 5 + 0x400 + 1  # pydicom reads it all
    assert reason(path) is None
    starts = {sum(map(len, pieces[:i])) for i in range(1, len(pieces))}
    for cut in range(64 * 1024 - 14, 64 * 1024 + 40):
        if cut not in starts:
            assert_truncated_at(reason(write(tmp_path / "cut", data[:cut])), cut)


def test_an_implicit_item_without_its_delimiter_is_refused(implicit_meta: bytes, tmp_path: Path) -> None:
    first = encode(0x0008, 0x0016, b"UI", b"1.2\0", True)
    data = implicit_meta + first + struct.pack("<HHL", 0x0008, 0x1115, 0xFFFFFFFF) + ITEM + SEQUENCE_END
    where = len(implicit_meta) + len(first) + 8 + 8  # after the sequence's header and its item's
    what = "sequence delimiter (FFFE,E0DD) where a data element should be"
    assert reason(write(tmp_path / "bad", data)) == f"cannot be parsed past the File Meta: {what} at byte {where}"


BAD_META = [
    ("bad VR", struct.pack("<HH2sH", 2, 1, b"\0\0", 2) + b"\0\1", "invalid VR 0x0000 in (0002,0001) at byte 132"),
    ("undefined length", undefined(2, 1, b"OB") + SEQUENCE_END, "undefined length in (0002,0001) at byte 132"),
]


@pytest.mark.parametrize(("meta", "what"), [case[1:] for case in BAD_META], ids=[case[0] for case in BAD_META])
def test_a_file_meta_that_cannot_be_parsed_is_refused(meta: bytes, what: str, tmp_path: Path) -> None:
    assert reason(write(tmp_path / "bad", PREAMBLE + meta + PATIENT)) == f"cannot be parsed in the File Meta: {what}"


def test_a_file_meta_cut_in_a_long_header_is_truncated(tmp_path: Path) -> None:
    cut = PREAMBLE + struct.pack("<HH2sH", 2, 1, b"OB", 0) + b"\0\0"
    assert reason(write(tmp_path / "cut", cut)) == "truncated at byte 142 of 144"


def test_a_file_meta_without_transfer_syntax_is_refused(tmp_path: Path) -> None:
    data = PREAMBLE + explicit(2, 1, b"OB", b"\0\1") + PATIENT
    assert reason(write(tmp_path / "bad", data)) == "not a DICOM Part 10 file (no Transfer Syntax UID in the File Meta)"


def test_an_empty_deflated_data_set_is_refused(tmp_path: Path) -> None:
    path = wheel_file("image_dfl.dcm")
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    # bytes after the stream are not read (image_dfl.dcm has a gzip trailer there)
    data = path.read_bytes()[: meta_end(path)] + deflater.compress(b"") + deflater.flush() + bytes(8)
    assert reason(write(tmp_path / "empty", data)) == "no data set after the File Meta"
