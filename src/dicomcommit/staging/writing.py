"""Encoding datasets, and a one-shot writer that never leaves a partial or clobbered file."""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from dicomcommit import _fs
from dicomcommit.errors import EncodeError, FileOpError, TargetExistsError
from dicomcommit.layout import PART_SUFFIX


def encode(ds: Dataset, **kwargs: Any) -> memoryview:
    """Return the bytes ``pydicom.dcmwrite(fp, ds, **kwargs)`` writes, encoded in memory
    (a view of pydicom's buffer: a 0.5 MB image is not copied once more).

    Encoding before any file is created means a dataset pydicom cannot encode leaves nothing
    on disk.

    Raises:
        EncodeError: pydicom refused the dataset (the message says why).
    """
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, **kwargs)
    except Exception as exc:  # pydicom raises ValueError, TypeError, AttributeError, ...
        raise EncodeError(f"pydicom could not encode the dataset: {exc}") from exc
    return buffer.getbuffer()


def dcmwrite(
    filename: str | os.PathLike[str],
    dataset: Dataset,
    /,
    *,
    overwrite: bool = False,
    durable: bool = True,
    **kwargs: Any,
) -> None:
    """Write *dataset* to *filename* like ``pydicom.dcmwrite``, but atomically and without clobbering.

    The dataset is encoded in memory, written to a hidden temp file beside *filename*,
    fsynced (when *durable*), then hard-linked into place, which fails if *filename* exists.
    With ``overwrite=True`` the temp file atomically replaces *filename* instead. At no
    instant is a partial file visible at *filename*. Other keyword arguments
    (``implicit_vr``, ``little_endian``, ``enforce_file_format``, ``force_encoding``) go to
    pydicom.

    Raises:
        TargetExistsError: *filename* exists and *overwrite* is False (a ``FileExistsError``).
        EncodeError: pydicom could not encode the dataset; nothing was written.
        FileOpError: the write failed (disk full, permissions...); no file was left behind.
    """
    write_file(filename, encode(dataset, **kwargs), overwrite=overwrite, durable=durable)


def write_file(
    filename: str | os.PathLike[str], data: bytes | memoryview, *, overwrite: bool, durable: bool = True
) -> None:
    """Write *data* to *filename* through a fsynced temp file: linked into place (or, with
    *overwrite*, renamed over it), so no partial file is ever visible at *filename*.

    Raises:
        TargetExistsError: *filename* exists and *overwrite* is False.
        FileOpError: the write failed; no file was left behind.
    """
    path = Path(filename)
    name = path.name
    temp = f".{name[:200]}.{uuid.uuid4().hex}{PART_SUFFIX}"
    try:
        dir_fd = _fs.open_root(path.parent)
    except OSError as exc:
        raise FileOpError(f"cannot open the directory ({exc.strerror})", path.parent, exc) from exc
    try:
        _write_and_place(dir_fd, temp, name, data, overwrite=overwrite, durable=durable, path=path)
    finally:
        os.close(dir_fd)


def _write_and_place(
    dir_fd: int, temp: str, name: str, data: bytes | memoryview, *, overwrite: bool, durable: bool, path: Path
) -> None:
    try:
        _fs.write_exclusive(dir_fd, temp, data, durable=durable)
        if overwrite:
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            placed = _fs.link_noclobber(dir_fd, temp, dir_fd, name, where=str(path))
            _fs.unlink_quietly(dir_fd, temp)
            if placed is _fs.Placed.EXISTS:
                raise TargetExistsError(path)
        if durable:
            _fs.fsync_dir(dir_fd)
    except TargetExistsError:
        raise
    except OSError as exc:
        _fs.unlink_quietly(dir_fd, temp)
        if isinstance(exc, FileOpError):
            raise
        raise FileOpError(f"could not write ({exc.strerror})", path, exc) from exc
