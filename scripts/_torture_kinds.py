"""The trials of scripts/torture_random.py: what a trial is, and what each kind sets up.

Each kind (commit, ingest, resolve, recover) builds its inputs in the trial's work directory
(staging in child processes of torture_random.py, foreign files, a source tree, open
conflicts) and returns a Plan: the command to kill and rerun, what recover and the rerun
must end with, and what every input must become.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pydicom.data import get_testdata_file

from _torture_io import ROOT, Env, Step, cli, encode, file_sha, read_rows, run_checked, write_old
from dicomcommit import Stager, commit
from dicomcommit._faults import POINTS
from dicomcommit.committing.driver import OnConflict
from dicomcommit.naming import DEFAULT_TEMPLATE
from dicomcommit.synthetic import plan_jobs, synthetic_dataset

KINDS = ("commit", "ingest", "resolve", "recover")
_SCRIPT = Path(__file__).resolve().with_name("torture_random.py")  # runs the children (--child)
_COMMIT_POINTS = tuple(p for p in POINTS if p.startswith("commit:"))
_ON_CONFLICT = ("record", "suffix")  # commit and recover trials draw one, and a template
_TEMPLATES = (DEFAULT_TEMPLATE, "{PatientID}/{SeriesInstanceUID}/{InstanceNumber:04d}_{SOPInstanceUID}.dcm")


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


@dataclass(frozen=True)
class Expected:
    source: str  # as the manifest records it
    disk: str  # where it was, relative to the trial's work directory
    sha256: str


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
    on_conflict: str = "record"  # every commit of the trial (its setup's, killed, reference, rerun)
    template: str = DEFAULT_TEMPLATE

    @property
    def work(self) -> Path:
        return self.root / "work"

    def fail(self, counter: str, message: str, count: int = 1) -> None:
        setattr(self.totals, counter, getattr(self.totals, counter) + count)
        self.failures.append(f"{self.label}: {message}")


# --- children -------------------------------------------------------------------------


def child_stage(
    staging: str, archive: str, ledger: str, seed: int, files: int, *, template: str, on_conflict: str
) -> None:
    """Stage a third of the jobs, commit them, stage the rest; log each returned name and hash."""
    jobs = plan_jobs(files, seed)
    first = len(jobs) // 3
    many = seed % 2 == 1
    with Stager(staging) as stager, open(ledger, "a") as out:
        for round_ in (0, 1):
            part = jobs[:first] if round_ == 0 else jobs[first:]
            datasets = [synthetic_dataset(ROOT, index, variant) for index, variant in part]
            paths = stager.stage_many(datasets) if many else [stager.stage(ds) for ds in datasets]
            for path in paths:
                out.write(f"{path.name} {file_sha(path)}\n")
            out.flush()
            if round_ == 0:
                commit(staging, archive, template=template, on_conflict=cast("OnConflict", on_conflict), batch_size=7)


def child_part(staging: str) -> None:
    """Stage one dataset; DICOMCOMMIT_CRASH_AT kills this process before it is published."""
    with Stager(staging) as stager:
        stager.stage(synthetic_dataset(ROOT, 990, 0))


# --- the kinds ------------------------------------------------------------------------


def _recover_step(base: Path, staging: bool = True) -> Step:
    where = (base / "archive", base / "staging") if staging else (base / "archive",)
    return cli("recover", *where, "--part-age", "0"), (0,)


def _draw_naming(t: Trial) -> None:
    """The trial's --on-conflict and --template, for every commit it runs (recover finds them)."""
    t.on_conflict, t.template = t.rng.choice(_ON_CONFLICT), t.rng.choice(_TEMPLATES)
    template = "" if t.template == DEFAULT_TEMPLATE else f" --template {t.template}"
    t.label += f" --on-conflict {t.on_conflict}{template}"


def _commit_step(t: Trial, batch: str) -> Callable[[Path], Step]:
    opts = (*t.env.commit_opts, "--on-conflict", t.on_conflict, "--template", t.template)

    def step(base: Path) -> Step:
        return cli("commit", base / "staging", base / "archive", "--batch-size", batch, *opts), (0, 3)

    return step


def _stage_in_child(t: Trial) -> list[Expected]:
    w = t.work
    (w / "staging").mkdir()
    ledger = w / "ledger.txt"
    ledger.touch()
    args = [w / "staging", w / "archive", ledger, t.rng.randrange(1 << 30), t.files, t.template, t.on_conflict]
    run_checked([sys.executable, str(_SCRIPT), "--child", "stage", *map(str, args)], (0,), w)
    lines = [line.split() for line in ledger.read_text().splitlines() if line.strip()]
    return [Expected(name, f"staging/{name}", sha) for name, sha in lines]


