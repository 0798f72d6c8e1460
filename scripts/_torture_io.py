"""Processes and files for the torture scripts (scripts/torture.py, scripts/torture_random.py).

Running commands: to completion, watched for their first change on disk, or SIGKILLed after a
delay, each in an environment whose ``DICOMCOMMIT_CRASH_AT`` is set or cleared. Files: the
datasets written as bytes, a trial's files written old, and what an archive holds (its
names, bytes and manifest rows), read back and copied.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom

from dicomcommit.synthetic import synthetic_dataset

ROOT = "1.2.826.0.1.3680043.10.5151"  # the UID root of every synthetic dataset
CLI = (sys.executable, "-m", "dicomcommit")
STATE = ".dicomcommit"
TIMEOUT = 300.0
_COPIES = ("conflicts", "invalid", "rejected", "replaced")  # hash-named copies in .dicomcommit/
_HOUR = 3600.0

Step = tuple[list[str], tuple[int, ...]]  # argv, the exit codes of a successful run
Snapshot = dict[str, tuple[int, str]]  # archive-relative name -> (inode, sha256)


class TrialError(Exception):
    """A command failed or hung: the trial cannot be checked."""


@dataclass(frozen=True)
class Env:
    startup: float  # seconds a bare `commit --help` takes: the lower bound when no change was seen
    commit_opts: tuple[str, ...]  # ("--settle", "0") when the CLI has it
    ingest_opts: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    id: int
    status: str
    target: str | None
    path: str
    source: str
    sha256: str | None
    resolution: str | None


# --- processes ------------------------------------------------------------------------


def cli(*args: str | Path) -> list[str]:
    return [*CLI, *(str(a) for a in args)]


def child_env(crash: str | None) -> dict[str, str]:
    """This process's environment, with ``DICOMCOMMIT_CRASH_AT`` set to *crash* (or cleared)."""
    env = {k: v for k, v in os.environ.items() if k != "DICOMCOMMIT_CRASH_AT"}
    if crash:
        env["DICOMCOMMIT_CRASH_AT"] = crash
    return env


def run_checked(argv: list[str], codes: tuple[int, ...], cwd: Path, crash: str | None = None) -> int:
    try:
        result = subprocess.run(argv, cwd=cwd, env=child_env(crash), capture_output=True, text=True, timeout=TIMEOUT,
                                check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise TrialError(f"{_show(argv)} hung for {TIMEOUT:g} s") from exc
    if result.returncode not in codes:
        said = f"{result.stdout[-1500:]}{result.stderr[-1500:]}"
        raise TrialError(f"{_show(argv)} exited {result.returncode}: {said}")
    return result.returncode


def run_watched(argv: list[str], codes: tuple[int, ...], cwd: Path, watch: Path) -> tuple[float, float | None]:
    """Run *argv* to completion; return its duration and when it first changed the directory *watch*."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=child_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    initial, first = _mtime(watch), None
    while proc.poll() is None:
        if first is None and _mtime(watch) != initial:
            first = time.perf_counter() - started
        if time.perf_counter() - started > TIMEOUT:
            proc.kill()
            raise TrialError(f"{_show(argv)} hung for {TIMEOUT:g} s")
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


def run_killed(argv: list[str], codes: tuple[int, ...], cwd: Path, delay: float) -> bool:
    """Start *argv*, SIGKILL its process group after *delay* seconds; True if it was killed."""
    proc = subprocess.Popen(argv, cwd=cwd, env=child_env(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        raise TrialError(f"{_show(argv)} hung for {TIMEOUT:g} s") from exc
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # header readers of an ingest that exited on its own
    if proc.returncode == -signal.SIGKILL:
        return True
    if proc.returncode not in codes:
        raise TrialError(f"{_show(argv)} exited {proc.returncode}: {err.decode(errors='replace')[-1500:]}")
    return False


def _show(argv: list[str]) -> str:
    return " ".join(["dicomcommit", *argv[3:]] if argv[:3] == list(CLI) else argv)


def measure_env() -> Env:
    started = time.perf_counter()
    commit_help = subprocess.run(cli("commit", "--help"), capture_output=True, text=True, check=True).stdout
    startup = time.perf_counter() - started
    ingest_help = subprocess.run(cli("ingest", "--help"), capture_output=True, text=True, check=True).stdout
    settle = ("--settle", "0")
    return Env(startup, settle if "--settle" in commit_help else (), settle if "--settle" in ingest_help else ())


# --- files ----------------------------------------------------------------------------


def encode(index: int, variant: int) -> bytes:
    out = BytesIO()
    pydicom.dcmwrite(out, synthetic_dataset(ROOT, index, variant), enforce_file_format=True)
    return out.getvalue()


def write_old(path: Path, data: bytes, age: int) -> None:
    """Write *path* with an mtime an hour (and *age* seconds) back: settled, and in a fixed order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - _HOUR - age
    os.utime(path, (stamp, stamp))


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parses(path: Path) -> bool:
    try:
        pydicom.dcmread(path)
    except Exception:  # any parse failure is a partial file here
        return False
    return True


def repoint_journal(staging: Path) -> None:
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


def snapshot(archive: Path) -> Snapshot:
    """Final names and hash-named copies (not the manifest, lock or temp copies)."""
    found: Snapshot = {}
    for directory, dirs, names in os.walk(archive):
        rel_dir = os.path.relpath(directory, archive)
        if rel_dir == STATE:
            dirs[:] = [d for d in dirs if d in _COPIES]
            continue
        for name in names:
            path = Path(directory, name)
            found[str(path.relative_to(archive))] = (path.lstat().st_ino, file_sha(path))
    return found


def shape_of(base: Path) -> frozenset[tuple[str, int, int, int]]:
    """Every entry with its inode, size and mtime: whether a killed command changed anything."""
    return frozenset((str(p.relative_to(base)), st.st_ino, st.st_size, st.st_mtime_ns)
                     for p in base.rglob("*") for st in (p.lstat(),))  # fmt: skip


def read_rows(archive: Path) -> list[Row]:
    path = archive / STATE / "manifest.sqlite"
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


def copy_tree(src: Path, dst: Path) -> None:
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
