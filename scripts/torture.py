#!/usr/bin/env python3
"""Crash torture: kill stagers and committers at every step, recover, and count what was lost.

    .venv/bin/python scripts/torture.py                  # 200 trials, seed 0
    .venv/bin/python scripts/torture.py --trials 20 --seed 1 --json
    .venv/bin/python scripts/torture.py --random [...]   # SIGKILLs at random moments: scripts/torture_random.py

Each trial stages datasets (some identical duplicates, some conflicting versions) in a
child process, then commits them in another; one of the two is killed with SIGKILL at a
named step of the protocol (rotating through every step, at a random occurrence). Then
`recover` and a plain `commit` run, and the trial checks:

- lost: a dataset whose stage() returned that is not recorded exactly once as committed,
  duplicate or conflict, with its bytes in the archive;
- partial: an archive file that does not parse, or whose hash is not its row's;
- replaced: an archive file whose inode or bytes changed after it first appeared, or a
  name with more or less than one committed row;
- escaped: a file written outside the archive, staging and the trial's own ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _torture_io import ROOT, child_env, file_sha, parses
from dicomcommit import Manifest, Stager, commit
from dicomcommit._faults import BATCH_POINTS, POINTS
from dicomcommit.committing.recover import recover
from dicomcommit.manifests import ENV_MANIFEST
from dicomcommit.synthetic import plan_jobs, synthetic_dataset

_SCRIPT = Path(__file__).resolve()


@dataclass
class Totals:
    trials: int = 0
    killed: Counter[str] = field(default_factory=Counter)
    staged: int = 0
    lost: int = 0
    partial: int = 0
    replaced: int = 0
    escaped: int = 0
    recorded_twice: int = 0
    left_in_staging: int = 0
    failures: list[str] = field(default_factory=list)


def child_stage(staging: str, ledger: str, seed: int, files: int) -> None:
    """Stage the trial's datasets (with stage(), or stage_many() four at a time, by the
    seed's parity), appending each returned name and hash to the ledger."""
    jobs = plan_jobs(files, seed)
    step = 4 if seed % 2 else 1
    with Stager(staging) as stager, open(ledger, "a") as out:
        for start in range(0, len(jobs), step):
            datasets = [synthetic_dataset(ROOT, index, variant) for index, variant in jobs[start : start + step]]
            paths = stager.stage_many(datasets) if step > 1 else [stager.stage(datasets[0])]
            for path in paths:
                out.write(f"{path.name} {file_sha(path)}\n")
            out.flush()


def child_commit(staging: str, archive: str, batch: int) -> None:
    commit(staging, archive, batch_size=batch)


