"""The archive as a prefix of an S3 bucket (``s3://bucket/prefix``): create-only placement
with a conditional write, never a read-then-write and never an unconditional PUT on a name.

- A name is placed with ``PutObject`` carrying ``If-None-Match: *`` (large files: multipart,
  with the condition on ``CompleteMultipartUpload``): the store creates the object only if
  the key has none, atomically, and answers 412 Precondition Failed otherwise.
- Every object carries its bytes' sha256: as ``x-amz-checksum-sha256`` (the store verifies
  the bytes it received against it) and as the metadata ``sha256`` (which every
  S3-compatible store returns on HEAD). A 412 is answered with a HEAD, not a download. The
  metadata is only a claim: before a file is dropped as a duplicate of an object, the hash
  must be the store's own checksum, or the object's bytes are read (:meth:`verified_sha256`).
- Each write also carries a token of its own (the metadata ``put``): a write whose reply was
  lost, sent again, meets its own object (412), and the token says it is ours
  (``SAME_INODE``, as a link found at its name is on a filesystem).
- 409 ConditionalRequestConflict (a concurrent write to the key raced ours) is not an
  answer: a HEAD says whether an object is there now (then the name is taken), else the
  PUT is sent again. 5xx, throttling, timeouts and lost connections are retried.
- :meth:`S3Archive.prepare` sends a batch's first placements at once, on ``jobs`` threads:
  a round trip per file is paid once per batch, not once per file.
- :meth:`S3Archive.replace` (``resolve --keep staged``) writes only ``If-Match`` the ETag
  read before: an object changed meanwhile is never overwritten.
- Before its first write, an archive writes a probe object create-only, twice if need be:
  a store that accepts a create-only write over an object ignores the condition, and
  nothing is placed into it. Large files probe multipart completion the same way.
- A 200 from the store means the object is durable: :meth:`S3Archive.sync` has nothing to do.
- With an SQLite manifest (one host), commit and resolve hold a file lock next to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from dicomcommit._fs import Placed
from dicomcommit.archives.base import BaseArchive, Payload
from dicomcommit.archives.filesystem import Locked
from dicomcommit.archives.s3client import Head, Raced, S3Bucket, Taken
from dicomcommit.checks import check_lock_timeout
from dicomcommit.errors import NoClobberUnsupported, ObjectStoreError, UsageError
from dicomcommit.hashing import hash_at
from dicomcommit.layout import STATE_DIR
from dicomcommit.locations import OBJECT_STORE_SCHEMES

log = logging.getLogger("dicomcommit")

DEFAULT_JOBS = 32
PROBE = f"{STATE_DIR}/no-clobber-probe"  # written create-only before the first write: the store must refuse it
_PROBE_BYTES = b"dicomcommit writes this object with If-None-Match: * before it writes; the store must refuse.\n"
_PROBE_SHA256 = hashlib.sha256(_PROBE_BYTES).hexdigest()
_ATTEMPTS = 8  # writes sent for one name while concurrent writes keep racing ours (409)

__all__ = ["DEFAULT_JOBS", "S3Archive", "parse_s3_url"]


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix`` (the prefix without a trailing slash; may be empty).

    Raises:
        UsageError: no bucket, or a prefix with empty, ``.`` or ``..`` components.
    """
    rest = url.removeprefix(OBJECT_STORE_SCHEMES[0])
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.rstrip("/")  # (a leading "/" would be an empty component: refused below)
    if not bucket:
        raise UsageError(f"an object-store archive is s3://bucket/prefix, not {url!r}")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise UsageError(f"the prefix of {url!r} has an empty, '.' or '..' component")
    return bucket, prefix


