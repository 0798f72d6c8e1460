"""The receiver's commit loop: every *interval* seconds (or sooner, once *files* instances
are waiting), commit the staging directory into the archive, as ``dicomcommit commit``
does, then decide and deliver the Storage Commitment reports that pass made possible."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom.association import Association

from dicomcommit.archives import open_archive
from dicomcommit.committing.driver import commit
from dicomcommit.errors import DicomCommitError
from dicomcommit.manifests import manifest_url, open_manifest
from dicomcommit.receiving.commitment import CommitmentStore, Decider, Received, Report, Request
from dicomcommit.receiving.events import EventLog
from dicomcommit.receiving.peers import Peer
from dicomcommit.receiving.reports import DeliveryError, send

_RETRY_FIRST, _RETRY_MAX = 2.0, 300.0  # seconds between deliveries of a report that failed


@dataclass
class CommitSettings:
    """What each pass commits, and how (as :func:`dicomcommit.commit` takes them)."""

    staging: Path
    archive: str | Path
    commit_args: dict[str, Any] = field(default_factory=dict)  # template, on_conflict, manifest, ...
    interval: float = 5.0
    files: int = 1000


class CommitLoop:
    """Runs commit passes in a thread of its own; :meth:`stop` runs a last one."""

    def __init__(
        self,
        settings: CommitSettings,
        store: CommitmentStore,
        events: EventLog,
        peers: dict[str, Peer],
        ae_title: str,
        *,
        before_pass: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings, self.store, self.events, self.peers, self.ae_title = settings, store, events, peers, ae_title
        self._before_pass = before_pass
        self._wake = threading.Condition()
        self._waiting: list[Received] = []  # received since the last pass
        self._unrecorded: list[Received] = []  # received, but the state could not record them yet
        self._stopping = False
        self._asked_pass = False  # commit_now() wants a pass
        self._passes = 0  # passes begun
        self._done = 0  # passes finished
        self._asked: dict[str, int] = {}  # transaction UID -> passes begun when it was recorded
        self._assocs: dict[str, Association] = {}  # transaction UID -> the association it came on
        self._retry: dict[str, tuple[float, float]] = {}  # transaction UID -> (next try, delay)
        self._thread = threading.Thread(target=self._run, name="dicomcommit-commit-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def received(self, instance: Received) -> None:
        """An instance was staged (and is about to get its Success)."""
        with self._wake:
            self._waiting.append(instance)
            if len(self._waiting) >= self.settings.files:
                self._wake.notify_all()

    def requested(self, txn: str, assoc: Association | None) -> None:
        """A Storage Commitment request was recorded: report after the next pass."""
        with self._wake:
            self._asked[txn] = self._passes
            if assoc is not None:
                self._assocs[txn] = assoc
            self._asked_pass = True  # the requester may be waiting on its association: commit now
            self._wake.notify_all()

    def commit_now(self, timeout: float | None = None) -> bool:
        """Run a pass now and wait until one that began after this call has finished."""
        with self._wake:
            target = self._passes + 1
            self._asked_pass = True
            self._wake.notify_all()
            return self._wake.wait_for(lambda: self._done >= target, timeout)

    def stop(self) -> None:
        """Run a last pass and end the loop (waits for it)."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(self._due, self.settings.interval)
                stopping = self._stopping
                self._asked_pass = False
            self.run_pass()
            if stopping:
                return

    def _due(self) -> bool:
        return self._stopping or len(self._waiting) >= self.settings.files or self._asked_pass

    def run_pass(self) -> None:
        """Record what was received, commit, then the reports (never raises: a failed pass is
        logged, and the next one tries again)."""
        with self._wake:
            self._passes += 1
            number = self._passes
            waiting, self._waiting = self._waiting, []
        recorded = self._record_received(waiting)
        self._before_pass()
        # Commit even when the record failed: a full staging disk fills the state too, and
        # only commit frees it. The record is tried again before any report is decided.
        self._commit()
        if recorded or self._record_received([]):
            self._reports(number)
        self._finished()

    def _record_received(self, waiting: list[Received]) -> bool:
        """Record what was received (and whatever an earlier pass could not); False if it failed."""
        with self._wake:
            waiting, self._unrecorded = self._unrecorded + waiting, []
        try:
            self.store.add_received(waiting)
        except DicomCommitError as exc:
            with self._wake:
                self._unrecorded = waiting
            self.events.event("error", f"received instances not recorded yet (tried again): {exc}", logging.ERROR,
                              error=str(exc))  # fmt: skip
            return False
        return True

    def _finished(self) -> None:
        with self._wake:
            self._done += 1
            self._wake.notify_all()

    def _commit(self) -> None:
        s = self.settings
        started = time.monotonic()
        try:
            report = commit(s.staging, s.archive, **s.commit_args)
        except DicomCommitError as exc:
            self.events.event("error", f"commit failed (retried in the next pass): {exc}", logging.ERROR,
                              error=str(exc))  # fmt: skip
            return
        counts = report.counts()
        if any(counts.values()):
            summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
            self.events.event("commit", f"commit run {report.run}: {summary} in {time.monotonic() - started:.2f} s",
                              run=report.run, **counts)  # fmt: skip
        for row in report.records:
            self.events.event("conflict" if row.status == "conflict" else row.status,
                              f"{row.status}: {row.source} wanted {row.target} (kept at {row.path})",
                              logging.WARNING, source=row.source, target=row.target, path=row.path)  # fmt: skip

    def _reports(self, number: int) -> None:
        try:
            pending = self.store.pending()
        except DicomCommitError as exc:
            self.events.event("error", str(exc), logging.ERROR, error=str(exc))
            return
        ready = [r for r in pending if self._asked.setdefault(r.txn, 0) < number]
        if not ready:
            return
        s = self.settings
        url = manifest_url(s.archive, s.commit_args.get("manifest"))
        try:
            archive = open_archive(s.archive, manifest=url, endpoint_url=s.commit_args.get("endpoint_url"))
            with open_manifest(s.archive, manifest=url) as manifest:
                decider = Decider(self.store, manifest, archive, s.staging)
                for request in ready:
                    report = request.report or decider.decide(request)
                    if report is None:
                        continue  # an instance of it is still staged
                    if request.report is None:
                        self.store.decided(report)
                    self._deliver(request, report)
        except DicomCommitError as exc:
            self.events.event("error", f"storage commitment reports wait: {exc}", logging.ERROR, error=str(exc))

    def _deliver(self, request: Request, report: Report) -> None:
        now = time.monotonic()
        next_try, delay = self._retry.get(request.txn, (0.0, _RETRY_FIRST / 2))
        if now < next_try and not self._stopping:
            return
        try:
            how = send(report, self._assocs.get(request.txn), self.peers.get(request.ae_title), self.ae_title)
        except DeliveryError as exc:
            delay = min(delay * 2, _RETRY_MAX)
            self._retry[request.txn] = (now + delay, delay)
            self.store.failed(request.txn, str(exc))
            self.events.event("commitment", f"storage commitment {request.txn} for {request.ae_title}: report not "
                              f"delivered ({exc}); tried again in {delay:g} s", logging.WARNING,
                              txn=request.txn, delivered=False, error=str(exc))  # fmt: skip
            return
        self.store.sent(request.txn)
        self._assocs.pop(request.txn, None)
        self._retry.pop(request.txn, None)
        failed = {f"0x{reason:04X}": sum(1 for *_, r in report.failed if r == reason) for *_, reason in report.failed}
        reasons = "".join(f", {n} with {reason}" for reason, n in failed.items())
        self.events.event("commitment", f"storage commitment {request.txn} for {request.ae_title}: "
                          f"{len(report.committed)} committed, {len(report.failed)} failed{reasons}; "
                          f"reported on {how}", txn=request.txn, delivered=True, committed=len(report.committed),
                          failed=len(report.failed), reasons=failed)  # fmt: skip
