"""Stage: write a dataset, complete and durable, to a unique file in the staging directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicomcommit import _fs
from dicomcommit._faults import point
from dicomcommit.dicom.completeness import Incomplete, check_complete
from dicomcommit.dicom.headers import NotDicom, attrs_from_bytes
from dicomcommit.errors import EncodeError, MismatchError, StageError, UsageError
from dicomcommit.layout import STAGED_SUFFIX
from dicomcommit.naming import COMMON_KEYWORDS, Attrs
from dicomcommit.staging.journal import JournalWriter, StagedRecord, part_name
from dicomcommit.staging.writing import encode

_MAX_PENDING = 16
_SETTLE_EVERY = 64  # stage_many: files made durable by one flush
_HASH_ASIDE = 256 * 1024  # stage: files at least this big are hashed in a helper thread while written


@dataclass(frozen=True)
class _Prepared:
    name: str
    data: memoryview
    attrs: Attrs
    origin: str | None = None
    check: bool = False  # bytes from elsewhere: prove them structurally whole before they are named


def _sha256(data: memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class _DirSync:
    """Group commit for a directory's fsync: one fsync covers every rename done before it.

    Threads staging at once then share fsyncs instead of queueing one each.
    """

    def __init__(self) -> None:
        self._syncing = threading.Lock()
        self._counter = threading.Lock()
        self._requested = 0
        self._done = 0

    def sync(self, dir_fd: int) -> None:
        """fsync *dir_fd*, unless an fsync that started after our rename already did."""
        with self._counter:
            self._requested += 1
            ticket = self._requested
        with self._syncing:
            if self._done >= ticket:
                return
            with self._counter:
                upto = self._requested
            _fs.fsync_dir(dir_fd)
            self._done = upto


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
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0
        self._dir_sync = _DirSync()
        self._hasher: ThreadPoolExecutor | None = None
        self._hasher_pid = 0

    def stage(self, ds: Dataset, **kwargs: Any) -> Path:
        """Write *ds* to a new staged file and return its path.

        The bytes are exactly what ``pydicom.dcmwrite(path, ds, enforce_file_format=True)``
        writes. The file appears under its final staged name only when complete (written to
        ``<name>.part``, then renamed). When durable, the file and its name are on disk when
        this returns. Other keyword arguments go to pydicom.

        Raises:
            EncodeError: pydicom could not encode *ds*; nothing was written.
            StageError: an OS error (disk full, permissions...); no file was left behind.
        """
        return self.staging_dir / self._stage(self._prepare(ds, kwargs)).name

    def stage_encoded(
        self, data: bytes | memoryview, *, origin: str | None = None, expect: Mapping[str, str] | None = None
    ) -> StagedRecord:
        """Stage *data*, a DICOM Part 10 file's bytes exactly as they are (as a network receiver
        has them: no decode and re-encode), with the guarantees of :meth:`stage`.

        Args:
            origin: where the bytes came from (``CALLING_AE@host:port``); the manifest's
                ``source`` of the file is then ``<origin>/<staged name>``.
            expect: naming attributes the bytes must carry (a receiver's request names the
                SOP Class and Instance UIDs of the data set it carries).

        Returns:
            What the journal records of it: its staged name, sha256, size and naming attributes.

        Raises:
            EncodeError: *data* is not a whole Part 10 file whose naming attributes pydicom can
                read (the message says why); nothing was written.
            MismatchError: an attribute of *expect* has another value in *data*; nothing was written.
            StageError: as :meth:`stage`.
        """
        name = self._new_name()
        try:
            attrs = attrs_from_bytes(data, self.keywords, name=name)
        except NotDicom as exc:
            raise EncodeError(f"not a DICOM file that can be named: {exc}") from exc
        for keyword, value in (expect or {}).items():
            if attrs.get(keyword) is None:  # junk parses as a data set without it
                raise EncodeError(f"not a DICOM data set that can be named: it has no {keyword}")
            if attrs.get(keyword) != value:
                raise MismatchError(keyword, f"its {keyword} is {attrs.get(keyword)!r}, not {value!r}")
        return self._stage(_Prepared(name, memoryview(data), attrs, origin, check=True))

    def _stage(self, prepared: _Prepared) -> StagedRecord:
        dir_fd = self._dir_fd()
        record = self._write(dir_fd, prepared)
        if self.durable:
            try:
                self._dir_sync.sync(dir_fd)
            except OSError as exc:
                _fs.unlink_quietly(dir_fd, prepared.name)  # the caller sees a failure: nothing may stay
                raise StageError(f"could not stage ({exc.strerror})", self.staging_dir / prepared.name, exc) from exc
        return record

    def stage_many(self, datasets: Iterable[Dataset], **kwargs: Any) -> list[Path]:
        """Stage several datasets; with the same guarantees as :meth:`stage`, when it returns.

        Faster: a writer thread hashes and writes each ``.part`` file while the next dataset
        is encoded; when durable, every 64 files are made durable together (one ``syncfs``,
        so one device flush instead of one per file) before they get their names, and the
        directory is fsynced once, at the end.

        Raises:
            EncodeError, StageError: as :meth:`stage`. The datasets before the failing one
                are staged then; staging them again is harmless, since commit drops
                identical duplicates.
        """
        dir_fd = self._dir_fd()
        paths: list[Path] = []
        written: list[StagedRecord] = []  # .part files written, waiting to be made durable and named
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="dicomcommit-stage") as writer:
                pending: deque[Future[StagedRecord]] = deque()
                try:
                    for ds in datasets:
                        prepared = self._prepare(ds, kwargs)
                        paths.append(self.staging_dir / prepared.name)
                        pending.append(writer.submit(self._write_part, dir_fd, prepared, fsync=False, hash_aside=True))
                        while len(pending) > _MAX_PENDING:  # bound the encoded bytes held in memory
                            written.append(pending.popleft().result())
                        if len(written) >= _SETTLE_EVERY:
                            self._settle(dir_fd, written)
                    while pending:
                        written.append(pending.popleft().result())
                finally:
                    for future in pending:  # finish what was encoded: "all before the failure" holds
                        with contextlib.suppress(Exception):
                            written.append(future.result())
        finally:
            self._settle(dir_fd, written)
            if paths and self.durable:
                self._dir_sync.sync(dir_fd)
        return paths

    def _settle(self, dir_fd: int, written: list[StagedRecord]) -> None:
        """Make the written .part files durable (one flush for all), then give them their names."""
        if written and self.durable:
            try:
                _fs.flush_files(dir_fd, [self._part(record.name) for record in written])
            except OSError as exc:
                for record in written:
                    _fs.unlink_quietly(dir_fd, self._part(record.name))
                written.clear()
                raise StageError(f"could not stage ({exc.strerror})", self.staging_dir, exc) from exc
        while written:
            self._publish(dir_fd, written.pop(0))

    def _prepare(self, ds: Dataset, kwargs: dict[str, Any]) -> _Prepared:
        data = encode(ds, **{"enforce_file_format": True, **kwargs})
        name = self._new_name()
        # From the bytes, not from *ds*: commit names a file without its journal line the same way.
        try:
            attrs = attrs_from_bytes(data, self.keywords, name=name)
        except NotDicom as exc:  # commit would set the file aside as invalid: refuse it now
            raise EncodeError(f"pydicom cannot read back what it encoded: {exc}") from exc
        return _Prepared(name, data, attrs)

    @staticmethod
    def _new_name() -> str:
        # Nanoseconds first: sorting names sorts by staging time (mtimes tie within a clock
        # tick), so the file staged first wins its final name. The UUID makes it unique.
        return f"{time.time_ns():016x}-{uuid.uuid4().hex}{STAGED_SUFFIX}"

    def _write(self, dir_fd: int, prepared: _Prepared) -> StagedRecord:
        record = self._write_part(dir_fd, prepared, fsync=self.durable, hash_aside=True)
        self._publish(dir_fd, record)
        return record

    def _write_part(self, dir_fd: int, prepared: _Prepared, *, fsync: bool, hash_aside: bool = False) -> StagedRecord:
        """Write ``<name>.part`` (fsynced if asked) and return its record.

        hashlib and os.write release the GIL, so hashing runs beside other work: in
        stage_many this runs in the writer thread, beside the encoding of the next dataset;
        with *hash_aside*, a big file is hashed in a helper thread while it is written (on
        the same bytes in memory: the hash of a 0.5 MB image costs a third of what pydicom
        takes to write it, and is hidden behind the write).
        """
        part = self._part(prepared.name)
        aside = hash_aside and len(prepared.data) >= _HASH_ASIDE
        digest = self._helper().submit(_sha256, prepared.data) if aside else None
        try:
            st = _fs.write_exclusive(dir_fd, part, prepared.data, durable=fsync, stamp=True)
        except OSError as exc:
            raise StageError(f"could not stage ({exc.strerror})", self.staging_dir / part, exc) from exc
        if prepared.check:
            self._check_whole(dir_fd, part, st.st_size)
        sha256 = _sha256(prepared.data) if digest is None else digest.result()
        point("stage:after-write")
        return StagedRecord(prepared.name, sha256, len(prepared.data), self.durable, prepared.attrs,
                            ino=st.st_ino, mtime_ns=st.st_mtime_ns, origin=prepared.origin)  # fmt: skip

    def _check_whole(self, dir_fd: int, part: str, size: int) -> None:
        """Walk the written file's element headers (a few KiB of reads from the page cache)."""
        try:
            fd = _fs.open_read(part, dir_fd)
            try:
                check_complete(fd, size)
            finally:
                os.close(fd)
        except (Incomplete, OSError) as exc:
            _fs.unlink_quietly(dir_fd, part)
            if isinstance(exc, Incomplete):
                raise EncodeError(f"not a whole DICOM file: {exc}") from exc
            raise StageError(f"could not stage ({exc.strerror})", self.staging_dir / part, exc) from exc

    def _part(self, name: str) -> str:
        """The ``.part`` name of *name*: it names this process's journal, whose lock tells
        ``recover`` that the writer still lives (the journal is opened before the first one)."""
        try:
            owner = self._journal.owner()
        except OSError as exc:
            raise StageError(f"cannot open the staging journal ({exc.strerror})", self.staging_dir, exc) from exc
        return part_name(name, owner)

    def _helper(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._hasher is None or self._hasher_pid != os.getpid():
                # A forked child has none of its parent's threads: it starts its own.
                self._hasher = ThreadPoolExecutor(2, thread_name_prefix="dicomcommit-hash")
                self._hasher_pid = os.getpid()
            return self._hasher

    def _publish(self, dir_fd: int, record: StagedRecord) -> None:
        """Journal the record, then rename the complete ``.part`` file to its staged name."""
        part = self._part(record.name)
        try:
            # The record goes first: a staged file then always has one, unless the line is lost.
            self._journal.append(record)
            point("stage:after-journal")
            os.rename(part, record.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # a fresh name: nothing to clobber
            point("stage:after-rename")
        except OSError as exc:
            _fs.unlink_quietly(dir_fd, part)
            raise StageError(f"could not stage ({exc.strerror})", self.staging_dir / part, exc) from exc

    def _dir_fd(self) -> int:
        with self._lock:
            if self._fd is None or self._pid != os.getpid():
                # A forked child opens its own; the parent's fd and locks stay with the parent.
                try:
                    self._fd = _fs.open_root(self.staging_dir)
                except OSError as exc:
                    raise StageError(
                        f"cannot open the staging directory ({exc.strerror})", self.staging_dir, exc
                    ) from exc
                self._pid = os.getpid()
                self._dir_sync = _DirSync()
            return self._fd

    def close(self) -> None:
        """Release this stager's journal and directory. Staging again later reopens them."""
        self._journal.close()
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            if self._hasher is not None and self._hasher_pid == os.getpid():
                self._hasher.shutdown()
            self._fd = self._hasher = None

    def __enter__(self) -> Stager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
