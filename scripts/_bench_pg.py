"""The PostgreSQL manifest's measurements for scripts/bench.py (which turns them into rows).

- :func:`committers` (the issue's ``pg_two_committers``): files/s of 2 ``commit()`` processes
  at once, each on its own staging directory of N files, into one archive and one database,
  started together by a barrier and timed from it until the last one is done; against 1 such
  process committing N files. The work per process is the same, so 2x is perfect scaling.
- :func:`vs_sqlite` (``pg_vs_sqlite``): one ``commit()`` of N files in this process, its
  manifest in PostgreSQL over TCP on 127.0.0.1, against the same commit with the default
  SQLite manifest.

The server is a throwaway one of our own (tests/pg_server.py: fsync on, ``synchronous_commit``
at its default). Every variant gets fresh staging directories, a fresh archive and a fresh
database; an untimed commit of an empty staging directory creates the archive and its
manifest first, so that no variant times creating tables. All commits are durable.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicomcommit import Stager, commit
from dicomcommit.manifests.sqlite import default_path

if TYPE_CHECKING:
    from tests.pg_server import PostgresServer

    from _bench_core import Bench

_REPO = Path(__file__).resolve().parent.parent


class Unavailable(Exception):
    """PostgreSQL cannot be used on this machine: its rows are skipped, for this reason."""


@contextlib.contextmanager
def server(bench: Bench) -> Iterator[PostgresServer]:
    """A PostgreSQL server of our own, under the bench's directory while it runs.

    Raises:
        Unavailable: psycopg or PostgreSQL's server binaries are missing, or it did not start.
    """
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))  # tests/pg_server.py, the test suite's throwaway server
    try:
        from tests.pg_server import PostgresServer, pg_bin  # noqa: PLC0415 -- psycopg only when wanted
    except ImportError as exc:
        raise Unavailable(f"psycopg is missing ({exc}): pip install -e '.[postgresql]'") from exc
    try:
        pg_bin()
    except RuntimeError as exc:
        raise Unavailable(f"no PostgreSQL server here: {exc}") from exc
    short: Path | None = None
    try:
        pg = PostgresServer(bench.fresh("pg-server"))
    except ValueError:  # too long a path for its unix socket (say, under pytest's tmp_path): the temp dir
        short = Path(tempfile.mkdtemp(prefix="dicomcommit-bench-pg-"))
        pg = PostgresServer(short)
    try:
        try:
            pg.start()
        except (RuntimeError, OSError) as exc:
            raise Unavailable(f"the PostgreSQL server did not start: {exc}") from exc
        yield pg
    finally:
        pg.stop()
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)


@dataclass
class Setup:
    """One variant's directories: staging directories (staged, durable), an archive with its manifest."""

    stagings: list[Path]
    archive: Path
    manifest: str  # a postgresql:// URL, or the archive's SQLite file


def prepare(bench: Bench, groups: list[list[Dataset]], pg: PostgresServer | None) -> Setup:
    """Stage each group of datasets into a staging directory of its own, and make an archive ready
    with its manifest: in a new database of *pg*, else in the archive's default SQLite file."""
    empty = bench.fresh("empty")
    archive = bench.fresh("archive")
    manifest = pg.create_database() if pg is not None else str(default_path(archive))
    commit(empty, archive, manifest=manifest)  # creates the archive and the manifest's tables
    stagings = []
    for items in groups:
        staging = bench.fresh("staging")
        with Stager(staging, durable=True) as stager:
            stager.stage_many(items)
        stagings.append(staging)
    return Setup(stagings, archive, manifest)


def commit_all(staging: Path, archive: Path, manifest: str, files: int) -> None:
    """Commit *staging* into *archive*, durably; a commit that did not do all the work fails."""
    report = commit(staging, archive, manifest=manifest, settle=0)
    if report.left_in_place or report.committed != files:
        raise RuntimeError(f"commit committed {report.committed} of {files} files; left: {report.left_in_place[:1]}")


def vs_sqlite(bench: Bench, pg: PostgresServer, items: list[Dataset]) -> dict[str, float]:
    """Median files/s of one commit of *items* with each manifest (``sqlite``, ``pg``)."""
    n = len(items)

    def timed(setup: Setup) -> None:
        commit_all(setup.stagings[0], setup.archive, setup.manifest, n)

    return bench.compare(n, {
        "sqlite": (lambda: prepare(bench, [items], None), timed),
        "pg": (lambda: prepare(bench, [items], pg), timed),
    })  # fmt: skip


def _committer(job: tuple[str, str, str, int], barrier: Any, out: Any) -> None:
    staging, archive, manifest, files = job
    barrier.wait()
    started = time.monotonic()
    commit_all(Path(staging), Path(archive), manifest, files)
    out.put((started, time.monotonic()))


def committers(bench: Bench, pg: PostgresServer, groups: list[list[Dataset]]) -> dict[int, float]:
    """Median files/s of 1 and of ``len(groups)`` committer processes into one archive and
    database, process *i* committing ``groups[i]`` (runs interleave the two variants)."""
    ctx = multiprocessing.get_context("fork")  # no connection is open here: forking is safe for libpq
    rates: dict[int, list[float]] = {1: [], len(groups): []}
    for _ in range(bench.runs):
        for procs, runs in rates.items():
            setup = prepare(bench, groups[:procs], pg)
            os.sync()  # no variant pays for the writeback of the last one's files
            barrier, out = ctx.Barrier(procs), ctx.Queue()
            workers = [
                ctx.Process(
                    target=_committer, args=((str(s), str(setup.archive), setup.manifest, len(g)), barrier, out)
                )
                for s, g in zip(setup.stagings, groups[:procs], strict=True)
            ]
            for w in workers:
                w.start()
            for w in workers:  # each sends its few bytes before it exits: joining first cannot block
                w.join()
            failed = [w.exitcode for w in workers if w.exitcode != 0]
            if failed:
                raise RuntimeError(f"a committer process failed (exit code {failed[0]}); see its stderr")
            spans = [out.get(timeout=10) for _ in workers]
            total = sum(len(g) for g in groups[:procs])
            runs.append(total / (max(end for _, end in spans) - min(start for start, _ in spans)))
    return {procs: statistics.median(values) for procs, values in rates.items()}
