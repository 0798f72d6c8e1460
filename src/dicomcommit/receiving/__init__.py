"""Receiving DICOM over the network: C-STORE into staging, a commit loop into the archive,
and Storage Commitment reports of what is safely stored (see :mod:`.receiver`)."""

from __future__ import annotations

from dicomcommit.receiving.receiver import Receiver

__all__ = ["Receiver"]
