"""The receiver's stager, replaced before each commit pass: a journal stays locked while its
stager lives, so commit could never prune it, and every pass would read it whole."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from dicomcommit.staging.stager import Stager


class Stagers:
    """One current :class:`Stager` for the associations' threads; :meth:`rotate` starts the next."""

    def __init__(self, staging: Path, durable: bool) -> None:
        self._staging, self._durable = staging, durable
        self._lock = threading.Lock()
        self._current = Stager(staging, durable=durable)
        self._users: dict[Stager, int] = {self._current: 0}

    @contextlib.contextmanager
    def using(self) -> Iterator[Stager]:
        """The current stager, for one instance."""
        with self._lock:
            stager = self._current
            self._users[stager] += 1
        try:
            yield stager
        finally:
            with self._lock:
                self._users[stager] -= 1
            self._close_if_done(stager)

    def rotate(self) -> None:
        """Start a new stager (and journal); the old one closes once its last instance is staged."""
        with self._lock:
            old, self._current = self._current, Stager(self._staging, durable=self._durable)
            self._users[self._current] = 0
        self._close_if_done(old)

    def _close_if_done(self, stager: Stager) -> None:
        """Close *stager* if it is no longer current and stages nothing (exactly once)."""
        with self._lock:
            done = stager is not self._current and self._users.get(stager) == 0
            if done:
                del self._users[stager]
        if done:
            stager.close()

    def close(self) -> None:
        """Close every stager."""
        with self._lock:
            stagers, self._users = list(self._users), {}
        for stager in stagers:
            stager.close()
