"""ingest: existing trees, copied or moved through the same protocol."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomcommit import Manifest
from dicomcommit.cli.main import main
from dicomcommit.committing.ingest import ingest, usable_cpus
from tests.conftest import archive_files, copy_in, sha256_of, write_foreign

MakeDs = Callable[..., Dataset]
JOBS = min(2, usable_cpus())  # --jobs above the CPU count is refused


def _tree(root: Path, make_ds: MakeDs) -> dict[str, str]:
    """A messy tree: nested folders, odd names, duplicates, a conflict, junk. Returns rel -> sha256."""
    layout = {
        "study A/series 1/IM0001": (1, 0),
        "study A/series 1/IM0002": (2, 0),
        "study A/series 1/copy of IM0001": (1, 0),  # identical duplicate
        "study B/..weird../IM0001.dcm": (3, 0),
        "study B/reprocessed/IM0003": (3, 1),  # same instance, other content: a conflict
        "ünïcode dir/ a name with spaces .dcm": (4, 0),
    }
    for rel, (index, variant) in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_foreign(path, make_ds(index, variant))  # written long ago, settled
    copy_in("CT_small.dcm", root / "study A", "ct")
    (root / "notes.txt").write_text("not dicom")
    (root / "study B" / "DICOMDIR.bak").write_bytes(b"\0" * 200)
    return {str(p.relative_to(root)): sha256_of(p) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def tree(tmp_path: Path, make_ds: MakeDs) -> tuple[Path, dict[str, str]]:
    source = tmp_path / "source"
    source.mkdir()
    return source, _tree(source, make_ds)


def test_ingest_copies_and_leaves_the_source_untouched(tree: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    source, before = tree
    archive = tmp_path / "archive"
    report = ingest(source, archive)
    assert (report.committed, report.duplicates, report.conflicts, report.invalid) == (5, 1, 1, 0)
    assert sorted(name for name, _ in report.left_in_place) == ["notes.txt", "study B/DICOMDIR.bak"]
    after = {str(p.relative_to(source)): sha256_of(p) for p in source.rglob("*") if p.is_file()}
    assert after == before
    source_inodes = {p.stat().st_ino for p in source.rglob("*") if p.is_file()}
    assert not source_inodes & {p.stat().st_ino for p in archive.rglob("*") if p.is_file()}  # copies, not links
    assert len(archive_files(archive)) == 5
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert all(r.source.startswith(f"{source}/") for r in rows)
    assert len(rows) == 7


def test_rerunning_ingest_is_idempotent(tree: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    source, _ = tree
    archive = tmp_path / "archive"
    ingest(source, archive)
    files = archive_files(archive)
    again = ingest(source, archive, jobs=JOBS)
    assert (again.committed, again.conflicts) == (0, 0)
    assert again.duplicates == 7  # everything, conflicts included, is already there
    assert archive_files(archive) == files
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert len(rows) == 7
    # the first run read only headers; comparing on the rerun hashed every file
    assert all(r.sha256 == sha256_of(archive / r.path) for r in rows)


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 CPUs for 2 jobs")
def test_jobs_give_the_same_archive(tree: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    source, _ = tree
    one, two = tmp_path / "one", tmp_path / "two"
    ingest(source, one)
    report = ingest(source, two, jobs=2)
    assert archive_files(one) == archive_files(two)
    assert report.committed == 5


def test_move_removes_only_what_was_committed_or_recorded(tree: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    source, before = tree
    archive = tmp_path / "archive"
    ingest(source, archive, move=True)
    left = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    assert left == ["notes.txt", "study B/DICOMDIR.bak"]  # the non-DICOM files stay
    with Manifest(archive) as manifest:
        rows = manifest.records()
    kept = {sha256_of(archive / r.path) for r in rows if r.status in ("committed", "conflict")}
    dicom = {sha for rel, sha in before.items() if rel not in left}
    assert dicom <= kept  # every moved file's bytes are in the archive


def test_ingest_cli_dry_run_and_json(
    tree: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = tree
    archive = tmp_path / "archive"
    assert main(["ingest", str(source), str(archive), "--dry-run", "--json"]) == 3  # a conflict would be recorded
    assert not archive.exists()
    planned = json.loads(capsys.readouterr().out)
    assert (planned["committed"], planned["duplicates"], planned["conflicts"], planned["invalid"]) == (5, 1, 1, 0)
    assert main(["ingest", str(source), str(archive), "--json", "--jobs", str(JOBS)]) == 3
    report = json.loads(capsys.readouterr().out)
    assert (report["committed"], report["conflicts"]) == (5, 1)
    assert {f["file"] for f in report["left_in_place"]} == {"notes.txt", "study B/DICOMDIR.bak"}
    assert main(["ingest", str(source), str(archive), "--jobs", "0"]) == 2
    assert main(["ingest", str(tmp_path / "nope"), str(archive)]) == 2
    assert main(["ingest", str(source), str(source / "inside")]) == 2


def test_ingest_refuses_symlinks_in_the_tree(tmp_path: Path, make_ds: MakeDs) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    outside = tmp_path / "outside.dcm"
    pydicom.dcmwrite(outside, make_ds(1), enforce_file_format=True)
    os.symlink(outside, source / "link.dcm")
    report = ingest(source, archive)
    assert report.committed == 0
    assert report.left_in_place == [("link.dcm", "symlink, not followed")]


@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 CPUs for 2 jobs")
def test_jobs_read_ahead_in_order_and_a_file_gone_meanwhile_does_not_shift_the_others(
    tmp_path: Path, make_ds: MakeDs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers read while the commit goes on; commit takes each file's own description
    (a file that vanished after the scan is skipped, and the next ones are not misnamed)."""
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    for i in range(300):  # several of the workers' chunks
        write_foreign(source / f"{i:04d}.dcm", make_ds(i))
    real_stat = os.stat
    gone = source / "0100.dcm"

    def stat_after_removing_one(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if path == "0100.dcm" and gone.exists():
            gone.unlink()  # taken by someone else between the scan and commit's look at it
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat_after_removing_one)
    report = ingest(source, archive, jobs=2, batch_size=64)
    assert report.committed == 299
    expected = {f"{make_ds(i).PatientID}/{make_ds(i).StudyInstanceUID}/{make_ds(i).SeriesInstanceUID}/"
                f"{make_ds(i).SOPInstanceUID}.dcm": sha256_of(source / f"{i:04d}.dcm")
                for i in range(300) if i != 100}  # fmt: skip
    assert archive_files(archive) == expected
