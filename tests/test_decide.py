"""The decision engine: `decide` alone (a pure function), and the engine's reruns."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Manifest, Stager, Status, commit, ingest
from dicomcommit._fs import Placed
from dicomcommit.committing.decide import (
    Answer,
    File,
    Holder,
    Leave,
    OnConflict,
    Outcome,
    Place,
    Recorded,
    Redescribe,
    Refuse,
    Role,
    Step,
    decide,
    first,
)
from dicomcommit.layout import STATE_DIR
from tests.conftest import settled, write_foreign

MakeDs = Callable[..., Dataset]
TARGET = "P/S/1.dcm"
OURS, OTHER = "a" * 64, "b" * 64
FILE = File("x.dcm", TARGET, OURS)


def walk(answers: list[Answer], on_conflict: OnConflict = "record", file: File = FILE) -> tuple[list[Place], Step]:
    """The places *file* asks for, given the archive's *answers* in turn, and the final step."""
    asked: list[Place] = []
    step: Step = first(file, set_aside_invalid=True)
    for answer in answers:
        assert isinstance(step, Place), f"asked for no name after {asked}"
        asked.append(step)
        step = decide(step, answer, file, on_conflict)
    return asked, step


def test_a_free_target_is_committed() -> None:
    asked, step = walk([Answer(Placed.CREATED)])
    assert [p.rel for p in asked] == [TARGET]
    assert step == Outcome(Status.COMMITTED, TARGET)


@pytest.mark.parametrize("on_conflict", ["record", "suffix", "error"])
def test_identical_bytes_at_the_target_make_a_duplicate_of_their_row(on_conflict: OnConflict) -> None:
    holder = Holder(7, "earlier.dcm", OURS)
    _, step = walk([Answer(Placed.EXISTS, OURS, holder=holder)], on_conflict)
    assert isinstance(step, Outcome)
    assert (step.status, step.path, step.claims) == (Status.DUPLICATE, TARGET, None)


def test_identical_bytes_with_no_row_are_committed_and_claim_a_found_row() -> None:
    _, unrecorded = walk([Answer(Placed.EXISTS, OURS)])
    _, found = walk([Answer(Placed.EXISTS, OURS, holder=Holder(3, "archive:P/S/1.dcm", OURS))])
    assert isinstance(unrecorded, Outcome)
    assert isinstance(found, Outcome)
    assert (unrecorded.status, unrecorded.claims) == (Status.COMMITTED, None)
    assert (found.status, found.claims) == (Status.COMMITTED, 3)


def test_our_own_link_from_a_killed_run_is_committed_once() -> None:
    _, unrecorded = walk([Answer(Placed.SAME_INODE)])
    _, recorded = walk([Answer(Placed.SAME_INODE, holder=Holder(4, "x.dcm", OURS))])
    assert isinstance(unrecorded, Outcome)
    assert isinstance(recorded, Outcome)
    assert unrecorded.status is Status.COMMITTED
    assert (recorded.status, recorded.sha256) == (Status.COMMITTED, OURS)  # same key: recorded once


def test_other_bytes_follow_the_conflict_policy() -> None:
    taken = Answer(Placed.EXISTS, OTHER)
    asked, kept = walk([taken, Answer(Placed.CREATED)], "record")
    assert [p.role for p in asked] == [Role.TARGET, Role.CONFLICT_COPY]
    assert kept == Outcome(Status.CONFLICT, f"{STATE_DIR}/conflicts/{OURS}.dcm",
                           detail="the target holds a different file (sha256 bbbbbbbbbbbb…)",
                           existing_sha256=OTHER)  # fmt: skip
    asked, derived = walk([taken, Answer(Placed.CREATED)], "suffix")
    assert [p.rel for p in asked] == [TARGET, f"P/S/1~{OURS[:12]}.dcm"]
    assert isinstance(derived, Outcome)
    assert (derived.status, derived.existing_sha256) == (Status.COMMITTED, OTHER)
    assert walk([taken], "error")[1] == Refuse(TARGET)


def test_a_derived_name_held_by_other_bytes_falls_back_to_the_conflict_copy() -> None:
    taken = Answer(Placed.EXISTS, OTHER)
    asked, step = walk([taken, Answer(Placed.EXISTS, "c" * 64), Answer(Placed.CREATED)], "suffix")
    assert [p.role for p in asked] == [Role.TARGET, Role.DERIVED, Role.CONFLICT_COPY]
    assert isinstance(step, Outcome)
    assert (step.status, step.existing_sha256) == (Status.CONFLICT, OTHER)  # what holds the *target*


def test_bytes_of_a_recorded_conflict_are_a_duplicate_of_it() -> None:
    _, step = walk([Answer(Placed.EXISTS, OTHER), Answer(Placed.EXISTS, OURS, open_conflict=True)])
    assert isinstance(step, Outcome)
    assert (step.status, step.detail) == (Status.DUPLICATE, "identical to a recorded conflict")


