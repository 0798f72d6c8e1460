"""Durability depends on the order of syscalls, which no crash short of a power cut shows.

These tests record the calls as they happen (the calls still run) and check the order
DESIGN.md requires: bytes durable before a name points at them, and a lock file that is
never deleted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Manifest, Stager, _fs, commit, recover, resolve
from tests.conftest import write_foreign

MakeDs = Callable[..., Dataset]


def _fd_name(fd: int) -> str:
    return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(call, file name) for every fsync, batch flush, rename and link, in order."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_rename, real_link, real_flush = os.fsync, os.rename, os.link, _fs.flush_files

    def fsync(fd: int) -> None:
        seen.append(("fsync", _fd_name(fd)))
        real_fsync(fd)

    def rename(src: Any, dst: Any, **kwargs: Any) -> None:
        seen.append(("rename", os.path.basename(src)))
        real_rename(src, dst, **kwargs)

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        seen.append(("link", os.path.basename(src)))
        real_link(src, dst, **kwargs)

    def flush(dir_fd: int, names: list[str]) -> None:
        seen.extend(("flush", name) for name in names)
        real_flush(dir_fd, names)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(_fs, "flush_files", flush)
    return seen


def _first(seen: list[tuple[str, str]], call: str, name: str) -> int:
    return next(i for i, event in enumerate(seen) if event == (call, name))


def _part_of(seen: list[tuple[str, str]], staged: str) -> str:
    """The .part name the stager wrote *staged* under (it carries the stager's journal id)."""
    return next(name for _, name in seen if name.startswith(f"{staged}.") and name.endswith(".part"))


def test_stage_fsyncs_the_part_file_before_renaming_it(
    tmp_path: Path, make_ds: MakeDs, events: list[tuple[str, str]]
) -> None:
    staged = Stager(tmp_path).stage(make_ds(1))
    part = _part_of(events, staged.name)
    assert _first(events, "fsync", part) < _first(events, "rename", part)


def test_stage_many_flushes_the_part_files_before_renaming_them(
    tmp_path: Path, make_ds: MakeDs, events: list[tuple[str, str]]
) -> None:
    paths = Stager(tmp_path).stage_many(make_ds(i) for i in range(100))  # two batches of flushes
    for path in paths:
        part = _part_of(events, path.name)
        assert _first(events, "flush", part) < _first(events, "rename", part)


def test_foreign_bytes_are_made_durable_before_any_name_points_at_them(
    dirs: tuple[Path, Path], make_ds: MakeDs, events: list[tuple[str, str]]
) -> None:
    staging, archive = dirs
    for i in range(5):  # written by another tool: nothing says they are on disk
        write_foreign(staging / f"foreign-{i}.dcm", make_ds(i))
    commit(staging, archive)
    for i in range(5):
        name = f"foreign-{i}.dcm"
        assert _first(events, "flush", name) < _first(events, "link", name)


def test_the_lock_file_is_never_deleted(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    commit(staging, archive)
    lock = archive / ".dicomcommit" / "lock"
    inode = lock.stat().st_ino
    Stager(staging).stage(make_ds(1, variant=1))
    commit(staging, archive)
    recover(archive, staging)
    with Manifest(archive) as manifest:
        (conflict,) = manifest.records("conflict")
    resolve(archive, conflict.id or 0, "staged")
    assert lock.stat().st_ino == inode  # the same file all along: released, never removed
