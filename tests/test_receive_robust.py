"""The receiver under load and under faults: many senders at once, senders and the receiver
killed mid-stream, a full staging disk, refused callers, broken data sets, SIGTERM.

Real parts only: DCMTK's storescu/echoscu and pynetdicom senders in processes of their own
(tests/dicom_senders.py), real sockets on loopback, real files, a real tmpfs for ENOSPC.
What a sender was told is recorded sender-side, per instance; each test then holds the
archive to it: every Success is in the archive, whole, with its data set byte for byte.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomcommit import Manifest, Record
from dicomcommit.receiving.receiver import Receiver
from dicomcommit.synthetic import synthetic_dataset
from tests.conftest import ROOT, sha256_of, tmpfs
from tests.dicom_senders import (
    NO_DELAY,
    OUT_OF_RESOURCES,
    SUCCESS,
    Processes,
    Sent,
    dataset_bytes,
    dataset_digest,
    echoscu,
    join_all,
    json_events,
    kill,
    paced_send,
    pynetdicom_send,
    read_progress,
    read_statuses,
    storescu_argv,
    storescu_statuses,
    wait_for,
)

HOST = "127.0.0.1"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Every process a test starts, killed at its end if it still runs (pass or fail)."""
    processes = Processes(tmp_path / "logs")
    try:
        yield processes
    finally:
        processes.close()


def _instance(sent: Path, n: int, index: int, variant: int = 0, *, size: int = 32, implicit: bool = False) -> Path:
    """The *n*-th file to send: instance *index* (its SOP Instance UID), *variant* (its content)."""
    ds = synthetic_dataset(ROOT, index, variant, size=size)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = sent / f"{n:05d}-{index}-{variant}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _uid(index: int) -> str:
    return f"{ROOT}.3.{index}"


def _leftovers(staging: Path) -> list[Path]:
    """Files in staging outside the receiver's own state (.dicomcommit/): staged or .part files."""
    return sorted(p for p in staging.rglob("*") if p.is_file() and ".dicomcommit" not in p.relative_to(staging).parts)


def _archived(archive: Path) -> dict[str, set[str]]:
    """SOP Instance UID -> the data-set digests the archive holds of it (final names and conflicts/)."""
    held: dict[str, set[str]] = defaultdict(set)
    for path in archive.rglob("*.dcm"):
        rel = path.relative_to(archive).parts
        if rel[0] == ".dicomcommit" and rel[1] != "conflicts":
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        held[str(ds.SOPInstanceUID)].add(dataset_digest(path))
    return held


def _check_rows_hold_their_bytes(archive: Path) -> list[Record]:
    """Every manifest row's file is there with the row's hash; every archive file has its
    committed row; conflict copies are named by their hash. Returns the rows."""
    with Manifest(archive) as manifest:
        rows = manifest.records()
    for row in rows:
        assert row.sha256 is not None, row
        assert sha256_of(archive / row.path) == row.sha256, row
    committed = Counter(row.path for row in rows if row.status == "committed")
    finals = {str(p.relative_to(archive)) for p in archive.rglob("*")
              if p.is_file() and ".dicomcommit" not in p.relative_to(archive).parts}  # fmt: skip
    assert set(committed) == finals
    assert all(n == 1 for n in committed.values())
    for path in (archive / ".dicomcommit" / "conflicts").glob("*"):
        assert path.name == f"{sha256_of(path)}.dcm"
    return rows


# 1. Four senders at once


