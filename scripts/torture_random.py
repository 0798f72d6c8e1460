#!/usr/bin/env python3
"""Random-time crash torture: SIGKILL the real CLI at a random moment, recover, rerun, check.

    .venv/bin/python scripts/torture_random.py                       # 200 trials, seed 0
    .venv/bin/python scripts/torture.py --random --trials 12 --seed 1 --json

Four kinds of trial, in turn:

- commit: a child process stages datasets (identical duplicates, conflicting versions) and
  commits a third of them; foreign files (some duplicates or conflicts of staged ones, two
  pydicom test files, one file that is not DICOM), an hour old, are copied into staging
  and a nested folder of it; then ``commit STAGING ARCHIVE`` is killed.
- ingest: a source tree (nested folders, odd names, a hidden folder, identical copies,
  conflicting versions of one SOP Instance UID, files that are not DICOM) goes into an
  archive that already holds some of it; ``ingest SOURCE ARCHIVE --move`` is killed.
- resolve: an archive with several open conflicts (two on one name, one staged twice, one
  against a foreign file); ``resolve ARCHIVE --all --keep staged|existing|both`` is killed.
- recover: staged as for commit, plus a stager killed at a named step (a ``.part`` left);
  a commit killed at a named step of the protocol; then ``recover ARCHIVE STAGING
  --part-age 0`` is killed.

Each trial copies its inputs (hard links and mtimes kept) and runs the command there
unkilled: that measures how long it takes, when it first changes ``ARCHIVE/.dicomcommit/``
(before that, no step of the protocol has run: the interpreter is still importing), and
gives the state it must converge to. Then it starts the command (``python -m dicomcommit
...``) on the original, sleeps a random delay between 0.9 x that first change and the
measured duration, and SIGKILLs its process group (ingest's header readers too). A command
that finished first still counts, as "finished"; "changed" counts the kills that left
something changed on disk. Then ``recover ARCHIVE [STAGING] --part-age 0``, the killed
command again (for recover: then commit), and ``recover --check`` must report nothing
(exit 0). Counted per kind, besides trials, killed, changed, finished and files (what each
trial put in: staged and foreign files, source files, conflicts to resolve):

- lost: an input (staged dataset, foreign or source file, a conflict's bytes) not recorded
  exactly once with its bytes where its row says, or bytes that were in the archive before
  the kill and are nowhere after it (right after the kill, or at the end); a source file
  gone before its bytes were recorded; a file that is not DICOM missing from the source;
- partial: a final name (at any time after the kill) that does not parse, whose hash is not
  its committed row's, or that has no committed row; a copy in ``.dicomcommit/`` whose
  bytes do not match its hash name;
- replaced: a name present before the kill whose inode or bytes changed (a target of
  ``resolve --keep staged`` may change, if its old bytes are in ``.dicomcommit/replaced/``);
- escaped: a file written outside the archive, staging, source and ledger;
- twice: a source with two rows, or a final name with two committed rows;
- left: files left in staging, or DICOM files left in an ingest source;
- flagged: the recover right after the kill exited 3 (reported what only the rerun can
  finish); a count, not a failure;
- stale: a row whose path no longer holds its bytes, though they are elsewhere in the archive;
- unconverged: the end state (archive files and manifest rows) differs from the unkilled
  run's, or resolve left a conflict unresolved;
- errors: a command exiting with an unexpected code (or hanging).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from dicomcommit import Stager, commit
from dicomcommit._faults import POINTS
from dicomcommit.demo import plan_jobs, synthetic_dataset

KINDS = ("commit", "ingest", "resolve", "recover")
_ROOT = "1.2.826.0.1.3680043.10.5151"
_SCRIPT = Path(__file__).resolve()
_CLI = (sys.executable, "-m", "dicomcommit")
_STATE = ".dicomcommit"
_COPIES = ("conflicts", "invalid", "rejected", "replaced")  # hash-named copies in .dicomcommit/
_COMMIT_POINTS = tuple(p for p in POINTS if p.startswith("commit:"))
_TIMEOUT = 300.0
_HOUR = 3600.0

Step = tuple[list[str], tuple[int, ...]]  # argv, the exit codes of a successful run
Snapshot = dict[str, tuple[int, str]]  # archive-relative name -> (inode, sha256)


@dataclass
class KindTotals:
    trials: int = 0
    killed: int = 0
    changed: int = 0  # killed after it had changed something on disk
    finished: int = 0  # finished before the kill
    files: int = 0
    lost: int = 0
    partial: int = 0
    replaced: int = 0
    escaped: int = 0
    recorded_twice: int = 0
    left: int = 0
    flagged: int = 0  # the recover right after the kill reported something for the rerun to finish
    stale: int = 0
    unconverged: int = 0
    errors: int = 0


@dataclass
class Totals:
    kinds: dict[str, KindTotals] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    startup_s: float = 0.0
    settle: bool = False

    def sum(self, name: str) -> int:
        return sum(getattr(k, name) for k in self.kinds.values())

    def clean(self) -> bool:
        bad = ("lost", "partial", "replaced", "escaped", "recorded_twice", "left", "stale", "unconverged", "errors")
        return not self.failures and not any(self.sum(name) for name in bad)


@dataclass(frozen=True)
class Env:
    startup: float  # seconds a bare `commit --help` takes: the lower bound when no change was seen
    commit_opts: tuple[str, ...]  # ("--settle", "0") when the CLI has it
    ingest_opts: tuple[str, ...]


@dataclass(frozen=True)
class Expected:
    source: str  # as the manifest records it
    disk: str  # where it was, relative to the trial's work directory
    sha256: str


@dataclass(frozen=True)
class Row:
    id: int
    status: str
    target: str | None
    path: str
    source: str
    sha256: str | None
    resolution: str | None


@dataclass
class Plan:
    """What a trial kills and checks; commands are built for a base directory (work or ref)."""

    command: Callable[[Path], Step]  # the command killed, and rerun
    staging: bool  # whether recover is given the staging directory
    expected: list[Expected] = field(default_factory=list)
    kept_in_source: dict[str, tuple[int, str]] = field(default_factory=dict)  # ingest: not DICOM
    files: int = 0
    keep: str | None = None  # resolve
    finish: Callable[[Path], Step] | None = None  # what completes the job after the command (recover: commit)
    rerun: bool = True  # False when the command is recover: the recover after the kill is its rerun

    def tail(self, base: Path) -> list[Step]:
        """After the kill: recover, the rerun, and what completes the job.

        Recover may exit 3 here: it reports, without repairing, what only the rerun can
        finish (a resolve --keep staged killed between its rename and its record).
        """
        argv, _ = _recover_step(base, self.staging)
        rerun = [self.command(base)] if self.rerun else []
        return [(argv, (0, 3)), *rerun, *self.ref_tail(base)]

    def ref_tail(self, base: Path) -> list[Step]:
        return [] if self.finish is None else [self.finish(base)]

    def check(self, base: Path) -> list[str]:
        return [*_recover_step(base, self.staging)[0], "--check", "--json"]


class TrialError(Exception):
    """A command failed or hung: the trial cannot be checked."""


@dataclass
class Trial:
    kind: str
    label: str
    rng: random.Random
    root: Path
    files: int
    env: Env
    totals: KindTotals
    failures: list[str]
    shrink: float = 1.0

    @property
    def work(self) -> Path:
        return self.root / "work"

    def fail(self, counter: str, message: str, count: int = 1) -> None:
        setattr(self.totals, counter, getattr(self.totals, counter) + count)
        self.failures.append(f"{self.label}: {message}")


# --- children -------------------------------------------------------------------------


def child_stage(staging: str, archive: str, ledger: str, seed: int, files: int) -> None:
    """Stage a third of the jobs, commit them, stage the rest; log each returned name and hash."""
    jobs = plan_jobs(files, seed)
    first = len(jobs) // 3
    many = seed % 2 == 1
    with Stager(staging) as stager, open(ledger, "a") as out:
        for round_ in (0, 1):
            part = jobs[:first] if round_ == 0 else jobs[first:]
            datasets = [synthetic_dataset(_ROOT, index, variant) for index, variant in part]
            paths = stager.stage_many(datasets) if many else [stager.stage(ds) for ds in datasets]
            for path in paths:
                out.write(f"{path.name} {_sha(path)}\n")
            out.flush()
            if round_ == 0:
                commit(staging, archive, batch_size=7)


def child_part(staging: str) -> None:
    """Stage one dataset; DICOMCOMMIT_CRASH_AT kills this process before it is published."""
    with Stager(staging) as stager:
        stager.stage(synthetic_dataset(_ROOT, 990, 0))


# --- the kinds ------------------------------------------------------------------------


def _cli(*args: str | Path) -> list[str]:
    return [*_CLI, *(str(a) for a in args)]


def _recover_step(base: Path, staging: bool = True) -> Step:
    where = (base / "archive", base / "staging") if staging else (base / "archive",)
    return _cli("recover", *where, "--part-age", "0"), (0,)


def _commit_step(t: Trial, batch: str) -> Callable[[Path], Step]:
    opts = t.env.commit_opts

    def step(base: Path) -> Step:
        return _cli("commit", base / "staging", base / "archive", "--batch-size", batch, *opts), (0, 3)

    return step


def _stage_in_child(t: Trial) -> list[Expected]:
    w = t.work
    (w / "staging").mkdir()
    ledger = w / "ledger.txt"
    ledger.touch()
    args = [w / "staging", w / "archive", ledger, t.rng.randrange(1 << 30), t.files]
    _run([sys.executable, str(_SCRIPT), "--child", "stage", *map(str, args)], (0,), w)
    lines = [line.split() for line in ledger.read_text().splitlines() if line.strip()]
    return [Expected(name, f"staging/{name}", sha) for name, sha in lines]


def _foreign_into_staging(t: Trial) -> list[Expected]:
    """Files another tool dropped into staging an hour ago: some the same as staged ones."""
    staging = t.work / "staging"
    picks = t.rng.sample(range(max(3, t.files // 2)), 3)
    made: dict[str, bytes] = {
        f"import/dup-{picks[0]}.dcm": _encode(picks[0], 0),
        "import/new/IM0001": _encode(700, 0),
        "import/new/IM0002": _encode(701, 0),
        f"foreign-v2-{picks[1]}.dcm": _encode(picks[1], 2),
        "foreign-new.dcm": _encode(702, 0),
        "import/README.txt": b"not DICOM: set aside as invalid\n",
    }
    for rel, name in (("import/ct", "CT_small.dcm"), ("mr.dcm", "MR_small.dcm")):
        made[rel] = Path(str(get_testdata_file(name, download=False))).read_bytes()
    expected = []
    for age, (rel, data) in enumerate(made.items()):
        _write_old(staging / rel, data, age)
        expected.append(Expected(rel, f"staging/{rel}", hashlib.sha256(data).hexdigest()))
    return expected


def plan_commit(t: Trial) -> Plan:
    expected = _stage_in_child(t)
    expected += _foreign_into_staging(t)
    return Plan(_commit_step(t, t.rng.choice(("1", "3", "8", "2000"))), True, expected, files=len(expected))


def plan_recover(t: Trial) -> Plan:
    expected = _stage_in_child(t)
    expected += _foreign_into_staging(t)
    w = t.work
    part_point = t.rng.choice(("stage:after-write", "stage:after-journal"))
    _run([sys.executable, str(_SCRIPT), "--child", "part", str(w / "staging")], (0, -9), w, crash=f"{part_point}:1")
    crash = f"{t.rng.choice(_COMMIT_POINTS)}:{t.rng.randint(1, 6)}"
    _run(_commit_step(t, t.rng.choice(("4", "2000")))(w)[0], (0, 3, -9), w, crash=crash)
    t.label += f" after commit killed at {crash}"
    return Plan(_recover_step, True, expected, files=len(expected), finish=_commit_step(t, "2000"), rerun=False)


def plan_ingest(t: Trial) -> Plan:
    w, rng = t.work, t.rng
    source, staging = w / "source", w / "staging"
    n = max(8, t.files // 2)
    with Stager(staging) as stager:  # the archive already holds 0-2 (identical) and 3 (another version)
        for index, variant in ((0, 0), (1, 0), (2, 0), (3, 1)):
            stager.stage(synthetic_dataset(_ROOT, index, variant))
    commit(staging, w / "archive")
    dicom: dict[str, bytes] = {}
    for i in range(n):
        name = f"IM{i:04d}" + (".dcm" if i % 3 == 1 else "") + (" ünï code" if i % 7 == 5 else "")
        dicom[f"PAT{i % 3}/study {i % 2}/series_{i % 4}/{name}"] = _encode(i, 0)
    for i in rng.sample(range(n), 3):
        dicom[f"copies/copy of IM{i:04d}"] = _encode(i, 0)
    for i in rng.sample(range(n), 2):
        dicom[f"reprocessed/IM{i:04d}.dcm"] = _encode(i, 1)
    dicom[f".hidden/IM{n:04d}"] = _encode(n, 0)
    other = {"notes.txt": b"not dicom\n", "PAT0/DICOMDIR.bak": b"\0" * 200, "empty": b"",
             "junk.dcm": rng.randbytes(300), "fake/IMG": b"\0" * 128 + b"DICX" + rng.randbytes(64)}  # fmt: skip
    order = list(dicom.items()) + list(other.items())
    rng.shuffle(order)
    for age, (rel, data) in enumerate(order):
        _write_old(source / rel, data, age)
    expected = [Expected(f"{source}/{rel}", f"source/{rel}", hashlib.sha256(d).hexdigest()) for rel, d in dicom.items()]
    kept = {rel: ((source / rel).stat().st_ino, hashlib.sha256(d).hexdigest()) for rel, d in other.items()}
    jobs = rng.choice(("1", "2"))
    opts = t.env.ingest_opts

    def command(base: Path) -> Step:
        return _cli("ingest", base / "source", base / "archive", "--move", "--jobs", jobs, *opts), (0, 3)

    return Plan(command, False, expected, kept, files=len(dicom) + len(other))


def plan_resolve(t: Trial) -> Plan:
    w, rng = t.work, t.rng
    staging, archive = w / "staging", w / "archive"
    n = max(6, t.files // 4)
    with Stager(staging) as stager:
        for i in range(n):
            stager.stage(synthetic_dataset(_ROOT, i, 0))
    _write_old(staging / "foreign" / "IM", _encode(n, 0), 0)
    commit(staging, archive)
    picks = rng.sample(range(n), max(3, n // 2))
    with Stager(staging) as stager:
        for i in picks:
            stager.stage(synthetic_dataset(_ROOT, i, 1))
        stager.stage(synthetic_dataset(_ROOT, picks[0], 1))  # the same conflict staged twice
        stager.stage(synthetic_dataset(_ROOT, picks[1], 2))  # a second conflict on one name
        stager.stage(synthetic_dataset(_ROOT, n, 1))  # a conflict with a foreign file
    commit(staging, archive)
    keep = rng.choice(("staged", "existing", "both"))
    t.label += f" --keep {keep}"

    def command(base: Path) -> Step:
        return _cli("resolve", base / "archive", "--all", "--keep", keep), (0,)

    conflicts = sum(1 for r in _rows(archive) if r.status == "conflict")
    return Plan(command, False, files=conflicts, keep=keep)


PLANS: dict[str, Callable[[Trial], Plan]] = {
    "commit": plan_commit,
    "ingest": plan_ingest,
    "resolve": plan_resolve,
    "recover": plan_recover,
}


# --- one trial ------------------------------------------------------------------------


def trial(t: Trial) -> None:
    t.work.mkdir()
    plan = PLANS[t.kind](t)
    t.totals.files += plan.files
    ref = t.root / "ref"
    _copy_tree(t.work, ref)
    _repoint_journal(ref / "staging")
    duration, first_change = _run_watched(*plan.command(ref), ref, ref / "archive" / _STATE)
    for step in plan.ref_tail(ref):
        _run(*step, ref)

    before, rows_before, shape = _snapshot(t.work / "archive"), _rows(t.work / "archive"), _shape(t.work)
    # Before its first change on disk, a command has run no step of the protocol yet.
    low = 0.8 * t.env.startup if first_change is None else 0.9 * first_change
    high = max(low, duration)
    delay = t.rng.uniform(low, low + (high - low) * t.shrink)
    killed = _run_killed(*plan.command(t.work), t.work, delay)
    if killed:
        t.totals.killed += 1
        t.totals.changed += _shape(t.work) != shape
    else:
        t.totals.finished += 1
    change = "?" if first_change is None else f"{first_change:.3f}"
    what = "killed" if killed else "finished"
    t.label += f" ({what} at {delay:.3f} s; unkilled: first change at {change}, done at {duration:.3f})"

    after = _snapshot(t.work / "archive")
    _check_complete(t, after, None)
    _check_kept(t, plan, before, rows_before, after, when="after the kill")
    _check_gone_only_if_recorded(t, plan)

    for number, step in enumerate(plan.tail(t.work)):
        if _run(*step, t.work) == 3 and number == 0:
            t.totals.flagged += 1
    result = subprocess.run(plan.check(t.work), cwd=t.work, env=_env(None), capture_output=True, text=True,
                            timeout=_TIMEOUT, check=False)  # fmt: skip
    if result.returncode != 0:
        said = f"{result.stdout[-1500:]}{result.stderr[-500:]}"
        t.fail("unconverged", f"recover --check exits {result.returncode}: {said}")
    _check_end(t, plan, before, rows_before)
    _check_converged(t, ref)


def _check_complete(t: Trial, snap: Snapshot, rows: list[Row] | None) -> None:
    """Final names parse (and match their one committed row); hash-named copies match their names."""
    committed: dict[str, list[Row]] = {}
    for row in rows or ():
        if row.status == "committed":
            committed.setdefault(row.path, []).append(row)
    for rel, (_, sha) in snap.items():
        if rel.startswith(f"{_STATE}/"):
            if Path(rel).name.split(".")[0] != sha:
                t.fail("partial", f"{rel} does not hold the bytes its name says (sha256 {sha})")
            continue
        if not _parses(t.work / "archive" / rel):
            t.fail("partial", f"{rel} does not parse")
        if rows is None:
            continue
        mine = committed.get(rel, [])
        if not mine:
            t.fail("partial", f"{rel} has no committed row")
        elif len(mine) > 1:
            t.fail("recorded_twice", f"{rel} has {len(mine)} committed rows: {[(r.id, r.source) for r in mine]}")
        if any(r.sha256 not in (None, sha) for r in mine):
            t.fail("partial", f"{rel} has sha256 {sha}, its row says {[r.sha256 for r in mine]}")


def _check_kept(t: Trial, plan: Plan, before: Snapshot, rows_before: list[Row], after: Snapshot, *, when: str) -> None:
    """Names present before the kill keep their inode and bytes; no bytes vanish."""
    present = {sha for _, sha in after.values()}
    targets = {r.target for r in rows_before if r.status == "conflict"}
    for sha in sorted({sha for _, sha in before.values()} - present):
        t.fail("lost", f"{when}: bytes {sha[:12]} were in the archive before the kill and are gone")
    for rel, (inode, sha) in before.items():
        now = after.get(rel)
        if now == (inode, sha) or sha not in present:
            continue
        if plan.keep is not None and rel.startswith(f"{_STATE}/conflicts/") and now is None:
            continue  # resolve gave these bytes another name (they are present: checked above)
        swapped = after.get(f"{_STATE}/replaced/{sha}.dcm", (0, ""))[1] == sha
        if plan.keep == "staged" and rel in targets and now is not None and swapped:
            continue
        t.fail("replaced", f"{when}: {rel} was {(inode, sha[:12])}, is {now}")


def _check_gone_only_if_recorded(t: Trial, plan: Plan) -> None:
    rows = _rows(t.work / "archive")
    snap = _snapshot(t.work / "archive")
    for item in plan.expected:
        if (t.work / item.disk).exists():
            continue
        held = [r for r in rows if r.source == item.source and snap.get(r.path, (0, ""))[1] == item.sha256]
        if not held:
            t.fail("lost", f"after the kill: {item.disk} is gone, its bytes not recorded")


def _check_end(t: Trial, plan: Plan, before: Snapshot, rows_before: list[Row]) -> None:
    archive = t.work / "archive"
    rows, after = _rows(archive), _snapshot(archive)
    _check_complete(t, after, rows)
    _check_kept(t, plan, before, rows_before, after, when="at the end")
    by_source = Counter(r.source for r in rows)
    for source, count in by_source.items():
        if count > 1:
            t.fail("recorded_twice", f"{source} has {count} rows")
    for item in plan.expected:
        mine = [r for r in rows if r.source == item.source]
        if len(mine) != 1:
            if not mine:
                t.fail("lost", f"{item.disk} has no row")
            continue
        row = mine[0]
        held = after.get(row.path, (0, ""))[1]
        if row.sha256 not in (None, item.sha256) or held != item.sha256:
            t.fail("lost", f"{item.disk}: its row {row} does not hold its bytes ({item.sha256[:12]})")
        if (t.work / item.disk).exists():
            t.fail("left", f"{item.disk} is still there")
    for rel, (inode, sha) in plan.kept_in_source.items():
        path = t.work / "source" / rel
        if not path.is_file() or path.stat().st_ino != inode or _sha(path) != sha:
            t.fail("lost", f"source/{rel} (not DICOM) was removed or changed")
    if plan.keep is not None:
        _check_resolved(t, plan.keep, rows_before, rows, after)
    _check_left_and_escaped(t)


def _check_left_and_escaped(t: Trial) -> None:
    archive, staging = t.work / "archive", t.work / "staging"
    if staging.is_dir() and t.kind in ("commit", "recover"):
        left = [p for p in staging.rglob("*") if p.is_file() and not p.relative_to(staging).parts[0].startswith(".")]
        if left:
            t.fail("left", f"left in staging: {[str(p.relative_to(staging)) for p in left]}", len(left))
    allowed = [archive, staging, t.work / "source", t.work / "ledger.txt"]
    for path in t.work.rglob("*"):
        if path.is_file() and not any(a == path or a in path.parents for a in allowed):
            t.fail("escaped", f"{path} written outside the archive")


def _check_resolved(t: Trial, keep: str, rows_before: list[Row], rows: list[Row], after: Snapshot) -> None:
    """Every conflict decided as asked; every row's bytes where the row says."""
    now = {r.id: r for r in rows}
    for old in rows_before:
        row = now.get(old.id)
        if row is None:
            t.fail("lost", f"row #{old.id} disappeared")
            continue
        if old.status == "conflict" and row.resolution not in (keep, "replaced"):
            t.fail("unconverged", f"conflict #{old.id} is {row.status}/{row.resolution}, not resolved --keep {keep}")
        held = after.get(row.path, (0, ""))[1]
        if row.sha256 is None or held == row.sha256:
            continue
        elsewhere = sorted(rel for rel, (_, sha) in after.items() if sha == row.sha256)
        if elsewhere:
            t.fail("stale", f"row #{row.id} {row.status} says its bytes are at {row.path}, which holds "
                            f"{held[:12] or 'nothing'}; they are at {elsewhere[0]}")  # fmt: skip
        else:
            t.fail("lost", f"row #{row.id} {row.status} says {row.path}, which holds {held[:12] or 'nothing'}")


