"""dicomcommit receive: instances staged as received, commit outcomes, Storage Commitment,
--allow, and the command line (robustness under kills and full disks: test_receive_robust.py)."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StorageCommitmentPushModel,
)

from dicomcommit import EncodeError, Manifest, Stager, UsageError
from dicomcommit.errors import MismatchError
from dicomcommit.receiving import Receiver
from dicomcommit.receiving.receiver import CANNOT_PARSE
from dicomcommit.receiving.reports import COMMITMENT_INSTANCE
from dicomcommit.receiving.wire import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, Contexts, part10
from dicomcommit.staging.journal import journal_dir
from tests.conftest import ROOT, archive_files, sha256_of, staged_files, wheel_file

NO_SUCH_INSTANCE, PROCESSING_FAILURE, CLASS_INSTANCE_CONFLICT = 0x0112, 0x0110, 0x0119
StartReceiver = Callable[..., Receiver]


def dcmtk(tool: str) -> str:
    """DCMTK's *tool*: pynetdicom installs scripts of the same names into the venv."""
    for directory in ("/usr/bin", "/usr/local/bin"):
        if os.access(f"{directory}/{tool}", os.X_OK):
            return f"{directory}/{tool}"
    raise AssertionError(f"DCMTK's {tool} is not installed (scripts/test installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def start_receiver(dirs: tuple[Path, Path]) -> Iterator[StartReceiver]:
    """Start a Receiver on a free port (stopped at the end)."""
    staging, archive = dirs
    started: list[Receiver] = []

    def start(**kwargs: object) -> Receiver:
        options: dict[str, object] = {"port": 0, "host": "127.0.0.1", "commit_interval": 0.2, **kwargs}
        receiver = Receiver(staging, archive, **options)  # type: ignore[arg-type]
        receiver.start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


class Sender:
    """A pynetdicom SCU on one association, which also takes N-EVENT-REPORTs sent on it."""

    def __init__(self, port: int, ae_title: str = "SENDER", contexts: list[tuple[str, str]] | None = None) -> None:
        self.reports: list[Dataset] = []
        ae = AE(ae_title)
        for sop_class, syntax in contexts or [(CTImageStorage, ""), (MRImageStorage, "")]:
            ae.add_requested_context(sop_class, [syntax] if syntax else None)
        ae.add_requested_context(StorageCommitmentPushModel)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCOMMIT",
                                  evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])  # fmt: skip
        assert self.assoc.is_established

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.append(event.event_information)
        return 0x0000, None

    def store(self, ds: Dataset) -> int:
        return int(self.assoc.send_c_store(ds).Status)

    def request_commitment(self, items: list[tuple[str, str]], txn: str | None = None) -> tuple[str, int]:
        txn = txn or generate_uid()
        status, _ = self.assoc.send_n_action(commitment_request(txn, items), 1, StorageCommitmentPushModel,
                                             COMMITMENT_INSTANCE)  # fmt: skip
        return txn, int(status.Status)

    def wait_report(self, timeout: float = 15) -> Dataset:
        deadline = time.monotonic() + timeout
        while not self.reports and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.reports, "no N-EVENT-REPORT came"
        return self.reports.pop(0)

    def release(self) -> None:
        self.assoc.release()


