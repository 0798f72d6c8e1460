"""Faults and hostile input: injected I/O errors, planted symlinks, read-only archives,
files no well-behaved tool would write. Each has a defined outcome and loses nothing."""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomcommit import DicomCommitError, LockError, Manifest, StageError, Stager, commit, ingest
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import (
    ROOT,
    archive_files,
    copy_in,
    settled,
    sha256_of,
    staged_files,
    tmpfs,
    wheel_file,
    write_foreign,
    write_settled,
)

MakeDs = Callable[..., Dataset]
ERRNOS = [errno.ENOSPC, errno.EIO, errno.EACCES, errno.EMLINK, errno.EROFS]


class Fault:
    """Make the n-th call of ``os.<name>`` fail with *code*; counts whether it fired."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str, code: int, nth: int = 1) -> None:
        self.fired = False
        real = getattr(os, name)
        calls = [0]

        def failing(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == nth:
                self.fired = True
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize("code", ERRNOS)
@pytest.mark.parametrize("syscall", ["open", "write", "fsync", "rename"])
def test_stage_faults_fail_clearly_and_leave_nothing(
    tmp_path: Path, make_ds: MakeDs, monkeypatch: pytest.MonkeyPatch, syscall: str, code: int
) -> None:
    stager = Stager(tmp_path)
    stager.stage(make_ds(0))  # directory and journal open: the fault hits the stage itself
    before = staged_files(tmp_path)
    Fault(monkeypatch, syscall, code)
    with pytest.raises(StageError) as info:
        stager.stage(make_ds(1))
    monkeypatch.undo()
    assert info.value.errno == code
    assert str(tmp_path) in str(info.value)
    assert staged_files(tmp_path) == before  # neither a staged file nor a .part left behind
    stager.stage(make_ds(1))  # and staging works again


@pytest.mark.parametrize("code", ERRNOS)
@pytest.mark.parametrize(("syscall", "nth"), [("stat", 1), ("link", 1), ("link", 4), ("mkdir", 2),
                                              ("fsync", 1), ("unlink", 1), ("open", 3)])  # fmt: skip
def test_commit_faults_fail_clearly_and_a_rerun_succeeds(  # noqa: PLR0917 -- pytest parameters
    dirs: tuple[Path, Path], make_ds: MakeDs, monkeypatch: pytest.MonkeyPatch, syscall: str, nth: int, code: int
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    for i, variant in [(0, 0), (1, 0), (1, 0), (1, 1), (2, 0), (3, 0)]:
        stager.stage(make_ds(i, variant))
    write_settled(staging / "junk.bin", b"junk")
    staged = {p.name: sha256_of(p) for p in staged_files(staging)}
    fault = Fault(monkeypatch, syscall, code, nth)
    error: DicomCommitError | None = None
    try:
        commit(staging, archive, batch_size=2)
    except DicomCommitError as exc:
        error = exc
    if error is None:
        assert not fault.fired, f"os.{syscall} failed and commit did not say so"
    else:
        assert str(archive) in str(error) or str(staging) in str(error)  # it names the file or directory
    monkeypatch.undo()
    for name in staged_files(staging):  # what was not committed is still staged, intact
        assert sha256_of(name) == staged[name.name]
    commit(staging, archive)
    assert staged_files(staging) == []
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert sorted(r.source for r in rows) == sorted(staged)  # each exactly once
    for row in rows:
        assert sha256_of(archive / row.path) == row.sha256 or row.status == "duplicate"


def test_a_symlink_at_the_lock_path_is_not_followed(dirs: tuple[Path, Path], make_ds: MakeDs, tmp_path: Path) -> None:
    staging, archive = dirs
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    (archive / ".dicomcommit").mkdir(parents=True)
    (archive / ".dicomcommit" / "lock").symlink_to(victim)
    staged = Stager(staging).stage(make_ds(1))
    with pytest.raises(LockError, match="lock"):
        commit(staging, archive)
    assert victim.read_bytes() == b"do not touch"
    assert staged.exists()


@pytest.mark.parametrize("planted", [".dicomcommit", ".dicomcommit/manifest.sqlite", ".dicomcommit/conflicts"])
def test_symlinked_state_is_refused(dirs: tuple[Path, Path], make_ds: MakeDs, tmp_path: Path, planted: str) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)  # a real state directory first
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = archive / planted
    if not path.exists():
        path.mkdir()  # .dicomcommit/conflicts exists only once a conflict was kept
    moved = tmp_path / "moved"
    path.rename(moved)
    path.symlink_to(elsewhere)
    stager = Stager(staging)
    stager.stage(make_ds(1, variant=1))  # a conflict: it would go to .dicomcommit/conflicts
    with pytest.raises(DicomCommitError, match="symlink"):
        commit(staging, archive)
    assert list(elsewhere.iterdir()) == []
    assert len(staged_files(staging)) == 1


@pytest.fixture
def readonly_mount(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "8m") as mount:
        yield mount


def test_a_read_only_archive_fails_clearly_and_loses_nothing(
    dirs: tuple[Path, Path], make_ds: MakeDs, readonly_mount: Path
) -> None:
    staging, _ = dirs
    archive = readonly_mount / "archive"
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    subprocess.run(["mount", "-o", "remount,ro", str(readonly_mount)], check=True)
    staged = Stager(staging).stage(make_ds(2))
    with pytest.raises(DicomCommitError) as info:
        commit(staging, archive)
    assert "Read-only file system" in str(info.value)
    assert staged.exists()
    with Manifest(archive) as manifest:  # a read-only archive can still be reviewed
        assert len(manifest.records()) == 1
    subprocess.run(["mount", "-o", "remount,rw", str(readonly_mount)], check=True)
    assert commit(staging, archive).committed == 1


def _hostile_files(staging: Path, make_ds: MakeDs) -> None:
    """Every kind of file a staging directory should survive."""
    write_settled(staging / "empty.dcm", b"")
    write_settled(staging / "text.txt", "not dicom at all")
    write_settled(staging / "preamble-only.dcm", b"\0" * 128 + b"DICM")
    ct = wheel_file("CT_small.dcm").read_bytes()
    write_settled(staging / "truncated-header.dcm", ct[:700])
    write_settled(staging / "gzip.dcm.gz", gzip.compress(ct))
    copy_in("ExplVR_LitEndNoMeta.dcm", staging)  # no File Meta
    copy_in("image_dfl.dcm", staging)  # deflated
    copy_in("MR_small_bigendian.dcm", staging)  # big endian
    copy_in("MR_truncated.dcm", staging)  # truncated in the pixel data
    hostile = ["../../../etc/passwd", "a\0b", "line\nbreak", "x" * 65536, "%(PatientID)s", "{SOPInstanceUID}",
               ".", "..", "", " "]  # fmt: skip
    for i, value in enumerate(hostile):
        ds = make_ds(100 + i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about over-long and odd values
            ds.PatientID = value
            ds.StudyDescription = value
            write_foreign(staging / f"hostile-{i}.dcm", ds)
    missing = make_ds(200)
    missing.file_meta.MediaStorageSOPClassUID = missing.SOPClassUID
    missing.file_meta.MediaStorageSOPInstanceUID = missing.SOPInstanceUID
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        delattr(missing, keyword)
    write_foreign(staging / "no-naming-tags.dcm", missing)
    for path in staging.iterdir():
        settled(path)  # written by other tools, long before the commit


def test_hostile_files_each_get_a_defined_outcome(tmp_path: Path, make_ds: MakeDs) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    _hostile_files(staging, make_ds)
    names = sorted(p.name for p in staging.iterdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns while reading the broken ones
        report = commit(staging, archive)
    assert staged_files(staging) == []
    with Manifest(archive) as manifest:
        rows = {r.source: r for r in manifest.records()}
    assert sorted(rows) == names
    invalid = {name for name, r in rows.items() if r.status == "invalid"}
    assert {"empty.dcm", "text.txt", "preamble-only.dcm", "gzip.dcm.gz", "ExplVR_LitEndNoMeta.dcm",
            "truncated-header.dcm", "MR_truncated.dcm"} <= invalid  # fmt: skip
    assert rows["MR_truncated.dcm"].detail.startswith("truncated at byte")
    assert all(rows[name].detail for name in invalid)  # each with its reason
    assert rows["no-naming-tags.dcm"].target == "UNKNOWN/UNKNOWN/UNKNOWN/UNKNOWN.dcm"
    for name in ("image_dfl.dcm", "MR_small_bigendian.dcm", *(f"hostile-{i}.dcm" for i in range(10))):
        assert rows[name].status == "committed", rows[name]
    root = archive.resolve()
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.resolve().is_relative_to(root) for p in everything)  # 0 outside the archive
    assert report.committed + report.invalid + report.conflicts + report.duplicates == len(names)


@pytest.mark.parametrize("size", ["200k", "400k", "700k"])
def test_a_full_disk_in_copy_mode_then_a_rerun_records_every_file_once(
    tmp_path: Path, make_ds: MakeDs, readonly_mount: Path, size: str
) -> None:
    """A real ENOSPC (a small tmpfs as the archive), anywhere in copying, linking or the
    manifest: the rerun with room records each source once, every outcome naming the right
    row (no duplicate of a file that has no committed row)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(readonly_mount)], check=True)
    source, archive = tmp_path / "source", readonly_mount / "archive"
    source.mkdir()
    for i in range(12):
        shutil.copyfile(wheel_file("CT_small.dcm"), source / f"ct{i}.dcm")  # identical: duplicates
        write_foreign(source / f"s{i}.dcm", synthetic_dataset(ROOT, i, size=200))  # 80 KB each
    with pytest.raises(DicomCommitError, match=r"No space left|full"):
        ingest(source, archive, batch_size=5)
    subprocess.run(["mount", "-o", "remount,size=16m", str(readonly_mount)], check=True)
    ingest(source, archive)
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert sorted(r.source for r in rows) == sorted(f"{source}/{p.name}" for p in source.iterdir())
    committed = {r.path: r for r in rows if r.status == "committed"}
    assert sorted(committed) == sorted(archive_files(archive))
    for row in rows:
        assert row.status in ("committed", "duplicate")
        assert row.path in committed
        if row.sha256 is not None:
            assert sha256_of(archive / row.path) == row.sha256
