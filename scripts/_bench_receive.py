"""The receivers side by side, for scripts/bench.py (which turns the figures into rows).

One stream of files, sent by 4 DCMTK ``storescu`` processes at once (one association each),
to each receiver in turn: DCMTK ``storescp --fork``, Orthanc (Debian's ``orthanc``, when
installed) and ``dicomcommit receive``, durable (its default) and with ``--no-fsync``; and,
for reference, pynetdicom alone answering Success and keeping nothing (the ceiling of any
receiver built on it, in one process, here).

The stream (:func:`make_stream`): N distinct instances; identical re-sends of a tenth of
them, each from another sender than its original; and ``second versions`` of 50 others:
the same SOP Instance UID with other content (another Series Description and other pixel
values, as reprocessing would give). Each second version is sent on the association of its
first version, after it: storescu sends one file at a time and waits for its response, so
the receiver has the first version when the second arrives.

What is timed: from starting the first storescu to the exit of the last (files sent / that
wall time = files/s; a storescu reads its files' headers before it associates, for every
receiver alike). Then the receiver is stopped with SIGTERM, and the time to its exit is
reported apart: for ``dicomcommit receive``, that is the final commit of what is staged
(passes run every second while it receives: ``--commit-interval 1``).

What is kept is read back from disk afterwards: each stored file's SOP Instance UID, Series
Description and pixel data are compared with what was sent (not whole-file bytes: each
receiver writes a File Meta of its own). For dicomcommit, only files the manifest records as
committed or conflict count, and their bytes must hash to the manifest's sha256. storescp
names files by SOP Instance UID, so a second version replaces the first; Orthanc (with
``"OverwriteInstances": false``, its default) keeps the first and drops the second.

storescp writes without fsync; Orthanc fsyncs each file (``SyncStorageArea``, its default
since 1.7.4); dicomcommit fsyncs each file and the staging directory before each Success.
Every DCMTK program runs with ``TCP_NODELAY=1`` unless told otherwise (see :func:`measure`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomcommit.layout import STATE_DIR
from dicomcommit.manifests.sqlite import default_path
from dicomcommit.synthetic import synthetic_dataset

if TYPE_CHECKING:
    from _bench_core import Bench

SENDERS = 4
SECOND_VERSIONS = 50
REPEAT_SHARE = 0.10  # identical re-sends, as a share of the distinct instances
STORESCP = "storescp"  # the baseline's row name: every ratio is against it
FLOOR = "pynetdicom, no storage"
_ROOT = "1.2.826.0.1.3680043.10.4242.7"
_READY = 30.0  # seconds a receiver has to answer a C-ECHO
_STOP = 120.0  # seconds a receiver has to exit after SIGTERM
_SEND = 900.0  # seconds the senders have


class Unavailable(Exception):
    """DCMTK's storescu, storescp or echoscu is missing: the receivers' rows are skipped, for this reason."""


@functools.cache
def dcmtk(name: str) -> str:
    """The path of DCMTK's *name*: on the PATH, but not pynetdicom's script of the same name
    (``.venv/bin/storescu`` when the venv is active).

    Raises:
        Unavailable: no DCMTK program of that name.
    """
    for directory in [*os.get_exec_path(), "/usr/bin", "/usr/local/bin"]:
        path = Path(directory) / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        try:
            out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return str(path)
    raise Unavailable(f"DCMTK's {name} is not installed (Debian: apt-get install dcmtk)")


# --- the stream --------------------------------------------------------------------------


def fingerprint(ds: Dataset) -> str:
    """What tells versions apart, whatever File Meta a receiver wrote: the SOP Instance UID,
    the Series Description and the pixel data."""
    head = f"{ds.SOPInstanceUID}\0{ds.get('SeriesDescription', '')}\0".encode()
    return hashlib.sha256(head + (bytes(ds.PixelData) if "PixelData" in ds else b"")).hexdigest()


def read_fingerprint(path: Path) -> str | None:
    """The fingerprint of the DICOM file at *path*; None when it is not one (an index, a log)."""
    try:
        return fingerprint(pydicom.dcmread(path))
    except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError):
        return None


def fingerprints(paths: Iterable[Path]) -> Iterator[str]:
    """The fingerprints of the DICOM files among *paths*."""
    return (fp for fp in map(read_fingerprint, paths) if fp is not None)


@dataclass
class Stream:
    """What the senders send: each sender's files in order, and the fingerprints of every version."""

    senders: list[list[Path]]
    firsts: dict[str, str]  # SOP Instance UID -> its first (or only) version
    seconds: dict[str, str]  # SOP Instance UID -> its second version
    repeats: int

    @property
    def sent(self) -> int:
        return sum(len(files) for files in self.senders)