class S3Archive(BaseArchive):
    """The archive at *url* (``s3://bucket/prefix``). *endpoint_url* overrides the AWS
    chain's endpoint (``AWS_ENDPOINT_URL``); credentials and region come from the chain.
    *jobs* requests are in flight at most. *lock_file*: what commit and resolve lock per
    batch with an SQLite manifest (None: with PostgreSQL, nothing is locked).

    Raises:
        UsageError: a malformed URL or endpoint, *jobs* under 1.
    """

    #: Files larger than this go multipart; each part (but the last) is :attr:`part_size`. A
    #: batch holds at most ``jobs`` of either in memory.
    multipart_threshold = 16 << 20
    part_size = 16 << 20
    keeps_copies = True

    def __init__(
        self, url: str, *, endpoint_url: str | None = None, jobs: int = DEFAULT_JOBS, lock_file: Path | None = None
    ) -> None:
        if jobs < 1:
            raise UsageError(f"jobs must be at least 1, not {jobs}")
        bucket, self.prefix = parse_s3_url(url)
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.jobs = jobs
        self._lock_file = lock_file
        self._bucket = S3Bucket(bucket, self.location, endpoint_url=endpoint_url, jobs=jobs)
        self._objects: dict[str, Head | None] = {}  # HEADs and our own writes, this batch
        self._listed: dict[str, int] | None = None  # rel -> size, from the last listing of the whole prefix
        self._ahead: dict[tuple[str, str], Future[Placed]] = {}  # (payload path, rel) -> its placement
        self._pool: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()
        self._probed: set[str] = set()  # "put", "multipart": the conditions this store was seen to honour
        self._unprobed: ObjectStoreError | None = None  # why the probe failed, this batch
        self._local: dict[str, tuple[str, int] | None] = {}  # holds(): local files hashed, this batch

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    # -- BaseArchive ------------------------------------------------------------------------

    def create(self) -> None:
        """Check that the bucket is there and answers (an object store has no directories to make).

        Raises:
            ObjectStoreError: no such bucket, access denied, or no answer.
        """
        self._bucket.check()

    def check(self) -> None:
        self._bucket.check()

    def lock(self, timeout: float | None) -> AbstractContextManager[None]:
        check_lock_timeout(timeout)
        if self._lock_file is None:  # with PostgreSQL nothing is locked, and lock() is never asked for
            msg = f"{self.location}: committing with an SQLite manifest needs its path (the lock is next to it)"
            raise UsageError(msg)
        self.check()
        self._lock_file.parent.mkdir(parents=True, exist_ok=True)
        return Locked(FileLock(self._lock_file, timeout=-1 if timeout is None else timeout))

    def prepare(self, placements: list[tuple[Payload, str]]) -> None:
        with self._guard:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="dicomcommit-s3")
            for payload, rel in placements:
                if (payload.path, rel) not in self._ahead:
                    self._ahead[payload.path, rel] = self._pool.submit(self._place_file, payload, rel)

    def place(self, payload: Payload, rel: str) -> Placed:
        ahead = self._ahead.pop((payload.path, rel), None)
        return self._place_file(payload, rel) if ahead is None else ahead.result()

    def hash(self, rel: str) -> tuple[str, int] | None:
        found = self._head(rel)
        if found is None:
            return None
        if found.sha256 is not None:
            return found.sha256, found.size
        return self._read_hash(rel, found)  # written by another tool: no hash on it, so it is read

    def verified_sha256(self, rel: str) -> str | None:
        found = self._head(rel)
        if found is None:
            return None
        if found.verified:  # the store checked the bytes against it when they were written
            return found.sha256
        return self._read_hash(rel, found)[0]

    def known_sha256(self, rel: str) -> str | None:
        found = self._objects.get(rel)
        return None if found is None else found.sha256

    def size(self, rel: str) -> int | None:
        if rel not in self._objects and self._listed is not None:
            return self._listed.get(rel)
        found = self._head(rel)
        return None if found is None else found.size

    def exists(self, rel: str) -> bool:
        if rel not in self._objects and self._listed is not None:
            return rel in self._listed
        return self._head(rel) is not None

    def holds(self, path: str | os.PathLike[str], rel: str) -> bool:
        """Whether the object at *rel* has the bytes of the local file *path* (an object is
        always a copy: this is what a filesystem's same inode means here)."""
        found = self._head(rel)
        if found is None:
            return False
        key = os.fspath(path)
        if key not in self._local:  # recover asks of one file for each name it may have taken: hashed once
            self._local[key] = hash_at(path)
        local = self._local[key]
        return local is not None and local[1] == found.size and self.verified_sha256(rel) == local[0]

    def link(self, src: str, dst: str) -> Placed:
        data, sha256 = self._copy_of(src)
        return self._create(dst, lambda: data, len(data), sha256)

    def replace(self, src: str, dst: str) -> None:
        data, sha256 = self._copy_of(src)
        current = self._objects.get(dst) if dst in self._objects else self._head(dst)
        if current is None:  # nothing there to replace: a create-only write, as any placement
            if self._create(dst, lambda: data, len(data), sha256) is not Placed.CREATED:
                raise ObjectStoreError("an object was written at this name meanwhile; nothing replaced, rerun",
                                       f"{self.location}/{dst}")  # fmt: skip
        else:
            changed = f"the object changed since it was read (ETag {current.etag}); nothing replaced, rerun"
            self._write(dst, data, sha256, current.etag, changed)
        self.remove(src)

    def remove(self, rel: str) -> None:
        if rel in self._objects and self._objects[rel] is None:
            return  # known gone this batch: a versioned bucket would gain a delete marker for nothing
        self._bucket.delete(self._key(rel))
        self._objects[rel] = None
        if self._listed is not None:
            self._listed.pop(rel, None)

    def files(self, folder: tuple[str, ...] = ()) -> list[str]:
        top = "/".join(folder)
        prefix = self._key(top) + "/" if top else (f"{self.prefix}/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = {key[strip:]: size for key, size in self._bucket.listing(prefix).items()}
        if not folder:
            self._listed = found  # a listing of the whole prefix answers exists() and size() until release()
            return sorted(rel for rel in found if rel.split("/", 1)[0] != STATE_DIR)
        return sorted(found)

    def open(self, rel: str) -> BinaryIO:
        # A real file (anonymous, gone when closed), not a BytesIO: readers of headers take its fd.
        local = tempfile.TemporaryFile()  # noqa: SIM115 -- the caller closes it
        local.write(self._bucket.get(self._key(rel)))
        local.seek(0)
        return local

    def sync(self) -> None:
        """A store's 200 means durable: nothing to do."""

    def release(self) -> None:
        with self._guard:
            ahead, self._ahead = self._ahead, {}
            pool, self._pool = self._pool, None
        unused = sum(1 for future in ahead.values() if not future.cancel())
        if pool is not None:
            pool.shutdown(wait=True)  # nothing of this batch is still writing once it returns
        if unused:
            log.info("%d placements sent ahead were not used by the batch; a rerun records them", unused)
        self._objects.clear()
        self._listed = None
        self._unprobed = None
        self._local.clear()

    # -- reading ----------------------------------------------------------------------------

    def _head(self, rel: str) -> Head | None:
        if rel in self._objects:
            return self._objects[rel]
        found = self._bucket.head(self._key(rel))
        self._objects[rel] = found
        return found

    def _read_hash(self, rel: str, found: Head) -> tuple[str, int]:
        data = self._bucket.get(self._key(rel), etag=found.etag)  # that very object, not one written since
        return hashlib.sha256(data).hexdigest(), len(data)

    def _copy_of(self, rel: str) -> tuple[bytes, str]:
        """The bytes of the object *rel* and their hash, computed from them (the copy carries no claim)."""
        found = self._head(rel)
        if found is None:
            raise FileNotFoundError(2, "no such object", f"{self.location}/{rel}")
        data = self._bucket.get(self._key(rel), etag=found.etag)
        return data, hashlib.sha256(data).hexdigest()

    # -- writing ----------------------------------------------------------------------------

    def _place_file(self, payload: Payload, rel: str) -> Placed:
        """Create *rel* from the local file of *payload*, opened here (and closed) so that a
        batch sent ahead keeps no more than *jobs* files open."""
        fd = os.open(payload.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=payload.dir_fd)
        try:
            size = os.fstat(fd).st_size
            if size <= self.multipart_threshold:
                data = _read_all(fd, size)
                return self._create(rel, lambda: data, size, hashlib.sha256(data).hexdigest())
            digest = hashlib.sha256()
            for chunk in _chunks(fd, size, self.part_size):
                digest.update(chunk)
            return self._create(rel, lambda: fd, size, digest.hexdigest())
        finally:
            os.close(fd)

    def _create(self, rel: str, body: Callable[[], bytes | int], size: int, sha256: str) -> Placed:
        """Create the object *rel* (the bytes *body* gives, or a file descriptor's) if no object
        has that key: ``CREATED``; ``SAME_INODE`` when this very write holds it (a retry of a
        write whose reply was lost); ``EXISTS`` with what holds it known (:meth:`_head`)."""
        token = uuid.uuid4().hex  # every attempt of this one placement carries it
        for attempt in range(_ATTEMPTS):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 2.0))
            data = body()
            self._probe("put" if isinstance(data, bytes) else "multipart")
            try:
                etag = self._send(rel, data, size, sha256, {"IfNoneMatch": "*"}, token=token)
            except (Taken, Raced):
                found = self._bucket.head(self._key(rel))
                if found is None:
                    continue  # the write we raced did not land, or was removed: ours goes again
                self._objects[rel] = found
                return Placed.SAME_INODE if found.put == token else Placed.EXISTS
            self._objects[rel] = Head(sha256, size, etag, put=token)
            return Placed.CREATED
        raise ObjectStoreError(f"concurrent writes kept racing ours ({_ATTEMPTS} attempts)", f"{self.location}/{rel}")

    def _write(self, rel: str, data: bytes, sha256: str, etag: str, changed: str) -> None:
        """Write *rel* ``If-Match`` *etag*: a failed condition is never retried over."""
        token = uuid.uuid4().hex
        self._probe("put")
        for attempt in range(_ATTEMPTS):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 2.0))
            try:
                new = self._send(rel, data, len(data), sha256, {"IfMatch": etag}, token=token)
            except Taken as exc:
                found = self._bucket.head(self._key(rel))
                if found is None or found.put != token:
                    raise ObjectStoreError(changed, f"{self.location}/{rel}") from exc
                new = found.etag  # our own write, whose reply was lost, sent again
            except Raced:
                continue
            self._objects[rel] = Head(sha256, len(data), new, put=token)
            return
        raise ObjectStoreError(f"concurrent writes kept racing ours ({_ATTEMPTS} attempts)", f"{self.location}/{rel}")

    def _send(self, rel: str, body: bytes | int, size: int, sha256: str, cond: dict[str, str], *, token: str) -> str:
        key = self._key(rel)
        if isinstance(body, bytes):
            return self._bucket.put(key, body, sha256, cond, token)
        return self._bucket.put_multipart(key, _chunks(body, size, self.part_size), sha256, cond, token)

    def _probe(self, kind: str) -> None:
        """Make sure this store refuses a create-only write of *kind* (``put``, ``multipart``)
        over an object, once per archive: the first write of the probe may create it; the
        one after must be refused (412).

        Raises:
            NoClobberUnsupported: the store wrote over the probe.
        """
        if kind in self._probed:
            return
        with self._guard:
            if kind in self._probed:
                return
            if self._unprobed is not None:  # it failed for another file of this batch: not again for each
                raise self._unprobed
            try:
                self._probe_now(kind)
            except ObjectStoreError as exc:
                self._unprobed = exc
                raise

    def _probe_now(self, kind: str) -> None:
        key = self._key(PROBE)
        for attempt in range(2):
            try:
                if kind == "put":
                    self._bucket.put(key, _PROBE_BYTES, _PROBE_SHA256, {"IfNoneMatch": "*"}, "probe", fast=False)
                else:
                    self._bucket.put_multipart(key, iter([_PROBE_BYTES]), _PROBE_SHA256, {"IfNoneMatch": "*"}, "probe")
            except (Taken, Raced):
                self._probed.add(kind)
                return
            if attempt:
                what = "If-None-Match: *" if kind == "put" else "If-None-Match: * on multipart completion"
                raise NoClobberUnsupported(f"the object store ignored {what} (it wrote over an object); committing "
                                           "into it could replace files, so nothing is placed",
                                           f"{self.location}/{PROBE}")  # fmt: skip


def _read_all(fd: int, size: int, offset: int = 0) -> bytes:
    """*size* bytes at *offset*: a file that got shorter since its stat is refused, never sent short."""
    data = b""
    while len(data) < size:
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise ObjectStoreError("the file got shorter while it was uploaded; nothing placed", f"fd {fd}")
        data += more
    return data


def _chunks(fd: int, size: int, part_size: int) -> Iterator[bytes]:
    for offset in range(0, size, part_size):
        yield _read_all(fd, min(part_size, size - offset), offset)