def commitment_request(txn: str, items: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = txn
    ds.ReferencedSOPSequence = [ref(c, u) for c, u in items]
    return ds


def ref(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


def outcome(report: Dataset) -> tuple[set[str], dict[str, int]]:
    """The committed UIDs, and the failed ones with their reasons."""
    committed = {str(i.ReferencedSOPInstanceUID) for i in report.get("ReferencedSOPSequence", [])}
    failed = {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in report.get("FailedSOPSequence", [])}
    return committed, failed


def data_set_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, after its File Meta, as stored."""
    data = path.read_bytes()
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, the first element
    return data[144 + group_length :]


def committed_file(archive: Path, uid: str) -> Path:
    return next(archive.joinpath(p) for p in archive_files(archive) if p.endswith(f"{uid}.dcm"))


# -- Stager.stage_encoded -------------------------------------------------------------------


def test_stage_encoded_keeps_the_bytes_and_names_the_origin_in_the_manifest(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    staging, archive = dirs
    data = wheel_file("CT_small.dcm").read_bytes()
    with Stager(staging) as stager:
        record = stager.stage_encoded(data, origin="MODALITY@10.0.0.7:40112")
    assert (staging / record.name).read_bytes() == data
    assert record.sha256 == sha256_of(wheel_file("CT_small.dcm"))
    from dicomcommit import commit  # noqa: PLC0415

    commit(staging, archive)
    with Manifest(archive) as manifest:
        (row,) = manifest.records()
    assert row.source == f"MODALITY@10.0.0.7:40112/{record.name}"
    assert row.status == "committed"


@pytest.mark.parametrize("cut", [0, 100, 132, 700, -10])
def test_stage_encoded_refuses_what_is_not_a_whole_dicom_file_and_leaves_nothing(
    dirs: tuple[Path, Path], cut: int
) -> None:
    staging, _ = dirs
    data = wheel_file("CT_small.dcm").read_bytes()
    with Stager(staging) as stager, pytest.raises(EncodeError):
        stager.stage_encoded(data[:cut] if cut else b"junk" * 100)
    assert staged_files(staging) == []
    assert [p for p in staging.iterdir() if p.name != ".dicomcommit"] == []


def test_stage_encoded_refuses_bytes_that_do_not_carry_the_expected_uids(dirs: tuple[Path, Path]) -> None:
    staging, _ = dirs
    data = wheel_file("CT_small.dcm").read_bytes()
    with Stager(staging) as stager, pytest.raises(MismatchError) as info:
        stager.stage_encoded(data, expect={"SOPInstanceUID": "1.2.3"})
    assert info.value.keyword == "SOPInstanceUID"
    assert staged_files(staging) == []


# -- what surrounds a received data set ----------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "syntax"),
    [
        ("1.2.3", "1.2.840.10008.1.2"),
        ("1.2.34", "1.2.840.10008.1.2.1"),
        ("1.2.840.10008.5.1.4.1.1.2.1234567", "1.2.840.10008.1.2.4.90"),
    ],
)
def test_the_file_meta_is_what_pydicom_writes_for_the_same_values(uid: str, syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = UID(CTImageStorage), UID(uid)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    expected = DicomBytesIO()
    expected.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)
    assert part10(CTImageStorage, uid, syntax, b"DATA") == expected.getvalue() + b"DATA"


def test_each_association_gets_its_own_copy_of_the_contexts() -> None:
    contexts = Contexts.everything()
    copied = copy.deepcopy(contexts)
    assert [(c.abstract_syntax, c.transfer_syntax, c.scu_role, c.scp_role) for c in copied] == [
        (c.abstract_syntax, c.transfer_syntax, c.scu_role, c.scp_role) for c in contexts
    ]
    copied[0].transfer_syntax.clear()
    copied[0].context_id = 7
    assert contexts[0].transfer_syntax
    assert contexts[0].context_id is None
    assert len(contexts) == len(AllStoragePresentationContexts) + 2


# -- receiving ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "image_dfl.dcm",
    ],
)
def test_each_instance_is_stored_as_received_in_its_transfer_syntax(
    start_receiver: StartReceiver, dirs: tuple[Path, Path], name: str
) -> None:
    """No decode and re-encode: the archived data set is byte for byte what went on the wire."""
    _, archive = dirs
    ds = pydicom.dcmread(wheel_file(name))
    syntax = ds.file_meta.TransferSyntaxUID
    receiver = start_receiver()
    sender = Sender(receiver.address[1], contexts=[(ds.SOPClassUID, syntax)])
    assert sender.store(ds) == 0
    sender.release()
    assert receiver.commit_now(30)
    stored = committed_file(archive, ds.SOPInstanceUID)
    wire = encode(ds, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert data_set_bytes(stored) == wire
    meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == syntax
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_an_identical_resend_from_another_ae_is_a_duplicate_and_a_second_version_a_conflict(
    start_receiver: StartReceiver, dirs: tuple[Path, Path], ct: Dataset
) -> None:
    staging, archive = dirs
    receiver = start_receiver()
    port = receiver.address[1]
    first, second = Sender(port, "MODALITY"), Sender(port, "PACS")
    assert first.store(ct) == 0
    assert second.store(ct) == 0  # identical data set, another sender: the same file
    changed = pydicom.dcmread(wheel_file("CT_small.dcm"))
    changed.PatientName = "Changed^Name"
    assert second.store(changed) == 0  # stored durably; commit finds it a conflict
    first.release()
    second.release()
    receiver.stop()
    with Manifest(archive) as manifest:
        rows = manifest.records(status=None)
    assert sorted(r.status for r in rows) == ["committed", "conflict", "duplicate"]
    assert {r.source.split("@")[0] for r in rows} == {"MODALITY", "PACS"}
    conflict = next(r for r in rows if r.status == "conflict")
    assert pydicom.dcmread(archive / conflict.path).PatientName == "Changed^Name"
    assert staged_files(staging) == []


def test_commitment_reports_committed_missing_conflicting_and_wrong_class_on_the_same_association(
    start_receiver: StartReceiver, make_ds: Callable[..., Dataset]
) -> None:
    receiver = start_receiver()
    sender = Sender(receiver.address[1])
    kept, resent, conflicting = make_ds(1), make_ds(2), make_ds(3)
    for ds in (kept, resent, resent, conflicting, make_ds(3, variant=1)):  # the last: a second version
        assert sender.store(ds) == 0
    missing = f"{ROOT}.999.1"
    items = [(CTImageStorage, kept.SOPInstanceUID), (CTImageStorage, resent.SOPInstanceUID),
             (CTImageStorage, conflicting.SOPInstanceUID), (CTImageStorage, missing),
             (MRImageStorage, kept.SOPInstanceUID)]  # fmt: skip
    txn, status = sender.request_commitment(items)
    assert status == 0
    report = sender.wait_report()
    sender.release()
    assert report.TransactionUID == txn
    committed, failed = outcome(report)
    assert committed == {kept.SOPInstanceUID, resent.SOPInstanceUID}
    assert failed == {conflicting.SOPInstanceUID: PROCESSING_FAILURE, missing: NO_SUCH_INSTANCE,
                      kept.SOPInstanceUID: CLASS_INSTANCE_CONFLICT}  # fmt: skip


def test_commitment_fails_an_instance_whose_archived_bytes_no_longer_match(
    start_receiver: StartReceiver, dirs: tuple[Path, Path], make_ds: Callable[..., Dataset]
) -> None:
    """Reported only once verified: bytes changed in the archive after commit are not committed."""
    _, archive = dirs
    receiver = start_receiver()
    sender = Sender(receiver.address[1])
    ds = make_ds(1)
    assert sender.store(ds) == 0
    assert receiver.commit_now(30)
    stored = committed_file(archive, ds.SOPInstanceUID)
    stored.chmod(0o644)
    with stored.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    sender.request_commitment([(CTImageStorage, ds.SOPInstanceUID)])
    _, failed = outcome(sender.wait_report())
    sender.release()
    assert failed == {ds.SOPInstanceUID: PROCESSING_FAILURE}


class PeerSCU:
    """A requester that listens for reports on associations the receiver opens (its --peer)."""

    def __init__(self, port: int, ae_title: str = "SENDER") -> None:
        self.port, self.reports = port, list[Dataset]()
        ae = AE(ae_title)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)])  # fmt: skip

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.append(event.event_information)
        return 0x0000, None

    def wait(self, count: int = 1, timeout: float = 20) -> list[Dataset]:
        deadline = time.monotonic() + timeout
        while len(self.reports) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.reports

    def close(self) -> None:
        assert self.server is not None
        self.server.shutdown()


def test_a_report_goes_to_the_peer_once_the_requesters_association_has_closed(
    start_receiver: StartReceiver, make_ds: Callable[..., Dataset]
) -> None:
    peer_port = free_port()
    peer = PeerSCU(peer_port)
    try:
        receiver = start_receiver(peers=[f"SENDER@127.0.0.1:{peer_port}"], commit_interval=60)
        sender = Sender(receiver.address[1])
        ds = make_ds(1)
        assert sender.store(ds) == 0
        txn, status = sender.request_commitment([(CTImageStorage, ds.SOPInstanceUID)])
        sender.release()  # at once: the report cannot go on this association
        assert status == 0
        (report,) = peer.wait()
        assert report.TransactionUID == txn
        assert outcome(report) == ({ds.SOPInstanceUID}, {})
        assert sender.reports == []
    finally:
        peer.close()


def run_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "dicomcommit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def test_a_pending_report_survives_a_killed_receiver_and_is_delivered_after_restart(
    dirs: tuple[Path, Path], make_ds: Callable[..., Dataset]
) -> None:
    """N-ACTION answered Success, peer unreachable, receiver SIGKILLed: the restarted receiver
    (same staging directory) delivers the report once the peer listens."""
    staging, archive = dirs
    port, peer_port = free_port(), free_port()
    cli = ["receive", str(staging), str(archive), "--port", str(port), "--host", "127.0.0.1",
           "--commit-interval", "0.2", "--peer", f"SENDER@127.0.0.1:{peer_port}"]  # fmt: skip
    first = run_cli(*cli)
    try:
        wait_listening(port)
        sender = Sender(port)
        stored, never = make_ds(1), f"{ROOT}.999.2"
        assert sender.store(stored) == 0
        txn, status = sender.request_commitment([(CTImageStorage, stored.SOPInstanceUID), (CTImageStorage, never)])
        sender.release()
        assert status == 0
        time.sleep(1.0)  # a commit pass or more, and a failed delivery (nothing listens on peer_port)
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    peer = PeerSCU(peer_port)
    second = run_cli(*cli)
    try:
        (report,) = peer.wait()
        assert report.TransactionUID == txn
        assert outcome(report) == ({stored.SOPInstanceUID}, {never: NO_SUCH_INSTANCE})
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
        peer.close()
    assert second.returncode == 0, err
    assert staged_files(staging) == []


def test_a_commitment_request_without_what_it_needs_is_refused(start_receiver: StartReceiver) -> None:
    receiver = start_receiver()
    sender = Sender(receiver.address[1])
    statuses = []
    for info in (commitment_request("1.2.3", []), commitment_request("1.2.3", [("", "1.3")])):
        answer, _ = sender.assoc.send_n_action(info, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        statuses.append(answer.Status)
    answer, _ = sender.assoc.send_n_action(commitment_request("1.2.3", [("1.2", "1.3")]), 7,
                                           StorageCommitmentPushModel, COMMITMENT_INSTANCE)  # fmt: skip
    statuses.append(answer.Status)
    sender.release()
    assert statuses == [0x0115, 0x0115, 0x0123]  # invalid argument value; no such action


@pytest.mark.parametrize("cut", [100, 5000])
def test_an_unparsable_data_set_gets_a_c000_status_and_nothing_is_kept(
    start_receiver: StartReceiver, dirs: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    """A data set cut short (its pixel data's length runs past its end), sent as raw bytes."""
    staging, archive = dirs
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # pynetdicom sends the file's bytes
    cut_short = tmp_path / "cut.dcm"
    cut_short.write_bytes(wheel_file("CT_small.dcm").read_bytes()[:-cut])
    receiver = start_receiver()
    sender = Sender(receiver.address[1], contexts=[(CTImageStorage, "1.2.840.10008.1.2.1")])
    status = sender.assoc.send_c_store(cut_short)
    sender.release()
    assert status.Status == CANNOT_PARSE
    assert "truncated" in status.ErrorComment
    receiver.stop()
    assert staged_files(staging) == []
    assert not archive_files(archive) if archive.exists() else True


def test_allow_admits_listed_ae_titles_and_hosts_and_rejects_the_others(start_receiver: StartReceiver) -> None:
    receiver = start_receiver(allow=["MODALITY", "PACS@127.0.0.1", "RIS@192.0.2.1"])
    port = receiver.address[1]

    def echo(ae_title: str) -> int:
        return subprocess.run([dcmtk("echoscu"), "-aet", ae_title, "127.0.0.1", str(port)], capture_output=True,
                              check=False).returncode  # fmt: skip

    assert echo("MODALITY") == 0
    assert echo("PACS") == 0
    assert echo("RIS") != 0  # listed, but from another host
    assert echo("OTHER") != 0


def test_receive_logs_one_json_line_per_association_and_instance(
    start_receiver: StartReceiver, tmp_path: Path, ct: Dataset
) -> None:
    log = tmp_path / "receive.jsonl"
    receiver = start_receiver(json_log=log)
    sender = Sender(receiver.address[1], "MODALITY")
    assert sender.store(ct) == 0
    sender.release()
    receiver.stop()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("instance") == 1
    assert [e["state"] for e in events if e["event"] == "association"] == ["accepted", "released"]
    (instance,) = (e for e in events if e["event"] == "instance")
    assert instance["calling_ae"] == "MODALITY"
    assert instance["sop_instance_uid"] == ct.SOPInstanceUID
    assert instance["status"] == 0


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--on-conflict", "error"],
        ["--port", "70000"],
        ["--commit-interval", "0"],
        ["--allow", "A\\B"],
        ["--allow", "MODALITY@"],
        ["--peer", "PACS@host"],
        ["--peer", "PACS@host:0"],
        ["--ae-title", "X" * 17],
        ["--max-associations", "0"],
        ["--allow", "A@no-such-host.invalid"],
    ],
)
def test_bad_receive_options_are_usage_errors(dirs: tuple[Path, Path], args: list[str]) -> None:
    staging, archive = dirs
    done = subprocess.run([sys.executable, "-m", "dicomcommit", "receive", str(staging), str(archive), *args],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("dicomcommit: error:"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_a_clear_failure(dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "dicomcommit", "receive", str(staging), str(archive),
                               "--host", "127.0.0.1", "--port", str(port)], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on port {port}" in done.stderr


def test_the_library_refuses_what_the_command_refuses(dirs: tuple[Path, Path]) -> None:
    staging, archive = dirs
    for kwargs in ({"on_conflict": "error"}, {"port": -1}, {"commit_interval": 0}, {"ae_title": ""},
                   {"allow": ["\x01"]}, {"peers": ["P@h:99999"]}):  # fmt: skip
        with pytest.raises(UsageError):
            Receiver(staging, archive, **kwargs)


def test_sigterm_stops_the_command_and_commits_what_it_received(dirs: tuple[Path, Path], ct: Dataset) -> None:
    staging, archive = dirs
    port = free_port()
    receiver = run_cli("receive", str(staging), str(archive), "--port", str(port), "--host", "127.0.0.1",
                       "--commit-interval", "600")  # fmt: skip
    try:
        wait_listening(port)
        sender = Sender(port)
        assert sender.store(ct) == 0
        sender.release()
    finally:
        receiver.send_signal(signal.SIGTERM)
        _, err = receiver.communicate(timeout=60)
    assert receiver.returncode == 0, err
    assert "1 committed" in err
    assert list(archive_files(archive)) == [str(committed_file(archive, ct.SOPInstanceUID).relative_to(archive))]
    assert staged_files(staging) == []


def test_a_long_running_receiver_leaves_no_journal_lines_of_committed_instances(
    start_receiver: StartReceiver, dirs: tuple[Path, Path], make_ds: Callable[..., Dataset]
) -> None:
    """Each pass starts a new journal, so commit prunes the last one: a receiver that runs for
    months does not make every pass read the lines of everything it ever received."""
    staging, _ = dirs
    receiver = start_receiver(commit_interval=600)
    sender = Sender(receiver.address[1])
    for index in range(3):
        assert sender.store(make_ds(index)) == 0
        assert receiver.commit_now(30)
        lines = [line for journal in journal_dir(staging).glob("*.jsonl") for line in journal.read_bytes().splitlines()]
        assert lines == []
    sender.release()


def test_a_json_log_that_cannot_be_opened_is_a_clear_failure(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    staging, archive = dirs
    done = subprocess.run([sys.executable, "-m", "dicomcommit", "receive", str(staging), str(archive), "--port", "0",
                           "--json-log", str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "cannot start" in done.stderr
    assert "Traceback" not in done.stderr


def test_success_goes_back_only_after_the_instance_and_its_name_are_on_disk(
    start_receiver: StartReceiver, dirs: tuple[Path, Path], ct: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN: Success means durable in staging. Every fsync is recorded (and still done); by
    the time the sender has its Success, the staged bytes and the staging directory were synced."""
    staging, _ = dirs
    synced: list[tuple[str, bool]] = []  # (the path fsynced, whether it is a directory)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))

    receiver = start_receiver(commit_interval=600)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    sender = Sender(receiver.address[1])
    assert sender.store(ct) == 0
    at_success = list(synced)
    sender.release()
    (staged,) = staged_files(staging)
    assert any(not is_dir and Path(path).name.startswith(staged.name) for path, is_dir in at_success), at_success
    assert (str(staging.resolve()), True) in at_success
