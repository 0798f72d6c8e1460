from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomcommit import EncodeError, StageError, Stager, UsageError
from dicomcommit.scanning import scan_staging
from dicomcommit.staging.journal import JournalIndex, journal_dir
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT


def test_staged_bytes_equal_pydicom_dcmwrite(tmp_path: Path, ct: Dataset) -> None:
    staged = Stager(tmp_path / "staging").stage(ct)
    reference = tmp_path / "reference.dcm"
    pydicom.dcmwrite(reference, ct, enforce_file_format=True)
    assert staged.read_bytes() == reference.read_bytes()
    assert staged.suffix == ".dcm"
    assert staged.parent == tmp_path / "staging"


def test_stage_records_hash_size_and_naming_attributes(tmp_path: Path, ct: Dataset) -> None:
    stager = Stager(tmp_path, keywords=["ImageType"])
    staged = stager.stage(ct)
    index = JournalIndex(tmp_path)
    index.refresh()
    record = index.get(staged.name)
    assert record is not None
    data = staged.read_bytes()
    assert record.sha256 == hashlib.sha256(data).hexdigest()
    assert record.size == len(data)
    assert record.attrs["SOPInstanceUID"] == ct.SOPInstanceUID
    assert record.attrs["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert record.attrs["AccessionNumber"] is None  # recorded as absent, not missing from the record
    assert record.durable is True


def _journal_hashes(staging: Path) -> dict[str, str]:
    index = JournalIndex(staging)
    index.refresh()
    hashes = {}
    for path in staging.glob("*.dcm"):
        record = index.get(path.name)
        assert record is not None
        hashes[path.name] = record.sha256
    index.close()
    return hashes


def _stage_big(stager: Stager, index: int) -> None:
    stager.stage(synthetic_dataset(ROOT, index, size=512))  # the parent's stager, inherited by fork
    stager.close()


def test_a_big_file_hashed_beside_its_write_records_its_own_hash(tmp_path: Path) -> None:
    """0.5 MB files are hashed in a helper thread; a forked child must start its own helper."""
    with Stager(tmp_path) as stager:
        paths = [stager.stage(synthetic_dataset(ROOT, i, size=512)) for i in range(3)]
        child = multiprocessing.get_context("fork").Process(target=_stage_big, args=(stager, 3))
        child.start()  # forked while this stager's helper threads exist
        child.join(timeout=60)
        assert child.exitcode == 0
    assert all(p.stat().st_size > 512 * 1024 for p in paths)
    hashes = _journal_hashes(tmp_path)
    assert len(hashes) == 4
    assert hashes == {name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in hashes}


def test_staged_file_mode_follows_umask(tmp_path: Path, ct: Dataset) -> None:
    old = os.umask(0o027)
    try:
        staged = Stager(tmp_path).stage(ct)
    finally:
        os.umask(old)
    assert stat.S_IMODE(staged.stat().st_mode) == 0o640


def test_encode_failure_stages_nothing(tmp_path: Path, make_ds: Callable[..., Dataset]) -> None:
    ds = make_ds(1)
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(EncodeError):
        Stager(tmp_path).stage(ds)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_os_error_names_the_file_and_leaves_nothing(
    tmp_path: Path, ct: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    stager = Stager(tmp_path)

    def no_space(fd: int, data: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(StageError) as info:
        stager.stage(ct)
    monkeypatch.undo()
    assert info.value.errno == 28
    assert str(tmp_path) in str(info.value)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_staging_dir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError):
        Stager(tmp_path / "file")


def test_many_threads_share_one_stager(tmp_path: Path, make_ds: Callable[..., Dataset]) -> None:
    stager = Stager(tmp_path, durable=False)
    paths: list[Path] = []
    lock = threading.Lock()

    def work(start: int) -> None:
        for i in range(start, start + 50):
            path = stager.stage(make_ds(i))
            with lock:
                paths.append(path)

    threads = [threading.Thread(target=work, args=(n * 50,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 400
    lines = b"".join(p.read_bytes() for p in journal_dir(tmp_path).iterdir()).splitlines()
    names = {json.loads(line)["name"] for line in lines}
    assert names == {p.name for p in paths}  # one intact line per staged file


def test_a_torn_journal_line_only_costs_the_fast_path(tmp_path: Path, ct: Dataset) -> None:
    stager = Stager(tmp_path)
    staged = stager.stage(ct)
    journal = next(journal_dir(tmp_path).iterdir())
    with journal.open("ab") as f:
        f.write(b'{"name": "half a li')
    index = JournalIndex(tmp_path)
    index.refresh()
    assert index.get(staged.name) is not None
    assert index.get("half a li") is None


def test_stage_many_stages_all_and_syncs_the_directory_once(
    tmp_path: Path, make_ds: Callable[..., Dataset], dir_fsyncs: list[int]
) -> None:
    stager = Stager(tmp_path)
    stager.stage(make_ds(999))  # opens the directory before counting
    dir_fsyncs.clear()
    paths = stager.stage_many(make_ds(i) for i in range(40))
    dir_syncs = list(dir_fsyncs)
    assert len(dir_syncs) == 1
    assert len(set(paths)) == 40
    assert sorted(paths) == paths  # names sort in staging order
    for i, path in enumerate(paths):
        reference = tmp_path / "reference.dcm"
        pydicom.dcmwrite(reference, make_ds(i), enforce_file_format=True)
        assert path.read_bytes() == reference.read_bytes()
        reference.unlink()
    assert not list(tmp_path.glob("*.part"))


def test_stage_many_failure_keeps_what_was_staged_complete(tmp_path: Path, make_ds: Callable[..., Dataset]) -> None:
    def datasets() -> Iterator[Dataset]:
        yield make_ds(1)
        yield make_ds(2)
        broken = make_ds(3)
        del broken.file_meta.TransferSyntaxUID
        yield broken

    with pytest.raises(EncodeError):
        Stager(tmp_path).stage_many(datasets())
    staged = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(staged) == 2
    assert all(p.suffix == ".dcm" and pydicom.dcmread(p).SOPInstanceUID for p in staged)


def test_commit_takes_staged_files_by_staging_time_and_others_by_mtime(tmp_path: Path) -> None:
    """A stager's name carries its staging time, which orders it (no stat needed); a file
    of another tool is ordered by its mtime among them."""
    with Stager(tmp_path, durable=False) as stager:
        first = stager.stage(synthetic_dataset(ROOT, 1))
        between = tmp_path / "foreign.dcm"
        pydicom.dcmwrite(between, synthetic_dataset(ROOT, 2), enforce_file_format=True)
        last = stager.stage(synthetic_dataset(ROOT, 3))
    moment = int(last.name[:16], 16)
    os.utime(first, ns=(moment + 10**9, moment + 10**9))  # touched later: still staged first
    os.utime(between, ns=(moment - 1, moment - 1))
    assert scan_staging(tmp_path).files == [first.name, between.name, last.name]
    os.utime(between, ns=(moment + 1, moment + 1))
    assert scan_staging(tmp_path).files == [first.name, last.name, between.name]
