"""The demo: several processes stage synthetic datasets, some colliding, then one commit.

Every run uses fresh UIDs, so it can be repeated on the same directories. The expected
outcome is computed from the job list, and the demo checks the archive against it.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import TextIO

from pydicom.uid import generate_uid

from dicomcommit.cli.display import print_summary, print_table
from dicomcommit.committing.driver import commit
from dicomcommit.errors import EXIT_FAILURE, EXIT_OK, UsageError
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Status
from dicomcommit.scanning import scan_staging
from dicomcommit.staging.stager import Stager
from dicomcommit.synthetic import plan_jobs, synthetic_dataset


def _stage_worker(staging: str, root: str, jobs: list[tuple[int, int]]) -> None:
    with Stager(staging) as stager:
        for index, variant in jobs:
            stager.stage(synthetic_dataset(root, index, variant))


def run_demo(
    staging: Path, archive: Path, *, workers: int, files: int, out: TextIO, manifest: str | None = None
) -> int:
    """Stage ``workers * files`` datasets from *workers* processes, commit, report, check.

    Returns the exit code: 0 when the archive holds exactly what was expected.

    Raises:
        UsageError: *workers* or *files* below 1, or files already waiting in *staging*.
    """
    if workers < 1 or files < 1:
        raise UsageError("--workers and --files must be at least 1")
    staging.mkdir(parents=True, exist_ok=True)
    waiting = scan_staging(staging).files
    if waiting:
        raise UsageError(
            f"{staging}/ holds {len(waiting)} files from an earlier run; commit them first "
            f"(dicomcommit commit {staging} {archive}) so the demo can check its own counts"
        )
    root = generate_uid(prefix=None)  # 2.25.<uuid as integer>: fresh for every run
    jobs = plan_jobs(workers * files)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_stage_worker, [(str(staging), root, jobs[w::workers]) for w in range(workers)])
    staged_s = time.perf_counter() - started
    print(f"{workers} processes staged {len(jobs)} datasets into {staging}/ in {staged_s:.2f} s "
          f"({len(jobs) / staged_s:,.0f} files/s)", file=out)  # fmt: skip

    started = time.perf_counter()
    report = commit(staging, archive, manifest=manifest)
    commit_s = time.perf_counter() - started
    print(f"committed into {archive}/ in {commit_s:.2f} s ({len(jobs) / commit_s:,.0f} files/s)", file=out)
    print_summary(report, archive, out)
    with open_manifest(archive, manifest=manifest) as opened:
        conflicts = opened.records(Status.CONFLICT, run=report.run)
    print(f"\nconflicts of this run ({len(conflicts)}; first 10):", file=out)
    print_table(conflicts[:10], out)
    return _check(report.counts(), jobs, out)


def _check(counts: dict[str, int], jobs: list[tuple[int, int]], out: TextIO) -> int:
    seen: dict[int, set[int]] = {}
    expected = {"committed": 0, "duplicates": 0, "conflicts": 0}
    for index, variant in jobs:
        variants = seen.setdefault(index, set())
        if not variants:
            expected["committed"] += 1
        elif variant in variants:
            expected["duplicates"] += 1
        else:
            expected["conflicts"] += 1
        variants.add(variant)
    got = {k: counts[k] for k in expected}
    ok = got == expected and counts["invalid"] == 0
    verdict = "every staged dataset is accounted for" if ok else f"MISMATCH: expected {expected}, got {got}"
    print(f"\ncheck: {verdict}", file=out)
    return EXIT_OK if ok else EXIT_FAILURE
