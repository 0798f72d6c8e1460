from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomcommit import DicomCommitError, EncodeError, TargetExistsError, dcmwrite


def _pydicom_bytes(tmp_path: Path, ds: Dataset, **kwargs: object) -> bytes:
    reference = tmp_path / "reference.dcm"
    pydicom.dcmwrite(reference, ds, **kwargs)  # type: ignore[arg-type]
    return reference.read_bytes()


def test_writes_what_pydicom_writes(tmp_path: Path, ct: Dataset) -> None:
    path = tmp_path / "out.dcm"
    dcmwrite(path, ct)
    assert path.read_bytes() == _pydicom_bytes(tmp_path, ct)
    assert sorted(os.listdir(tmp_path)) == ["out.dcm", "reference.dcm"]  # no temp file left


def test_refuses_to_replace_an_existing_file(tmp_path: Path, ct: Dataset) -> None:
    path = tmp_path / "out.dcm"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError) as info:
        dcmwrite(path, ct)
    assert isinstance(info.value, TargetExistsError)
    assert isinstance(info.value, DicomCommitError)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.dcm"]


def test_overwrite_replaces_atomically(tmp_path: Path, ct: Dataset) -> None:
    path = tmp_path / "out.dcm"
    path.write_bytes(b"old")
    old_inode = path.stat().st_ino
    dcmwrite(path, ct, overwrite=True)
    assert path.read_bytes() == _pydicom_bytes(tmp_path, ct)
    assert path.stat().st_ino != old_inode  # a new file renamed over the old, never truncated in place


def test_encoding_failure_leaves_no_file(tmp_path: Path, make_ds: Callable[..., Dataset]) -> None:
    ds = make_ds(1)
    del ds.file_meta.TransferSyntaxUID  # pydicom cannot choose an encoding
    path = tmp_path / "out.dcm"
    with pytest.raises(EncodeError, match="encod"):
        dcmwrite(path, ds)
    assert os.listdir(tmp_path) == []


def test_encoding_failure_does_not_touch_an_existing_file(tmp_path: Path, make_ds: Callable[..., Dataset]) -> None:
    ds = _fails_mid_write(make_ds(1))
    path = tmp_path / "out.dcm"
    path.write_bytes(b"precious")
    with pytest.raises(EncodeError):
        dcmwrite(path, ds, overwrite=True)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["out.dcm"]


def _fails_mid_write(ds: Dataset) -> Dataset:
    """Rows=70000 passes assignment (with validation silenced) but fails in pydicom's writer
    after the File Meta and the first elements are written."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.Rows = 70000
    return ds


def test_failure_mid_write_leaves_no_partial_file(tmp_path: Path, make_ds: Callable[..., Dataset]) -> None:
    ds = _fails_mid_write(make_ds(1))
    with pytest.raises(OSError, match="ushort"):
        pydicom.dcmwrite(tmp_path / "pydicom.dcm", ds)
    assert (tmp_path / "pydicom.dcm").stat().st_size > 0  # what pydicom itself leaves behind
    with pytest.raises(EncodeError, match="ushort"):
        dcmwrite(tmp_path / "ours.dcm", ds)
    assert os.listdir(tmp_path) == ["pydicom.dcm"]


def test_write_error_leaves_nothing(tmp_path: Path, ct: Dataset) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "out.dcm"
    with pytest.raises(DicomCommitError, match="directory") as info:
        dcmwrite(missing, ct)
    assert isinstance(info.value, OSError)
