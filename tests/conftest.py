"""Shared fixtures: real datasets (synthetic, or shipped inside the pydicom wheel)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomcommit.synthetic import synthetic_dataset
from tests.pg_server import PostgresServer
from tests.s3_proxy import FaultProxy
from tests.s3_server import MotoServer

ROOT = "1.2.826.0.1.3680043.10.1234"


def wheel_file(name: str) -> Path:
    """A file that ships inside the pydicom wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not in the pydicom wheel"
    return Path(str(path))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def archive_files(archive: Path) -> dict[str, str]:
    """Every file of the archive outside .dicomcommit/, relative path -> sha256."""
    return {
        str(p.relative_to(archive)): sha256_of(p)
        for p in archive.rglob("*")
        if p.is_file() and ".dicomcommit" not in p.relative_to(archive).parts
    }


def staged_files(staging: Path) -> list[Path]:
    return sorted(p for p in staging.iterdir() if p.is_file() and not p.name.startswith("."))


@pytest.fixture
def make_ds() -> Callable[..., Dataset]:
    """synthetic_dataset(ROOT, index, variant): the same arguments give the same bytes."""

    def make(index: int, variant: int = 0) -> Dataset:
        return synthetic_dataset(ROOT, index, variant)

    return make


@pytest.fixture
def ct() -> Dataset:
    return pydicom.dcmread(wheel_file("CT_small.dcm"))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    staging.mkdir()
    return staging, archive


def copy_in(name: str, staging: Path, as_name: str | None = None) -> Path:
    """Put a pydicom test file into staging, as a foreign tool would that finished an hour ago
    (older than commit's settle time)."""
    dest = staging / (as_name or name)
    shutil.copyfile(wheel_file(name), dest)
    settled(dest)
    return dest


def killed_commit(staging: Path, archive: Path, url: str, crash: str, *, host: str, lease: float) -> None:
    """``dicomcommit commit`` into the manifest *url*, as the host *host* with leases of
    *lease* seconds, SIGKILLed at the crash point *crash* (``point:n``)."""
    env = {**os.environ, "DICOMCOMMIT_CRASH_AT": crash, "DICOMCOMMIT_HOST": host,
           "DICOMCOMMIT_LEASE_SECONDS": str(lease)}  # fmt: skip
    argv = [sys.executable, "-m", "dicomcommit", "commit", str(staging), str(archive), "--manifest", url]
    killed = subprocess.run(argv, env=env, capture_output=True, check=False, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def write_foreign(path: Path, ds: Dataset) -> Path:
    """Write *ds* to *path* as another tool would (no stager, no journal), an hour ago."""
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return settled(path)


def write_settled(path: Path, data: bytes | str) -> Path:
    """Write *data* to *path* as another tool would have, an hour ago."""
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return settled(path)


def settled(path: Path, age: float = 3600) -> Path:
    """Make *path* look last modified *age* seconds ago (a foreign file commit will take)."""
    then = time.time() - age
    os.utime(path, (then, then))
    return path


@contextlib.contextmanager
def _mounted(what: str, mount: Path, args: list[str]) -> Iterator[Path]:
    """``mount <args> <mount>``, unmounted afterwards. Mounting needs root: as root (as CI
    runs), a mount that fails fails the test; otherwise the test is skipped."""
    mounted = subprocess.run(["mount", *args, str(mount)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        if os.geteuid() == 0:
            pytest.fail(f"cannot mount {what} at {mount}: {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount {what} here (needs root)")
    try:
        yield mount
    finally:
        # A failing test's traceback may still hold a file open on the mount: detach lazily then.
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of *size* mounted at *mount* (made here), for a real ENOSPC or EROFS (needs root)."""
    mount.mkdir()
    with _mounted("a tmpfs", mount, ["-t", "tmpfs", "-o", f"size={size}", "none"]) as path:
        yield path


@contextlib.contextmanager
def overlay(base: Path) -> Iterator[Path]:
    """An overlayfs mounted at *base*/mnt (its layers below *base*; needs root): a filesystem
    with hard links whose syncfs dicomcommit does not trust, so it fsyncs each file and directory."""
    layers = {name: base / name for name in ("lower", "upper", "work", "mnt")}
    for path in layers.values():
        path.mkdir(parents=True)
    options = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['work']}"
    with _mounted("an overlayfs", layers["mnt"], ["-t", "overlay", "overlay", "-o", options]) as path:
        yield path


@pytest.fixture
def other_fs_staging(tmp_path: Path) -> Iterator[Path]:
    """A staging directory on another filesystem than tmp_path (tmpfs), for real EXDEV."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem here; the injected EXDEV test covers the code")
    staging = shm / f"dicomcommit-test-{os.getpid()}-{tmp_path.name}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging)


@pytest.fixture
def dir_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every fsync of a directory from now on, counted (and still done)."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    return synced


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session (tests/pg_server.py).

    Never skipped: without PostgreSQL's binaries it fails, saying how to install them."""
    with PostgresServer(tmp_path_factory.mktemp("pg")) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server, as a postgresql:// URL."""
    return pg_server.create_database()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server process for the whole session (tests/s3_server.py).

    Never skipped: without boto3 this file does not import, and without moto[server] starting fails, saying so."""
    with MotoServer(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A fresh, empty, versioned bucket on the session's S3 server."""
    return s3_server.create_bucket()


@pytest.fixture
def s3_proxy(s3_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    """A fault-injecting proxy process in front of the session's S3 server, with no rules (tests/s3_proxy.py)."""
    with FaultProxy(s3_server.port, tmp_path_factory.mktemp("s3proxy")) as proxy:
        yield proxy
