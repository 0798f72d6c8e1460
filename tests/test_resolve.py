"""show and resolve: conflicts a person can see, decide, and have carried out safely."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Manifest, Stager, UsageError, commit
from dicomcommit._faults import RESOLVE_POINTS
from dicomcommit.cli.main import main
from dicomcommit.committing.resolve import Keep, resolve, resolve_many
from dicomcommit.manifests.records import Status
from dicomcommit.review.show import show
from tests.conftest import archive_files, sha256_of, write_foreign

MakeDs = Callable[..., Dataset]


def _target(ds: Dataset) -> str:
    return f"{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


@pytest.fixture
def conflicts(dirs: tuple[Path, Path], make_ds: MakeDs) -> tuple[Path, dict[int, int]]:
    """An archive with two open conflicts (instances 1 and 2); returns it and index -> row id."""
    staging, archive = dirs
    for variant in (0, 1):
        stager = Stager(staging)
        for index in (1, 2):
            stager.stage(make_ds(index, variant))
        commit(staging, archive)
    with Manifest(archive) as manifest:
        rows = manifest.records("conflict")
    assert len(rows) == 2
    return archive, {int(r.target.split(".")[-2]) if r.target else 0: r.id or 0 for r in rows}


def test_show_puts_both_files_side_by_side(
    conflicts: tuple[Path, dict[int, int]], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    archive, ids = conflicts
    shown = show(archive, ids[1])
    assert shown.diff is not None
    assert shown.existing is not None
    assert shown.staged is not None
    differing = {e.keyword: (e.existing, e.staged) for e in shown.diff.elements}
    assert differing == {"SeriesDescription": ("original", "reprocessed")}
    assert shown.diff.pixels_differ is True
    assert shown.existing.sha256 == sha256_of(archive / _target(make_ds(1)))
    assert shown.staged.sha256 == shown.record.sha256
    assert main(["show", str(archive), str(ids[1]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["diff"]["elements"][0]["tag"] == "(0008,103E)"
    assert main(["show", str(archive), str(ids[1])]) == 0
    text = capsys.readouterr().out
    assert "pixel data DIFFERS" in text
    assert f"dicomcommit resolve {archive} {ids[1]} --keep" in text
    assert main(["show", str(archive), "9999"]) == 1


def test_keep_existing_rejects_the_copy(conflicts: tuple[Path, dict[int, int]], make_ds: MakeDs) -> None:
    archive, ids = conflicts
    before = sha256_of(archive / _target(make_ds(1)))
    row = resolve(archive, ids[1], "existing")
    assert row.status == "resolved"
    assert row.resolution == "existing"
    assert "@" in (row.resolved_by or "")
    assert row.resolved_at
    assert sha256_of(archive / row.path) == row.sha256  # the rejected copy is kept
    assert row.path.startswith(".dicomcommit/rejected/")
    assert sha256_of(archive / _target(make_ds(1))) == before
    assert not (archive / ".dicomcommit" / "conflicts" / f"{row.sha256}.dcm").exists()


def test_keep_staged_swaps_atomically_and_keeps_the_old_file(
    conflicts: tuple[Path, dict[int, int]], make_ds: MakeDs
) -> None:
    archive, ids = conflicts
    target = archive / _target(make_ds(1))
    old = sha256_of(target)
    missing: list[str] = []
    stop = threading.Event()

    def reader() -> None:  # the target must never be missing
        while not stop.is_set():
            try:
                target.read_bytes()
            except FileNotFoundError:
                missing.append("missing")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        row = resolve(archive, ids[1], "staged")
    finally:
        stop.set()
        thread.join()
    assert missing == []
    assert sha256_of(target) == row.sha256
    assert row.status == "committed"
    assert row.path == _target(make_ds(1))
    assert sha256_of(archive / ".dicomcommit" / "replaced" / f"{old}.dcm") == old  # nothing deleted
    with Manifest(archive) as manifest:
        (replaced,) = [r for r in manifest.records("resolved") if r.resolution == "replaced"]
    assert replaced.sha256 == old
    assert sha256_of(archive / replaced.path) == old
    assert f"#{row.id}" in replaced.detail


def test_keep_staged_over_a_foreign_file_records_the_hash_it_read(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    write_foreign(staging / "foreign.dcm", make_ds(1))
    commit(staging, archive)  # named from its header alone: no hash yet
    old = sha256_of(archive / _target(make_ds(1)))
    Stager(staging).stage(make_ds(1, 1))
    commit(staging, archive)
    with Manifest(archive) as manifest:
        (conflict,) = manifest.records("conflict")
    resolve(archive, conflict.id or 0, "staged")
    with Manifest(archive) as manifest:
        (replaced,) = manifest.records("resolved")
    assert (replaced.source, replaced.sha256) == ("foreign.dcm", old)
    assert sha256_of(archive / replaced.path) == old


def test_keep_both_commits_under_a_derived_name(conflicts: tuple[Path, dict[int, int]], make_ds: MakeDs) -> None:
    archive, ids = conflicts
    row = resolve(archive, ids[2], "both")
    assert row.status == "committed"
    assert row.sha256 is not None
    assert row.path == _target(make_ds(2)).removesuffix(".dcm") + f"~{row.sha256[:12]}.dcm"
    assert archive_files(archive)[row.path] == row.sha256


def test_bulk_resolve_with_filters(conflicts: tuple[Path, dict[int, int]], make_ds: MakeDs) -> None:
    archive, ids = conflicts
    assert resolve_many(archive, "existing", target="NOPE/*") == []
    done = resolve_many(archive, "existing", target=f"*{make_ds(2).SOPInstanceUID}.dcm")
    assert [r.id for r in done] == [ids[2]]
    assert [r.id for r in resolve_many(archive, "both")] == [ids[1]]
    with Manifest(archive) as manifest:
        assert manifest.records("conflict") == []


def test_resolve_usage_errors(conflicts: tuple[Path, dict[int, int]], capsys: pytest.CaptureFixture[str]) -> None:
    archive, ids = conflicts
    with Manifest(archive) as manifest:
        committed = manifest.records("committed")[0].id or 0
    with pytest.raises(UsageError):
        resolve(archive, committed, "staged")
    assert main(["resolve", str(archive), str(committed), "--keep", "staged"]) == 2
    assert main(["resolve", str(archive), "--keep", "staged"]) == 2  # neither an id nor --all
    assert main(["resolve", str(archive), str(ids[1]), "--all", "--keep", "staged"]) == 2
    assert main(["resolve", str(archive), str(ids[1]), "--keep", "newest"]) == 2
    assert main(["resolve", str(archive), str(ids[1]), "--run", "x", "--keep", "both"]) == 2
    capsys.readouterr()
    assert main(["resolve", str(archive), "--all", "--keep", "existing", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


@pytest.mark.parametrize("keep", ["existing", "staged", "both"])
@pytest.mark.parametrize("point", RESOLVE_POINTS)
def test_a_killed_resolve_is_finished_by_a_rerun(
    conflicts: tuple[Path, dict[int, int]], make_ds: MakeDs, keep: Keep, point: str
) -> None:
    archive, ids = conflicts
    target = archive / _target(make_ds(1))
    old = sha256_of(target)
    with Manifest(archive) as manifest:
        staged_sha = manifest.get(ids[1]).sha256
    code = "import sys; from dicomcommit import resolve; resolve(sys.argv[1], int(sys.argv[2]), sys.argv[3])"
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": f"{point}:1"}
    killed = subprocess.run([sys.executable, "-c", code, str(archive), str(ids[1]), keep], env=env, check=False)
    on_path = point != "resolve:after-rename" or keep == "staged"  # only a swap renames
    assert killed.returncode == (-9 if on_path else 0)
    assert target.exists()  # whatever the moment, the target is there
    row = resolve(archive, ids[1], keep)  # the rerun converges
    assert row.resolution == keep
    kept = {"existing": old, "staged": staged_sha, "both": old}[keep]
    assert sha256_of(target) == kept
    assert sha256_of(archive / row.path) == row.sha256
    if keep == "staged":
        assert sha256_of(archive / ".dicomcommit" / "replaced" / f"{old}.dcm") == old
    with Manifest(archive) as manifest:
        assert [r.id for r in manifest.records("conflict")] == [ids[2]]
        assert len(manifest.records("committed", path=row.target)) == 1


def test_review_exports_csv_and_json(
    conflicts: tuple[Path, dict[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    archive, ids = conflicts
    assert main(["review", str(archive), "--format", "csv", "--status", "all"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {"committed", "conflict"}
    assert main(["review", str(archive), "--format", "json"]) == 0
    assert sorted(r["id"] for r in json.loads(capsys.readouterr().out)) == sorted(ids.values())


def test_a_resolved_conflict_is_not_resolved_again_another_way(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    """A stale page or a second reviewer: the first decision stands, the other is refused."""
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    Stager(staging).stage(make_ds(1, variant=1))
    commit(staging, archive)
    with Manifest(archive) as manifest:
        (row,) = manifest.records(Status.CONFLICT)
    resolve(archive, row.id, "both")
    before = archive_files(archive)
    with pytest.raises(UsageError, match="not a conflict any more"):
        resolve(archive, row.id, "staged")
    assert archive_files(archive) == before
    assert resolve(archive, row.id, "both").resolution == "both"  # the same decision again: finishing it is fine
