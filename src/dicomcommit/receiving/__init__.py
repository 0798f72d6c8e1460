"""Receiving DICOM over the network: C-STORE into staging, a commit loop into the archive,
and Storage Commitment reports of what is safely stored (see :mod:`.receiver`).

:class:`Receiver` is imported on first use: pynetdicom takes a tenth of a second to
import, which every other command (and each ``ingest`` process) would pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicomcommit.receiving.receiver import Receiver

__all__ = ["Receiver"]


def __getattr__(name: str) -> Any:
    if name == "Receiver":
        from dicomcommit.receiving.receiver import Receiver  # noqa: PLC0415 -- imported on first use

        return Receiver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
