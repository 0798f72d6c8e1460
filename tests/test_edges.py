"""The guarantees at their edges: what an outside tester broke, each case on real files and processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Manifest, Stager, TemplateError, UsageError, commit, ingest, recover
from dicomcommit.cli.main import main
from dicomcommit.naming import parse_template
from dicomcommit.staging.journal import journal_dir
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import (
    archive_files,
    copy_in,
    settled,
    sha256_of,
    staged_files,
    wheel_file,
    write_foreign,
    write_settled,
)

MakeDs = Callable[..., Dataset]


def _target(ds: Dataset) -> str:
    return f"{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def _edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes of *path* without changing its length or inode, as an in-place tool would."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert old in data
    with path.open("r+b") as f:
        f.write(data.replace(old, new))


# --- 1. the journal is a cache: nothing is dropped or named from it unproven ----------------------


def test_a_staged_file_edited_after_staging_is_not_dropped_as_a_duplicate(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    stager.stage(make_ds(1))
    edited = stager.stage(make_ds(1))  # identical, until it is edited in place (same length)
    _edit_in_place(edited, b"Demo^Patient0", b"XXXX^XXXXXXXX")
    edited_sha = sha256_of(edited)
    commit(staging, archive, settle=0)
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert edited_sha in {r.sha256 for r in rows}, "the edited bytes were dropped"
    row = next(r for r in rows if r.sha256 == edited_sha)
    assert row.status == "conflict"
    assert sha256_of(archive / row.path) == edited_sha


def test_an_edited_staged_file_is_named_from_its_bytes_and_recorded_with_their_hash(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    staging, archive = dirs
    staged = Stager(staging).stage(make_ds(1))
    _edit_in_place(staged, b"DEMO0000", b"EDIT0000")  # the PatientID: the name changes too
    commit(staging, archive, settle=0)
    with Manifest(archive) as manifest:
        (row,) = manifest.records()
    assert row.target is not None
    assert row.target.startswith("EDIT0000/")
    assert row.sha256 in (None, sha256_of(archive / row.path))  # never a hash the bytes do not have


def test_a_forged_journal_line_cannot_drop_a_file(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    first = stager.stage(make_ds(1))
    claimed = sha256_of(first)
    commit(staging, archive)
    victim = stager.stage(make_ds(1, variant=1))  # other bytes, same name
    st = victim.stat()
    forged = {"name": victim.name, "sha256": claimed, "size": st.st_size, "durable": True, "ino": st.st_ino,
              "mtime_ns": st.st_mtime_ns, "attrs": {}}  # fmt: skip
    journal = next(journal_dir(staging).glob("*.jsonl"))
    with journal.open("a") as f:
        f.write(json.dumps(forged) + "\n")  # the newest line for the name wins
    victim_sha = sha256_of(victim)
    report = commit(staging, archive, settle=0)  # no stager vouches for it now: a foreign file
    assert report.duplicates == 0
    assert report.conflicts == 1
    with Manifest(archive) as manifest:
        row = manifest.records("conflict")[0]
    assert row.sha256 == victim_sha
    assert sha256_of(archive / row.path) == victim_sha


# --- 2. foreign files that may still be written ------------------------------------------------


def test_a_foreign_file_younger_than_the_settle_time_is_left_for_the_next_run(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    staging, archive = dirs
    fresh = staging / "being-written.dcm"
    write_foreign(fresh, make_ds(1))
    os.utime(fresh)  # modified just now
    report = commit(staging, archive)
    assert report.committed == 0
    assert [name for name, _ in report.left_in_place] == ["being-written.dcm"]
    assert "settle" in report.left_in_place[0][1] or "unchanged" in report.left_in_place[0][1]
    assert fresh.exists()
    assert commit(staging, archive, settle=0).committed == 1


def test_settle_is_a_cli_option(dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]) -> None:
    staging, archive = dirs
    write_foreign(staging / "new.dcm", make_ds(1))
    os.utime(staging / "new.dcm")
    assert main(["commit", str(staging), str(archive), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["left_in_place"][0]["file"] == "new.dcm"
    assert main(["commit", str(staging), str(archive), "--settle", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["committed"] == 1
    assert main(["commit", str(staging), str(archive), "--settle", "nan"]) == 2


def test_a_stagers_own_files_need_no_settle_time(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    assert commit(staging, archive).committed == 1  # complete by construction: taken at once


# --- 3. hard links never let an outside name share an inode with the archive ---------------------


@pytest.mark.parametrize("kind", ["foreign", "staged"])
def test_a_hard_linked_staged_file_is_copied_not_linked(
    tmp_path: Path, dirs: tuple[Path, Path], make_ds: MakeDs, kind: str
) -> None:
    staging, archive = dirs
    if kind == "foreign":
        staged = write_foreign(staging / "linked.dcm", make_ds(1))
    else:
        staged = Stager(staging).stage(make_ds(1))
    outside = tmp_path / "outside.dcm"
    os.link(staged, outside)
    data = outside.read_bytes()
    report = commit(staging, archive)
    assert report.committed == 1
    committed = archive / _target(make_ds(1))
    assert committed.stat().st_ino != outside.stat().st_ino
    assert committed.stat().st_nlink == 1
    outside.write_bytes(b"")  # truncating the outside name leaves the archive alone
    assert committed.read_bytes() == data
    with Manifest(archive) as manifest:
        assert "hard link" in manifest.records()[0].detail


def test_ingest_move_copies_a_hard_linked_source(tmp_path: Path, make_ds: MakeDs) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    original = write_foreign(source / "a.dcm", make_ds(1))
    outside = tmp_path / "outside.dcm"
    os.link(original, outside)
    data = outside.read_bytes()
    assert ingest(source, archive, move=True).committed == 1
    assert not original.exists()
    committed = archive / _target(make_ds(1))
    assert committed.stat().st_ino != outside.stat().st_ino
    outside.write_bytes(b"")
    assert committed.read_bytes() == data


def test_a_rerun_after_a_kill_still_finds_its_own_link(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    """A staged file with two links because a killed commit linked it is ours, not an outside name."""
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    code = "import sys; from dicomcommit import commit; commit(sys.argv[1], sys.argv[2])"
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": "commit:before-manifest:1"}
    killed = subprocess.run([sys.executable, "-c", code, str(staging), str(archive)], env=env, check=False)
    assert killed.returncode == -9
    report = commit(staging, archive)
    assert report.committed == 1
    assert "interrupted earlier run" in report_detail(archive)


def report_detail(archive: Path) -> str:
    with Manifest(archive) as manifest:
        return manifest.records()[0].detail


# --- 4. recover finishes under the template of the run that linked each file --------------------


def test_recover_uses_the_template_of_the_killed_run(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    for i in range(6):
        stager.stage(make_ds(i))
    template = "{PatientID}/{SeriesNumber}/{SOPInstanceUID}.dcm"
    code = "import sys; from dicomcommit import commit; commit(sys.argv[1], sys.argv[2], template=sys.argv[3])"
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": "commit:before-manifest:1"}
    cmd = [sys.executable, "-c", code, str(staging), str(archive), template]
    assert subprocess.run(cmd, env=env, check=False).returncode == -9
    report = recover(archive, staging)  # as the README documents it: no --template
    assert len(report.finished) == 6
    files = archive_files(archive)
    assert len(files) == 6
    assert all(rel.count("/") == 2 for rel in files), files  # the run's layout, not the default's
    with Manifest(archive) as manifest:
        assert {r.status for r in manifest.records()} == {"committed"}
        assert len(manifest.records()) == 6


# --- 5. names that are not UTF-8 ----------------------------------------------------------------


def test_a_name_that_is_not_utf8_is_committed_recorded_and_shown(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    name = os.fsdecode(b"caf\xe9.dcm")
    write_foreign(staging / name, make_ds(1))
    write_foreign(staging / os.fsdecode(b"dup\xff.dcm"), make_ds(1, variant=1))  # a conflict: reviewed by name
    report = commit(staging, archive)
    assert (report.committed, report.conflicts) == (1, 1)
    assert staged_files(staging) == []
    with Manifest(archive) as manifest:
        sources = sorted(r.source for r in manifest.records())
    assert sources == sorted([name, os.fsdecode(b"dup\xff.dcm")])  # lossless
    assert commit(staging, archive).committed == 0  # a rerun is not blocked
    assert main(["review", str(archive), "--status", "all"]) == 0
    assert main(["review", str(archive), "--format", "json"]) == 0
    assert "\\udcff" in capsys.readouterr().out  # JSON keeps the byte, escaped
    with Manifest(archive) as manifest:
        conflict = manifest.records("conflict")[0]
    assert main(["show", str(archive), str(conflict.id)]) == 0
    assert "dup\\xff.dcm" in capsys.readouterr().out


# --- smaller defects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template", ["{PatientID}/{SOPInstanceUID:.0}", "{SOPInstanceUID:>2000000000}", "{SOPInstanceUID:.5s}"]
)
def test_format_specs_that_drop_the_value_or_overflow_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_numeric_format_specs_still_work() -> None:
    template = parse_template("{SeriesNumber:03d}/{InstanceNumber:05d}_{SOPInstanceUID}.dcm")
    assert template.render({"SeriesNumber": 2, "InstanceNumber": "7", "SOPInstanceUID": "1.2"}) == "002/00007_1.2.dcm"


def test_a_copy_placed_but_not_recorded_is_recorded_as_committed_on_the_rerun(tmp_path: Path, make_ds: MakeDs) -> None:
    """Copy mode after a failure between placing and recording (a full disk, a kill): the rerun
    finds identical bytes at each target with no row, and records them as committed, not as
    duplicates of nothing."""
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    for i in range(3):
        write_foreign(source / f"{i}.dcm", make_ds(i))
    code = "import sys; from dicomcommit import ingest; ingest(sys.argv[1], sys.argv[2])"
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": "commit:before-manifest:1"}
    assert (
        subprocess.run([sys.executable, "-c", code, str(source), str(archive)], env=env, check=False).returncode == -9
    )
    report = ingest(source, archive)
    assert (report.committed, report.duplicates) == (3, 0)
    with Manifest(archive) as manifest:
        committed = {r.path for r in manifest.records("committed")}
    assert committed == set(archive_files(archive))
    again = ingest(source, archive)
    assert (again.committed, again.duplicates) == (0, 3)


def test_needs_review_entries_carry_their_manifest_ids_and_times(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    stager.stage(make_ds(1))
    stager.stage(make_ds(1, variant=1))
    (staging / "junk.bin").write_bytes(b"junk")
    settled(staging / "junk.bin")
    assert main(["commit", str(staging), str(archive), "--json"]) == 3
    entries = json.loads(capsys.readouterr().out)["needs_review"]
    assert len(entries) == 2
    with Manifest(archive) as manifest:
        rows = {r.id: r for r in manifest.records()}
    for entry in entries:
        assert entry["id"] in rows
        assert entry["time"] == rows[entry["id"]].time != ""


def test_an_ingest_dry_run_records_sources_as_the_real_run_does(tmp_path: Path, make_ds: MakeDs) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    write_foreign(source / "a.dcm", make_ds(1))
    planned = ingest(source, archive, dry_run=True)
    ingest(source, archive)
    with Manifest(archive) as manifest:
        (row,) = manifest.records()
    assert planned.records[0].source == row.source


def test_a_damaged_manifest_says_how_to_rebuild_and_recover_rebuilds_it(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    for i in range(3):
        stager.stage(make_ds(i))
    stager.stage(make_ds(1, variant=1))
    commit(staging, archive)
    manifest_file = archive / ".dicomcommit" / "manifest.sqlite"
    manifest_file.write_bytes(b"this is not an SQLite database" * 100)
    (archive / ".dicomcommit" / "manifest.sqlite-wal").unlink(missing_ok=True)
    stager.stage(make_ds(5))
    assert main(["commit", str(staging), str(archive)]) == 1
    err = capsys.readouterr().err
    assert "damaged" in err
    assert "--rebuild-manifest" in err
    assert "rerunning resumes" not in err
    assert len(staged_files(staging)) == 1  # nothing taken
    assert main(["recover", str(archive), str(staging), "--rebuild-manifest"]) in (0, 3)
    kept = list((archive / ".dicomcommit").glob("manifest.sqlite.damaged-*"))
    assert kept
    assert kept[0].read_bytes().startswith(b"this is not")
    with Manifest(archive) as manifest:
        rows = manifest.records()
    assert sorted(r.path for r in rows if r.status == "committed") == sorted(archive_files(archive))
    (conflict,) = [r for r in rows if r.status == "conflict"]
    assert conflict.target == _target(make_ds(1))
    assert commit(staging, archive).committed == 1


def _stage_many_child(staging: str, count: int) -> None:
    with Stager(staging) as stager:
        for start in range(0, count, 50):
            stager.stage_many(synthetic_dataset("1.2.826.0.1.3680043.10.1234", i) for i in range(start, start + 50))


def test_recover_never_takes_a_part_file_a_live_stager_will_still_publish(dirs: tuple[Path, Path]) -> None:
    """recover --part-age 0 racing live stage_many calls: the .part files they have written
    and closed, but not yet renamed, are theirs; recover must neither take them nor fail."""
    staging, archive = dirs
    archive.mkdir()
    child = multiprocessing.get_context("fork").Process(target=_stage_many_child, args=(str(staging), 400))
    child.start()
    seen_parts = moved = 0
    while child.is_alive():
        report = recover(archive, staging, part_age=0)
        seen_parts += len(report.parts_left)
        moved += len(report.parts_moved)
    child.join()
    assert child.exitcode == 0
    assert moved == 0
    assert seen_parts > 0  # the race was real: recover saw live .part files and left them
    assert commit(staging, archive).committed == 400


# --- found by the random-kill torture -------------------------------------------------------------


def _killed(code: str, point: str, *args: str) -> None:
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": point}
    result = subprocess.run([sys.executable, "-c", code, *args], env=env, check=False, capture_output=True)
    assert result.returncode == -9, result.stderr.decode()[-2000:]


def _one_committed_row_per_file(archive: Path) -> None:
    with Manifest(archive) as manifest:
        committed = [r.path for r in manifest.records("committed")]
    assert sorted(committed) == sorted(archive_files(archive))  # each file exactly once


def test_a_killed_ingest_move_then_recover_then_rerun_records_each_file_once(tmp_path: Path, make_ds: MakeDs) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    for i in range(4):
        write_foreign(source / f"{i}.dcm", make_ds(i))
    code = "import sys; from dicomcommit import ingest; ingest(sys.argv[1], sys.argv[2], move=True)"
    _killed(code, "commit:after-link:2", str(source), str(archive))
    recover(archive, part_age=0)  # records the linked files it finds in the archive
    ingest(source, archive, move=True)
    assert list(source.iterdir()) == []
    _one_committed_row_per_file(archive)
    assert not recover(archive, check=True).needs_attention


def test_a_rerun_after_the_manifest_but_before_the_unlink_records_nothing_twice(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    """Even when the staged file's journal line no longer describes it (its mtime touched)."""
    staging, archive = dirs
    stager = Stager(staging)
    for i in range(3):
        stager.stage(make_ds(i))
    code = "import sys; from dicomcommit import commit; commit(sys.argv[1], sys.argv[2])"
    _killed(code, "commit:after-manifest:1", str(staging), str(archive))
    for path in staged_files(staging):
        settled(path)  # touched: the journal's identity no longer matches
    commit(staging, archive, settle=0)
    assert staged_files(staging) == []
    with Manifest(archive) as manifest:
        sources = [r.source for r in manifest.records()]
    assert len(sources) == len(set(sources)) == 3
    _one_committed_row_per_file(archive)


