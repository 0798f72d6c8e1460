"""Many real processes staging while two real processes commit, on the same directories."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import Counter
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from dicomcommit import Manifest, Stager, commit
from dicomcommit.synthetic import plan_jobs, synthetic_dataset
from tests.conftest import ROOT, archive_files, sha256_of, staged_files

STAGERS = 8
COMMITTERS = 3
FILES = 10_000

_fork = multiprocessing.get_context("fork")


def _stage(staging: str, jobs: list[tuple[int, int]], names: multiprocessing.Queue[list[str]]) -> None:
    with Stager(staging) as stager:
        names.put([stager.stage(synthetic_dataset(ROOT, i, v)).name for i, v in jobs])


def _keep_committing(staging: str, archive: str, stop: Event) -> None:
    while not stop.is_set():
        commit(staging, archive, batch_size=50)


def _watch(archive: Path, seen: dict[str, int], stop: threading.Event) -> None:
    while not stop.is_set():
        _scan(archive, seen)


def _scan(archive: Path, seen: dict[str, int]) -> None:
    """Record the inode of every archive file the first time it is seen."""
    for directory, _, files in os.walk(archive):
        if ".dicomcommit" in directory:
            continue
        for name in files:
            path = os.path.join(directory, name)
            try:
                seen.setdefault(path, os.lstat(path).st_ino)
            except FileNotFoundError:
                pytest.fail(f"{path} disappeared")


@pytest.mark.slow
def test_eight_stagers_and_three_committers_lose_and_replace_nothing(tmp_path: Path) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    jobs = plan_jobs(FILES, seed=7, duplicates=0.05, conflicts=0.05)  # 10 % colliding, half identical
    queue: multiprocessing.Queue[list[str]] = _fork.Queue()
    stop_committers = _fork.Event()
    stagers = [_fork.Process(target=_stage, args=(str(staging), jobs[w::STAGERS], queue)) for w in range(STAGERS)]
    committers = [
        _fork.Process(target=_keep_committing, args=(str(staging), str(archive), stop_committers))
        for _ in range(COMMITTERS)
    ]
    seen: dict[str, int] = {}
    stop_watch = threading.Event()
    for p in stagers + committers:
        p.start()
    watcher = threading.Thread(target=_watch, args=(archive, seen, stop_watch), daemon=True)
    watcher.start()
    try:
        staged_names = [name for _ in stagers for name in queue.get(timeout=300)]
        for p in stagers:
            p.join(timeout=300)
            assert p.exitcode == 0
        stop_committers.set()
        for p in committers:
            p.join(timeout=300)
            assert p.exitcode == 0
        commit(staging, archive)  # whatever the committers had not reached
    finally:
        stop_committers.set()
        stop_watch.set()
        watcher.join()
        for p in stagers + committers:
            p.join(timeout=60)
            if p.exitcode is None:
                p.kill()
    _scan(archive, seen)

    assert staged_files(staging) == []
    with Manifest(archive) as manifest:
        rows = manifest.records()
    # every staged file accounted for exactly once
    assert len(staged_names) == FILES
    assert sorted(r.source for r in rows) == sorted(staged_names)
    statuses = Counter(r.status for r in rows)
    instances = len({i for i, _ in jobs})
    conflicting_jobs = sum(1 for _, v in jobs if v == 1)
    assert statuses == {
        "committed": instances,
        "duplicate": FILES - instances - conflicting_jobs,
        "conflict": conflicting_jobs,
    }
    # one committed row per name, matching the bytes there; every conflict's bytes are kept
    files = archive_files(archive)
    committed = {r.target: r.sha256 for r in rows if r.status == "committed"}
    assert committed == files
    for r in rows:
        if r.status == "conflict":
            assert r.target is not None
            assert sha256_of(archive / r.path) == r.sha256 != files[r.target]
    # no final file was ever replaced: the inode first seen is the inode at the end
    for path, inode in seen.items():
        assert os.lstat(path).st_ino == inode, f"{path} was replaced"
    assert len(seen) == instances