def _check_converged(t: Trial, ref: Path) -> None:
    got, want = _end_state(t.work), _end_state(ref)
    for what, mine, theirs in (("files", got[0], want[0]), ("rows", got[1], want[1])):
        extra, missing = sorted(mine - theirs), sorted(theirs - mine)
        if extra or missing:
            t.fail("unconverged", f"{what} differ from an unkilled run's: extra {extra[:4]}, missing {missing[:4]}")


def _end_state(base: Path) -> tuple[set[tuple[str, str]], set[tuple[str, ...]]]:
    files = {(rel, sha) for rel, (_, sha) in _snapshot(base / "archive").items()}
    counted = Counter(
        (r.source.removeprefix(f"{base}/"), r.status, r.target or "", r.path, r.resolution or "")
        for r in _rows(base / "archive")
    )
    return files, {(*key, str(n)) for key, n in counted.items()}


# --- processes ------------------------------------------------------------------------


def _env(crash: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DICOMCOMMIT_CRASH_AT"}
    if crash:
        env["DICOMCOMMIT_CRASH_AT"] = crash
    return env


def _run(argv: list[str], codes: tuple[int, ...], cwd: Path, crash: str | None = None) -> int:
    try:
        result = subprocess.run(argv, cwd=cwd, env=_env(crash), capture_output=True, text=True, timeout=_TIMEOUT,
                                check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise TrialError(f"{_show(argv)} hung for {_TIMEOUT:g} s") from exc
    if result.returncode not in codes:
        said = f"{result.stdout[-1500:]}{result.stderr[-1500:]}"
        raise TrialError(f"{_show(argv)} exited {result.returncode}: {said}")
    return result.returncode


def _run_watched(argv: list[str], codes: tuple[int, ...], cwd: Path, watch: Path) -> tuple[float, float | None]:
    """Run *argv* to completion; return its duration and when it first changed the directory *watch*."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    initial, first = _mtime(watch), None
    while proc.poll() is None:
        if first is None and _mtime(watch) != initial:
            first = time.perf_counter() - started
        if time.perf_counter() - started > _TIMEOUT:
            proc.kill()
            raise TrialError(f"{_show(argv)} hung for {_TIMEOUT:g} s")
        time.sleep(0.003)
    duration = time.perf_counter() - started
    err = proc.stderr.read() if proc.stderr is not None else b""
    if proc.returncode not in codes:
        raise TrialError(f"{_show(argv)} exited {proc.returncode}: {err.decode(errors='replace')[-1500:]}")
    return duration, first


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _run_killed(argv: list[str], codes: tuple[int, ...], cwd: Path, delay: float) -> bool:
    """Start *argv*, SIGKILL its process group after *delay* seconds; True if it was killed."""
    proc = subprocess.Popen(argv, cwd=cwd, env=_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        raise TrialError(f"{_show(argv)} hung for {_TIMEOUT:g} s") from exc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # header readers of an ingest that exited on its own
    if proc.returncode == -signal.SIGKILL:
        return True
    if proc.returncode not in codes:
        raise TrialError(f"{_show(argv)} exited {proc.returncode}: {err.decode(errors='replace')[-1500:]}")
    return False


def _show(argv: list[str]) -> str:
    return " ".join(["dicomcommit", *argv[3:]] if argv[:3] == list(_CLI) else argv)


def measure_env() -> Env:
    started = time.perf_counter()
    commit_help = subprocess.run(_cli("commit", "--help"), capture_output=True, text=True, check=True).stdout
    startup = time.perf_counter() - started
    ingest_help = subprocess.run(_cli("ingest", "--help"), capture_output=True, text=True, check=True).stdout
    settle = ("--settle", "0")
    return Env(startup, settle if "--settle" in commit_help else (), settle if "--settle" in ingest_help else ())


# --- files ----------------------------------------------------------------------------


def _encode(index: int, variant: int) -> bytes:
    from io import BytesIO  # noqa: PLC0415 -- only here

    out = BytesIO()
    pydicom.dcmwrite(out, synthetic_dataset(_ROOT, index, variant), enforce_file_format=True)
    return out.getvalue()


def _write_old(path: Path, data: bytes, age: int) -> None:
    """Write *path* with an mtime an hour (and *age* seconds) back: settled, and in a fixed order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - _HOUR - age
    os.utime(path, (stamp, stamp))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _parses(path: Path) -> bool:
    try:
        pydicom.dcmread(path)
    except Exception:  # any parse failure is a partial file here
        return False
    return True


def _repoint_journal(staging: Path) -> None:
    """Point the copied journal's lines at the copied files, so that the reference run takes
    the same path as the original.

    The journal vouches for a staged file only while its inode and mtime are the ones the
    stager wrote; a copy has a new inode, and would be taken as a foreign file (left in place
    while younger than the settle time, and recorded without the hash the original run had).
    """
    for journal in sorted(staging.glob(".dicomcommit/journal/*.jsonl")):
        lines = []
        for line in journal.read_bytes().splitlines():
            try:
                record = json.loads(line)
                st = (staging / record["name"]).lstat()
                record["ino"], record["mtime_ns"] = st.st_ino, st.st_mtime_ns
                line = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()  # noqa: PLW2901
            except (ValueError, KeyError, TypeError, OSError):
                pass  # a torn line, or a file already committed: left as it is
            lines.append(line + b"\n")
        journal.write_bytes(b"".join(lines))


def _snapshot(archive: Path) -> Snapshot:
    """Final names and hash-named copies (not the manifest, lock or temp copies)."""
    found: Snapshot = {}
    for directory, dirs, names in os.walk(archive):
        rel_dir = os.path.relpath(directory, archive)
        if rel_dir == _STATE:
            dirs[:] = [d for d in dirs if d in _COPIES]
            continue
        for name in names:
            path = Path(directory, name)
            found[str(path.relative_to(archive))] = (path.lstat().st_ino, _sha(path))
    return found


def _shape(base: Path) -> frozenset[tuple[str, int, int, int]]:
    """Every entry with its inode, size and mtime: whether a killed command changed anything."""
    return frozenset((str(p.relative_to(base)), st.st_ino, st.st_size, st.st_mtime_ns)
                     for p in base.rglob("*") for st in (p.lstat(),))  # fmt: skip


def _rows(archive: Path) -> list[Row]:
    path = archive / _STATE / "manifest.sqlite"
    if not path.is_file():
        return []
    db = sqlite3.connect(path)
    try:
        query = "SELECT id, status, target, path, source, sha256, resolution FROM files ORDER BY id"
        return [Row(*row) for row in db.execute(query)]
    except sqlite3.OperationalError:
        return []  # created by a process killed before it made the schema
    finally:
        db.close()


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy *src* to *dst* keeping mtimes and the hard links between files of the tree."""
    first: dict[tuple[int, int], Path] = {}
    for directory, _, names in os.walk(src):
        target_dir = dst / Path(directory).relative_to(src)
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            path = Path(directory, name)
            st = path.lstat()
            key = (st.st_dev, st.st_ino)
            if key in first:
                os.link(first[key], target_dir / name)
            else:
                shutil.copy2(path, target_dir / name, follow_symlinks=False)
                first[key] = target_dir / name


# --- the run --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    seed: int
    files: int
    env: Env
    directory: str | None = None
    keep: str | None = None  # where to copy the files of a failed trial
    verbose: bool = False


@dataclass
class Outcome:
    number: int
    kind: str
    totals: KindTotals
    failures: list[str]


def run_one(kind: str, number: int, cfg: Config, shrink: float = 1.0) -> Outcome:
    """One trial in its own temporary directory (copied to ``cfg.keep`` if it failed)."""
    out = Outcome(number, kind, KindTotals(trials=1), [])
    rng = random.Random(f"{cfg.seed}:{kind}:{number}")
    with tempfile.TemporaryDirectory(prefix=f"dicomcommit-random-{kind}-", dir=cfg.directory) as tmp:
        t = Trial(kind, f"{kind} #{number} (seed {cfg.seed})", rng, Path(tmp), cfg.files, cfg.env, out.totals,
                  out.failures, shrink)  # fmt: skip
        try:
            trial(t)
        except TrialError as exc:
            t.fail("errors", str(exc))
        except Exception as exc:  # the setup's own library calls, on a library mid-edit: reported, not fatal
            t.fail("errors", f"{type(exc).__name__}: {exc}")
        if cfg.keep and out.failures:
            shutil.copytree(tmp, Path(cfg.keep) / f"{kind}-{cfg.seed}-{number}", symlinks=True)
    if cfg.verbose:
        print(f"{t.label}: {len(out.failures)} failures", file=sys.stderr, flush=True)
    return out


def _add(totals: Totals, outcome: Outcome) -> None:
    kt = totals.kinds.setdefault(outcome.kind, KindTotals())
    for name in KindTotals.__dataclass_fields__:
        setattr(kt, name, getattr(kt, name) + getattr(outcome.totals, name))
    totals.failures += outcome.failures


def run(trials: int, seed: int, files: int, kinds: tuple[str, ...], *, jobs: int = 1, ensure_kill: bool = False,
        time_limit: float | None = None, directory: str | None = None, keep: str | None = None,
        verbose: bool = False) -> Totals:  # fmt: skip
    """*trials* trials, the *kinds* in turn, *jobs* at a time (each trial mostly waits for its commands)."""
    cfg = Config(seed, files, measure_env(), directory, keep, verbose)
    totals = Totals(startup_s=round(cfg.env.startup, 3), settle=bool(cfg.env.commit_opts))
    for kind in kinds:
        totals.kinds[kind] = KindTotals()
    deadline = None if time_limit is None else time.monotonic() + time_limit
    outcomes: list[Outcome] = []
    with ThreadPoolExecutor(jobs) as pool:
        running: set[Future[Outcome]] = set()
        for number in range(trials):
            if deadline is not None and time.monotonic() > deadline:
                break
            if len(running) >= jobs:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                outcomes += [f.result() for f in done]
            running.add(pool.submit(run_one, kinds[number % len(kinds)], number, cfg))
        outcomes += [f.result() for f in running]
    for outcome in sorted(outcomes, key=lambda o: o.number):
        _add(totals, outcome)
    if ensure_kill:  # a kind whose every run finished first: again, with ever shorter delays
        number = trials
        for kind in kinds:
            for retry in range(1, 7):
                if totals.kinds[kind].killed:
                    break
                _add(totals, run_one(kind, number, cfg, shrink=0.5**retry))
                number += 1
    return totals


def print_table(totals: Totals) -> None:
    names = list(KindTotals.__dataclass_fields__)
    print(f"{'kind':<8}" + "".join(f"{n.replace('recorded_', ''):>12}" for n in names))
    for kind, kt in totals.kinds.items():
        print(f"{kind:<8}" + "".join(f"{getattr(kt, n):>12}" for n in names))
    print(f"{'all':<8}" + "".join(f"{totals.sum(n):>12}" for n in names))
    print(f"\nCLI start-up {totals.startup_s:.3f} s; commit --settle 0: {'yes' if totals.settle else 'no such option'}")
    for failure in totals.failures[:30]:
        print(f"FAIL {failure}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        if argv[1] == "stage":
            child_stage(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]))
        else:
            child_part(argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200, help="trials, the kinds in turn [200]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=60, help="stage operations per trial (scales each kind) [60]")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"which kinds [{','.join(KINDS)}]")
    parser.add_argument("--jobs", type=int, default=1, help="trials run at a time [1]")
    parser.add_argument("--ensure-kill", action="store_true", help="retry a kind never killed with shorter delays")
    parser.add_argument("--time-limit", type=float, default=None, metavar="S", help="start no trial after S seconds")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="one line per trial on stderr")
    parser.add_argument("--dir", default=None, help="where trials run [the system temp dir]")
    parser.add_argument("--keep-failures", default=None, metavar="DIR", help="copy each failed trial's files here")
    args = parser.parse_args(argv)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes some of {','.join(KINDS)}")
    totals = run(args.trials, args.seed, args.files, kinds, jobs=args.jobs, ensure_kill=args.ensure_kill,
                 time_limit=args.time_limit, directory=args.dir, keep=args.keep_failures,
                 verbose=args.verbose)  # fmt: skip
    if args.json:
        sums = {n: totals.sum(n) for n in KindTotals.__dataclass_fields__}
        print(json.dumps({**sums, **asdict(totals)}, indent=2))
    else:
        print_table(totals)
    return 0 if totals.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