def _two_conflicts(staging: Path, archive: Path, make_ds: MakeDs) -> None:
    """One conflict, staged twice: the second copy is a duplicate of the kept conflict."""
    stager = Stager(staging)
    stager.stage(make_ds(1))
    commit(staging, archive)
    stager.stage(make_ds(1, variant=1))
    stager.stage(make_ds(1, variant=1))
    stager.stage(make_ds(2))
    commit(staging, archive)
    stager.stage(make_ds(2, variant=1))
    commit(staging, archive)


@pytest.mark.parametrize("keep", ["existing", "staged", "both"])
def test_duplicates_of_a_conflict_follow_its_bytes_when_it_is_resolved(
    dirs: tuple[Path, Path], make_ds: MakeDs, keep: str
) -> None:
    staging, archive = dirs
    _two_conflicts(staging, archive, make_ds)
    assert main(["resolve", str(archive), "--all", "--keep", keep]) == 0
    with Manifest(archive) as manifest:
        duplicates = manifest.records("duplicate")
    assert duplicates
    for row in duplicates:
        assert sha256_of(archive / row.path) == row.sha256
    assert not recover(archive, check=True).needs_attention


@pytest.mark.parametrize("keep", ["existing", "both"])
def test_rerunning_an_interrupted_resolve_all_finishes_it(dirs: tuple[Path, Path], make_ds: MakeDs, keep: str) -> None:
    staging, archive = dirs
    _two_conflicts(staging, archive, make_ds)
    code = f"import sys; from dicomcommit import resolve_many; resolve_many(sys.argv[1], {keep!r})"
    _killed(code, "resolve:after-manifest:1", str(archive))
    assert main(["resolve", str(archive), "--all", "--keep", keep]) == 0
    assert list((archive / ".dicomcommit" / "conflicts").iterdir()) == []
    assert not recover(archive, check=True).needs_attention


