"""One definition of naming attributes: the stager, commit's header reader and pydicom agree."""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.charset import convert_encodings
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.filewriter import correct_ambiguous_vr
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomcommit import EncodeError, Stager
from dicomcommit.dicom.headers import NotDicom, _read_with_pydicom, attrs_from_bytes, read_attrs
from dicomcommit.dicom.rawheader import _Pending, _quick
from dicomcommit.naming import DEFAULT_TEMPLATE, Attrs, attrs_from_dataset, parse_template, to_value
from dicomcommit.staging.journal import JournalIndex, journal_dir
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT

TEMPLATE = parse_template(DEFAULT_TEMPLATE)
KEYWORDS = (*TEMPLATE.keywords, "PatientName", "StudyDescription", "SeriesNumber", "StudyDate", "Modality",
            "SliceThickness", "PixelSpacing", "ImageType", "InstitutionName", "Rows")  # fmt: skip


def _dicm_files(paths: list[str]) -> list[Path]:
    found = []
    for name in paths:
        path = Path(name)
        if path.is_file():
            with path.open("rb") as f:
                if f.read(132)[128:132] == b"DICM":
                    found.append(path)
    return sorted(found)


# The default pattern only: a pattern such as "*.dcm" also matches pydicom's index of files to
# download, and get_testdata_files() then fetches them. These are the files in the wheel.
WHEEL_FILES = _dicm_files(get_testdata_files())
CHARSET_FILES = _dicm_files(get_charset_files())


@contextmanager
def _quiet() -> Iterator[None]:
    """pydicom's own warnings (replacement characters, invalid values), where the test
    calls pydicom directly: the code under test must capture its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _pydicom_attrs(path: Path, keywords: tuple[str, ...] = KEYWORDS) -> Attrs:
    """The reference: pydicom reads the whole file, and its values become Values."""
    with _quiet():
        return attrs_from_dataset(pydicom.dcmread(path), keywords)


def _read(path: Path, keywords: tuple[str, ...] = KEYWORDS) -> Attrs:
    """The path commit takes for a file without a journal line."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_attrs(fd, keywords, name=path.name)
    finally:
        os.close(fd)


def _pydicom_path(path: Path, keywords: tuple[str, ...] = KEYWORDS) -> Attrs:
    """read_attrs' fallback for layouts the scanner does not read: pydicom's read_partial."""
    with _quiet(), path.open("rb") as f:
        return _read_with_pydicom(f, keywords)


@pytest.mark.parametrize("path", WHEEL_FILES + CHARSET_FILES, ids=lambda p: p.name)
def test_every_wheel_file_is_named_alike_by_every_path(path: Path) -> None:
    with _quiet():
        ds = pydicom.dcmread(path)
    if "TransferSyntaxUID" not in ds.file_meta:
        with pytest.raises(NotDicom, match="no Transfer Syntax UID"):
            _read(path)  # by design: no guessing at the layout of what we name
        return
    with _quiet():
        expected = attrs_from_dataset(ds, KEYWORDS)
    # No _quiet() here: the readers capture pydicom's warnings themselves (warnings are errors).
    assert _read(path) == expected
    assert attrs_from_bytes(path.read_bytes(), KEYWORDS, name=path.name) == expected
    assert _pydicom_path(path) == expected


def test_the_wheel_gives_the_test_real_work() -> None:
    assert len(WHEEL_FILES) > 100
    assert len(CHARSET_FILES) >= 15


@pytest.mark.parametrize("path", CHARSET_FILES, ids=lambda p: p.name)
def test_charset_files_names_are_pydicoms(path: Path) -> None:
    keywords = ("PatientName", "PatientID", "StudyDescription", "InstitutionName", "SOPInstanceUID")
    assert _read(path, keywords) == _pydicom_attrs(path, keywords)