def make_stream(directory: Path, distinct: int, *, size: int, seconds: int = SECOND_VERSIONS, seed: int = 0) -> Stream:
    """Write the stream's files into one directory per sender (see the module's docstring)."""
    rng = random.Random(seed)
    order = list(range(distinct))
    rng.shuffle(order)
    twice, again = order[:seconds], order[seconds : seconds + int(distinct * REPEAT_SHARE)]
    queues: list[list[tuple[int, int]]] = [[] for _ in range(SENDERS)]  # (index, variant) per sender
    for i in range(distinct):
        queues[i % SENDERS].append((i, 0))
    for i in again:  # identical, from another sender: on another association, at any time
        queues[(i + 1) % SENDERS].insert(rng.randrange(len(queues[(i + 1) % SENDERS]) + 1), (i, 0))
    for q in queues:
        rng.shuffle(q)
    for i in twice:  # on the first version's association, anywhere after it
        q = queues[i % SENDERS]
        q.insert(rng.randrange(q.index((i, 0)) + 1, len(q) + 1), (i, 1))
    stream = Stream([], {}, {}, len(again))
    for s, q in enumerate(queues):
        out = directory / f"sender-{s}"
        out.mkdir()
        files = []
        for position, (i, variant) in enumerate(q):
            ds = synthetic_dataset(_ROOT, i, variant, size=size)
            path = out / f"{position:06d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            files.append(path)
            (stream.seconds if variant else stream.firsts)[str(ds.SOPInstanceUID)] = fingerprint(ds)
        stream.senders.append(files)
    return stream


@dataclass
class Kept:
    """What a receiver has on disk of the stream."""

    instances: int  # distinct SOP Instance UIDs with some version sent on disk
    firsts: int  # first versions on disk, of the instances sent twice
    seconds: int  # second versions on disk


def kept(stream: Stream, found: Iterable[str]) -> Kept:
    have = set(found)
    instances = sum(1 for uid, fp in stream.firsts.items() if fp in have or stream.seconds.get(uid) in have)
    firsts = sum(1 for uid in stream.seconds if stream.firsts[uid] in have)
    return Kept(instances, firsts, sum(1 for fp in stream.seconds.values() if fp in have))