def test_recover_finishes_a_keep_staged_killed_after_its_rename(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    _two_conflicts(staging, archive, make_ds)
    code = "import sys; from dicomcommit import resolve_many; resolve_many(sys.argv[1], 'staged')"
    _killed(code, "resolve:after-rename:1", str(archive))
    report = recover(archive)
    assert report.resolves_finished
    assert (report.missing, report.mismatched) == ([], [])
    assert not recover(archive, check=True).needs_attention
    with Manifest(archive) as manifest:
        assert manifest.records("committed", path=_target(make_ds(1)))[0].resolution == "staged"


# --- 2 and 6. incomplete files and junk behind a preamble are never final files -------------------


def _file_meta_only() -> bytes:
    data = wheel_file("CT_small.dcm").read_bytes()
    (length,) = struct.unpack_from("<I", data, 140)  # (0002,0000) group length, UL
    return data[: 144 + length]


def _junk() -> dict[str, bytes]:
    preamble = b"\0" * 128 + b"DICM"
    return {
        "random.dcm": preamble + random.Random(1).randbytes(4000),
        "zeros.dcm": preamble + b"\0" * 4000,
        "text.dcm": preamble + b"hello, this is not a data set at all\n" * 100,
        "meta-only.dcm": _file_meta_only(),
        "meta-then-random.dcm": _file_meta_only() + random.Random(2).randbytes(3000),
    }


def test_truncated_foreign_files_are_invalid_with_the_byte_they_end_at(dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    ct = wheel_file("CT_small.dcm").read_bytes()
    write_settled(staging / "third.dcm", ct[: len(ct) // 3])
    write_settled(staging / "almost.dcm", ct[:-1])
    copy_in("MR_truncated.dcm", staging)  # pydicom's own file, cut in its pixel data
    report = commit(staging, archive)
    assert (report.committed, report.invalid) == (0, 3)
    with Manifest(archive) as manifest:
        rows = {r.source: r for r in manifest.records()}
    assert rows["almost.dcm"].detail == f"truncated at byte {len(ct) - 1} of {len(ct)}"
    assert rows["third.dcm"].detail.startswith(f"truncated at byte {len(ct) // 3} of ")
    assert rows["MR_truncated.dcm"].detail == "truncated at byte 9630 of 9692"
    assert archive_files(archive) == {}  # nothing at a final name
    assert not recover(archive, verify=True).needs_attention


def test_junk_behind_a_valid_preamble_is_invalid(dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    for name, data in _junk().items():
        write_settled(staging / name, data)
    planned = commit(staging, archive, dry_run=True)
    report = commit(staging, archive)
    assert (report.committed, report.conflicts, report.invalid) == (0, 0, len(_junk()))
    assert planned.counts() == report.counts()
    assert archive_files(archive) == {}
    with Manifest(archive) as manifest:
        details = {r.source: r.detail for r in manifest.records()}
    assert details["meta-only.dcm"] == "no data set after the File Meta"
    assert all(details.values())


def test_ingest_leaves_incomplete_files_and_junk_in_the_source(tmp_path: Path) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    for name, data in _junk().items():
        (source / name).write_bytes(data)
    ct = wheel_file("CT_small.dcm").read_bytes()
    (source / "cut.dcm").write_bytes(ct[: len(ct) // 2])
    shutil.copyfile(wheel_file("CT_small.dcm"), source / "whole.dcm")
    for jobs in (1, 2):
        report = ingest(source, archive, jobs=jobs)
        left = dict(report.left_in_place)
        assert set(left) == {*_junk(), "cut.dcm"}
        assert left["cut.dcm"].startswith(f"truncated at byte {len(ct) // 2} of ")
    assert sorted(p.name for p in source.iterdir()) == sorted([*_junk(), "cut.dcm", "whole.dcm"])
    assert len(archive_files(archive)) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_the_api_refuses_durations_that_are_not_seconds(dirs: tuple[Path, Path], bad: float) -> None:
    staging, archive = dirs
    with pytest.raises(UsageError):
        commit(staging, archive, settle=bad)
    with pytest.raises(UsageError):
        commit(staging, archive, dry_run=True, lock_timeout=bad)
    archive.mkdir()
    with pytest.raises(UsageError):
        recover(archive, staging, part_age=bad)


@pytest.mark.parametrize(("keep", "point"), [("both", "resolve:after-link:1"), ("existing", "resolve:after-link:1")])
def test_recover_finishes_a_resolve_killed_after_it_placed_the_copy(
    dirs: tuple[Path, Path], make_ds: MakeDs, keep: str, point: str
) -> None:
    """recover must not record the copy a killed resolve made as a new archive file (a second
    committed row once resolve is rerun): it finishes the decision instead."""
    staging, archive = dirs
    _two_conflicts(staging, archive, make_ds)
    code = f"import sys; from dicomcommit import resolve_many; resolve_many(sys.argv[1], {keep!r})"
    _killed(code, point, str(archive))
    report = recover(archive)
    assert report.resolves_finished
    assert report.rows_added == []
    assert main(["resolve", str(archive), "--all", "--keep", keep]) == 0
    _one_committed_row_per_file(archive)
    assert not recover(archive, check=True).needs_attention


def test_ingest_move_waits_for_files_still_being_written(tmp_path: Path, make_ds: MakeDs) -> None:
    """An incoming folder a receiver still writes into: --move must not take (and unlink) a
    file that may still grow; a copy takes files as they are unless asked to wait."""
    source, archive = tmp_path / "incoming", tmp_path / "archive"
    source.mkdir()
    write_foreign(source / "old.dcm", make_ds(1))
    fresh = source / "growing.dcm"
    write_foreign(fresh, make_ds(2))
    os.utime(fresh)  # just written
    report = ingest(source, archive, move=True)
    assert report.committed == 1
    assert [name for name, _ in report.left_in_place] == ["growing.dcm"]
    assert fresh.exists()
    assert ingest(source, archive, move=True, settle=0).committed == 1
    assert main(["ingest", str(source), str(archive), "--settle", "-1"]) == 2


# --- found by review ----------------------------------------------------------------------------


def test_recover_leaves_a_hard_linked_foreign_file_to_commit(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    """A second link outside the archive is not a killed commit's: recover does not take it."""
    staging, archive = dirs
    archive.mkdir()
    young = staging / "young.dcm"
    write_foreign(young, synthetic_dataset("1.2.826.0.1.3680043.10.1234", 1))
    os.utime(young)
    os.link(young, tmp_path / "elsewhere.dcm")
    report = recover(archive, staging)
    assert report.finished == []
    assert young.exists()
    assert archive_files(archive) == {}


def test_recover_after_a_killed_suffix_commit_commits_under_the_derived_name(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    stager.stage(make_ds(1))
    commit(staging, archive)
    stager.stage(make_ds(1, variant=1))
    code = "import sys; from dicomcommit import commit; commit(sys.argv[1], sys.argv[2], on_conflict='suffix')"
    _killed(code, "commit:before-manifest:1", str(staging), str(archive))
    recover(archive, staging)
    with Manifest(archive) as manifest:
        assert manifest.records("conflict") == []
        rows = manifest.records("committed")
    assert len(rows) == 2
    assert any("~" in r.path for r in rows)
    _one_committed_row_per_file(archive)
    assert not recover(archive, staging, check=True).needs_attention


def test_keep_staged_moves_the_duplicates_of_the_replaced_file_with_it(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    staging, archive = dirs
    stager = Stager(staging)
    stager.stage(make_ds(1))
    commit(staging, archive)
    stager.stage(make_ds(1))  # a duplicate of the file about to be replaced
    stager.stage(make_ds(1, variant=1))
    commit(staging, archive)
    assert main(["resolve", str(archive), "--all", "--keep", "staged"]) == 0
    with Manifest(archive) as manifest:
        (duplicate,) = manifest.records("duplicate")
    assert duplicate.path.startswith(".dicomcommit/replaced/")
    assert sha256_of(archive / duplicate.path) == duplicate.sha256
    assert not recover(archive, verify=True, check=True).needs_attention


def test_recover_copies_an_abandoned_part_file_with_other_links(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    archive.mkdir()
    part = staging / "tool-output.dcm.part"
    part.write_bytes(b"half a file")
    os.link(part, tmp_path / "outside")
    report = recover(archive, staging, part_age=0)
    assert report.parts_moved == ["tool-output.dcm.part"]
    (kept,) = (archive / ".dicomcommit" / "invalid").iterdir()
    assert kept.stat().st_ino != (tmp_path / "outside").stat().st_ino
    assert kept.stat().st_nlink == 1


def test_a_template_that_is_not_utf8_is_recorded_not_a_traceback(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    template = os.fsdecode(b"caf\xe9/{SOPInstanceUID}.dcm")
    assert main(["commit", str(staging), str(archive), "--template", template]) == 0
    with Manifest(archive) as manifest:
        assert manifest.run_templates() == [template]
    assert len(archive_files(archive)) == 1


def test_a_format_spec_that_overflows_renders_the_plain_value() -> None:
    template = parse_template("{InstanceNumber:c}/{SOPInstanceUID}.dcm")
    assert template.render({"InstanceNumber": 2_000_000, "SOPInstanceUID": "1.2"}) == "2000000/1.2.dcm"


@pytest.mark.parametrize("spec", ["g", "d", "e", ".2f", "%"])
def test_a_uid_is_never_formatted_as_a_number(spec: str) -> None:
    with pytest.raises(TemplateError, match=r"text value as a number|cut the value"):
        parse_template(f"{{SOPInstanceUID:{spec}}}")


def test_a_decision_recorded_but_not_carried_out_is_shown_as_such_and_finished_by_recover(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    _two_conflicts(staging, archive, make_ds)
    code = "import sys; from dicomcommit import resolve_many; resolve_many(sys.argv[1], 'existing')"
    _killed(code, "resolve:after-link:1", str(archive))
    with Manifest(archive) as manifest:
        pending = [r for r in manifest.records("conflict") if r.resolution is not None]
    assert pending  # the decision is in the manifest before any file was touched
    assert main(["show", str(archive), str(pending[0].id)]) == 0
    assert "not carried out yet" in capsys.readouterr().out
    assert main(["resolve", str(archive), str(pending[0].id), "--keep", "both"]) == 2  # not another decision
    report = recover(archive)
    assert len(report.resolves_finished) == len(pending)
    with Manifest(archive) as manifest:
        assert all(manifest.get(r.id or 0).status == "resolved" for r in pending)
    assert not recover(archive, check=True).needs_attention
