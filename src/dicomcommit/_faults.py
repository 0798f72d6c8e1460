"""Named crash points, for the torture tests only.

With ``DICOMCOMMIT_CRASH_AT=<point>:<n>`` in the environment, the process kills itself
with SIGKILL the n-th time it reaches ``point(<point>)``: a crash at an exact step of the
protocol, with nothing flushed or cleaned up, as a power cut or ``kill -9`` would leave it.
Without the variable, :func:`point` does nothing.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "stage:after-write",  # .part complete, no journal line
    "stage:after-journal",  # journal line, not renamed yet
    "stage:after-rename",  # staged, directory not fsynced
    "commit:after-link",  # target linked, nothing recorded
    "commit:before-manifest",  # the batch linked and fsynced, not recorded
    "commit:in-manifest",  # rows inserted, transaction not committed
    "commit:after-manifest",  # recorded, staged files not yet removed
    "commit:after-unlink",  # one staged file removed, the rest of the batch not
)

#: Points of ``resolve`` (tested on their own, not by the commit torture).
RESOLVE_POINTS = ("resolve:after-link", "resolve:after-rename", "resolve:after-manifest")

#: Points reached once per batch rather than once per file.
BATCH_POINTS = frozenset({"commit:before-manifest", "commit:in-manifest", "commit:after-manifest"})

_SPEC = os.environ.get("DICOMCOMMIT_CRASH_AT", "")
_NAME, _, _COUNT = _SPEC.rpartition(":")
# A malformed value (no ":<n>", or not a number) arms nothing: a stray variable must never
# stop the library from importing.
_left = int(_COUNT) if _NAME and _COUNT.isdigit() else 0


def point(name: str) -> None:
    """Die here if the environment asks for it (see the module docstring)."""
    global _left  # noqa: PLW0603 -- one counter per process, by design
    if _left and name == _NAME:
        _left -= 1
        if not _left:
            os.kill(os.getpid(), signal.SIGKILL)