def test_empty_person_name_groups_are_dropped_as_pydicom_does(tmp_path: Path) -> None:
    path = next(p for p in CHARSET_FILES if p.name == "chrX1.dcm")
    assert b"Wang^XiaoDong=\xe7\x8e\x8b^\xe5\xb0\x8f\xe6\x9d\xb1=" in path.read_bytes()  # a trailing '='
    assert _read(path, ("PatientName",)) == {"PatientName": "Wang^XiaoDong=王^小東"}
    with Stager(tmp_path, durable=False) as stager:
        staged = stager.stage(pydicom.dcmread(path))
    index = JournalIndex(tmp_path)
    index.refresh()
    record = index.get(staged.name)
    index.close()
    assert record is not None
    assert record.attrs["PatientName"] == "Wang^XiaoDong=王^小東" == _read(staged, ("PatientName",))["PatientName"]


# Values that need care: non-ASCII, NULs, backslashes (multi-values), '=' and '^' in person
# names, spaces around items, and plain ASCII (the shortcut).
_TRICKY = "AZaz09 ^=\\\0.-+éü李雷王小東ЖΩアｱ한"
text = st.text(alphabet=st.sampled_from(_TRICKY), max_size=14)
_TRICKY_BYTES = [b"A", b"1", b" ", b"\\", b"=", b"^", b"\0", b"\xe9", b"\xff", b"\xe6\x9d\xb1", b"\x1b$B", b".", b"-"]
raw_text = st.binary(max_size=14) | st.lists(st.sampled_from(_TRICKY_BYTES), max_size=8).map(b"".join)
# IS and DS as bytes: pydicom refuses most such text in memory already, but files hold anything.
number_text = st.text(alphabet=st.sampled_from("0123456789 +-.eE\\"), max_size=10).map(str.encode)
_CHARSETS: list[str | list[str] | None] = [None, "", "ISO_IR 100", "ISO_IR 192", "ISO_IR 6", "GB18030", "ISO_IR 144",
                                            "ISO_IR 13", "ISO 2022 IR 87", "ISO 2022 IR 149", ["", "ISO 2022 IR 87"],
                                            ["ISO 2022 IR 6", "ISO 2022 IR 100"]]  # fmt: skip
charsets = st.sampled_from(_CHARSETS)
syntaxes = st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])


def _keep_raw(ds: Dataset, *, implicit: bool, little: bool) -> None:
    """Make pydicom write raw elements' bytes as they are (it re-encodes them when the
    dataset's encoding or character set is not the one they were "read" with)."""
    correct_ambiguous_vr(ds, little)  # which pydicom then no longer does: Pixel Data's OB or OW
    ds.set_original_encoding(implicit, little, ds._character_set)


def _set(ds: Dataset, keyword: str, value: str | bytes, *, implicit: bool, little: bool) -> None:
    """Set *value*: text goes through pydicom's encoding, bytes land in the file as they are."""
    if isinstance(value, str):
        setattr(ds, keyword, value)
        return
    tag = tag_for_keyword(keyword)
    assert tag is not None
    if len(value) % 2:
        value += b" "
    vr = None if implicit else dictionary_VR(tag)
    ds[tag] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, little)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    charset=charsets,
    syntax=syntaxes,
    patient_id=text | raw_text,
    patient_name=text | raw_text,
    description=text | raw_text,
    series_number=number_text | raw_text,
    thickness=number_text | st.sampled_from([b"2.5", b" 0.5 ", b"1e3"]),
    spacing=st.lists(number_text, max_size=3).map(b"\\".join),
    study_date=st.sampled_from(["20240131", "2024", "", " 20240131", "20240131\0"]) | raw_text,
)
def test_the_stager_journals_what_commit_and_pydicom_read(  # noqa: PLR0917 -- one argument per drawn value
    charset: str | list[str] | None,
    syntax: UID,
    patient_id: str | bytes,
    patient_name: str | bytes,
    description: str | bytes,
    series_number: bytes,
    thickness: bytes,
    spacing: bytes,
    study_date: str | bytes,
) -> None:
    implicit, little = syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    ds = synthetic_dataset(ROOT, 7)
    ds.file_meta.TransferSyntaxUID = syntax
    try:
        with _quiet():
            if charset is not None:
                ds.SpecificCharacterSet = charset
            for keyword, value in [("PatientID", patient_id), ("PatientName", patient_name),
                                   ("StudyDescription", description), ("SeriesNumber", series_number),
                                   ("SliceThickness", thickness), ("PixelSpacing", spacing),
                                   ("StudyDate", study_date)]:  # fmt: skip
                _set(ds, keyword, value, implicit=implicit, little=little)
            _keep_raw(ds, implicit=implicit, little=little)
    except (ValueError, TypeError, OverflowError):
        assume(False)  # pydicom refuses the value in memory already (an IS of "1.5"...)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        with Stager(staging, durable=False, keywords=KEYWORDS) as stager:
            try:
                with _quiet():  # pydicom warns when it encodes with replacement characters
                    path = stager.stage(ds)
            except EncodeError:
                assume(False)
                return
        index = JournalIndex(staging)
        index.refresh()
        record = index.get(path.name)
        index.close()
        assert record is not None
        journaled = {k: record.attrs[k] for k in KEYWORDS}
        shutil.rmtree(journal_dir(staging))  # the journal line is lost: commit reads the header

        assert _read(path) == journaled
        assert attrs_from_bytes(path.read_bytes(), KEYWORDS) == journaled
        assert _pydicom_attrs(path) == journaled  # what pydicom.dcmread gives


