"""recover: finishing interrupted commits, abandoned .part files, and loud reports."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Manifest, Stager, UsageError, commit
from dicomcommit.cli.main import main
from dicomcommit.committing.recover import recover
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT, archive_files, sha256_of, staged_files, write_foreign

MakeDs = Callable[..., Dataset]


def _target(ds: Dataset) -> str:
    return f"{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def test_a_consistent_archive_needs_nothing(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    report = recover(archive, staging, check=True, verify=True)
    assert not report.needs_attention
    assert report.to_dict()["missing"] == []


def test_finishes_files_linked_by_a_killed_commit(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    staged = Stager(staging).stage(make_ds(1))
    commit(staging, archive)  # creates the archive; nothing left
    staged = Stager(staging).stage(make_ds(2))
    target = archive / _target(make_ds(2))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(staged, target)  # killed between link and record
    check = recover(archive, staging, check=True)
    assert check.finished == [staged.name]
    assert check.needs_attention
    assert staged.exists()
    report = recover(archive, staging)
    assert report.finished == [staged.name]
    assert not staged.exists()
    with Manifest(archive) as manifest:
        assert [r.source for r in manifest.records("committed")][-1] == staged.name
    assert not recover(archive, staging, check=True).needs_attention


def test_abandoned_part_files_are_set_aside_young_and_open_ones_kept(dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    archive.mkdir()
    old = staging / "0-old.dcm.part"
    old.write_bytes(b"half a dataset")
    past = time.time() - 7200
    os.utime(old, (past, past))
    young = staging / "1-young.dcm.part"
    young.write_bytes(b"being written")
    held = staging / "2-held.dcm.part"
    held.write_bytes(b"open by a live writer")
    os.utime(held, (past, past))
    with held.open("rb"):
        report = recover(archive, staging)
    assert report.parts_moved == [old.name]
    assert sorted(report.parts_left) == sorted([young.name, held.name])
    assert not old.exists()
    assert young.exists()
    assert held.exists()
    with Manifest(archive) as manifest:
        (row,) = manifest.records("invalid")
    assert (archive / row.path).read_bytes() == b"half a dataset"
    assert "abandoned" in row.detail


def test_unrecorded_archive_files_get_rows_and_missing_ones_are_loud(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    for i in range(2):
        Stager(staging).stage(make_ds(i))
    commit(staging, archive)
    stray = archive / "stray" / "file.dcm"
    stray.parent.mkdir()
    stray.write_bytes(b"placed by hand")
    gone = archive / _target(make_ds(0))
    gone.unlink()

    assert main(["recover", str(archive), "--check", "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert report["rows_added"] == ["stray/file.dcm"]
    assert len(report["missing"]) == 1
    assert _target(make_ds(0)) in report["missing"][0]

    assert main(["recover", str(archive)]) == 3  # the missing file cannot be repaired: still loud
    out = capsys.readouterr().out
    assert "MISSING" in out
    assert not gone.exists()  # never silently "fixed"
    with Manifest(archive) as manifest:
        assert any(r.path == "stray/file.dcm" for r in manifest.records("committed"))


def test_verify_catches_changed_bytes(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    path = archive / _target(make_ds(1))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not recover(archive, check=True).needs_attention  # same size: only --verify sees it
    assert len(recover(archive, check=True, verify=True).mismatched) == 1


def test_verify_fills_in_the_hashes_commit_did_not_compute(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    write_foreign(staging / "foreign.dcm", make_ds(1))
    commit(staging, archive)
    path = archive / _target(make_ds(1))
    with Manifest(archive) as manifest:
        assert [r.sha256 for r in manifest.records()] == [None]
    checked = recover(archive, check=True, verify=True)
    assert (len(checked.hashed), checked.needs_attention) == (1, False)
    with Manifest(archive) as manifest:
        assert [r.sha256 for r in manifest.records()] == [None]  # check changes nothing
    assert len(recover(archive, verify=True).hashed) == 1
    with Manifest(archive) as manifest:
        assert [r.sha256 for r in manifest.records()] == [sha256_of(path)]
    assert recover(archive, verify=True).hashed == []
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))  # from now on a change is caught
    assert len(recover(archive, check=True, verify=True).mismatched) == 1


def test_leftover_temp_copies_are_removed(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    leftover = archive / ".dicomcommit" / "tmp" / "abc.part"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"copy")
    assert recover(archive, check=True).tmp_removed == ["abc.part"]
    assert leftover.exists()
    recover(archive)
    assert not leftover.exists()
    assert list(archive_files(archive)) == [_target(make_ds(1))]
    assert staged_files(staging) == []


def test_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        recover(tmp_path / "missing")
    assert main(["recover", str(tmp_path), str(tmp_path / "missing")]) == 2


def test_verify_reports_a_directory_swapped_for_a_symlink(tmp_path: Path) -> None:
    """recover --verify reaches every file through directories it opens without following
    symlinks, as commit does: a series directory swapped for a symlink is reported, not followed."""
    staging, archive, elsewhere = tmp_path / "staging", tmp_path / "archive", tmp_path / "elsewhere"
    Stager(staging).stage(synthetic_dataset(ROOT, 1))
    commit(staging, archive)
    with Manifest(archive) as manifest:
        (row,) = manifest.records()
    series = (archive / row.path).parent
    series.rename(elsewhere)
    series.symlink_to(elsewhere)
    report = recover(archive, verify=True)
    assert report.needs_attention
    assert any("not a real directory" in line for line in report.mismatched), report.mismatched
