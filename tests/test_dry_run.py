"""A dry run predicts exactly what the real run then does, and changes nothing.

For commit and for ingest (copying and moving), in each on_conflict mode: a dry run, then
the real run on the same state. The dry report's records and the manifest rows of the real
run must be the same outcomes, file by file: (source, status, target, path). The counts
and the files left in place must agree too, and the dry run must leave every byte, name,
inode and mtime below the test's directory as it found them (SQLite's side files of the
manifest aside). With on_conflict="error", the dry run raises ConflictError where the real
run does, for the same file, and what the real run recorded before it is what a dry run
with "record" predicted before it. Every file a real run creates in the archive has a row.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dicomcommit import CommitReport, ConflictError, Manifest, NewRecord, Record, Stager, Status, commit, ingest
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT, settled, sha256_of, write_foreign, write_settled

OnConflict = Literal["record", "suffix", "error"]
Entry = Literal["commit", "ingest", "ingest-move"]
Kind = Literal["staged", "foreign", "truncated", "junk"]
Outcome = tuple[str, str, str | None, str]  # (source, status, target, path)

ENTRIES: tuple[Entry, ...] = ("commit", "ingest", "ingest-move")
ON_CONFLICT: tuple[OnConflict, ...] = ("record", "suffix", "error")
LONG_SETTLE = 600.0  # files written during the test are younger; backdated ones (an hour) older
FOLDERS = ("", "sub/", "sub/deeper/", ".hidden/")


# -- the trees ------------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """One file put into the staging directory (or the ingest source) before a run.

    ``staged``: written by a Stager (with its journal, under *folder*); ``foreign``: the
    dataset written as another tool would; ``truncated``: the same, cut short; ``junk``:
    bytes that are not DICOM. *fresh*: written just now rather than an hour ago (only a
    settle time longer than its age leaves it in place; staged files are always fresh).
    """

    kind: Kind
    index: int
    variant: int
    folder: str
    fresh: bool
    junk: bytes


@dataclass(frozen=True)
class Round:
    """Files to add, then a dry run and the real run, both with *on_conflict* (the test's
    own policy replaces it in the last round: earlier rounds leave an archive behind)."""

    files: tuple[File, ...]
    on_conflict: OnConflict


@dataclass(frozen=True)
class Scenario:
    rounds: tuple[Round, ...]
    settle: float


files = st.builds(
    File,
    # staged and foreign files twice as often: they are the ones that meet at a name
    kind=st.sampled_from(("staged", "foreign", "staged", "foreign", "truncated", "junk")),
    index=st.integers(0, 2),  # few instances: duplicates and conflicts are common
    variant=st.sampled_from((0, 1)),
    folder=st.sampled_from(FOLDERS),
    fresh=st.booleans(),
    junk=st.binary(max_size=40),
)
rounds = st.builds(Round, files=st.lists(files, max_size=6).map(tuple), on_conflict=st.sampled_from(ON_CONFLICT))
scenarios = st.builds(
    Scenario,
    rounds=st.lists(rounds, min_size=1, max_size=3).map(tuple),
    settle=st.sampled_from((0.0, LONG_SETTLE)),
)


def place(root: Path, round_no: int, batch: Iterable[File]) -> None:
    """Write *batch* into *root* (names unique across rounds: a source is never reused)."""
    for n, file in enumerate(batch):
        folder = root / file.folder
        folder.mkdir(parents=True, exist_ok=True)
        ds = synthetic_dataset(ROOT, file.index, file.variant)
        path = folder / f"r{round_no}f{n}.dcm"
        if file.kind == "staged":
            with Stager(folder, durable=False) as stager:
                stager.stage(ds)
            continue
        if file.kind == "foreign":
            write_foreign(path, ds)
        elif file.kind == "truncated":
            write_foreign(path, ds)
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 2 // 3])
        else:
            path.write_bytes(file.junk)
        if not file.fresh:
            settled(path)
        elif file.kind == "foreign":
            os.utime(path)  # write_foreign backdates; this one was written just now


# -- running and comparing ---------------------------------------------------------------


def run(
    entry: Entry, tree: Path, archive: Path, *, on_conflict: OnConflict, settle: float, dry_run: bool
) -> CommitReport:
    if entry == "commit":
        return commit(tree, archive, on_conflict=on_conflict, settle=settle, dry_run=dry_run, durable=False)
    return ingest(tree, archive, move=entry == "ingest-move", on_conflict=on_conflict, settle=settle,
                  dry_run=dry_run, durable=False)  # fmt: skip


# A dry run reads the manifest as `review` does: SQLite may create and remove the WAL and
# shared-memory files beside it (and so touch its directory's mtime), and nothing else.
_SQLITE_SIDE_FILES = ("manifest.sqlite-wal", "manifest.sqlite-shm")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything below *root*: each entry's type, inode, size, mtime and bytes (or link);
    of the archive's state directory, its entries only (see _SQLITE_SIDE_FILES)."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            if name in _SQLITE_SIDE_FILES:
                continue
            path = Path(dirpath, name)
            if name == ".dicomcommit" and (path / "manifest.sqlite").exists():
                seen[str(path.relative_to(root))] = ("state directory",)
                continue
            st_ = path.lstat()
            if path.is_symlink():
                content: object = os.readlink(path)
            elif path.is_file():
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            seen[str(path.relative_to(root))] = (st_.st_mode, st_.st_ino, st_.st_size, st_.st_mtime_ns, content)
    return seen


def outcome(record: Record | NewRecord) -> Outcome:
    return (record.source, record.status, record.target, record.path)


def ordered(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """A sorted list (a multiset): None sorts as the empty string."""
    return sorted(outcomes, key=lambda o: tuple("" if v is None else v for v in o))


def manifest_rows(archive: Path) -> list[Record]:
    if not (archive / ".dicomcommit" / "manifest.sqlite").exists():
        return []
    with Manifest(archive) as manifest:
        return manifest.records()


def archive_paths(archive: Path) -> set[str]:
    """The files of the archive, relative to it, but for the manifest and the lock."""
    if not archive.exists():
        return set()
    state = {".dicomcommit/lock", ".dicomcommit/manifest.sqlite", *(f".dicomcommit/{n}" for n in _SQLITE_SIDE_FILES)}
    return {str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file()} - state


def assert_recorded(created: set[str], new_rows: list[Record]) -> None:
    """Every file the real run created in the archive is the path of one of its rows."""
    unrecorded = sorted(created - {r.path for r in new_rows})
    assert not unrecorded, f"the real run created files no row of it records: {unrecorded}"


def real_outcomes(
    new_rows: list[Record], earlier: list[Record], sources: Iterable[str], reported: Iterable[Record | NewRecord] = ()
) -> list[Outcome]:
    """The outcomes of the real run: its manifest rows, and for each file of *sources* that has
    none, the earlier row with its source, as a duplicate. The manifest records nothing twice:
    a file ingested again that hashes to its own earlier row is counted as a duplicate, and
    its row stays the earlier one; unless the real run *reported* that earlier row (an open
    conflict it met again), then it is that conflict."""
    found = [outcome(r) for r in new_rows]
    recorded = {r.source for r in new_rows}
    again = {r.id for r in reported if isinstance(r, Record) and r.status is Status.CONFLICT}
    for source in sources:
        if source in recorded:
            continue
        before = [r for r in earlier if r.source == source]
        if before:
            row = before[-1]
            found.append(outcome(row if row.id in again else replace(row, status=Status.DUPLICATE)))
    return found


def assert_same_outcomes(predicted: list[Outcome], found: list[Outcome]) -> None:
    """The two multisets are equal; else the message lists what only each side has."""
    only_dry, only_real = Counter(predicted) - Counter(found), Counter(found) - Counter(predicted)
    lines = [f"  dry run only: {o}" for o in ordered(only_dry.elements())]
    lines += [f"  real run only: {o}" for o in ordered(only_real.elements())]
    assert not lines, "(source, status, target, path) of the dry run and of the real run differ:\n" + "\n".join(lines)


def check_stop(predicted: ConflictError, entry: Entry, tree: Path, archive: Path, *, settle: float) -> None:
    """on_conflict="error": the dry run stopped; the real run stops at the same file, with
    everything before it committed and recorded as a dry run that records conflicts says
    (up to that file, the two policies are the same), and the conflicting file still there."""
    before = snapshot(tree.parent)
    rehearsal = run(entry, tree, archive, on_conflict="record", settle=settle, dry_run=True)
    assert snapshot(tree.parent) == before, "the dry run changed files"
    earlier, files_before = manifest_rows(archive), archive_paths(archive)
    with pytest.raises(ConflictError) as stopped:
        run(entry, tree, archive, on_conflict="error", settle=settle, dry_run=False)
    # the dry run stops where the real run stops, at the same file
    assert (stopped.value.staged, stopped.value.target) == (predicted.staged, predicted.target)
    assert Path(stopped.value.staged).exists(), "the conflicting file is no longer where it was"
    where = [str(tree / r.source) if entry == "commit" else r.source for r in rehearsal.records]
    assert stopped.value.staged in where, "the file the run stopped at is not among the dry run's outcomes"
    done = [outcome(r) for r in rehearsal.records[: where.index(stopped.value.staged)]]
    earlier_ids = {r.id for r in earlier}
    new_rows = [r for r in manifest_rows(archive) if r.id not in earlier_ids]
    assert_recorded(archive_paths(archive) - files_before, new_rows)
    assert_same_outcomes(done, real_outcomes(new_rows, earlier, [source for source, *_ in done]))


def check_round(entry: Entry, tree: Path, archive: Path, *, on_conflict: OnConflict, settle: float) -> None:
    """A dry run, then the real run: the dry run changed nothing and predicted the real one."""
    top = tree.parent
    before = snapshot(top)
    predicted_stop: ConflictError | None = None
    try:
        dry = run(entry, tree, archive, on_conflict=on_conflict, settle=settle, dry_run=True)
    except ConflictError as exc:
        predicted_stop = exc
    assert snapshot(top) == before, "the dry run changed files"
    if predicted_stop is not None:
        check_stop(predicted_stop, entry, tree, archive, settle=settle)
        return
    assert dry.dry_run
    predicted = [outcome(r) for r in dry.records]
    assert len(predicted) == dry.committed + dry.duplicates + dry.conflicts + dry.invalid, dry.records
    earlier, files_before = manifest_rows(archive), archive_paths(archive)
    real = run(entry, tree, archive, on_conflict=on_conflict, settle=settle, dry_run=False)  # no ConflictError
    with Manifest(archive) as manifest:
        new_rows = manifest.records(run=real.run)
    assert_recorded(archive_paths(archive) - files_before, new_rows)
    prefix = "" if entry == "commit" else f"{tree}/"
    left = {prefix + name for name, _ in real.left_in_place}
    taken = [source for source, *_ in predicted if source not in left]
    assert dry.counts() == real.counts(), f"counts: dry run {dry.counts()}, real run {real.counts()}"
    found = real_outcomes(new_rows, earlier, taken, real.records)
    assert len(found) == real.committed + real.duplicates + real.conflicts + real.invalid
    assert_same_outcomes(predicted, found)
    assert sorted(n for n, _ in dry.left_in_place) == sorted(n for n, _ in real.left_in_place)


# -- the property -------------------------------------------------------------------------


@pytest.mark.parametrize("on_conflict", ON_CONFLICT)
@pytest.mark.parametrize("entry", ENTRIES)
# No shrink phase: each example runs real commits, and shrinking a failure takes minutes per
# parametrization. A failure is reported as generated; its message lists only the outcomes
# that differ. (To shrink one, add Phase.shrink and run that parametrization alone.)
@settings(
    max_examples=40,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(scenario=scenarios)
def test_a_dry_run_predicts_the_real_run(entry: Entry, on_conflict: OnConflict, scenario: Scenario) -> None:
    """Every round is checked; *on_conflict* is the last round's policy, the rounds before
    it (which leave committed files, kept conflicts and derived names behind) draw theirs."""
    with tempfile.TemporaryDirectory() as tmp:
        tree, archive = Path(tmp, "staging" if entry == "commit" else "source"), Path(tmp, "archive")
        tree.mkdir()
        for round_no, batch in enumerate(scenario.rounds):
            place(tree, round_no, batch.files)
            policy = on_conflict if round_no == len(scenario.rounds) - 1 else batch.on_conflict
            check_round(entry, tree, archive, on_conflict=policy, settle=scenario.settle)


# -- named cases ----------------------------------------------------------------------------


def test_suffix_mode_predicts_the_derived_name_of_a_conflict(tmp_path: Path) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    Stager(staging).stage(synthetic_dataset(ROOT, 2))
    commit(staging, archive)
    other = Stager(staging).stage(synthetic_dataset(ROOT, 2, variant=1))
    ds = synthetic_dataset(ROOT, 2)
    target = f"{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    derived = target.removesuffix(".dcm") + f"~{sha256_of(other)[:12]}.dcm"
    plan = commit(staging, archive, on_conflict="suffix", dry_run=True)
    assert [outcome(r) for r in plan.records] == [(other.name, "committed", target, derived)]
    check_round("commit", staging, archive, on_conflict="suffix", settle=0)


@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_an_ingest_dry_run_on_a_tree_with_a_journal(tmp_path: Path, move: bool) -> None:
    """A tree that was a staging directory once, journal and all: ingest names its files from
    their own headers and leaves the journal's files (not DICOM) in place; with --move, files
    younger than the settle time (the staged ones, just written) stay for a later run. The dry
    run must say the same."""
    source, archive = tmp_path / "source", tmp_path / "archive"
    with Stager(source) as stager:
        for index, variant in [(1, 0), (2, 0), (2, 0)]:
            stager.stage(synthetic_dataset(ROOT, index, variant))
    journal = source / ".dicomcommit" / "journal"
    (journal / "0123456789abcdef0123456789abcdef.jsonl").write_text('{"name":"elsewhere.dcm","sha256":"00"}\n')
    (source / "a").mkdir()
    write_foreign(source / "a" / "b.dcm", synthetic_dataset(ROOT, 3))
    journals = sorted(journal.iterdir())
    assert len(journals) == 2
    entry: Entry = "ingest-move" if move else "ingest"
    check_round(entry, source, archive, on_conflict="record", settle=2.0 if move else 0.0)
    assert all(p.exists() for p in journals)


@pytest.mark.parametrize(("first", "then"), [("suffix", "record"), ("record", "suffix")])
def test_an_ingest_rerun_under_another_policy(tmp_path: Path, first: OnConflict, then: OnConflict) -> None:
    """Ingest copies, so a rerun meets its own earlier outcomes: a file committed under a
    derived name (suffix) or kept as a conflict (record), ingested again under the other
    policy, then under "error"."""
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    write_foreign(source / "first.dcm", synthetic_dataset(ROOT, 1))
    settled(write_foreign(source / "second.dcm", synthetic_dataset(ROOT, 1, variant=1)), age=1800)  # scanned after
    for on_conflict in (first, then, "error"):
        check_round("ingest", source, archive, on_conflict=on_conflict, settle=0)


def test_error_mode_stops_the_dry_run_where_the_real_run_stops(tmp_path: Path) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    Stager(staging).stage(synthetic_dataset(ROOT, 1))
    commit(staging, archive)
    stager = Stager(staging)
    for index, variant in [(2, 0), (1, 1), (3, 0)]:  # staged in this order, committed in it
        stager.stage(synthetic_dataset(ROOT, index, variant))
    with pytest.raises(ConflictError) as planned:
        commit(staging, archive, on_conflict="error", dry_run=True)
    assert f"{ROOT}.3.1.dcm" in planned.value.target
    check_round("commit", staging, archive, on_conflict="error", settle=0)  # stops there, (2, 0) committed
    with Manifest(archive) as manifest:
        committed = sorted(str(r.attrs["SOPInstanceUID"]) for r in manifest.records("committed"))
    assert committed == [f"{ROOT}.3.1", f"{ROOT}.3.2"]


def test_a_staged_file_that_is_not_dicom(tmp_path: Path) -> None:
    """commit records it as invalid (set aside in the archive); ingest leaves it in place."""
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    write_settled(staging / "notes.dcm", b"not dicom at all")
    Stager(staging).stage(synthetic_dataset(ROOT, 1))
    plan = commit(staging, archive, dry_run=True)
    assert (plan.committed, plan.invalid) == (1, 1)
    check_round("commit", staging, archive, on_conflict="record", settle=2)

    source, other = tmp_path / "source", tmp_path / "other"
    source.mkdir()
    write_settled(source / "notes.dcm", b"not dicom at all")
    write_foreign(source / "one.dcm", synthetic_dataset(ROOT, 1))
    plan = ingest(source, other, dry_run=True)
    assert (plan.committed, plan.invalid, plan.left_in_place[0][0]) == (1, 0, "notes.dcm")
    check_round("ingest", source, other, on_conflict="record", settle=0)
    assert (source / "notes.dcm").read_bytes() == b"not dicom at all"


def test_pydicom_reads_what_place_writes(tmp_path: Path) -> None:
    """The generator's foreign files are DICOM, its truncated and junk ones are not whole DICOM."""
    batch = [
        File("foreign", 1, 0, "", fresh=False, junk=b""),
        File("truncated", 1, 0, "", fresh=False, junk=b""),
        File("junk", 0, 0, "", fresh=True, junk=b"x"),
    ]
    place(tmp_path, 0, batch)
    assert pydicom.dcmread(tmp_path / "r0f0.dcm").SOPInstanceUID == f"{ROOT}.3.1"
    assert (tmp_path / "r0f1.dcm").stat().st_size < (tmp_path / "r0f0.dcm").stat().st_size
    assert (tmp_path / "r0f2.dcm").read_bytes() == b"x"
