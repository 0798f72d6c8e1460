from __future__ import annotations

import errno
import gc
import os
import sqlite3
import stat
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomcommit import (
    ArchiveError,
    ConflictError,
    LockTimeout,
    Manifest,
    NoClobberUnsupported,
    Record,
    Stager,
    TemplateError,
    UsageError,
    commit,
)
from dicomcommit._faults import BATCH_POINTS, POINTS
from dicomcommit.dicom import headers as headers_module
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT, archive_files, copy_in, sha256_of, staged_files, write_foreign, write_settled

MakeDs = Callable[..., Dataset]


def _target(ds: Dataset) -> str:
    return f"{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def _run_rows(archive: Path, run: str) -> list[Record]:
    with Manifest(archive) as manifest:
        return manifest.records(run=run)


def test_commit_gives_each_staged_file_its_final_name(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    expected = {}
    for i in range(30):
        path = stager.stage(make_ds(i))
        expected[_target(make_ds(i))] = sha256_of(path)
    report = commit(staging, archive)
    assert (report.committed, report.duplicates, report.conflicts, report.invalid) == (30, 0, 0, 0)
    assert archive_files(archive) == expected
    assert staged_files(staging) == []
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert len(rows) == 30
    assert {r.status for r in rows} == {"committed"}
    assert {r.target: r.sha256 for r in rows} == expected
    assert all(r.path == r.target and r.run == report.run and r.size > 0 for r in rows)


def test_duplicates_are_dropped_and_conflicts_kept(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    first = stager.stage(make_ds(1))
    first_sha = sha256_of(first)
    stager.stage(make_ds(1))  # identical
    other = stager.stage(make_ds(1, variant=1))  # same name, other content
    other_sha = sha256_of(other)
    report = commit(staging, archive)
    assert (report.committed, report.duplicates, report.conflicts) == (1, 1, 1)
    assert archive_files(archive) == {_target(make_ds(1)): first_sha}  # the first staged wins, untouched
    with Manifest(archive) as manifest:
        (conflict,) = manifest.records("conflict")
    assert conflict.sha256 == other_sha
    assert conflict.existing_sha256 == first_sha
    assert conflict.target == _target(make_ds(1))
    assert sha256_of(archive / conflict.path) == other_sha  # nothing lost
    assert staged_files(staging) == []


def test_identical_conflicting_copies_are_one_conflict(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    for variant in (0, 1, 1, 1):
        stager.stage(make_ds(5, variant))
    report = commit(staging, archive)
    assert (report.committed, report.duplicates, report.conflicts) == (1, 2, 1)
    with Manifest(archive) as manifest:
        assert len(manifest.records("conflict")) == 1


def test_on_conflict_suffix_commits_under_a_derived_name(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(2))
    commit(staging, archive)
    other_sha = sha256_of(Stager(staging).stage(make_ds(2, variant=1)))
    report = commit(staging, archive, on_conflict="suffix")
    assert (report.committed, report.conflicts) == (1, 0)
    derived = _target(make_ds(2)).removesuffix(".dcm") + f"~{other_sha[:12]}.dcm"
    assert archive_files(archive)[derived] == other_sha
    (row,) = _run_rows(archive, report.run)
    assert row.path == derived
    assert "derived" in row.detail
    Stager(staging).stage(make_ds(2, variant=1))  # the same reprocessed file again
    again = commit(staging, archive, on_conflict="suffix")
    assert (again.committed, again.duplicates) == (0, 1)


def test_on_conflict_error_stops_and_leaves_the_file_staged(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(3))
    commit(staging, archive)
    stager = Stager(staging)
    conflicting = stager.stage(make_ds(3, variant=1))
    with pytest.raises(ConflictError) as info:
        commit(staging, archive, on_conflict="error", batch_size=1)
    assert isinstance(info.value, FileExistsError)
    assert conflicting.exists()
    assert str(conflicting) in str(info.value)


def test_not_dicom_files_are_set_aside_never_deleted(dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    write_settled(staging / "notes.txt", "not dicom")
    write_settled(staging / "empty.dcm", b"")
    copy_in("ExplVR_LitEndNoMeta.dcm", staging)  # a dataset without File Meta: not Part 10
    report = commit(staging, archive)
    assert report.invalid == 3
    assert report.committed == 0
    with Manifest(archive) as manifest:
        rows = {r.source: r for r in manifest.records("invalid")}
    assert set(rows) == {"notes.txt", "empty.dcm", "ExplVR_LitEndNoMeta.dcm"}
    assert (archive / rows["notes.txt"].path).read_text() == "not dicom"
    assert "Part 10" in rows["notes.txt"].detail
    assert (archive / rows["empty.dcm"].path).read_bytes() == b""
    assert staged_files(staging) == []


def test_unfinished_hidden_and_symlinked_entries_are_left_alone(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    write_settled(staging / "x.dcm.part", b"half")
    write_settled(staging / ".hidden", b"h")
    outside = tmp_path / "outside.dcm"
    copy_in("CT_small.dcm", tmp_path, "outside.dcm")
    (staging / "link.dcm").symlink_to(outside)
    report = commit(staging, archive)
    assert report.skipped == 2
    assert report.committed == 0
    assert (staging / "x.dcm.part").read_bytes() == b"half"
    assert (staging / "link.dcm").is_symlink()
    assert outside.exists()
    assert archive_files(archive) == {}


def test_foreign_files_are_named_from_their_headers(dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    nested = staging / "from" / "another" / "tool"
    nested.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm"):
        copy_in(name, nested)
    report = commit(staging, archive)
    # MR_small_bigendian is MR_small's instance in other bytes: a conflict, not a second file
    assert (report.committed, report.conflicts) == (3, 1), report.records
    ct_path = next(p for p in archive_files(archive) if p.startswith("1CT1/"))
    assert ct_path.endswith("/1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322.dcm")


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def test_a_foreign_file_is_named_and_committed_without_reading_its_pixel_data(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    staging, archive = dirs
    big = synthetic_dataset(ROOT, 1, size=4096)  # 32 MiB of pixel data
    write_foreign(staging / "big.dcm", big)
    size = (staging / "big.dcm").stat().st_size
    before = _bytes_read()
    assert commit(staging, archive, dry_run=True).committed == 1
    assert _bytes_read() - before < 1024 * 1024  # a dry run reads no more
    before = _bytes_read()
    assert commit(staging, archive).committed == 1
    assert _bytes_read() - before < 1024 * 1024  # the header, the manifest, the journal dir
    with Manifest(archive) as manifest:
        (row,) = manifest.records()
    assert (row.sha256, row.size) == (None, size)  # not hashed: `recover --verify` fills it in
    # A name already taken is the one case that reads the bytes: both files are hashed.
    write_foreign(staging / "again.dcm", big)
    before = _bytes_read()
    report = commit(staging, archive)
    assert report.duplicates == 1
    assert _bytes_read() - before >= 2 * size
    assert _run_rows(archive, report.run)[0].sha256 == sha256_of(archive / row.path)


def test_a_foreign_conflict_records_both_hashes(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    write_foreign(staging / "a.dcm", make_ds(1))
    commit(staging, archive)
    write_foreign(staging / "b.dcm", make_ds(1, variant=1))
    kept = sha256_of(staging / "b.dcm")
    report = commit(staging, archive)
    (row,) = report.records
    assert (row.status, row.sha256) == ("conflict", kept)
    assert row.existing_sha256 == sha256_of(archive / _target(make_ds(1)))
    assert row.path == f".dicomcommit/conflicts/{kept}.dcm"


@pytest.mark.parametrize("point", [p for p in POINTS if p.startswith("commit:")])
def test_a_killed_commit_of_foreign_files_converges_on_a_rerun(
    dirs: tuple[Path, Path], make_ds: MakeDs, point: str
) -> None:
    """Foreign files are recorded unhashed (or hashed, when a name is taken): a rerun after a
    kill at any step records each exactly once."""
    staging, archive = dirs
    write_foreign(staging / "first.dcm", make_ds(0))
    commit(staging, archive)
    for i in range(4):
        write_foreign(staging / f"f{i}.dcm", make_ds(i))  # f0: a duplicate
    write_foreign(staging / "other.dcm", make_ds(1, variant=1))  # a conflict
    code = "import sys; from dicomcommit import commit; commit(sys.argv[1], sys.argv[2])"
    nth = 1 if point in BATCH_POINTS else 2  # once per batch, or at the second file
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": f"{point}:{nth}"}
    killed = subprocess.run([sys.executable, "-c", code, str(staging), str(archive)], env=env, check=False)
    assert killed.returncode == -9
    commit(staging, archive)
    assert staged_files(staging) == []
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert sorted(r.source for r in rows) == ["f0.dcm", "f1.dcm", "f2.dcm", "f3.dcm", "first.dcm", "other.dcm"]
    by_source = {r.source: r for r in rows}
    assert by_source["f0.dcm"].status == "duplicate"
    assert by_source["other.dcm"].status == "conflict"
    for row in rows:
        assert row.sha256 in (None, sha256_of(archive / row.path))


def test_staged_files_are_committed_without_reading_their_headers(
    dirs: tuple[Path, Path], make_ds: MakeDs, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    for i in range(5):
        stager.stage(make_ds(i))

    def no_parsing(*args: object) -> None:
        raise AssertionError("commit re-parsed a header the stager had recorded")

    monkeypatch.setattr("dicomcommit.committing.describing.read_attrs", no_parsing)
    monkeypatch.setattr("dicomcommit.committing.describing.read_foreign", no_parsing)
    assert commit(staging, archive).committed == 5


def test_a_keyword_the_stager_did_not_record_is_read_from_the_header(dirs: tuple[Path, Path], ct: Dataset) -> None:
    staging, archive = dirs
    Stager(staging).stage(ct)
    report = commit(staging, archive, template="{ImageType}/{SOPInstanceUID}.dcm")
    assert report.committed == 1
    assert list(archive_files(archive)) == [f"ORIGINAL_PRIMARY_AXIAL/{ct.SOPInstanceUID}.dcm"]
    assert headers_module  # the slow path lives there


def test_missing_naming_attributes_use_the_placeholder(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    ds = make_ds(1)
    del ds.PatientID
    ds.StudyInstanceUID = ""
    Stager(staging).stage(ds)
    commit(staging, archive)
    assert list(archive_files(archive)) == [f"UNKNOWN/UNKNOWN/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"]


def test_hostile_header_values_stay_inside_the_archive(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    for i, value in enumerate(["../../../../tmp/escape", "..", ".", "a/b", "x" * 10_000, "%(PatientID)s"]):
        ds = make_ds(i)
        with warnings.catch_warnings():  # pydicom warns that 10,000 characters exceed LO's 64
            warnings.simplefilter("ignore")
            ds.PatientID = value
            stager.stage(ds)
    report = commit(staging, archive)
    assert report.committed == 6
    root = archive.resolve()
    for path in archive.rglob("*"):
        assert path.resolve().is_relative_to(root)
    assert not (archive.parent.parent / "tmp" / "escape").exists()


def test_rerun_after_a_crash_between_link_and_unlink_converges(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    staged = Stager(staging).stage(make_ds(7))
    target = archive / _target(make_ds(7))
    target.parent.mkdir(parents=True)
    os.link(staged, target)  # what a committer killed right after link() leaves behind
    report = commit(staging, archive)
    assert report.committed == 1
    assert report.duplicates == 0
    assert "interrupted" in _run_rows(archive, report.run)[0].detail
    assert staged_files(staging) == []
    # killed after the manifest transaction but before unlink: the staged name is back
    os.link(target, staged)
    report = commit(staging, archive)
    assert report.committed == 1
    with Manifest(archive) as manifest:
        assert len(manifest.records()) == 1  # recorded once, whatever the reruns


def test_staging_on_another_filesystem_copies_then_links(
    dirs: tuple[Path, Path], make_ds: MakeDs, other_fs_staging: Path
) -> None:
    _, archive = dirs
    stager = Stager(other_fs_staging)
    sha = sha256_of(stager.stage(make_ds(1)))
    stager.stage(make_ds(1))
    report = commit(other_fs_staging, archive)
    assert (report.committed, report.duplicates) == (1, 1)
    assert archive_files(archive) == {_target(make_ds(1)): sha}
    assert list((archive / ".dicomcommit" / "tmp").iterdir()) == []


def test_injected_exdev_copies_then_links(
    dirs: tuple[Path, Path], make_ds: MakeDs, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    shas = {_target(make_ds(i)): sha256_of(stager.stage(make_ds(i))) for i in range(3)}
    stager.stage(make_ds(1, variant=1))
    real_link = os.link
    staging_dev = staging.stat().st_dev
    staging_ino = staging.stat().st_ino

    def cross_device_link(src: str, dst: str, *, src_dir_fd: int | None = None, **kwargs: object) -> None:
        if src_dir_fd is not None:
            st = os.fstat(src_dir_fd)
            if (st.st_dev, st.st_ino) == (staging_dev, staging_ino):
                raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, src_dir_fd=src_dir_fd, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", cross_device_link)
    report = commit(staging, archive)
    assert (report.committed, report.conflicts) == (3, 1)
    assert archive_files(archive) == shas
    assert list((archive / ".dicomcommit" / "tmp").iterdir()) == []
    assert staged_files(staging) == []


def test_no_hard_links_fails_closed(dirs: tuple[Path, Path], make_ds: MakeDs, monkeypatch: pytest.MonkeyPatch) -> None:
    staging, archive = dirs
    staged = Stager(staging).stage(make_ds(1))

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    with pytest.raises(NoClobberUnsupported, match="rename"):
        commit(staging, archive)
    monkeypatch.undo()
    assert staged.exists()
    assert archive_files(archive) == {}
    assert commit(staging, archive).committed == 1  # a later commit succeeds


def test_a_symlinked_directory_in_the_archive_is_not_followed(
    tmp_path: Path, dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    staging, archive = dirs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ds = make_ds(1)
    archive.mkdir()
    (archive / str(ds.PatientID)).symlink_to(elsewhere)
    staged = Stager(staging).stage(ds)
    with pytest.raises(ArchiveError, match="symlink"):
        commit(staging, archive)
    assert list(elsewhere.iterdir()) == []
    assert staged.exists()


def test_a_symlink_at_the_target_is_a_conflict(tmp_path: Path, dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    ds = make_ds(1)
    target = archive / _target(ds)
    target.parent.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    target.symlink_to(victim)
    Stager(staging).stage(ds)
    report = commit(staging, archive)
    assert report.conflicts == 1
    assert "symlink" in report.records[0].detail
    assert victim.read_bytes() == b"keep me"


@pytest.mark.parametrize("where", ["same filesystem", "other filesystem"])
def test_committed_files_keep_the_staged_mode(
    dirs: tuple[Path, Path], make_ds: MakeDs, request: pytest.FixtureRequest, where: str
) -> None:
    staging, archive = dirs
    if where == "other filesystem":  # copied across: the copy keeps the mode too
        staging = request.getfixturevalue("other_fs_staging")
    old = os.umask(0o027)
    try:
        Stager(staging).stage(make_ds(1))
    finally:
        os.umask(old)
    commit(staging, archive)
    # the umask's mode, not 0600 from a temp-file helper
    assert stat.S_IMODE((archive / _target(make_ds(1))).stat().st_mode) == 0o640


@pytest.mark.parametrize("foreign", [False, True], ids=["staged", "foreign"])
def test_dry_run_predicts_and_changes_nothing(dirs: tuple[Path, Path], make_ds: MakeDs, foreign: bool) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    for n, (i, variant) in enumerate([(1, 0), (1, 0), (1, 1), (2, 0)]):
        if foreign:  # hashed only when their names collide, as commit does
            write_foreign(staging / f"{n}.dcm", make_ds(i, variant))
        else:
            stager.stage(make_ds(i, variant))
    write_settled(staging / "junk.bin", b"junk")
    before = sorted(p.name for p in staging_files_all(staging))
    plan = commit(staging, archive, dry_run=True)
    assert not archive.exists()
    assert sorted(p.name for p in staging_files_all(staging)) == before
    real = commit(staging, archive)
    assert plan.counts() == real.counts() == {
        "committed": 2, "duplicates": 1, "conflicts": 1, "invalid": 1, "skipped": 0,
    }  # fmt: skip


def staging_files_all(staging: Path) -> list[Path]:
    return [p for p in staging.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"template": "{PatientID}.dcm"}, TemplateError),
        ({"template": "../{SOPInstanceUID}"}, TemplateError),
        ({"on_conflict": "overwrite"}, UsageError),
        ({"batch_size": 0}, UsageError),
    ],
)
def test_bad_arguments(dirs: tuple[Path, Path], kwargs: dict[str, object], error: type[Exception]) -> None:
    staging, archive = dirs
    with pytest.raises(error):
        commit(staging, archive, **kwargs)  # type: ignore[arg-type]
    assert not archive.exists()


def test_staging_and_archive_must_be_separate(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="contain"):
        commit(tmp_path, tmp_path / "archive")
    with pytest.raises(UsageError, match="not exist"):
        commit(tmp_path / "missing", tmp_path / "archive")


def test_lock_timeout(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    (archive / ".dicomcommit").mkdir(parents=True)
    with subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, filelock; l = filelock.FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); "
         "time.sleep(30)", str(archive / ".dicomcommit" / "lock")],
        stdout=subprocess.PIPE, text=True,
    ) as holder:  # fmt: skip
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "held"
            with pytest.raises(LockTimeout) as info:
                commit(staging, archive, lock_timeout=0.2)
            assert isinstance(info.value, TimeoutError)
        finally:
            holder.kill()
    assert commit(staging, archive).committed == 1  # the dead holder's lock does not block


def test_manifest_is_plain_sqlite(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    db = sqlite3.connect(archive / ".dicomcommit" / "manifest.sqlite")
    rows = db.execute("SELECT status, target, sha256, attrs FROM files").fetchall()
    db.close()
    assert rows[0][0] == "committed"
    assert rows[0][1] == _target(make_ds(1))
    assert len(rows[0][2]) == 64
    assert '"SOPInstanceUID"' in rows[0][3]


@pytest.mark.parametrize("enabled", [True, False])
def test_commit_leaves_the_garbage_collector_as_it_found_it(
    dirs: tuple[Path, Path], make_ds: MakeDs, enabled: bool
) -> None:
    """Each batch pauses Python's cyclic GC; after a commit, even one that stops at a
    conflict, it is on again exactly when it was on before."""
    staging, archive = dirs
    with Stager(staging) as stager:
        stager.stage_many([make_ds(1), make_ds(1, variant=1)])
    (gc.enable if enabled else gc.disable)()
    try:
        with pytest.raises(ConflictError):
            commit(staging, archive, on_conflict="error")
        assert gc.isenabled() is enabled
        commit(staging, archive)
        assert gc.isenabled() is enabled
    finally:
        gc.enable()
