"""Stage: write a dataset, complete and durable, to a unique file in the staging directory."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicomcommit import _fs
from dicomcommit.errors import StageError, UsageError
from dicomcommit.journal import JournalWriter, StagedRecord
from dicomcommit.naming import COMMON_KEYWORDS, attrs_from_dataset
from dicomcommit.writing import encode

STAGED_SUFFIX = ".dcm"
PART_SUFFIX = ".part"


class Stager:
    """Stages datasets into *staging_dir* for a later :func:`dicomcommit.commit`.

    Safe to use from many processes and threads at once: every staged file gets a fresh
    name (staging time in nanoseconds, then a UUID4), so no two writers ever touch the same file.

    Args:
        staging_dir: the staging directory; created if missing.
        durable: fsync each file and the directory before :meth:`stage` returns, so a staged
            file survives a power loss. Turn off only for data you can regenerate.
        keywords: extra DICOM keywords to record for naming, beyond the common ones
            (PatientID, Study/Series/SOP Instance UID, Modality, dates, numbers...). A template
            that uses a keyword not recorded still works; commit then reads that file's header.

    Raises:
        UsageError: *staging_dir* exists and is not a directory.
    """

    def __init__(
        self, staging_dir: str | os.PathLike[str], *, durable: bool = True, keywords: Iterable[str] = ()
    ) -> None:
        self.staging_dir = Path(staging_dir)
        self.durable = durable
        self.keywords = tuple(dict.fromkeys((*COMMON_KEYWORDS, *keywords)))
        try:
            self.staging_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise UsageError(f"staging directory {self.staging_dir} is not a directory") from exc
        self._journal = JournalWriter(self.staging_dir)

    def stage(self, ds: Dataset, **kwargs: Any) -> Path:
        """Write *ds* to a new staged file and return its path.

        The bytes are exactly what ``pydicom.dcmwrite(path, ds, enforce_file_format=True)``
        writes. The file appears under its final staged name only when complete (written to
        ``<uuid>.dcm.part``, then renamed). Other keyword arguments go to pydicom.

        Raises:
            EncodeError: pydicom could not encode *ds*; nothing was written.
            StageError: an OS error (disk full, permissions...); no file was left behind.
        """
        kwargs.setdefault("enforce_file_format", True)
        data = encode(ds, **kwargs)
        # Nanoseconds first: sorting names sorts by staging time (mtimes tie within a clock
        # tick), so the file staged first wins its final name. The UUID makes it unique.
        name = f"{time.time_ns():016x}-{uuid.uuid4().hex}{STAGED_SUFFIX}"
        record = StagedRecord(
            name=name,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            durable=self.durable,
            attrs=attrs_from_dataset(ds, self.keywords),
        )
        part = name + PART_SUFFIX
        try:
            dir_fd = _fs.open_root(self.staging_dir)
        except OSError as exc:
            raise StageError(f"cannot open the staging directory ({exc.strerror})", self.staging_dir, exc) from exc
        try:
            _fs.write_exclusive(dir_fd, part, data, durable=self.durable)
            # The record goes first: a staged file then always has one, unless the line is lost.
            self._journal.append(record)
            os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # a fresh UUID: nothing to clobber
            if self.durable:
                _fs.fsync_dir(dir_fd)
        except OSError as exc:
            # The caller sees a failure, so no file may stay staged: it would be committed
            # behind the back of a caller that retries or gives up.
            _fs.unlink_quietly(dir_fd, part)
            _fs.unlink_quietly(dir_fd, name)
            raise StageError(f"could not stage ({exc.strerror})", self.staging_dir / part, exc) from exc
        finally:
            os.close(dir_fd)
        return self.staging_dir / name

    def close(self) -> None:
        """Release this stager's journal. Staging again later opens a new one."""
        self._journal.close()

    def __enter__(self) -> Stager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
