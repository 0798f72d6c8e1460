"""The receiver's log: one line per association and per instance, for people (the
``dicomcommit.receive`` logger) and, with a ``json_log`` file, one JSON object per line."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from dicomcommit.manifests.records import now

log = logging.getLogger("dicomcommit.receive")


class EventLog:
    """Writes each event to the logger and, if *path* is given, appends it to *path* as JSON.

    Raises:
        OSError: *path* cannot be opened for appending (when constructed).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.Lock()
        self._file = None if path is None else Path(path).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def event(self, kind: str, message: str, level: int = logging.INFO, /, **fields: Any) -> None:
        """Log *message* (a line for people) and record *kind* with *fields* as JSON."""
        log.log(level, "%s", message)
        if self._file is not None:
            line = json.dumps({"time": now(), "event": kind, **fields}, ensure_ascii=False, default=str)
            with self._lock:
                self._file.write(line + "\n")

    def close(self) -> None:
        """Close the JSON file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