# The character sets the shortcut decodes text in (None: no Specific Character Set), and others.
_PLAIN_CHARSETS: dict[bytes | None, str] = {None: "latin-1", b"": "latin-1", b"ISO_IR 6": "latin-1",
                                            b"ISO_IR 100": "latin-1", b"ISO_IR 192": "utf-8"}  # fmt: skip
_OTHER_CHARSETS = [b"GB18030", b"ISO 2022 IR 87", b"ISO_IR 144", b"ISO_IR 13"]
_VRS = ("CS", "AS", "DA", "DT", "TM", "UI", "SH", "LO", "UC", "ST", "LT", "UT", "PN", "IS", "DS",
        "US", "SS", "UL", "SL", "FL", "FD", "OB", "AE", "UR")  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(
    vr=st.sampled_from(_VRS),
    value=raw_text | number_text | st.binary(max_size=9),
    charset=st.sampled_from([*_PLAIN_CHARSETS, *_OTHER_CHARSETS]),
)
def test_the_shortcut_decodes_as_pydicom_does(vr: str, value: bytes, charset: bytes | None) -> None:
    raw = RawDataElement(BaseTag(0x00100020), vr, len(value), value, 0, False, True)
    encodings = "iso8859" if charset is None else convert_encodings(charset.decode())
    with _quiet():
        try:
            expected = to_value(convert_raw_data_element(raw, encoding=encodings).value)
        except Exception:  # pydicom refuses the value: the shortcut must not answer one
            expected = None
            refused = True
        else:
            refused = False
    quick = _quick(vr, value, _PLAIN_CHARSETS.get(charset))
    if isinstance(quick, _Pending):
        return  # pydicom's conversion decides: equal by construction
    assert not refused
    assert repr(quick) == repr(expected)  # repr: NaN equals NaN, and 1 is not 1.0 or "1"


def test_the_shortcut_takes_the_common_values() -> None:
    def quick(vr: str, value: bytes) -> object:
        return _quick(vr, value, "utf-8")

    assert quick("UI", b"1.2.840.10008.5.1.4.1.1.2\0") == "1.2.840.10008.5.1.4.1.1.2"
    assert quick("LO", b"ID\0") == "ID"
    assert quick("PN", b"Doe^John ") == "Doe^John"
    assert quick("CS", b"ORIGINAL\\PRIMARY") == ["ORIGINAL", "PRIMARY"]
    assert quick("IS", b"12") == 12
    assert quick("DS", b"0.5\\0.5 ") == ["0.5", "0.5"]
    assert quick("PN", "Wang^XiaoDong=王^小東=".encode()) == "Wang^XiaoDong=王^小東"
    assert quick("PN", b"A=\\==B=\\=") == ["A", "==B"]
    assert isinstance(quick("LO", b"A\0\\B"), _Pending)
    assert quick("PN", "Müller^José".encode()) == "Müller^José"
    assert isinstance(quick("PN", b"\xff\xfeAB"), _Pending)  # invalid UTF-8: pydicom's replacement characters


