"""DICOM senders for the receiver tests: DCMTK's ``storescu`` and ``echoscu`` as processes,
and pynetdicom senders that run in processes of their own (``multiprocessing``, spawned).

Every sender records what each C-STORE got back as it comes (a JSON line per instance, or
storescu's own log), so a sender that is killed, or whose receiver is killed, still leaves
behind which instances got a Success. :class:`Processes` starts them and kills whatever is
still running when a test ends, passed or failed.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CALLED_AE = "DICOMCOMMIT"
NO_DELAY = {**os.environ, "TCP_NODELAY": "1"}  # storescu: no Nagle (see storescu_argv)

_spawn = multiprocessing.get_context("spawn")  # never fork a test process that runs a receiver's threads

# storescu -v names a response's status, not its code: the codes of the names it prints.
_STORESCU_STATUS = {"Success": SUCCESS, "Refused: OutOfResources": OUT_OF_RESOURCES,
                    "Error: DataSetDoesNotMatchSOPClass": 0xA900, "Error: CannotUnderstand": 0xC000}  # fmt: skip


@dataclass(frozen=True)
class Sent:
    """One C-STORE a sender made: the file it sent, and the status that came back (None: none
    came back, the association was rejected, aborted or lost first)."""

    file: str
    status: int | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


# Files, and the data sets inside them


def write_instance(path: Path, ds: Dataset) -> Path:
    """Write *ds* as a Part 10 file (what the senders send from)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def meta_end(data: bytes) -> int:
    """The offset of the data set in a Part 10 file: after the preamble, ``DICM`` and the
    File Meta group, whose length (0002,0000) both our files and the receiver's declare."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00" or data[136:138] != b"UL":
        raise ValueError("not a Part 10 file that starts its File Meta with (0002,0000) UL")
    (length,) = struct.unpack_from("<I", data, 140)
    return 144 + int(length)


def dataset_bytes(data: bytes) -> bytes:
    """The encoded data set of a Part 10 file, without the File Meta (the receiver writes its own)."""
    return data[meta_end(data) :]


def dataset_digest(path: Path) -> str:
    """The sha256 of the data set in the file at *path*."""
    return hashlib.sha256(dataset_bytes(path.read_bytes())).hexdigest()


# pynetdicom senders (targets for multiprocessing)


def read_statuses(log: Path) -> list[Sent]:
    """What a pynetdicom sender recorded in *log* (the complete lines: it may have been killed)."""
    if not log.exists():
        return []
    sent = []
    for line in log.read_bytes().split(b"\n"):
        if line.strip():
            try:
                raw = json.loads(line)
            except ValueError:
                continue  # a line torn by a kill
            if "file" in raw:
                sent.append(Sent(raw["file"], raw["status"], raw.get("detail", "")))
    return sent


def _record(out: Any, file: str, status: int | None, detail: str = "") -> None:
    out.write(json.dumps({"file": file, "status": status, "detail": detail, "time": time.time()}) + "\n")
    out.flush()


def pynetdicom_send(
    host: str,
    port: int,
    files: Sequence[str],
    log: str,
    *,
    calling_ae: str = "PYNETDICOM",
    per_association: int = 0,
    bind_address: tuple[str, int] | None = None,
) -> None:
    """Send *files* as they are (the encoded data set straight from the file, in chunks, as
    pynetdicom's chunked send does: no decode and re-encode), *per_association* files per
    association (0: one for all), and append ``{"file", "status", "detail"}`` to *log* for
    each as its response comes back (status None: none came, the association was lost)."""
    contexts = sorted({_context(f) for f in files})
    step = per_association or max(len(files), 1)
    with Path(log).open("a", encoding="utf-8") as out:
        for start in range(0, len(files), step):
            ae = AE(calling_ae)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
            for sop_class, syntax in contexts:
                ae.add_requested_context(sop_class, syntax)
            kwargs: dict[str, Any] = {"ae_title": CALLED_AE}
            if bind_address is not None:
                kwargs["bind_address"] = bind_address
            assoc = ae.associate(host, port, **kwargs)
            alive, lost = assoc.is_established, "rejected" if assoc.is_rejected else "no association"
            if alive:
                _no_delay(assoc)
                _pause_reactor(assoc)
            for n, file in enumerate(files[start : start + step], 1):
                if not alive:
                    _record(out, file, None, lost)
                    continue
                try:
                    status, detail = _c_store(assoc, file, n)
                except Exception as exc:  # an association lost while sending
                    status, detail = None, repr(exc)
                _record(out, file, status, detail)
                if status is None:  # no response: the association is gone (or good as gone)
                    alive, lost = False, "association lost"
                    assoc.abort()
            if alive:
                assoc.release()


def _pause_reactor(assoc: Any) -> None:
    """Stop pynetdicom's association thread from taking DIMSE messages off the queue, for
    good (what :meth:`Association.send_c_store` does around each request, racily).

    ``send_c_store`` clears the thread's checkpoint, then waits for its ``_is_paused`` flag;
    but the thread sets that flag just before it waits at the checkpoint, so the flag may
    still stand from a turn that is already past it. The thread then takes the C-STORE-RSP
    that came back and drops it, and the sender waits out its DIMSE timeout: a lost
    response, about once in ten thousand C-STOREs here (the receiver had sent it: ``ss``
    showed every byte of it delivered and read). Here the checkpoint stays cleared, and we
    wait until the thread is really blocked on it (it is among the Event's waiters).
    Responses, and the (None, None) that pynetdicom queues when the association is aborted
    or its connection lost, then all come to :func:`_c_store`.
    """
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()
    deadline = time.monotonic() + 30
    while not checkpoint._cond._waiters and assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.0005)


def _c_store(assoc: Any, file: str, message_id: int) -> tuple[int | None, str]:
    """One C-STORE of *file* as it is (the data set bytes after its File Meta, read in
    chunks by pynetdicom), on an association whose reactor :func:`_pause_reactor` paused:
    the response's status and error comment, or None and why."""
    meta, offset = split_dataset(Path(file))
    sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    context = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class
                   and c.transfer_syntax[0] == syntax)  # fmt: skip
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = str(meta.MediaStorageSOPInstanceUID)
    request.Priority = 2
    request._dataset_path = (Path(file), offset)
    assoc.dimse.send_msg(request, context.context_id)
    _context_id, response = assoc.dimse.get_msg(block=True)
    if response is None:
        return None, "no response"
    status = getattr(response, "Status", None)
    return (None if status is None else int(status)), str(getattr(response, "ErrorComment", None) or "")


def _no_delay(assoc: Any) -> None:
    """Send each PDU at once (pynetdicom leaves Nagle's algorithm on: its command and data
    set PDUs of an instance would wait for the receiver's delayed ACK, 40 ms, every time)."""
    sock = getattr(assoc.dul.socket, "socket", None) if assoc.is_established else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _context(file: str) -> tuple[str, str]:
    meta = pydicom.dcmread(file, stop_before_pixels=True).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def paced_send(
    host: str, port: int, file: str, log: str, *, calling_ae: str = "PACED", chunk: int = 1 << 20, delay: float = 0.02
) -> None:
    """Send one file as a sender on a slow link would: a C-STORE as :func:`pynetdicom_send`
    makes them, but its socket takes at most *chunk* bytes per send, *delay*
    seconds apart. Appends ``{"progress": bytes on the wire, "total": data set bytes}`` to
    *log* after each, then the status as :func:`pynetdicom_send` does."""
    total = len(dataset_bytes(Path(file).read_bytes()))
    ae = AE(calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(*_context(file))
    assoc = ae.associate(host, port, ae_title=CALLED_AE)
    with Path(log).open("a", encoding="utf-8") as out:
        if not assoc.is_established:
            _record(out, file, None, "no association")
            return

        def sent(progress: int) -> None:
            out.write(json.dumps({"progress": progress, "total": total, "time": time.time()}) + "\n")
            out.flush()

        _pause_reactor(assoc)
        assoc.dul.socket.socket = _PacedSocket(assoc.dul.socket.socket, chunk, delay, sent)  # type: ignore[union-attr]
        status, detail = _c_store(assoc, file, 1)
        _record(out, file, status, detail)
        if status is None:
            assoc.abort()
        else:
            assoc.release()


class _PacedSocket:
    """A socket whose ``send`` takes at most *chunk* bytes, then waits *delay* seconds."""

    def __init__(self, sock: Any, chunk: int, delay: float, sent: Callable[[int], None]) -> None:
        self._sock, self._chunk, self._delay, self._sent = sock, chunk, delay, sent
        self._progress = 0

    def send(self, data: bytes, *flags: int) -> int:
        n = int(self._sock.send(data[: self._chunk], *flags))
        self._progress += n
        self._sent(self._progress)
        time.sleep(self._delay)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def read_progress(log: Path) -> tuple[int, int]:
    """How many data set bytes a :func:`paced_send` has sent so far, of how many."""
    progress = (0, 0)
    if log.exists():
        for line in log.read_bytes().split(b"\n"):
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            if "progress" in raw:
                progress = (int(raw["progress"]), int(raw["total"]))
    return progress


# DCMTK


def storescu_argv(host: str, port: int, files: Iterable[str | Path], *, calling_ae: str = "STORESCU",
                  extra: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """storescu that goes on after a failed store (``-nh``) and logs each response (``-v``).

    Debian's DCMTK leaves Nagle's algorithm on unless ``TCP_NODELAY=1`` is in its environment
    (:data:`NO_DELAY`): then each instance waits for the receiver's delayed ACK, 40 ms."""
    return ["storescu", "-v", "-nh", "-aet", calling_ae, "-aec", CALLED_AE, *extra, host, str(port),
            *(str(f) for f in files)]  # fmt: skip


def storescu_statuses(output: str) -> list[Sent]:
    """Each file storescu sent and the status of its response (``storescu -v`` output;
    :data:`_STORESCU_STATUS` gives the codes of the names it prints; a file with no
    response line got none)."""
    sent: list[Sent] = []
    current: str | None = None
    for line in output.splitlines():
        if m := re.match(r"I: Sending file: (.*)$", line):
            if current is not None:
                sent.append(Sent(current, None, "no response"))
            current = m.group(1)
        elif (m := re.match(r"I: Received Store Response \((.*)\)$", line)) and current is not None:
            sent.append(Sent(current, _STORESCU_STATUS.get(m.group(1), -1), m.group(1)))
            current = None
    if current is not None:
        sent.append(Sent(current, None, "no response"))
    return sent


def echoscu(host: str, port: int, calling_ae: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """One C-ECHO from *calling_ae* (exit code 0: associated and echoed)."""
    argv = ["echoscu", "-v", "-aet", calling_ae, "-aec", CALLED_AE, host, str(port)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


# Processes


class Processes:
    """Starts sender (and receiver) processes and kills, at :meth:`close`, every one still running."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self._popens: list[subprocess.Popen[bytes]] = []
        self._children: list[BaseProcess] = []

    def popen(self, argv: Sequence[str], name: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start *argv* with stdout and stderr going to ``<logs>/<name>.out``."""
        with (self.logs / f"{name}.out").open("ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)
        self._popens.append(proc)
        return proc

    def output(self, name: str) -> str:
        path = self.logs / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def spawn(self, target: Callable[..., None], *args: Any, **kwargs: Any) -> BaseProcess:
        """Run *target(*args, **kwargs)* in a spawned process."""
        child = _spawn.Process(target=target, args=args, kwargs=kwargs, daemon=True)
        child.start()
        self._children.append(child)
        return child

    def close(self) -> None:
        for proc in self._popens:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for child in self._children:
            if child.is_alive():
                child.kill()
            child.join()
            child.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll *condition* until it holds; fail with *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def join_all(children: Iterable[BaseProcess | subprocess.Popen[bytes]], timeout: float) -> None:
    """Wait for every child to end, *timeout* seconds in all; fail naming one that did not."""
    deadline = time.monotonic() + timeout
    for child in children:
        left = max(deadline - time.monotonic(), 0.1)
        if isinstance(child, subprocess.Popen):
            try:
                child.wait(left)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{child.args!r} still runs after {timeout:g} s") from None
        else:
            child.join(left)
            assert not child.is_alive(), f"a sender process still runs after {timeout:g} s"


def kill(child: BaseProcess | subprocess.Popen[bytes]) -> None:
    """SIGKILL *child* and reap it."""
    if isinstance(child, subprocess.Popen):
        child.send_signal(signal.SIGKILL)
        child.wait()
    else:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()


def json_events(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The complete lines of a receiver's ``--json-log``, of one *kind* (``event``) or all."""
    events = []
    if path.exists():
        for line in path.read_bytes().split(b"\n"):
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            if isinstance(raw, dict) and (kind is None or raw.get("event") == kind):
                events.append(raw)
    return events