def _foreign_into_staging(t: Trial) -> list[Expected]:
    """Files another tool dropped into staging an hour ago: some the same as staged ones."""
    staging = t.work / "staging"
    picks = t.rng.sample(range(max(3, t.files // 2)), 3)
    made: dict[str, bytes] = {
        f"import/dup-{picks[0]}.dcm": encode(picks[0], 0),
        "import/new/IM0001": encode(700, 0),
        "import/new/IM0002": encode(701, 0),
        f"foreign-v2-{picks[1]}.dcm": encode(picks[1], 2),
        "foreign-new.dcm": encode(702, 0),
        "import/README.txt": b"not DICOM: set aside as invalid\n",
    }
    for rel, name in (("import/ct", "CT_small.dcm"), ("mr.dcm", "MR_small.dcm")):
        made[rel] = Path(str(get_testdata_file(name, download=False))).read_bytes()
    expected = []
    for age, (rel, data) in enumerate(made.items()):
        write_old(staging / rel, data, age)
        expected.append(Expected(rel, f"staging/{rel}", hashlib.sha256(data).hexdigest()))
    return expected


def plan_commit(t: Trial) -> Plan:
    _draw_naming(t)
    expected = _stage_in_child(t)
    expected += _foreign_into_staging(t)
    return Plan(_commit_step(t, t.rng.choice(("1", "3", "8", "2000"))), True, expected, files=len(expected))


def plan_recover(t: Trial) -> Plan:
    _draw_naming(t)  # for the commits; recover, killed and after the kill, is given neither
    expected = _stage_in_child(t)
    expected += _foreign_into_staging(t)
    w = t.work
    part_point = t.rng.choice(("stage:after-write", "stage:after-journal"))
    run_checked(
        [sys.executable, str(_SCRIPT), "--child", "part", str(w / "staging")], (0, -9), w, crash=f"{part_point}:1"
    )
    crash = f"{t.rng.choice(_COMMIT_POINTS)}:{t.rng.randint(1, 6)}"
    run_checked(_commit_step(t, t.rng.choice(("4", "2000")))(w)[0], (0, 3, -9), w, crash=crash)
    t.label += f" after commit killed at {crash}"
    return Plan(_recover_step, True, expected, files=len(expected), finish=_commit_step(t, "2000"), rerun=False)


def plan_ingest(t: Trial) -> Plan:
    w, rng = t.work, t.rng
    source, staging = w / "source", w / "staging"
    n = max(8, t.files // 2)
    with Stager(staging) as stager:  # the archive already holds 0-2 (identical) and 3 (another version)
        for index, variant in ((0, 0), (1, 0), (2, 0), (3, 1)):
            stager.stage(synthetic_dataset(ROOT, index, variant))
    commit(staging, w / "archive")
    dicom: dict[str, bytes] = {}
    for i in range(n):
        name = f"IM{i:04d}" + (".dcm" if i % 3 == 1 else "") + (" ünï code" if i % 7 == 5 else "")
        dicom[f"PAT{i % 3}/study {i % 2}/series_{i % 4}/{name}"] = encode(i, 0)
    for i in rng.sample(range(n), 3):
        dicom[f"copies/copy of IM{i:04d}"] = encode(i, 0)
    for i in rng.sample(range(n), 2):
        dicom[f"reprocessed/IM{i:04d}.dcm"] = encode(i, 1)
    dicom[f".hidden/IM{n:04d}"] = encode(n, 0)
    other = {"notes.txt": b"not dicom\n", "PAT0/DICOMDIR.bak": b"\0" * 200, "empty": b"",
             "junk.dcm": rng.randbytes(300), "fake/IMG": b"\0" * 128 + b"DICX" + rng.randbytes(64)}  # fmt: skip
    order = list(dicom.items()) + list(other.items())
    rng.shuffle(order)
    for age, (rel, data) in enumerate(order):
        write_old(source / rel, data, age)
    expected = [Expected(f"{source}/{rel}", f"source/{rel}", hashlib.sha256(d).hexdigest()) for rel, d in dicom.items()]
    kept = {rel: ((source / rel).stat().st_ino, hashlib.sha256(d).hexdigest()) for rel, d in other.items()}
    jobs = rng.choice(("1", "2"))
    opts = t.env.ingest_opts

    def command(base: Path) -> Step:
        return cli("ingest", base / "source", base / "archive", "--move", "--jobs", jobs, *opts), (0, 3)

    return Plan(command, False, expected, kept, files=len(dicom) + len(other))


def plan_resolve(t: Trial) -> Plan:
    w, rng = t.work, t.rng
    staging, archive = w / "staging", w / "archive"
    n = max(6, t.files // 4)
    with Stager(staging) as stager:
        for i in range(n):
            stager.stage(synthetic_dataset(ROOT, i, 0))
    write_old(staging / "foreign" / "IM", encode(n, 0), 0)
    commit(staging, archive)
    picks = rng.sample(range(n), max(3, n // 2))
    with Stager(staging) as stager:
        for i in picks:
            stager.stage(synthetic_dataset(ROOT, i, 1))
        stager.stage(synthetic_dataset(ROOT, picks[0], 1))  # the same conflict staged twice
        stager.stage(synthetic_dataset(ROOT, picks[1], 2))  # a second conflict on one name
        stager.stage(synthetic_dataset(ROOT, n, 1))  # a conflict with a foreign file
        stager.stage(synthetic_dataset(ROOT, picks[2], 0))  # a duplicate of a file --keep staged replaces
    commit(staging, archive)
    keep = rng.choice(("staged", "existing", "both"))
    t.label += f" --keep {keep}"

    def command(base: Path) -> Step:
        return cli("resolve", base / "archive", "--all", "--keep", keep), (0,)

    conflicts = sum(1 for r in read_rows(archive) if r.status == "conflict")
    return Plan(command, False, files=conflicts, keep=keep)


PLANS: dict[str, Callable[[Trial], Plan]] = {
    "commit": plan_commit,
    "ingest": plan_ingest,
    "resolve": plan_resolve,
    "recover": plan_recover,
}
