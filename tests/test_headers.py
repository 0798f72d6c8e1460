"""The raw header scanner agrees with pydicom, and only header bytes are read."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomcommit.dicom.headers import NotDicom, _read_with_pydicom, read_attrs
from dicomcommit.dicom.rawheader import Unsupported, scan
from dicomcommit.naming import COMMON_KEYWORDS, Attrs, attrs_from_dataset
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT, wheel_file

KEYWORDS = (*COMMON_KEYWORDS, "ImageType", "SliceThickness", "Rows", "Columns", "PixelSpacing", "BodyPartExamined",
            "SeriesDate", "ContentTime", "Manufacturer", "ProtocolName", "EchoNumbers", "PatientSex")  # fmt: skip
WHEEL_FILES = sorted(p.name for p in wheel_file("CT_small.dcm").parent.glob("*.dcm"))


def _pydicom_attrs(path: Path) -> Attrs | str:
    with warnings.catch_warnings(), path.open("rb") as f:
        warnings.simplefilter("ignore")  # pydicom's complaints about some wheel files
        try:
            return _read_with_pydicom(f, KEYWORDS)
        except NotDicom as exc:
            return f"NotDicom: {exc}"


def _scan(path: Path) -> Attrs:
    """The scanner over the first 64 KiB, its pending values decoded by pydicom."""
    data = path.read_bytes()
    scanned = scan(data[:65536], KEYWORDS, complete=len(data) <= 65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return scanned.finish()


@pytest.mark.parametrize("name", WHEEL_FILES)
def test_scanner_agrees_with_pydicom_on_every_wheel_file(name: str) -> None:
    path = wheel_file(name)
    expected = _pydicom_attrs(path)
    try:
        got = _scan(path)
    except Unsupported:
        return  # pydicom reads this one, so nothing can disagree
    assert got == expected


def test_scanner_reads_the_common_layouts() -> None:
    handled = 0
    for name in WHEEL_FILES:
        try:
            _scan(wheel_file(name))
            handled += 1
        except Unsupported:
            pass
    assert handled >= len(WHEEL_FILES) * 3 // 4  # it is the fast path, not a curiosity (64 of 78)


# Latin-1 letters: encodable in the default, Latin-1 and UTF-8 (two bytes each) character sets.
text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\\="), max_size=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    patient=text,
    description=st.lists(text, max_size=3),
    number=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    rows=st.integers(min_value=0, max_value=65535),
    implicit=st.booleans(),
    utf8=st.booleans(),
)
def test_scanner_agrees_with_pydicom_on_generated_headers(  # noqa: PLR0917 -- one argument per drawn value
    patient: str, description: list[str], number: int, rows: int, implicit: bool, utf8: bool
) -> None:
    ds = synthetic_dataset(ROOT, 1)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192" if utf8 else "ISO_IR 100"
    ds.PatientID = patient
    ds.PatientName = patient.replace("^", " ")
    ds.SeriesDescription = "\\".join(description)
    ds.InstanceNumber = number
    ds.Rows = rows
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    read = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert scan(data, KEYWORDS, complete=True).finish() == attrs_from_dataset(read, KEYWORDS)


def test_unsupported_layouts_fall_back_to_pydicom(tmp_path: Path) -> None:
    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        with pytest.raises(Unsupported):
            scan(wheel_file(name).read_bytes(), KEYWORDS)
        fd = os.open(wheel_file(name), os.O_RDONLY)
        try:
            assert read_attrs(fd, KEYWORDS)["SOPInstanceUID"]
        finally:
            os.close(fd)


def test_header_bytes_read_do_not_grow_with_pixel_data(tmp_path: Path) -> None:
    def bytes_read(size: int) -> int:
        path = tmp_path / f"{size}.dcm"
        ds: Dataset = synthetic_dataset(ROOT, size, size=size)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            before = _rchar()
            read_attrs(fd, COMMON_KEYWORDS)
            return _rchar() - before
        finally:
            os.close(fd)

    small, large = bytes_read(512), bytes_read(2048)  # 0.5 MB and 8 MB of pixels
    # the same header bytes either way (give or take the digits of /proc/self/io itself)
    assert abs(small - large) < 16
    assert small < 8192


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))