def test_four_senders_at_once_lose_nothing(tmp_path: Path, procs: Processes) -> None:
    """2 storescu and 2 pynetdicom processes send 2,000 instances at once, with identical
    re-sends and same-UID-other-content re-sends among them, while the receiver commits
    every half second: every Success is in the archive, and the manifest counts exactly."""
    staging, archive, sent = tmp_path / "staging", tmp_path / "archive", tmp_path / "sent"
    unique, resent, changed = 1700, 200, 100
    plan = [(i, 0) for i in range(unique)]
    plan += [(i, 0) for i in range(resent)]  # identical re-sends: duplicates
    plan += [(resent + i, 1) for i in range(changed)]  # the same UIDs with other content: conflicts
    random.Random(1).shuffle(plan)
    files: list[Path] = []
    first: dict[tuple[int, int], Path] = {}
    for n, (index, variant) in enumerate(plan):
        if (index, variant) in first:  # a re-send: the same bytes, from a file of its own
            files.append(sent / f"{n:05d}-{index}-{variant}.dcm")
            shutil.copyfile(first[index, variant], files[-1])
            continue
        big = index % 97 == 0  # a few of 128 KiB among the 2.4 KB ones
        files.append(_instance(sent, n, index, variant, size=256 if big else 32, implicit=index % 10 == 7))
        first[index, variant] = files[-1]
    shares = {f"STORESCU{k}" if k < 2 else f"PYNET{k}": files[k::4] for k in range(4)}

    started = time.monotonic()
    with Receiver(staging, archive, port=0, host=HOST, commit_interval=0.5, commit_files=200) as receiver:
        port = receiver.address[1]
        storescus = {ae: procs.popen(storescu_argv(HOST, port, share, calling_ae=ae), ae, env=NO_DELAY)
                     for ae, share in shares.items() if ae.startswith("STORESCU")}  # fmt: skip
        pynets = {ae: procs.spawn(pynetdicom_send, HOST, port, [str(f) for f in share], str(tmp_path / f"{ae}.jsonl"),
                                  calling_ae=ae, per_association=100)
                  for ae, share in shares.items() if ae.startswith("PYNET")}  # fmt: skip
        join_all([*storescus.values(), *pynets.values()], timeout=120)
    elapsed = time.monotonic() - started

    results: dict[str, list[Sent]] = {}
    for ae, proc in storescus.items():
        assert proc.returncode == 0, procs.output(ae)[-2000:]
        results[ae] = storescu_statuses(procs.output(ae))
    for ae, child in pynets.items():
        assert child.exitcode == 0
        results[ae] = read_statuses(tmp_path / f"{ae}.jsonl")
    for ae, share in shares.items():
        assert [s.file for s in results[ae]] == [str(f) for f in share], ae
        assert [s for s in results[ae] if not s.ok] == [], ae

    assert _leftovers(staging) == []
    rows = _check_rows_hold_their_bytes(archive)
    statuses = Counter(str(row.status) for row in rows)
    assert statuses == {"committed": unique, "duplicate": resent, "conflict": changed}, statuses
    by_ae = Counter(row.source.split("@", 1)[0] for row in rows)
    assert by_ae == {ae: len(share) for ae, share in shares.items()}
    assert all(row.source.split("@", 1)[1].startswith(f"{HOST}:") for row in rows)

    # The data sets, byte for byte (the File Meta is the receiver's): each instance's sent
    # contents are exactly what the archive holds of it, under its name or as a conflict.
    wanted: dict[str, set[str]] = defaultdict(set)
    for path, (index, _) in zip(files, plan, strict=True):
        wanted[_uid(index)].add(dataset_digest(path))
    assert _archived(archive) == wanted
    syntax = {_uid(index): "1.2.840.10008.1.2" if index % 10 == 7 else "1.2.840.10008.1.2.1" for index, _ in plan}
    for row in rows:  # and each under the transfer syntax it was sent in
        meta = pydicom.dcmread(archive / row.path, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == syntax[meta.MediaStorageSOPInstanceUID]
    print(f"2,000 instances from 4 senders received and committed in {elapsed:.1f} s")


# 2. A sender killed mid-instance

BIG = 4500  # 4500 x 4500 16-bit pixels: a 40 MB instance
MIB = 1 << 20


def _received_bytes(port: int) -> int:
    """Bytes that have reached the receiver's end of its connections on *port* (the kernel's
    count: ``ss``), whether the receiver has read them yet or not."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", out))


def _whole(path: Path) -> None:
    """*path* is a whole DICOM file: it parses to the end, and its pixels are all there."""
    ds = pydicom.dcmread(path)
    assert len(ds.PixelData) == ds.Rows * ds.Columns * 2, path


@pytest.mark.parametrize("sender", ["storescu", "pynetdicom"])
def test_a_sender_killed_mid_instance_leaves_no_partial_file(tmp_path: Path, procs: Processes, sender: str) -> None:
    """SIGKILL a sender while its 40 MB instance is on the wire (storescu: frozen with SIGSTOP
    once 8 MB are in, and the kernel's byte count shows it short of the whole; pynetdicom: a
    paced sender, killed halfway): nothing partial anywhere, the instance is not there, and
    the receiver goes on receiving."""
    staging, archive, sent = tmp_path / "staging", tmp_path / "archive", tmp_path / "sent"
    log = tmp_path / "receiver.jsonl"
    big, later = _instance(sent, 0, 2, size=BIG), _instance(sent, 1, 3)
    length = len(dataset_bytes(big.read_bytes()))
    with Receiver(staging, archive, port=0, host=HOST, commit_interval=0.2, json_log=log) as receiver:
        port = receiver.address[1]
        if sender == "storescu":
            proc = procs.popen(storescu_argv(HOST, port, [big], calling_ae="KILLED"), "killed", env=NO_DELAY)
            wait_for(lambda: _received_bytes(port) > 8 * MIB, 60, "8 MB of the instance to arrive")
            proc.send_signal(signal.SIGSTOP)
            counts = [_received_bytes(port)]
            while len(counts) < 3 or counts[-1] != counts[-3]:  # what the kernel had buffered drains
                time.sleep(0.05)
                counts.append(_received_bytes(port))
            assert counts[-1] < length, "the whole instance was sent before the sender was frozen"
            kill(proc)
            assert [s.status for s in storescu_statuses(procs.output("killed"))] == [None]
        else:
            progress = tmp_path / "paced.jsonl"
            child = procs.spawn(
                paced_send, HOST, port, str(big), str(progress), calling_ae="KILLED", chunk=MIB, delay=0.05
            )
            wait_for(lambda: read_progress(progress)[0] > length // 2, 60, "half the instance to be sent")
            kill(child)
            done, total = read_progress(progress)
            assert total == length
            assert done <= total - 2 * MIB  # at most one more PDU went out than recorded: short of the whole
            assert read_statuses(progress) == []
        aborted = {"state": "aborted", "calling_ae": "KILLED"}
        wait_for(lambda: any(aborted.items() <= e.items() for e in json_events(log, "association")), 30,
                 "the receiver to see the abort")  # fmt: skip
        after = procs.popen(storescu_argv(HOST, port, [later], calling_ae="LATER"), "later", env=NO_DELAY)
        join_all([after], timeout=60)
        assert [s.status for s in storescu_statuses(procs.output("later"))] == [SUCCESS]
    assert [e for e in json_events(log, "instance") if e["calling_ae"] == "KILLED"] == []
    assert _leftovers(staging) == []
    everything = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(sent)]
    assert [p for p in everything if p.name.endswith(".part")] == []
    assert _archived(archive) == {_uid(3): {dataset_digest(later)}}
    for path in archive.rglob("*.dcm"):
        _whole(path)
    rows = _check_rows_hold_their_bytes(archive)
    assert [(r.status, r.source.split("@")[0]) for r in rows] == [("committed", "LATER")]


# 3. The receiver killed mid-stream, and restarted


class CliReceiver:
    """``dicomcommit receive`` as a process of its own, on a free port it reports in its JSON log."""

    def __init__(self, procs: Processes, staging: Path, archive: Path, name: str, *extra: str) -> None:
        self.log = staging.parent / f"{name}.jsonl"
        self.name, self.procs = name, procs
        argv = [sys.executable, "-m", "dicomcommit", "receive", str(staging), str(archive), "--port", "0",
                "--host", HOST, "--json-log", str(self.log), "--commit-interval", "0.5", *extra]  # fmt: skip
        self.proc = procs.popen(argv, name)
        wait_for(lambda: bool(json_events(self.log, "listening")) or self.proc.poll() is not None, 60,
                 f"{name} to listen")  # fmt: skip
        assert self.proc.poll() is None, procs.output(name)
        self.port = int(json_events(self.log, "listening")[0]["port"])

    def successes(self) -> int:
        return sum(1 for e in json_events(self.log, "instance") if e["status"] == SUCCESS)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM; the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs {timeout:g} s after SIGTERM") from None


def _plan(unique: int, changed: int, seed: int) -> list[tuple[int, int]]:
    plan = [(i, 0) for i in range(unique)] + [(i, 1) for i in range(changed)]  # no identical re-sends:
    random.Random(seed).shuffle(plan)  # each (UID, data set) is one file, so each Success is checkable
    return plan


def _held(archive: Path) -> set[tuple[str, str]]:
    return {(uid, digest) for uid, digests in _archived(archive).items() for digest in digests}


def _sent_as(path: Path) -> tuple[str, str]:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID), dataset_digest(path)


@pytest.mark.parametrize("commits", ["committing", "nothing-committed-yet"])
def test_a_receiver_killed_mid_stream_loses_no_success_after_restart(
    tmp_path: Path, procs: Processes, commits: str
) -> None:
    """SIGKILL the receiver (the CLI) while 2 pynetdicom senders and a storescu send (while
    it commits every 150 instances, or before its first commit); restart it on the same
    directories and let the senders send again what got no Success: every instance that got
    a Success from either run is in the archive, with its data set, and recover finds
    nothing to repair."""
    staging, archive, sent = tmp_path / "staging", tmp_path / "archive", tmp_path / "sent"
    plan = _plan(540, 60, seed=3)
    files = [_instance(sent, n, index, variant) for n, (index, variant) in enumerate(plan)]
    shares = {"STORESCU": files[0::3], "PYNET1": files[1::3], "PYNET2": files[2::3]}

    pace = ["--commit-files", "150"] if commits == "committing" else ["--commit-interval", "3600"]
    first = CliReceiver(procs, staging, archive, "first", *pace)
    senders = _start_senders(procs, tmp_path, first.port, shares, "1")
    wait_for(lambda: first.successes() >= 200, 120, "200 instances received")
    kill(first.proc)
    join_all(senders.values(), timeout=60)
    told = _statuses(procs, tmp_path, shares, "1")
    ok1 = [Path(s.file) for ss in told.values() for s in ss if s.ok]
    assert len(ok1) >= 200
    assert all(s.status in (SUCCESS, None) for ss in told.values() for s in ss)
    staged_by_first = {e["staged"] for e in json_events(first.log, "instance") if e["status"] == SUCCESS}
    if commits == "nothing-committed-yet":
        assert not (archive / ".dicomcommit" / "manifest.sqlite").exists()
        staged = {p.name for p in _leftovers(staging) if p.suffix == ".dcm"}
        # all it said Success for, and perhaps one per association that it staged but was
        # killed before it answered (or logged) it
        assert staged_by_first <= staged
        assert len(staged - staged_by_first) <= len(shares), staged - staged_by_first

    second = CliReceiver(procs, staging, archive, "second")
    retry = {ae: [Path(s.file) for s in told[ae] if not s.ok] for ae in shares}
    join_all(_start_senders(procs, tmp_path, second.port, retry, "2").values(), timeout=120)
    told2 = _statuses(procs, tmp_path, retry, "2")
    assert [s for ss in told2.values() for s in ss if not s.ok] == []
    assert second.terminate() == 0, procs.output("second")[-3000:]

    held = _held(archive)
    lost = [str(f) for f in ok1 if _sent_as(f) not in held]
    assert lost == [], f"{len(lost)} instances that got a Success before the kill are not in the archive"
    assert held == {_sent_as(f) for f in files}
    rows = _check_rows_hold_their_bytes(archive)
    assert staged_by_first <= {row.source.rpartition("/")[2] for row in rows}  # each Success the first one gave
    statuses = Counter(str(row.status) for row in rows)
    assert statuses["committed"] == 540, statuses
    assert statuses["conflict"] >= 60, statuses
    assert set(statuses) <= {"committed", "conflict", "duplicate"}, statuses  # re-sends of unanswered ones
    # What may stay in staging: a .part the killed receiver was writing (no Success went out for
    # it); recover leaves it for --part-age (an hour), as for any stager that died.
    left = _leftovers(staging)
    assert [p for p in left if not p.name.endswith(".part")] == []
    check = subprocess.run([sys.executable, "-m", "dicomcommit", "recover", str(archive), str(staging), "--check",
                            "--json"], capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert not report["needs_attention"], report
    assert sorted(Path(p).name for p in report["parts_left"]) == [p.name for p in left], report


def _start_senders(
    procs: Processes, tmp_path: Path, port: int, shares: dict[str, list[Path]], run: str
) -> dict[str, BaseProcess | subprocess.Popen[bytes]]:
    """A storescu for the share named STORESCU*, a pynetdicom process (50 per association) for the others."""
    started: dict[str, BaseProcess | subprocess.Popen[bytes]] = {}
    for ae, share in shares.items():
        if ae.startswith("STORESCU"):
            started[ae] = procs.popen(storescu_argv(HOST, port, share, calling_ae=ae), f"{ae}-{run}", env=NO_DELAY)
        else:
            log = str(tmp_path / f"{ae}-{run}.jsonl")
            started[ae] = procs.spawn(
                pynetdicom_send, HOST, port, [str(f) for f in share], log, calling_ae=ae, per_association=50
            )
    return started


def _statuses(procs: Processes, tmp_path: Path, shares: dict[str, list[Path]], run: str) -> dict[str, list[Sent]]:
    """What each sender was told, one entry per file of its share (None: it got no response)."""
    told: dict[str, list[Sent]] = {}
    for ae, share in shares.items():
        if ae.startswith("STORESCU"):
            got = {s.file: s for s in storescu_statuses(procs.output(f"{ae}-{run}"))}
        else:
            got = {s.file: s for s in read_statuses(tmp_path / f"{ae}-{run}.jsonl")}
        told[ae] = [got.get(str(f), Sent(str(f), None, "never sent")) for f in share]
    return told


# 4. Staging disk full


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, for a real ENOSPC in staging."""
    with tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


def _fill(path: Path, leave: int) -> None:
    """Fill the filesystem of *path* (a new file) to the brim, then give back *leave* bytes."""
    with path.open("wb") as out:
        chunk = b"\0" * (64 * 1024)
        try:
            while True:
                out.write(chunk)
                out.flush()
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            out.seek(0, os.SEEK_END)
            size = out.tell()
    with path.open("r+b") as out:
        out.truncate(max(size - leave, 0))


@pytest.mark.parametrize("leave", [0, 256 * 1024], ids=["no-room", "half-the-instance"])
def test_a_full_staging_disk_refuses_with_a700_and_a_retry_succeeds(
    tmp_path: Path, procs: Processes, small_disk: Path, leave: int
) -> None:
    """Staging on a full tmpfs: the 0.5 MB instance gets 0xA700 (a failure the sender may
    retry; not Success, not 0xC211) from pynetdicom and from storescu, nothing half-written
    stays in staging; once room is made, the same send succeeds, and nothing is lost."""
    staging, archive, sent = small_disk / "staging", tmp_path / "archive", tmp_path / "sent"
    log = tmp_path / "receiver.jsonl"
    first, instance = _instance(sent, 0, 1), _instance(sent, 1, 2, size=512)
    with Receiver(staging, archive, port=0, host=HOST, commit_interval=0.2, json_log=log) as receiver:
        port = receiver.address[1]
        _send(procs, tmp_path, port, [first], "before", expect=[SUCCESS])  # the receiver's own state is made
        assert receiver.commit_now(30)
        _fill(small_disk / "filler", leave)
        _send(procs, tmp_path, port, [instance], "full", expect=[OUT_OF_RESOURCES])
        storescu = procs.popen(storescu_argv(HOST, port, [instance], calling_ae="STORESCU"), "storescu", env=NO_DELAY)
        join_all([storescu], timeout=60)
        assert [s.status for s in storescu_statuses(procs.output("storescu"))] == [OUT_OF_RESOURCES]
        assert _leftovers(staging) == []
        (small_disk / "filler").unlink()
        _send(procs, tmp_path, port, [instance], "retry", expect=[SUCCESS])
    refused = [e for e in json_events(log, "instance") if e["status"] != SUCCESS]
    assert [e["status"] for e in refused] == [OUT_OF_RESOURCES, OUT_OF_RESOURCES]
    assert all("No space left" in e["reason"] for e in refused), refused
    assert _leftovers(staging) == []
    assert _archived(archive) == {_uid(1): {dataset_digest(first)}, _uid(2): {dataset_digest(instance)}}
    _check_rows_hold_their_bytes(archive)


def test_a_staging_disk_the_receiver_filled_drains_by_committing(
    tmp_path: Path, procs: Processes, small_disk: Path
) -> None:
    """The receiver fills its staging disk itself (no commit pass yet: the archive stands for
    one that was away), to the last byte with ever smaller instances, each failure 0xA700.
    A commit pass then makes the room (it moves the staged files into the archive), and the
    senders' retries all succeed; nothing is lost."""
    staging, archive, sent = small_disk / "staging", tmp_path / "archive", tmp_path / "sent"
    sizes = [512] * 10 + [128] * 20 + [32] * 100  # 0.5 MB, 32 KB, 2.4 KB
    files = [_instance(sent, n, n, size=size) for n, size in enumerate(sizes)]
    with Receiver(staging, archive, port=0, host=HOST, commit_interval=3600, commit_files=10_000) as receiver:
        port = receiver.address[1]
        told = _send(procs, tmp_path, port, files, "filling")
        assert {s.status for s in told} == {SUCCESS, OUT_OF_RESOURCES}
        assert [s for s in told if s.status not in (SUCCESS, OUT_OF_RESOURCES)] == []
        disk = os.statvfs(small_disk)
        assert disk.f_bavail * disk.f_frsize < 8192, "the disk did not fill up"
        assert receiver.commit_now(60)
        assert [p.name for p in _leftovers(staging)] == [], "the commit pass did not take the staged instances"
        failed = [Path(s.file) for s in told if not s.ok]
        _send(procs, tmp_path, port, failed, "retry", expect=[SUCCESS] * len(failed))
    assert _leftovers(staging) == []
    assert _held(archive) == {_sent_as(f) for f in files}


def _send(
    procs: Processes, tmp_path: Path, port: int, files: list[Path], name: str, *, expect: list[int] | None = None
) -> list[Sent]:
    """Send *files* from a pynetdicom process, and wait; what it was told (checked against *expect*)."""
    log = tmp_path / f"{name}.jsonl"
    join_all(
        [procs.spawn(pynetdicom_send, HOST, port, [str(f) for f in files], str(log), calling_ae="PYNET")], timeout=120
    )
    told = read_statuses(log)
    assert [s.file for s in told] == [str(f) for f in files]
    if expect is not None:
        assert [s.status for s in told] == expect, told
    return told


# 5. Who may associate


def _echo(port: int, calling_ae: str, source: str) -> str:
    """A C-ECHO from pynetdicom, calling from the address *source*: echoed, rejected or aborted."""
    ae = AE(calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title="DICOMCOMMIT", bind_address=(source, 0))
    if assoc.is_established:
        status = assoc.send_c_echo()
        assoc.release()
        return f"echoed 0x{int(status.Status):04X}"
    return "rejected" if assoc.is_rejected else "aborted"


def test_only_allowed_ae_titles_associate(tmp_path: Path, procs: Processes) -> None:
    """--allow GOODAE: echoscu and storescu calling as OTHER are rejected (permanent, calling
    AE title not recognised), GOODAE echoes and stores."""
    staging, archive, sent = tmp_path / "staging", tmp_path / "archive", tmp_path / "sent"
    instance = _instance(sent, 0, 1)
    with Receiver(staging, archive, port=0, host=HOST, allow=["GOODAE"]) as receiver:
        port = receiver.address[1]
        other = echoscu(HOST, port, "OTHER")
        assert other.returncode != 0
        said = other.stdout + other.stderr
        assert "Association Rejected" in said, said
        assert "Rejected Permanent" in said, said
        assert "Calling AE Title Not Recognized" in said, said
        good = echoscu(HOST, port, "GOODAE")
        assert good.returncode == 0, good.stdout + good.stderr
        refused = procs.popen(storescu_argv(HOST, port, [instance], calling_ae="OTHER"), "other", env=NO_DELAY)
        join_all([refused], timeout=60)
        assert refused.returncode != 0
        assert "Association Rejected" in procs.output("other")
        assert _leftovers(staging) == []
        stored = procs.popen(storescu_argv(HOST, port, [instance], calling_ae="GOODAE"), "good", env=NO_DELAY)
        join_all([stored], timeout=60)
        assert [s.status for s in storescu_statuses(procs.output("good"))] == [SUCCESS]
    rows = _check_rows_hold_their_bytes(archive)
    assert [r.source.split("@")[0] for r in rows] == ["GOODAE"]


@pytest.mark.parametrize("allowed_from", ["127.0.0.1", "127.0.0.2", "localhost"])
def test_an_allowed_ae_title_from_another_host_is_refused(tmp_path: Path, allowed_from: str) -> None:
    """--allow GOODAE@HOST admits GOODAE calling from HOST's addresses (loopback has them all:
    127.0.0.2 is another host here), and refuses it, and any other title, from elsewhere."""
    elsewhere = "127.0.0.1" if allowed_from == "127.0.0.2" else "127.0.0.2"
    source = "127.0.0.1" if allowed_from == "localhost" else allowed_from
    with Receiver(tmp_path / "staging", tmp_path / "archive", port=0, host="", allow=[f"GOODAE@{allowed_from}"]) as r:
        port = r.address[1]
        assert _echo(port, "GOODAE", source) == "echoed 0x0000"
        assert _echo(port, "GOODAE", elsewhere) == "rejected"
        assert _echo(port, "OTHER", source) == "rejected"
        if source == "127.0.0.1":  # echoscu cannot choose its address: it calls from 127.0.0.1
            assert echoscu(HOST, port, "GOODAE").returncode == 0
        else:
            assert echoscu(HOST, port, "GOODAE").returncode != 0


# 6. Data sets the receiver cannot take


def _raw_instance(path: Path, sop_class: str, uid: str, data_set: bytes) -> Path:
    """A Part 10 file whose File Meta names *sop_class* and *uid*, followed by *data_set* as
    is (pynetdicom's chunked send puts exactly these bytes on the wire, and takes the
    request's SOP Class and Instance UIDs from the File Meta)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out.getvalue() + data_set)
    return path


def _broken(kind: str, sent: Path) -> tuple[Path, str]:
    """A C-STORE the receiver must refuse, and why (a data set of *kind*)."""
    valid = dataset_bytes(_instance(sent / "valid", 0, 10).read_bytes())
    junk = {"random bytes": random.Random(6).randbytes(4096), "zeros": bytes(4096), "text": b"not DICOM\n" * 400,
            "truncated": valid[:-1000], "cut in a header": valid[: valid.index(b"\xe0\x7f\x10\x00") + 3]}  # fmt: skip
    if kind in junk:
        return _raw_instance(sent / f"{kind}.dcm", CTImageStorage, _uid(10), junk[kind]), "cannot be parsed"
    if kind == "other instance":
        return _raw_instance(sent / f"{kind}.dcm", CTImageStorage, _uid(11), valid), "SOP Instance UID mismatch"
    assert kind == "other class"
    return _raw_instance(sent / f"{kind}.dcm", MRImageStorage, _uid(10), valid), "SOP Class UID mismatch"


@pytest.mark.parametrize("kind", ["random bytes", "zeros", "text", "truncated", "cut in a header", "other instance",
                                  "other class"])  # fmt: skip
def test_a_data_set_the_receiver_cannot_take_is_refused_and_leaves_nothing(
    tmp_path: Path, procs: Processes, kind: str
) -> None:
    """Junk, or a data set cut short, as a C-STORE: a 0xCxxx status (cannot understand); a
    data set whose SOP Instance UID is not the request's: 0xC002; whose SOP Class UID is not:
    0xA900. Nothing in staging or the archive, and the same association goes on to store a
    valid instance. (The receiver is the CLI, in a process of its own: pydicom's warnings
    about junk are warnings there, as in real use, not the errors pytest makes of them.)"""
    staging, archive, sent = tmp_path / "staging", tmp_path / "archive", tmp_path / "sent"
    broken, why = _broken(kind, sent)
    valid = _instance(sent, 1, 12)
    receiver = CliReceiver(procs, staging, archive, "receiver")
    told = _send(procs, tmp_path, receiver.port, [broken, valid], "send")
    assert receiver.terminate() == 0
    status = told[0].status
    assert status is not None, told
    if why == "cannot be parsed":
        assert 0xC000 <= status <= 0xCFFF, f"{kind}: 0x{status:04X} {told[0].detail}"
    elif why == "SOP Instance UID mismatch":
        assert status == 0xC002, f"0x{status:04X}"
    else:
        assert status == 0xA900, f"0x{status:04X}"
    assert told[1].status == SUCCESS
    assert _leftovers(staging) == []
    assert _archived(archive) == {_uid(12): {dataset_digest(valid)}}
    rows = _check_rows_hold_their_bytes(archive)
    assert [r.status for r in rows] == ["committed"]


# 7. SIGTERM while a sender sends


def test_sigterm_while_senders_send_commits_every_success_and_exits_0(tmp_path: Path, procs: Processes) -> None:
    """SIGTERM the CLI receiver while a storescu and a pynetdicom process send, and a paced
    sender has a 40 MB instance on the wire: exit 0; every instance that got a Success is
    committed (staging is empty); after a sender's first refusal it gets no more Successes."""
    staging, archive, sent = tmp_path / "staging", tmp_path / "archive", tmp_path / "sent"
    files = [_instance(sent, n, n) for n in range(1200)]
    shares = {"STORESCU": files[0::2], "PYNET": files[1::2]}
    big = _instance(sent, 5000, 5000, size=BIG)
    receiver = CliReceiver(procs, staging, archive, "receiver")
    progress = tmp_path / "paced.jsonl"
    paced = procs.spawn(
        paced_send, HOST, receiver.port, str(big), str(progress), calling_ae="PACED", chunk=MIB, delay=0.1
    )
    senders = _start_senders(procs, tmp_path, receiver.port, shares, "1")
    wait_for(lambda: receiver.successes() >= 200 and read_progress(progress)[0] > 0, 120, "200 instances received")
    terminated = time.monotonic()
    assert receiver.terminate() == 0, procs.output("receiver")[-3000:]
    took = time.monotonic() - terminated
    join_all([*senders.values(), paced], timeout=60)

    told = _statuses(procs, tmp_path, shares, "1")
    told["PACED"] = read_statuses(progress) or [Sent(str(big), None, "no response")]
    for ae, statuses in told.items():
        refused = [n for n, s in enumerate(statuses) if not s.ok]
        assert all(not s.ok for s in statuses[refused[0] :] if refused), f"{ae}: a Success after a refusal"
        assert {s.status for s in statuses} <= {SUCCESS, OUT_OF_RESOURCES, None}, ae
    ok = [Path(s.file) for statuses in told.values() for s in statuses if s.ok]
    assert len(ok) >= 200
    assert _leftovers(staging) == []
    with Manifest(archive) as manifest:
        committed = {r.source.split("/")[-1] for r in manifest.records("committed")}
    received = {e["staged"] for e in json_events(receiver.log, "instance") if e["status"] == SUCCESS}
    assert received <= committed  # every instance the receiver said Success for
    held = _held(archive)
    assert [str(f) for f in ok if _sent_as(f) not in held] == []
    assert json_events(receiver.log, "stopped"), "no 'stopped' event"
    assert took < 30, f"{took:.1f} s from SIGTERM to exit"
