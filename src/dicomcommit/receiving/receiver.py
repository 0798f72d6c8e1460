"""A DICOM receiver (C-STORE, C-ECHO and Storage Commitment SCP) that never loses an instance.

Each instance is staged as received (the encoded data set behind a File Meta the receiver
writes the same way every time, so an identical re-send is an identical file) and durable
before its Success goes back. A commit loop then commits the staging directory into the
archive, with the outcomes and manifest rows of ``dicomcommit commit``: identical re-sends
are duplicates, a different instance under a name already taken is a conflict, kept and
recorded. C-STORE Success means "stored durably"; a conflict is found later, by commit,
and is what a Storage Commitment report says: a failure (0x0110) until a person decides.

Statuses of C-STORE: 0x0000 staged durably; 0xA700 (out of resources: retry) when staging
fails (disk full, permissions) or the receiver is shutting down; 0xA900 when the data set's
SOP Class UID is not the request's; 0xC001 when the data set cannot be parsed, 0xC002 when
its SOP Instance UID is not the request's. Nothing is left in staging for a failed one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE, N_ACTION
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from dicomcommit.archives import open_archive
from dicomcommit.checks import check_dir, check_dirs
from dicomcommit.committing.decide import ON_CONFLICT_CHOICES
from dicomcommit.committing.driver import check_on_conflict
from dicomcommit.errors import DicomCommitError, EncodeError, MismatchError, ReceiveError, StageError, UsageError
from dicomcommit.manifests import Location, manifest_url
from dicomcommit.naming import DEFAULT_TEMPLATE, parse_template
from dicomcommit.receiving.commitment import CommitmentStore, Received
from dicomcommit.receiving.events import EventLog
from dicomcommit.receiving.loop import CommitLoop, CommitSettings
from dicomcommit.receiving.peers import Allowed, check_ae_title, parse_allow, parse_peers
from dicomcommit.receiving.reports import COMMITMENT_INSTANCE
from dicomcommit.receiving.settings import (
    DEFAULT_AE_TITLE,
    DEFAULT_COMMIT_FILES,
    DEFAULT_COMMIT_INTERVAL,
    DEFAULT_MAX_ASSOCIATIONS,
    DEFAULT_PORT,
)
from dicomcommit.receiving.stagers import Stagers
from dicomcommit.receiving.wire import Contexts, part10
from dicomcommit.scanning import scan_staging
from dicomcommit.staging.journal import JournalIndex, labelled

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CLASS_MISMATCH = 0xA900
CANNOT_PARSE = 0xC001
INSTANCE_MISMATCH = 0xC002
_NO_SUCH_ACTION, _INVALID_ARGUMENT, _RESOURCE_LIMITATION = 0x0123, 0x0115, 0x0213
_COMMITMENT_REQUEST = 1  # the Action Type ID of "Request Storage Commitment"

DEFAULT_DRAIN = 5.0  # seconds stop() waits for senders to release before aborting them


class Receiver:
    """Receive DICOM over the network into *staging_dir*, and commit it into *archive*.

    Args:
        port, host: where to listen (port 0: any free port; see :attr:`address`).
        ae_title: this receiver's AE title.
        allow: ``AE`` or ``AE@HOST`` entries; when given, only these calling AE titles (from
            these hosts) may associate; others are rejected (calling AE title not recognised).
        peers: ``AE@HOST:PORT`` entries: where to send a Storage Commitment report on a new
            association once the requester's own has closed.
        template, on_conflict, manifest, durable, endpoint_url, allow_collisions: as for
            :func:`dicomcommit.commit` (``on_conflict="error"`` is refused: it would leave
            every instance after a conflict staged).
        max_associations: associations at once; more are rejected (local limit exceeded).
        commit_interval: seconds between commit passes; *commit_files* instances waiting
            start one sooner.
        json_log: a file to append one JSON object per association and per instance to.

    Raises:
        UsageError: a bad argument. ReceiveError: the port cannot be bound (by :meth:`start`).
    """

    def __init__(
        self,
        staging_dir: str | os.PathLike[str],
        archive: str | os.PathLike[str],
        *,
        port: int = DEFAULT_PORT,
        host: str = "",
        ae_title: str = DEFAULT_AE_TITLE,
        allow: Iterable[str] = (),
        peers: Iterable[str] = (),
        template: str = DEFAULT_TEMPLATE,
        on_conflict: str = "record",
        manifest: Location | None = None,
        max_associations: int = DEFAULT_MAX_ASSOCIATIONS,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
        commit_files: int = DEFAULT_COMMIT_FILES,
        json_log: str | os.PathLike[str] | None = None,
        durable: bool = True,
        endpoint_url: str | None = None,
        allow_collisions: bool = False,
    ) -> None:
        check_on_conflict(on_conflict)
        if on_conflict == "error":
            choices = ", ".join(c for c in ON_CONFLICT_CHOICES if c != "error")
            raise UsageError(f"receive cannot stop at a conflict (every later instance would stay staged); "
                             f"on_conflict must be one of {choices}")  # fmt: skip
        if not 0 <= port < 65536:
            raise UsageError(f"port must be 0 to 65535, not {port}")
        for name, value in (("max_associations", max_associations), ("commit_files", commit_files)):
            if value < 1:
                raise UsageError(f"{name} must be at least 1, not {value}")
        if not commit_interval > 0:
            raise UsageError(f"commit_interval must be more than 0 seconds, not {commit_interval}")
        parse_template(template, allow_collisions=allow_collisions)
        url = manifest_url(archive, manifest)
        try:  # as a Stager does: the staging directory is made on first use
            Path(staging_dir).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise UsageError(f"staging directory {staging_dir} is not a directory") from exc
        self.staging, archive_location = check_dirs(Path(staging_dir), archive)
        self.ae_title = check_ae_title(ae_title)
        self.allowed: tuple[Allowed, ...] = parse_allow(allow)
        self.peers = parse_peers(peers)
        self.host, self.port, self.max_associations = host, port, max_associations
        self._durable, self._json_log = durable, json_log
        self._settings = CommitSettings(self.staging, archive_location, {
            "template": template, "on_conflict": on_conflict, "manifest": url, "durable": durable,
            "endpoint_url": endpoint_url, "allow_collisions": allow_collisions,
            "lock_timeout": max(60.0, commit_interval)}, commit_interval, commit_files)  # fmt: skip
        self._server: ThreadedAssociationServer | None = None
        self._closing = False
        self._in_flight = 0
        self._idle = threading.Condition()
        self._stopped = threading.Event()
        self._stopping = threading.Lock()
        self._counts: dict[int, int] = {}  # instances per association (by id)

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the receiver listens on (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Take over what a previous run left staged, start the commit loop, and listen.

        Raises:
            ReceiveError: the port is in use, or the receiver's state or JSON log cannot be
                opened (nothing is left running).
            DicomCommitError: the archive cannot be opened (an object store's bucket is missing...).
        """
        check_dir(self.staging, "staging directory")
        with contextlib.ExitStack() as undo:  # everything started is stopped again unless all of it starts
            try:
                self._events = EventLog(self._json_log)
                undo.callback(self._events.close)
                self._stagers = Stagers(self.staging, self._durable)
                undo.callback(self._stagers.close)
                self._store = CommitmentStore(self.staging)
                undo.callback(self._store.close)
                s = self._settings
                open_archive(s.archive, manifest=s.commit_args["manifest"], endpoint_url=s.commit_args["endpoint_url"])
                self._store.add_received(_staged_before(self.staging))
            except OSError as exc:
                raise ReceiveError(f"cannot start: {exc.strerror} ({exc.filename or self.staging})") from exc
            self._loop = CommitLoop(s, self._store, self._events, self.peers, self.ae_title,
                                    before_pass=self._stagers.rotate)  # fmt: skip
            try:
                self._server = self._ae().start_server((self.host, self.port), block=False,
                                                       evt_handlers=self._handlers(),
                                                       contexts=Contexts.everything())  # fmt: skip
            except OSError as exc:
                raise ReceiveError(f"cannot listen on port {self.port} ({exc.strerror or exc})") from exc
            self._loop.start()
            undo.pop_all()
        host, port = self.address
        who = "any calling AE title" if not self.allowed else ", ".join(
            a.ae_title + (f"@{a.host}" if a.host else "") for a in self.allowed)  # fmt: skip
        self._events.event("listening", f"{self.ae_title} listening on {host or '*'}:{port}, accepting {who}; "
                           f"staging {self.staging}, archive {s.archive}", ae_title=self.ae_title, host=host,
                           port=port)  # fmt: skip

    def _ae(self) -> AE:
        ae = AE(self.ae_title)
        ae.maximum_associations = self.max_associations
        ae.maximum_pdu_size = 0  # no limit: a sender splits an instance into as few PDUs as it can
        ae.require_called_aet = False  # modalities often call a receiver by another name
        return ae

    def _handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_RELEASED, self._on_ended), (evt.EVT_ABORTED, self._on_ended),
                (evt.EVT_C_ECHO, lambda event: SUCCESS), (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_N_ACTION, self._on_commitment)]  # fmt: skip

    def serve_forever(self) -> None:
        """Start (unless started), then receive until :meth:`stop` or :meth:`request_stop`."""
        if self._server is None:
            self.start()
        self._stopped.wait()
        self.stop()

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` stop and return (safe in a signal handler)."""
        self._stopped.set()

    def stop(self) -> None:
        """Stop: refuse new associations and instances, let those being staged finish, give
        senders a moment to release, commit what is staged, and deliver what reports can be.
        Returns when done (at once if not started, or stopped already)."""
        self._stopped.set()
        with self._stopping:
            server, self._server = self._server, None
            if server is not None:
                self._shutdown(server)

    def _shutdown(self, server: ThreadedAssociationServer) -> None:
        self._closing = True
        server.shutdown()  # no new associations
        deadline = time.monotonic() + DEFAULT_DRAIN
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        for assoc in server.active_associations:
            assoc.abort()
        self._loop.stop()
        self._events.event("stopped", f"{self.ae_title} stopped; staging {self.staging} committed")
        self._store.close()
        self._stagers.close()
        self._events.close()

    def commit_now(self, timeout: float | None = None) -> bool:
        """Run a commit pass (and the reports it allows) now; wait for it (True when it ended)."""
        return self._loop.commit_now(timeout)

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # The handlers run in each association's own thread.

    def _on_requested(self, event: Event) -> None:
        ae_title, address = _calling(event.assoc)
        if not self.allowed or any(a.admits(ae_title, event.assoc.requestor.address) for a in self.allowed):
            return
        self._events.event("rejected", f"association from {ae_title}@{address} rejected: not in --allow",
                           logging.WARNING, calling_ae=ae_title, address=address)  # fmt: skip
        event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent; calling AE title not recognised
        event.assoc.kill()

    def _on_accepted(self, event: Event) -> None:
        ae_title, address = _calling(event.assoc)
        self._counts[id(event.assoc)] = 0
        self._events.event("association", f"association from {ae_title}@{address} accepted",
                           calling_ae=ae_title, address=address, state="accepted")  # fmt: skip

    def _on_ended(self, event: Event) -> None:
        ae_title, address = _calling(event.assoc)
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        count = self._counts.pop(id(event.assoc), 0)
        self._events.event("association", f"association from {ae_title}@{address} {how} after {count} instances",
                           calling_ae=ae_title, address=address, state=how, instances=count)  # fmt: skip

    def _on_store(self, event: Event) -> int | Dataset:
        with self._idle:
            if self._closing:
                return _status(OUT_OF_RESOURCES, "the receiver is shutting down; send again later")
            self._in_flight += 1
        try:
            return self._store_one(event)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _store_one(self, event: Event) -> int | Dataset:
        request = cast(C_STORE, event.request)
        ae_title, address = _calling(event.assoc)
        uid, sop_class = str(request.AffectedSOPInstanceUID), str(request.AffectedSOPClassUID)
        fields = {"calling_ae": ae_title, "address": address, "sop_instance_uid": uid, "sop_class_uid": sop_class}
        origin = f"{ae_title}@{address}"
        try:
            if request.DataSet is None:
                raise EncodeError("no data set in the request")
            data = part10(sop_class, uid, str(event.context.transfer_syntax), request.DataSet.getbuffer())
            with self._stagers.using() as stager:
                record = stager.stage_encoded(data, origin=origin,
                                              expect={"SOPClassUID": sop_class, "SOPInstanceUID": uid})  # fmt: skip
        except MismatchError as exc:
            code = CLASS_MISMATCH if exc.keyword == "SOPClassUID" else INSTANCE_MISMATCH
            return self._refused(code, f"the data set does not match the request: {exc}", fields)
        except (EncodeError, UnicodeError) as exc:  # (a UID that is not ASCII)
            return self._refused(CANNOT_PARSE, f"cannot be parsed: {exc}", fields)
        except (StageError, DicomCommitError, OSError) as exc:
            return self._refused(OUT_OF_RESOURCES, f"could not be staged: {exc}", fields, logging.ERROR)
        except Exception as exc:  # never a 0xC211, which a sender reads as "do not retry"
            self._events.event("error", f"unexpected failure receiving {uid}: {exc!r}", logging.ERROR, **fields)
            return _status(OUT_OF_RESOURCES, "unexpected failure; send again")
        self._loop.received(Received(uid, sop_class, labelled(record.name, origin), record.sha256))
        self._counts[id(event.assoc)] = self._counts.get(id(event.assoc), 0) + 1
        self._events.event("instance", f"{origin}: {uid} staged as {record.name} ({record.size} bytes)",
                           **fields, staged=record.name, sha256=record.sha256, size=record.size,
                           status=SUCCESS)  # fmt: skip
        return SUCCESS

    def _refused(self, code: int, reason: str, fields: Mapping[str, str], level: int = logging.WARNING) -> Dataset:
        self._events.event("instance", f"{fields['calling_ae']}@{fields['address']}: {fields['sop_instance_uid']} "
                           f"refused with 0x{code:04X}: {reason}", level, **fields, status=code,
                           reason=reason)  # fmt: skip
        return _status(code, reason)

    def _on_commitment(self, event: Event) -> tuple[int, Dataset | None]:
        request = cast(N_ACTION, event.request)
        ae_title, address = _calling(event.assoc)
        if request.ActionTypeID != _COMMITMENT_REQUEST:
            return _NO_SUCH_ACTION, None
        try:
            info = event.action_information
            txn = str(info.TransactionUID)
            items = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
                     for i in info.ReferencedSOPSequence]  # fmt: skip
        except Exception:  # a request we cannot read is the requester's fault, never a 0xC211
            return _INVALID_ARGUMENT, None
        if not txn or not items or not all(c and u for c, u in items):
            return _INVALID_ARGUMENT, None
        if str(request.RequestedSOPInstanceUID) != COMMITMENT_INSTANCE:
            return 0x0117, None  # invalid object instance
        try:
            self._store.add_request(txn, ae_title, address, items)
        except DicomCommitError as exc:
            self._events.event("error", f"storage commitment {txn} refused: {exc}", logging.ERROR, txn=txn)
            return _RESOURCE_LIMITATION, None
        self._loop.requested(txn, event.assoc)
        self._events.event("commitment", f"storage commitment {txn} from {ae_title}@{address}: "
                           f"{len(items)} instances", calling_ae=ae_title, address=address, txn=txn,
                           instances=len(items))  # fmt: skip
        return SUCCESS, None


def _calling(assoc: Association) -> tuple[str, str]:
    requestor = assoc.requestor
    title = requestor.primitive.calling_ae_title if requestor.primitive is not None else requestor.ae_title
    return str(title).strip(), f"{requestor.address}:{requestor.port}"


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO
    return status


def _staged_before(staging: Path) -> list[Received]:
    """What an earlier run received and staged but did not commit (from the stagers' journal)."""
    journal = JournalIndex(staging)
    try:
        journal.refresh()
        found = []
        for name in scan_staging(staging).files:
            record = journal.get(name)
            if record is not None and record.origin is not None:
                uid, sop_class = record.attrs.get("SOPInstanceUID"), record.attrs.get("SOPClassUID")
                if isinstance(uid, str) and isinstance(sop_class, str):
                    found.append(Received(uid, sop_class, labelled(name, record.origin), record.sha256))
        return found
    finally:
        journal.close()
