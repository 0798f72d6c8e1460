"""Durability with one syncfs per batch where it is as good as fsync, and one fsync per
file and directory elsewhere; the order is the same either way (bytes durable before
names, names durable before the manifest row).

The filesystems are real: the test directory's own (ext4 on CI), a tmpfs, and an overlayfs,
whose syncfs dicomcommit does not trust. Calls are recorded as they happen (and still done).
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Stager, _fs, commit, ingest
from dicomcommit.archives import filesystem
from dicomcommit.manifests.sqlite import SQLiteManifest
from tests.conftest import archive_files, overlay, tmpfs, write_foreign

MakeDs = Callable[..., Dataset]


def _fs_type(path: Path) -> int:
    """The filesystem type of *path*, as stat(1) reads it (not as dicomcommit does)."""
    return int(subprocess.run(["stat", "-f", "-c", "%t", str(path)], capture_output=True, text=True,
                              check=True).stdout, 16)  # fmt: skip


def _covers(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _fs.syncfs_covers(fd)
    finally:
        os.close(fd)


@pytest.fixture(params=["syncfs", "overlayfs"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem whose syncfs is trusted (the test directory's, when it
    is one; else a tmpfs), or on an overlayfs, whose syncfs is not."""
    if request.param == "overlayfs":
        with overlay(tmp_path / "ovl") as mount:
            yield mount
    elif _fs_type(tmp_path) in _fs.SYNCFS_FILESYSTEMS:
        yield tmp_path
    else:
        with tmpfs(tmp_path / "tmpfs", "256m") as mount:
            yield mount


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(call, name) for every fsync (of a file or a directory), syncfs, link and manifest
    write, in order."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_syncfs, real_link, real_add = os.fsync, _fs.syncfs, os.link, SQLiteManifest.add

    def fsync(fd: int) -> None:
        kind = "fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync"
        seen.append((kind, os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def syncfs(fd: int) -> None:
        seen.append(("syncfs", os.readlink(f"/proc/self/fd/{fd}")))
        real_syncfs(fd)

    def link(src: Any, dst: Any, **kwargs: Any) -> None:
        seen.append(("link", os.path.basename(src)))
        real_link(src, dst, **kwargs)

    def add(self: SQLiteManifest, records: Any) -> Any:
        seen.append(("manifest", ""))
        return real_add(self, records)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(_fs, "syncfs", syncfs)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(SQLiteManifest, "add", add)
    return seen


def test_syncfs_is_trusted_exactly_on_the_filesystems_listed(tmp_path: Path) -> None:
    assert _covers(tmp_path) == (_fs_type(tmp_path) in _fs.SYNCFS_FILESYSTEMS)
    with tmpfs(tmp_path / "tmpfs", "16m") as mount:
        assert _covers(mount)
    with overlay(tmp_path / "ovl") as mount:
        assert not _covers(mount)


def _stage(staging: Path, make_ds: MakeDs, count: int) -> None:
    with Stager(staging) as stager:
        stager.stage_many(make_ds(i) for i in range(count))


def _after_each_batch(seen: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """The calls of each batch, up to its manifest write."""
    batches: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for call in seen:
        if call[0] == "manifest":
            batches.append(current)
            current = []
        else:
            current.append(call)
    return batches


def test_a_durable_commit_syncs_names_once_per_batch_before_the_manifest(
    where: Path, make_ds: MakeDs, calls: list[tuple[str, str]]
) -> None:
    staging, archive = where / "staging", where / "archive"
    _stage(staging, make_ds, 60)  # 60 instances in 3 series of one study
    calls.clear()  # the commit's only
    commit(staging, archive, batch_size=30)
    batches = _after_each_batch(calls)
    assert len(batches) == 2
    for batch in batches:
        links = [i for i, (call, _) in enumerate(batch) if call == "link"]
        assert len(links) == 30
        after = batch[links[-1] + 1 :]
        if _covers(where):  # one syncfs of the archive's filesystem, no fsync of any directory
            assert [call for call, _ in after] == ["syncfs"]
            assert after[0][1].startswith(str(archive))  # (through any directory of it)
        else:  # each directory that gained entries, once (root, patient, study, series)
            assert {call for call, _ in after} == {"fsync dir"}
            assert 3 <= len(after) <= 6
            assert len(set(after)) == len(after)
    assert len(archive_files(archive)) == 60


def test_a_batch_over_more_directories_than_stay_open_still_makes_them_all_durable(
    where: Path, make_ds: MakeDs, calls: list[tuple[str, str]]
) -> None:
    """Directories closed mid-batch (at most 256 stay open) are covered as the open ones are."""
    staging, archive = where / "staging", where / "archive"
    _stage(staging, make_ds, 300)
    calls.clear()
    commit(staging, archive, template="{SOPInstanceUID}/{SOPInstanceUID}.dcm")
    (batch,) = _after_each_batch(calls)
    dir_syncs = [name for call, name in batch if call == "fsync dir"]
    if _covers(where):
        assert dir_syncs == []
        assert batch[-1][0] == "syncfs"
    else:  # each of the 300 new directories, and the archive root, exactly once
        assert len(dir_syncs) == len(set(dir_syncs)) == 301
    assert len(archive_files(archive)) == 300


def test_ingest_copies_are_durable_before_their_names_and_names_before_the_manifest(
    where: Path, make_ds: MakeDs, calls: list[tuple[str, str]]
) -> None:
    source, archive = where / "source", where / "archive"
    (source / "a").mkdir(parents=True)
    for i in range(40):
        write_foreign(source / "a" / f"{i}.dcm", make_ds(i))
    calls.clear()
    report = ingest(source, archive)
    assert report.committed == 40
    (batch,) = _after_each_batch(calls)
    links = [i for i, (call, name) in enumerate(batch) if call == "link"]
    linked = {batch[i][1] for i in links}
    assert len(linked) == 40
    assert all(name.endswith(".part") for name in linked)  # the copies in tmp
    before_links = batch[: links[0]]
    if _covers(where):  # one flush for all the copies (no fsync of each), before the first link
        assert ("syncfs", str(archive / ".dicomcommit" / "tmp")) in before_links
        assert not any(call == "fsync" for call, _ in batch)
        assert [call for call, _ in batch[links[-1] + 1 :]] == ["syncfs"]
    else:
        assert {name for call, name in before_links if call == "fsync"} == linked
        assert {call for call, _ in batch[links[-1] + 1 :]} == {"fsync dir"}
    assert len(archive_files(archive)) == 40
    assert os.listdir(archive / ".dicomcommit" / "tmp") == []  # no copy is left behind


def test_copies_made_ahead_hold_a_bounded_space_and_the_rest_are_synced_one_by_one(
    tmp_path: Path, make_ds: MakeDs, monkeypatch: pytest.MonkeyPatch, calls: list[tuple[str, str]]
) -> None:
    """A rerun of ingest finds every name taken: its copies made ahead wait until the batch
    ends, so at most COPY_AHEAD_BYTES of them exist at once."""
    source, archive = tmp_path / "source", tmp_path / "archive"
    source.mkdir()
    for i in range(40):
        write_foreign(source / f"{i}.dcm", make_ds(i))
    size = (source / "0.dcm").stat().st_size
    monkeypatch.setattr(filesystem, "COPY_AHEAD_BYTES", 4 * size)
    ingest(source, archive)
    tmp = archive / ".dicomcommit" / "tmp"
    held: list[int] = []
    real_copy = _fs.copy_exclusive

    def copy(*args: Any, **kwargs: Any) -> str:
        held.append(len(os.listdir(tmp)))
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(_fs, "copy_exclusive", copy)
    calls.clear()
    again = ingest(source, archive)  # every file a duplicate now
    assert again.duplicates == 40
    assert len(held) == 40
    assert max(held) <= 4  # the 4 made ahead, never the batch's 40
    fsynced = [name for call, name in calls if call == "fsync"]
    assert len(fsynced) == 36  # the others: each copy durable before its link, as before
    assert os.listdir(tmp) == []