# --- the receivers -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Peer:
    """A receiver: how to start it in a fresh directory, where its files end up, and how to stop it."""

    name: str
    ae_title: str
    stores: bool = True  # False: a reference that keeps nothing (no kept counts)
    work: Path = Path()
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    exits: tuple[int, ...] = (0, -signal.SIGTERM)  # how it may end on SIGTERM

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Make what the command needs under :attr:`work` (before it starts)."""

    def found(self) -> Iterator[str]:
        """The fingerprints of the stream's files the receiver keeps (after :meth:`stop`)."""
        raise NotImplementedError

    def start(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.port = work, free_port()
        self.prepare()
        with (work / "receiver.log").open("wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=work, env=env)
        deadline = time.monotonic() + _READY
        echo = [dcmtk("echoscu"), "-q", "-to", "2", "-aec", self.ae_title, "127.0.0.1", str(self.port)]
        while subprocess.run(echo, capture_output=True, check=False, timeout=30).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer a C-ECHO on port {self.port}: {self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> float:
        """SIGTERM, then wait for the exit; the seconds that took."""
        if self.process is None:
            return 0.0
        started = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(_STOP)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"{self.name} did not exit within {_STOP:g} s of SIGTERM: {self.log_tail()}") from None
        finally:
            self.process = None
        seconds = time.perf_counter() - started
        if code not in self.exits:
            raise RuntimeError(f"{self.name} exited with {code} after SIGTERM: {self.log_tail()}")
        return seconds

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "receiver.log").read_text(errors="replace")[-2000:]
        return ""


class StoreSCP(Peer):
    """DCMTK's storescp, a process per association (``--fork``), files named by SOP Instance UID."""

    def __init__(self) -> None:
        super().__init__(STORESCP, "STORESCP")

    def prepare(self) -> None:
        (self.work / "out").mkdir()

    def command(self) -> list[str]:
        return [dcmtk("storescp"), "--fork", "-aet", self.ae_title, "-od", str(self.work / "out"), str(self.port)]

    def found(self) -> Iterator[str]:
        return fingerprints((self.work / "out").iterdir())


class Orthanc(Peer):
    """Orthanc with its defaults, in a directory of its own: its index, storage and ports."""

    def __init__(self, binary: str) -> None:
        super().__init__("Orthanc", "ORTHANC")
        self.binary = binary
        self.http_port = 0

    def prepare(self) -> None:
        self.http_port = free_port()
        config = {
            "Name": "dicomcommit-bench", "StorageDirectory": str(self.work / "storage"),
            "IndexDirectory": str(self.work / "index"), "StorageCompression": False, "Plugins": [],
            "DicomAet": self.ae_title, "DicomPort": self.port, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "DicomThreadsCount": 4,
            "OverwriteInstances": False, "SyncStorageArea": True, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "SaveJobs": False,
        }  # fmt: skip
        (self.work / "orthanc.json").write_text(json.dumps(config, indent=2))

    def command(self) -> list[str]:
        return [self.binary, str(self.work / "orthanc.json")]

    def found(self) -> Iterator[str]:
        return fingerprints((self.work / "storage").rglob("*"))  # its index is in "index"


class DicomCommit(Peer):
    """``dicomcommit receive`` as a user starts it, committing every second."""

    def __init__(self, *, durable: bool) -> None:
        super().__init__("dicomcommit" if durable else "dicomcommit --no-fsync", "DICOMCOMMIT", exits=(0,))
        self.durable = durable

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dicomcommit", "receive", str(self.work / "staging"), str(self.work / "archive"),
                "--host", "127.0.0.1", "--port", str(self.port), "--ae-title", self.ae_title,
                "--commit-interval", "1", *([] if self.durable else ["--no-fsync"])]  # fmt: skip

    def found(self) -> Iterator[str]:
        """Files the manifest records as committed or conflict, whose bytes hash as it says."""
        archive = self.work / "archive"
        left = [p.name for p in (self.work / "staging").iterdir() if p.is_file() and not p.name.startswith(".")]
        db = sqlite3.connect(f"file:{default_path(archive)}?mode=ro", uri=True)
        try:
            counts = dict(db.execute("SELECT status, count(*) FROM files GROUP BY status").fetchall())
            rows = db.execute("SELECT path, sha256 FROM files WHERE status IN ('committed', 'conflict')").fetchall()
        finally:
            db.close()
        self.details.update(manifest=counts, left_in_staging=len(left))
        held = [archive / path for path, sha256 in rows
                if sha256 is None or hashlib.sha256((archive / path).read_bytes()).hexdigest() == sha256]  # fmt: skip
        self.details["hash_mismatches"] = len(rows) - len(held)
        self.details["conflict_files"] = sum(1 for _ in (archive / STATE_DIR / "conflicts").glob("*.dcm"))
        return fingerprints(held)


class PynetdicomFloor(Peer):
    """pynetdicom alone, set up as ``dicomcommit receive`` sets it up, answering Success to each
    C-STORE and keeping nothing: the most a receiver built on it can do on this machine."""

    def __init__(self) -> None:
        super().__init__(FLOOR, "FLOOR", stores=False)

    def command(self) -> list[str]:
        return [sys.executable, __file__, "floor", str(self.port), self.ae_title]

    def found(self) -> Iterator[str]:
        return iter(())


