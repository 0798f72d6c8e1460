"""Reading a file for review: its dataset with every value converted, and its decoded pixels,
or in words why not (never an exception for what is in a file)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from dicomcommit.archives import BaseArchive

#: What to install for the decoders of compressed pixel data (pyproject's extra).
IMAGES_EXTRA = "pip install 'dicomcommit[images]'"

log = logging.getLogger("dicomcommit")


@contextlib.contextmanager
def warnings_logged(path: str | os.PathLike[str]) -> Iterator[None]:
    """Log each distinct warning raised inside the block once, naming *path*.

    pydicom warns about the values it reads (``Invalid value for VR IS``) without saying
    in which file, issues each warning twice (``warnings`` and its logger), and converts
    values lazily: wrap everything that touches one file's dataset.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Its own copy of each: pydicom warns once per element, and may say the same twice.
            warnings.simplefilter("always", UserWarning)
            yield
    finally:
        for text in dict.fromkeys(str(w.message) for w in caught):
            log.warning("%s: %s", path, text)


@dataclass
class Loaded:
    """A DICOM file read whole with each element's value converted, or why it could not be."""

    path: str  # for messages: a local path, or the archive's location and the name in it
    dataset: Dataset | None = None
    elements: dict[int, Any] = field(default_factory=dict)
    error: str | None = None
    decoded: np.ndarray | str | None = field(default=None, repr=False)  # see decode()


def load(path: Path, archive: BaseArchive | None = None) -> Loaded:
    """Read *path* (a name in *archive*, if given) and convert every element (File Meta
    included), logging pydicom's warnings once.

    Never raises for a file that cannot be read: ``error`` says why.
    """
    shown = str(path) if archive is None else f"{archive.location}/{path.as_posix()}"
    with warnings_logged(shown):
        try:
            if archive is None:
                ds = pydicom.dcmread(path)
            else:
                with archive.open(path.as_posix()) as file:
                    ds = pydicom.dcmread(file)
            # Values are converted on first access: an unknown VR raises here, not in dcmread.
            return Loaded(shown, ds, _elements(ds))
        except Exception as exc:  # pydicom raises many types on unreadable input
            return Loaded(shown, error=str(exc) or type(exc).__name__)


def _elements(ds: Dataset) -> dict[int, Any]:
    found = {int(elem.tag): elem.value for elem in ds.file_meta} if hasattr(ds, "file_meta") else {}
    found.update({int(elem.tag): elem.value for elem in ds})
    return found


def decode(loaded: Loaded) -> np.ndarray | str:
    """The pixels of *loaded* as pydicom decodes them (all frames), or why there are none.

    Decoded once per file (the comparison, the thumbnail and the difference image share it).
    """
    if loaded.decoded is None:
        loaded.decoded = _decode(loaded)
    return loaded.decoded


def _decode(loaded: Loaded) -> np.ndarray | str:
    if loaded.dataset is None:
        return f"cannot read the file: {loaded.error}"
    ds = loaded.dataset
    if "PixelData" not in ds:
        return "no pixel data"
    with warnings_logged(loaded.path):
        try:
            return ds.pixel_array
        except Exception as exc:  # no decoder for this transfer syntax, corrupt data...
            return _undecodable(ds, exc)


def _undecodable(ds: Dataset, exc: Exception) -> str:
    """Why *ds*'s pixels could not be decoded, naming its transfer syntax and what would decode it."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not isinstance(syntax, UID):
        return "cannot decode the pixel data: the file meta has no Transfer Syntax UID"
    name = syntax.name
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            return f"cannot decode the pixel data: pydicom has no decoder for {name}"
        if not decoder.is_available:
            return f"cannot decode the pixel data: no decoder for {name} is installed ({IMAGES_EXTRA})"
    if isinstance(exc, StopIteration):  # pydicom's frame iterator ran out of fragments
        frames = ds.get("NumberOfFrames", 1)
        return f"cannot decode the pixel data ({name}): it holds fewer frames than its Number of Frames ({frames})"
    reason = " ".join(str(exc).split()) or type(exc).__name__  # decoders list every plugin they tried, on many lines
    return f"cannot decode the pixel data ({name}): {reason}"