def test_a_file_recorded_by_an_earlier_run_gets_no_second_place() -> None:
    """Its bytes stay where its row keeps them; an open conflict stays one (for review)."""
    derived = f"P/S/1~{OURS[:12]}.dcm"
    kept = f"{STATE_DIR}/conflicts/{OURS}.dcm"
    taken = Answer(Placed.EXISTS, OTHER, recorded=Recorded(derived, Status.COMMITTED))
    asked, step = walk([taken], "record")
    assert len(asked) == 1
    assert isinstance(step, Outcome)
    assert (step.status, step.path) == (Status.DUPLICATE, derived)
    taken = Answer(Placed.EXISTS, OTHER, recorded=Recorded(kept, Status.CONFLICT))
    asked, step = walk([taken], "suffix")
    assert len(asked) == 1
    assert isinstance(step, Outcome)
    assert (step.status, step.path) == (Status.CONFLICT, kept)


def test_under_the_same_policy_a_recorded_file_goes_where_it_went() -> None:
    """A rerun under the policy that kept it finds its earlier place as before (same inode:
    its still-open conflict is reported again)."""
    kept = f"{STATE_DIR}/conflicts/{OURS}.dcm"
    taken = Answer(Placed.EXISTS, OTHER, recorded=Recorded(kept, Status.CONFLICT))
    asked, step = walk([taken, Answer(Placed.SAME_INODE)], "record")
    assert [p.rel for p in asked] == [TARGET, kept]
    assert isinstance(step, Outcome)
    assert (step.status, step.path) == (Status.CONFLICT, kept)


def test_a_journal_line_contradicted_by_the_bytes_is_dropped() -> None:
    lied = File("x.dcm", TARGET, OURS, claimed=OTHER)
    assert walk([Answer(Placed.EXISTS, OTHER)], file=lied)[1] == Redescribe()


def test_an_invalid_file_is_set_aside_from_staging_and_left_in_a_tree() -> None:
    invalid = File("junk", None, OURS, invalid="not DICOM")
    asked, step = walk([Answer(Placed.CREATED)], file=invalid)
    assert asked == [Place(Role.INVALID_COPY, f"{STATE_DIR}/invalid/{OURS}")]
    assert step == Outcome(Status.INVALID, f"{STATE_DIR}/invalid/{OURS}", detail="not DICOM")
    assert first(invalid, set_aside_invalid=False) == Leave("not DICOM")


# -- the engine: reruns under another policy never leave a file no row records -----------------


def unrecorded(archive: Path) -> set[str]:
    """Archive files (conflict copies included) that no manifest row points at."""
    with Manifest(archive) as manifest:
        paths = {r.path for r in manifest.records()}
    files = {str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file()}
    return {
        f for f in files if f not in paths and not f.startswith(f"{STATE_DIR}/manifest") and f != f"{STATE_DIR}/lock"
    }


@pytest.mark.parametrize(("first_policy", "second_policy"), [("suffix", "record"), ("record", "suffix")])
def test_an_ingest_rerun_under_another_policy_records_every_file(
    tmp_path: Path, make_ds: MakeDs, first_policy: OnConflict, second_policy: OnConflict
) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    settled(write_foreign(source / "a.dcm", make_ds(1)), age=7200)  # older: it takes the name
    write_foreign(source / "b.dcm", make_ds(1, variant=1))
    ingest(source, archive, on_conflict=first_policy)
    before = unrecorded(archive)
    rerun = ingest(source, archive, on_conflict=second_policy)
    # kept as a conflict, it is that open conflict again; committed under a derived name, a duplicate
    expected = (0, 1, 1) if first_policy == "record" else (0, 2, 0)
    assert (rerun.committed, rerun.duplicates, rerun.conflicts) == expected
    assert unrecorded(archive) == before == set()


def commit_a_conflict_killed_before_its_unlink(
    staging: Path, archive: Path, make_ds: MakeDs, on_conflict: OnConflict
) -> None:
    """Commit one file, then a different version of it with *on_conflict*, killed once its
    rows are in and before it removes the staged file."""
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    Stager(staging).stage(make_ds(1, variant=1))
    code = "import sys; from dicomcommit import commit; commit(sys.argv[1], sys.argv[2], on_conflict=sys.argv[3])"
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": "commit:after-manifest:1"}
    argv = [sys.executable, "-c", code, str(staging), str(archive), on_conflict]
    assert subprocess.run(argv, env=env, check=False).returncode == -9


def test_a_commit_killed_before_its_unlinks_and_rerun_under_another_policy(
    dirs: tuple[Path, Path], make_ds: MakeDs
) -> None:
    """Killed after its rows were in: the rerun (with --on-conflict record) finds the staged
    file recorded at its derived name, and removes it from staging; nothing new appears."""
    staging, archive = dirs
    commit_a_conflict_killed_before_its_unlink(staging, archive, make_ds, "suffix")
    rerun = commit(staging, archive, on_conflict="record")
    assert (rerun.committed, rerun.duplicates, rerun.conflicts) == (0, 1, 0)
    assert unrecorded(archive) == set()
    assert not [p for p in staging.iterdir() if p.is_file()]


def test_a_commit_killed_before_removing_a_conflict_reports_it_again(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    """The same policy after the kill: the conflict is still open, so the rerun says so (exit 3)."""
    staging, archive = dirs
    commit_a_conflict_killed_before_its_unlink(staging, archive, make_ds, "record")
    rerun = commit(staging, archive)
    assert (rerun.committed, rerun.duplicates, rerun.conflicts) == (0, 0, 1)
    assert rerun.needs_review
    assert [r.status for r in rerun.records] == [Status.CONFLICT]
    assert unrecorded(archive) == set()
