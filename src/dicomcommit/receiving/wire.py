"""What the receiver puts around the data sets it receives: the presentation contexts it
accepts, and the Part 10 File Meta in front of each data set's bytes."""

from __future__ import annotations

import copy
import struct
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import StorageCommitmentPushModel, Verification  # type: ignore[attr-defined]

#: The File Meta the receiver writes names it so, whatever its version: a version in it would
#: make an instance re-sent after an upgrade a different file (a conflict with itself).
IMPLEMENTATION_CLASS_UID = "2.25.46451002928917272678041283116765102815"
IMPLEMENTATION_VERSION_NAME = "DICOMCOMMIT"

_PREAMBLE = b"\0" * 128 + b"DICM"
_VERSION = struct.pack("<HH2sxxLBB", 0x0002, 0x0001, b"OB", 2, 0, 1)  # (0002,0001) OB 00\01


class Contexts(list[PresentationContext]):
    """Every storage SOP class pynetdicom knows, with every transfer syntax it knows, and
    Verification and Storage Commitment.

    pynetdicom deep-copies its acceptor's contexts for each association. A generic deep copy
    of 172 contexts with 45 transfer syntaxes each costs about 100 ms of CPU, holding the GIL:
    every other association stalls, and a sender that opens an association per instance gets
    a few instances a second. This copy is the same, field by field (the only mutable field is
    the list of transfer syntaxes), in about 1 ms.
    """

    @classmethod
    def everything(cls) -> Contexts:
        """The contexts a receiver supports."""
        contexts = cls()
        for uid in [*(cx.abstract_syntax for cx in AllStoragePresentationContexts), Verification,
                    StorageCommitmentPushModel]:  # fmt: skip
            context = PresentationContext()
            context.abstract_syntax = uid
            context.transfer_syntax = list(ALL_TRANSFER_SYNTAXES)
            contexts.append(context)
        return contexts

    def __deepcopy__(self, memo: dict[int, Any]) -> Contexts:
        copied = Contexts()
        for context in self:
            twin = copy.copy(context)
            twin._transfer_syntax = list(context._transfer_syntax)
            copied.append(twin)
        return copied


def part10(sop_class: str, uid: str, syntax: str, data_set: bytes | memoryview) -> bytes:
    """The Part 10 file of a received data set: a preamble, a File Meta written the same way
    every time (what ``pydicom.filewriter.write_file_meta_info`` writes for these values),
    then the data set's bytes as they came."""
    elements = b"".join((
        _VERSION,
        _text(0x0002, b"UI", uid_bytes(sop_class)),
        _text(0x0003, b"UI", uid_bytes(uid)),
        _text(0x0010, b"UI", uid_bytes(syntax)),
        _text(0x0012, b"UI", uid_bytes(IMPLEMENTATION_CLASS_UID)),
        _text(0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME.encode(), b" ")),
    ))  # fmt: skip
    group_length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(elements))
    return b"".join((_PREAMBLE, group_length, elements, data_set))


def uid_bytes(uid: str) -> bytes:
    """A UID as a UI value: ASCII, padded with a NUL to an even length.

    Raises:
        UnicodeEncodeError: it is not ASCII (pynetdicom checks the UIDs it decodes).
    """
    return _padded(uid.encode("ascii"), b"\0")


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _text(element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value