def _run_child(args: list[str], crash_at: str | None) -> bool:
    """Run this script as a child; True if it was killed at its crash point."""
    result = subprocess.run([sys.executable, str(_SCRIPT), "--child", *args], env=child_env(crash_at),
                            capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    if result.returncode == -9:
        return True
    if result.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed: {result.stderr[-2000:]}")
    return False


def trial(number: int, seed: int, files: int, root: Path, totals: Totals) -> None:
    rng = random.Random(seed * 1_000_003 + number)
    staging, archive, ledger = root / "staging", root / "archive", root / "ledger.txt"
    staging.mkdir()
    ledger.touch()
    point = POINTS[number % len(POINTS)]
    crash = f"{point}:{rng.randint(1, 2 if point in BATCH_POINTS else files)}"
    stage_crash = crash if point.startswith("stage:") else None
    commit_crash = crash if point.startswith("commit:") else None
    if _run_child(["stage", str(staging), str(ledger), str(rng.randrange(1 << 30)), str(files)], stage_crash):
        totals.killed[point] += 1
    if _run_child(["commit", str(staging), str(archive), str(rng.randint(1, 8))], commit_crash):
        totals.killed[point] += 1
    seen = _inodes(archive)

    recover(archive, staging, part_age=0)
    commit(staging, archive)
    after = recover(archive, staging, check=True, part_age=0)
    if after.needs_attention:
        totals.failures.append(f"trial {number}: recover --check still reports {after.to_dict()}")
    _check(root, staging, archive, ledger, seen, totals, f"trial {number} ({crash})")


def _inodes(archive: Path) -> dict[str, tuple[int, str]]:
    found = {}
    for rel in _archive_files(archive):
        path = archive / rel
        found[rel] = (path.stat().st_ino, file_sha(path))
    return found


def _archive_files(archive: Path) -> list[str]:
    if not archive.exists():
        return []
    return sorted(
        str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file() and ".dicomcommit" not in p.parts
    )


def _check(  # noqa: PLR0917 -- one trial's state, checked in one place
    root: Path, staging: Path, archive: Path, ledger: Path, seen: dict[str, tuple[int, str]], totals: Totals, label: str
) -> None:
    staged = [line.split() for line in ledger.read_text().splitlines() if line.strip()]
    totals.staged += len(staged)
    with Manifest(archive) as manifest:
        rows = manifest.records()
    by_source = Counter(r.source for r in rows)
    committed = {r.target: r for r in rows if r.status == "committed"}
    files = {rel: file_sha(archive / rel) for rel in _archive_files(archive)}

    for name, sha in staged:
        mine = [r for r in rows if r.source == name]
        if len(mine) != 1 or mine[0].sha256 != sha or mine[0].status not in ("committed", "duplicate", "conflict"):
            totals.lost += 1
            totals.failures.append(f"{label}: {name} recorded {len(mine)} times: {mine}")
            continue
        row = mine[0]
        held = files.get(row.path) if row.status != "conflict" else _sha_of(archive / row.path)
        kept = held == sha or (row.status == "duplicate" and row.target is not None and row.target in committed)
        if not kept:
            totals.lost += 1
            totals.failures.append(f"{label}: the bytes of {name} are not in the archive ({row})")
    totals.recorded_twice += sum(1 for count in by_source.values() if count > 1)

    for rel, sha in files.items():
        owner = committed.get(rel)
        if owner is None or owner.sha256 != sha or not parses(archive / rel):
            totals.partial += 1
            totals.failures.append(f"{label}: {rel} is partial or unrecorded")
    for rel, (inode, sha) in seen.items():
        path = archive / rel
        if not path.exists() or path.stat().st_ino != inode or files.get(rel) != sha:
            totals.replaced += 1
            totals.failures.append(f"{label}: {rel} was replaced or removed")

    if os.environ.get(ENV_MANIFEST) and (archive / ".dicomcommit" / "manifest.sqlite").exists():
        totals.failures.append(f"{label}: an SQLite manifest was written, not the PostgreSQL one")
    left = [p.name for p in staging.iterdir() if not p.name.startswith(".")]
    totals.left_in_staging += len(left)
    allowed = {staging, archive, ledger}
    for path in root.rglob("*"):
        if path.is_file() and not any(a == path or a in path.parents for a in allowed):
            totals.escaped += 1
            totals.failures.append(f"{label}: {path} written outside the archive")


def _sha_of(path: Path) -> str | None:
    try:
        return file_sha(path)
    except FileNotFoundError:
        return None


def run(trials: int, seed: int, files: int, directory: str | None, *, postgresql: bool = False) -> Totals:
    totals = Totals()
    with contextlib.ExitStack() as stack:
        server = None
        if postgresql:  # a throwaway server; each trial gets a fresh database, named by the environment
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.pg_server import PostgresServer  # noqa: PLC0415 -- only with --postgresql

            # In the system's temp dir: the server's socket path must stay under 108 bytes.
            base = stack.enter_context(tempfile.TemporaryDirectory(prefix="dcpg-"))
            server = stack.enter_context(PostgresServer(Path(base)))
        for number in range(trials):
            if server is not None:
                os.environ[ENV_MANIFEST] = server.create_database()  # the children inherit it
            with tempfile.TemporaryDirectory(prefix="dicomcommit-torture-", dir=directory) as tmp:
                trial(number, seed, files, Path(tmp), totals)
            totals.trials += 1
    return totals


def print_table(totals: Totals) -> None:
    print(f"{'trials':>7} {'staged':>7} {'lost':>5} {'partial':>8} {'replaced':>9} {'escaped':>8} "
          f"{'twice':>6} {'left':>5}")  # fmt: skip
    print(f"{totals.trials:>7} {totals.staged:>7} {totals.lost:>5} {totals.partial:>8} {totals.replaced:>9} "
          f"{totals.escaped:>8} {totals.recorded_twice:>6} {totals.left_in_staging:>5}")  # fmt: skip
    print("\nkilled at:")
    for point in POINTS:
        print(f"  {point:<26} {totals.killed[point]:>5}")
    for failure in totals.failures[:20]:
        print(f"FAIL {failure}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--random" in argv:  # the random-time kills of the real CLI take their own options
        import torture_random  # noqa: PLC0415 -- beside this script, on sys.path when run as one

        return torture_random.main([a for a in argv if a != "--random"])
    if argv[:1] == ["--child"]:
        kind, *rest = argv[1:]
        if kind == "stage":
            child_stage(rest[0], rest[1], int(rest[2]), int(rest[3]))
        else:
            child_commit(rest[0], rest[1], int(rest[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=24, help="stage operations per trial [24]")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--dir", default=None, help="where trials run [the system temp dir]")
    parser.add_argument("--postgresql", action="store_true", help="with a PostgreSQL manifest (a server of its own; "
                        "no archive lock)")  # fmt: skip
    parser.add_argument("--random", action="store_true", help="kill the real CLI at random moments instead "
                        "(scripts/torture_random.py --help)")  # fmt: skip
    args = parser.parse_args(argv)
    totals = run(args.trials, args.seed, args.files, args.dir, postgresql=args.postgresql)
    if args.json:
        print(json.dumps({**asdict(totals), "killed": dict(totals.killed)}, indent=2))
    else:
        print_table(totals)
    clean = not (totals.lost or totals.partial or totals.replaced or totals.escaped or totals.recorded_twice)
    return 0 if clean and not totals.left_in_staging and not totals.failures else 1


if __name__ == "__main__":
    sys.exit(main())
