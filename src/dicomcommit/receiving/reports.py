"""Delivering Storage Commitment reports: an N-EVENT-REPORT on the requester's association
while it is open, else on a new association to where ``--peer`` says it listens."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from dicomcommit.receiving.commitment import Report
from dicomcommit.receiving.peers import Peer

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
_ALL_COMMITTED, _SOME_FAILED = 1, 2  # Event Type IDs
_TIMEOUT = 10.0


class DeliveryError(Exception):
    """The report could not be delivered (kept, and tried again); ``str()`` says why."""


def event_information(report: Report) -> Dataset:
    """The N-EVENT-REPORT's Event Information for *report*."""
    ds = Dataset()
    ds.TransactionUID = report.txn
    if report.committed or not report.failed:  # required with Event Type 1, present with 2 when any
        ds.ReferencedSOPSequence = [_item(c, u) for c, u in report.committed]
    if report.failed:
        ds.FailedSOPSequence = [_item(c, u, reason) for c, u, reason in report.failed]
    return ds


def _item(sop_class: str, uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    if reason is not None:
        item.FailureReason = reason
    return item


def send(report: Report, assoc: Association | None, peer: Peer | None, ae_title: str) -> str:
    """Deliver *report* on *assoc* if it is still established, else on a new association to
    *peer*; return how it went ("the requester's association" or "AE@host:port").

    Raises:
        DeliveryError: neither is possible, or the peer did not answer Success.
    """
    if assoc is not None and assoc.is_established:
        try:
            _send_on(assoc, report)
            return "the requester's association"
        except DeliveryError:
            if peer is None:
                raise
    if peer is None:
        raise DeliveryError("the requester's association is closed and no --peer says where it listens")
    ae = AE(ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _TIMEOUT
    ae.add_requested_context(StorageCommitmentPushModel)
    # We send the N-EVENT-REPORT: the SCP role on an association we request (PS3.4 J.3.3).
    role = build_role(StorageCommitmentPushModel, scp_role=True)
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    new = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, ext_neg=[role])
    if not new.is_established:
        raise DeliveryError(f"{where} did not accept an association")
    try:
        _send_on(new, report)
    finally:
        new.release()
    return where


def _send_on(assoc: Association, report: Report) -> None:
    event_type = _SOME_FAILED if report.failed else _ALL_COMMITTED
    try:
        status, _ = assoc.send_n_event_report(event_information(report), event_type, StorageCommitmentPushModel,
                                              COMMITMENT_INSTANCE)  # fmt: skip
    except (RuntimeError, ValueError) as exc:  # no context for it, or the association went away
        raise DeliveryError(str(exc)) from exc
    code = getattr(status, "Status", None)
    if code is None:
        raise DeliveryError("no answer to the N-EVENT-REPORT (timed out, or the association was aborted)")
    if code != 0:
        raise DeliveryError(f"the requester answered the N-EVENT-REPORT with status 0x{code:04X}")