def floor_scp(port: int, ae_title: str) -> None:
    """Run :class:`PynetdicomFloor`'s receiver on *port* until SIGTERM."""
    import threading  # noqa: PLC0415 -- this process only

    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt  # noqa: PLC0415
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # noqa: PLC0415

    ae = AE(ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(cast(str, context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    ae.maximum_associations, ae.maximum_pdu_size, ae.require_called_aet = 16, 0, False
    handlers: list[evt.EventHandlerType] = [(evt.EVT_C_STORE, lambda event: 0x0000),
                                            (evt.EVT_C_ECHO, lambda event: 0x0000)]  # fmt: skip
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    stop.wait()
    if server is not None:
        server.shutdown()


def peers() -> tuple[list[Peer], dict[str, str]]:
    """The receivers on this machine, and why any is left out.

    Raises:
        Unavailable: DCMTK is missing (no sender, no baseline).
    """
    for name in ("storescu", "storescp", "echoscu"):
        dcmtk(name)
    orthanc = shutil.which("Orthanc", path=os.pathsep.join([*os.get_exec_path(), "/usr/sbin"]))
    found: list[Peer] = [StoreSCP(), *([Orthanc(orthanc)] if orthanc else [])]
    skipped = {} if orthanc else {"Orthanc": "not installed (Debian: apt-get install orthanc)"}
    return [*found, DicomCommit(durable=True), DicomCommit(durable=False), PynetdicomFloor()], skipped


# --- sending and measuring ---------------------------------------------------------------


def send(stream: Stream, peer: Peer, env: dict[str, str]) -> float:
    """Run one storescu per sender at once against *peer*; the seconds from the first start to the last exit."""
    storescu = dcmtk("storescu")
    logs = [peer.work / f"storescu-{s}.log" for s in range(len(stream.senders))]
    started = time.perf_counter()
    procs = []
    for s, files in enumerate(stream.senders):
        with logs[s].open("wb") as log:
            procs.append(subprocess.Popen(
                [storescu, "-nh", "-aet", f"SENDER{s}", "-aec", peer.ae_title, "127.0.0.1", str(peer.port),
                 *map(str, files)], stdout=log, stderr=subprocess.STDOUT, env=env))  # fmt: skip
    codes = [p.wait(_SEND) for p in procs]
    seconds = time.perf_counter() - started
    for code, path in zip(codes, logs, strict=True):
        text = path.read_text(errors="replace")
        if code != 0 or "E: " in text:
            raise RuntimeError(f"storescu to {peer.name} failed (exit code {code}): {text[-2000:]}")
    return seconds


@dataclass
class Figures:
    """One receiver's runs."""

    rates: list[float] = field(default_factory=list)  # files/s, sender side
    stops: list[float] = field(default_factory=list)  # seconds from SIGTERM to exit
    kept: list[Kept] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # the last run's


def measure(bench: Bench, distinct: int, *, kind: str, size: int, nodelay: bool = True) -> dict[str, Any]:
    """Every receiver's figures over ``bench.runs`` runs (interleaved: a slow phase of the
    machine does not fall on one receiver only), as rows for the table and the details.

    *nodelay*: run every DCMTK program (storescu, storescp, Orthanc) with ``TCP_NODELAY=1``.
    Debian's DCMTK leaves Nagle's algorithm on unless told so, and each C-STORE then waits
    for the peer's delayed ACK (40 ms on Linux) once or twice: the figures would measure that
    timer. pynetdicom (dicomcommit's side) writes each PDU in one call and never waits on it.

    Raises:
        Unavailable: DCMTK is missing.
    """
    env = {**os.environ, "TCP_NODELAY": "1" if nodelay else "0"}
    receivers, skipped = peers()
    twice = min(SECOND_VERSIONS, distinct // 4)
    stream = make_stream(bench.fresh("receive-stream"), distinct, size=size, seconds=twice)
    figures = {peer.name: Figures() for peer in receivers}
    for _ in range(bench.runs):
        for peer in receivers:
            peer.details = {}
            os.sync()  # no receiver pays for the writeback of the last one's files
            peer.start(bench.fresh(f"receive-{peer.name.split()[0]}"), env)
            try:
                seconds = send(stream, peer, env)
            finally:
                stop = peer.stop()
            f = figures[peer.name]
            f.rates.append(stream.sent / seconds)
            f.stops.append(stop)
            if peer.stores:
                f.kept.append(kept(stream, peer.found()))
            f.details = peer.details
    return {**summarize(stream, figures, skipped, kind), "tcp_nodelay": nodelay}


def summarize(stream: Stream, figures: dict[str, Figures], skipped: dict[str, str], kind: str) -> dict[str, Any]:
    """Rows (as bench.Row's fields) and what the table prints under them. Kept counts are the
    fewest over the runs."""
    base = statistics.median(figures[STORESCP].rates)
    rows, peers_out = [], {}
    for name, f in figures.items():
        rate = statistics.median(f.rates)
        ratio = None if name == STORESCP else rate / base
        target = (">= 0.5x", rate / base >= 0.5) if name == "dicomcommit" else ("", None)
        rows.append({"name": f"receive: {name}", "kind": kind, "files": stream.sent, "rate": rate,
                     "baseline": "" if ratio is None else f"receive: {STORESCP}", "ratio": ratio,
                     "target": target[0], "ok": target[1]})  # fmt: skip
        peers_out[name] = {"rate": rate, "runs": f.rates, "stop_seconds": statistics.median(f.stops), **f.details}
        if f.kept:
            least = Kept(*(min(getattr(k, a) for k in f.kept) for a in ("instances", "firsts", "seconds")))
            peers_out[name].update(instances=least.instances, firsts_kept=least.firsts, seconds_kept=least.seconds)
    ours = peers_out["dicomcommit"]
    return {
        "rows": rows,
        "senders": SENDERS, "sent": stream.sent, "distinct": len(stream.firsts), "repeats": stream.repeats,
        "second_versions": len(stream.seconds), "peers": peers_out, "skipped": skipped,
        "all_second_versions_kept": ours["seconds_kept"] == len(stream.seconds)
        and ours["firsts_kept"] == len(stream.seconds) and ours["instances"] == len(stream.firsts),
    }  # fmt: skip


def print_summary(r: dict[str, Any]) -> None:
    """What the rows do not say: what each receiver kept, and how long it took to stop."""
    n, total = r["second_versions"], r["distinct"]
    print(f"\nreceivers: {r['senders']} storescu at once, {r['sent']:,} files ({total:,} instances, "
          f"{r['repeats']:,} identical re-sends, {n} second versions, each after its first)")  # fmt: skip
    print(f"  {'receiver':<24} {'instances':>11} {'1st kept':>9} {'2nd kept':>9} {'stop (s)':>9}")
    for name, p in r["peers"].items():
        if "instances" in p:
            print(f"  {name:<24} {p['instances']:>5}/{total:<5} {p['firsts_kept']:>5}/{n:<3} "
                  f"{p['seconds_kept']:>5}/{n:<3} {p['stop_seconds']:>9.2f}")  # fmt: skip
        else:
            print(f"  {name:<24} {'-':>11} {'-':>9} {'-':>9} {p['stop_seconds']:>9.2f}  (keeps nothing)")
    for name, p in r["peers"].items():
        if "manifest" in p:
            print(f"  {name}: stop = SIGTERM to exit, the final commit included; manifest {p['manifest']}, "
                  f"{p['left_in_staging']} left in staging, {p['hash_mismatches']} hash mismatches")  # fmt: skip
    for name, why in r["skipped"].items():
        print(f"  {name}: skipped, {why}")
    print(f"  dicomcommit kept every version: {'yes' if r['all_second_versions_kept'] else 'NO'}")


if __name__ == "__main__":  # the floor's receiver, in a process of its own (see PynetdicomFloor)
    if sys.argv[1:2] != ["floor"] or len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} floor PORT AE_TITLE (bench.py runs the receivers' rows)")
    floor_scp(int(sys.argv[2]), sys.argv[3])
