#!/usr/bin/env python3
"""Random-time crash torture: SIGKILL the real CLI at a random moment, recover, rerun, check.

    .venv/bin/python scripts/torture_random.py                       # 200 trials, seed 0
    .venv/bin/python scripts/torture.py --random --trials 12 --seed 1 --json

Four kinds of trial, in turn:

- commit: a child process stages datasets (identical duplicates, conflicting versions) and
  commits a third of them; foreign files (some duplicates or conflicts of staged ones, two
  pydicom test files, one file that is not DICOM), an hour old, are copied into staging
  and a nested folder of it; then ``commit STAGING ARCHIVE`` is killed. Each commit and recover
  trial draws ``--on-conflict record|suffix`` and a template (the default, or one that
  names by InstanceNumber) for every commit it runs; recover is given neither.
- ingest: a source tree (nested folders, odd names, a hidden folder, identical copies,
  conflicting versions of one SOP Instance UID, files that are not DICOM) goes into an
  archive that already holds some of it; ``ingest SOURCE ARCHIVE --move`` is killed.
- resolve: an archive with several open conflicts (two on one name, one staged twice, one
  against a foreign file, one whose existing file has a duplicate row); ``resolve ARCHIVE
  --all --keep staged|existing|both`` is killed.
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
import json
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _torture_checks import trial
from _torture_io import Env, TrialError, measure_env
from _torture_kinds import KINDS, KindTotals, Trial, child_part, child_stage


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
            child_stage(argv[2], argv[3], argv[4], int(argv[5]), int(argv[6]), template=argv[7], on_conflict=argv[8])
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