def _file(tmp_path: Path, patient_id: bytes, charset: str) -> Path:
    ds = synthetic_dataset(ROOT, 3)
    ds.SpecificCharacterSet = charset
    _set(ds, "PatientID", patient_id, implicit=False, little=True)
    _keep_raw(ds, implicit=False, little=True)
    path = tmp_path / "bad-utf8.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def test_invalid_utf8_is_decoded_with_replacement_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _file(tmp_path, b"\xff\xfeAB", "ISO_IR 192")
    caplog.set_level(logging.DEBUG)
    attrs = _read(path, ("PatientID", "SOPInstanceUID"))  # warnings are errors here: none escapes
    assert attrs["PatientID"] == "\ufffd\ufffdAB"
    assert attrs["SOPInstanceUID"] == f"{ROOT}.3.3"
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1  # pydicom's own log line of the same problem is held back
    assert lines[0].name == "dicomcommit"
    assert "bad-utf8.dcm" in lines[0].getMessage()
    assert "UTF8" in lines[0].getMessage()
    assert TEMPLATE.render(attrs | {"StudyInstanceUID": "1", "SeriesInstanceUID": "2"}).startswith("\ufffd\ufffdAB/")


def test_invalid_utf8_is_staged_and_read_alike(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _file(tmp_path, b"\xff\xfeAB", "ISO_IR 192")
    with _quiet():
        ds = pydicom.dcmread(path)
    with Stager(tmp_path / "staging", durable=False) as stager:
        staged = stager.stage(ds)
    index = JournalIndex(tmp_path / "staging")
    index.refresh()
    record = index.get(staged.name)
    index.close()
    assert record is not None
    assert record.attrs["PatientID"] == "\ufffd\ufffdAB" == _read(staged)["PatientID"]
    assert any(staged.name in r.getMessage() for r in caplog.records if r.name == "dicomcommit")


def test_a_value_pydicom_cannot_decode_makes_the_file_invalid_not_a_crash(tmp_path: Path) -> None:
    ds = synthetic_dataset(ROOT, 4)
    digits = b"9" * 5000  # too long for int(): pydicom reads a float, then fails to make an int of infinity
    _set(ds, "InstanceNumber", digits, implicit=False, little=True)
    _keep_raw(ds, implicit=False, little=True)
    path = tmp_path / "huge-is.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    with pytest.raises(NotDicom, match="OverflowError"):
        _read(path, ("InstanceNumber",))
    with _quiet(), pytest.raises(EncodeError, match="read back"):
        Stager(tmp_path / "staging", durable=False).stage(ds)


def test_text_the_character_set_cannot_encode_gets_one_name(tmp_path: Path) -> None:
    """李雷 without a Specific Character Set: pydicom writes '??', and names come from that."""
    ds = synthetic_dataset(ROOT, 5)
    ds.PatientID = "李雷"
    with Stager(tmp_path, durable=False) as stager, pytest.warns(UserWarning, match="replacement characters"):
        staged = stager.stage(ds)
    index = JournalIndex(tmp_path)
    index.refresh()
    record = index.get(staged.name)
    index.close()
    assert record is not None
    assert record.attrs["PatientID"] == "??"
    shutil.rmtree(journal_dir(tmp_path))
    read = _read(staged, TEMPLATE.keywords)
    assert TEMPLATE.render(record.attrs) == TEMPLATE.render(read)
    assert TEMPLATE.render(read).startswith("__/")


def test_many_threads_reading_odd_values_leave_the_warning_filters_alone(tmp_path: Path) -> None:
    path = _file(tmp_path, b"\xff\xfeAB", "ISO_IR 192")
    filters = list(warnings.filters)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(30):
                assert _read(path, ("PatientID",)) == {"PatientID": "\ufffd\ufffdAB"}
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert warnings.filters == filters


def test_a_writable_memoryview_as_the_stager_holds_is_read(tmp_path: Path) -> None:
    ds = synthetic_dataset(ROOT, 6, size=512)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    view = buffer.getbuffer()  # writable, as the stager's
    try:
        assert attrs_from_bytes(view, ("SOPInstanceUID", "Rows")) == {"SOPInstanceUID": f"{ROOT}.3.6", "Rows": 512}
    finally:
        view.release()
