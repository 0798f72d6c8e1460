"""The archive as a prefix of an S3 bucket (``s3://bucket/prefix``): create-only placement
with a conditional write, never a read-then-write and never an unconditional PUT on a name.

- A name is placed with ``PutObject`` carrying ``If-None-Match: *`` (large files: multipart,
  with the condition on ``CompleteMultipartUpload``): the store creates the object only if
  the key has none, atomically, and answers 412 Precondition Failed otherwise.
- Every object carries its bytes' sha256: as ``x-amz-checksum-sha256`` (the store verifies
  the bytes it received against it) and as the metadata ``sha256`` (which every
  S3-compatible store returns on HEAD). A 412 is answered with a HEAD, not a download.
- 409 ConditionalRequestConflict (a concurrent write to the key raced ours) is not an
  answer: a HEAD says whether an object is there now (then the name is taken), else the
  PUT is sent again. botocore retries 5xx, throttling, timeouts and lost connections; a PUT
  whose first attempt landed before its reply was lost meets our own object on the retry
  (412, our hash): the decision engine records it as it records any identical bytes.
- :meth:`S3Archive.prepare` sends a batch's first placements at once, on ``jobs`` threads:
  a round trip per file is paid once per batch, not once per file.
- :meth:`S3Archive.replace` (``resolve --keep staged``) writes only ``If-Match`` the ETag
  read before: an object changed meanwhile is never overwritten.
- A 200 from the store means the object is durable: :meth:`S3Archive.sync` has nothing to do.
- With an SQLite manifest (one host), commit and resolve hold a file lock next to it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError
from filelock import FileLock

from dicomcommit._fs import Placed
from dicomcommit.archives.base import BaseArchive, Payload
from dicomcommit.archives.filesystem import Locked
from dicomcommit.archives.s3client import CONTENT_TYPE, Taken, Unsure, boto3_client, fast_put
from dicomcommit.checks import check_lock_timeout
from dicomcommit.errors import NoClobberUnsupported, ObjectStoreError, UsageError
from dicomcommit.layout import STATE_DIR
from dicomcommit.locations import OBJECT_STORE_SCHEMES

log = logging.getLogger("dicomcommit")

DEFAULT_JOBS = 32
PROBE = f"{STATE_DIR}/no-clobber-probe"  # written create-only on every run: the store must refuse it (412)
_PROBE_BYTES = b"dicomcommit writes this object with If-None-Match: * on every run; the store must refuse.\n"
_PROBE_SHA256 = hashlib.sha256(_PROBE_BYTES).hexdigest()
_CREATE_ATTEMPTS = 8  # PUTs sent for one name while concurrent writes keep racing ours (409)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}

__all__ = ["DEFAULT_JOBS", "S3Archive", "parse_s3_url"]


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix`` (the prefix without slashes at its ends; may be empty).

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


@dataclass(frozen=True, slots=True)
class _Object:
    """What a HEAD says of an object."""

    sha256: str | None  # our metadata; None for an object another tool wrote
    size: int
    etag: str


class S3Archive(BaseArchive):
    """The archive at *url* (``s3://bucket/prefix``). *endpoint_url* overrides the AWS
    chain's endpoint (``AWS_ENDPOINT_URL``); credentials and region come from the chain.
    *jobs* requests are in flight at most. *lock_file*: what commit and resolve lock per
    batch with an SQLite manifest (None: with PostgreSQL, nothing is locked)."""

    #: Files larger than this go multipart; each part (but the last) is :attr:`part_size`.
    multipart_threshold = 64 << 20
    part_size = 16 << 20

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        jobs: int = DEFAULT_JOBS,
        lock_file: Path | None = None,
    ) -> None:
        if jobs < 1:
            raise UsageError(f"jobs must be at least 1, not {jobs}")
        self.bucket, self.prefix = parse_s3_url(url)
        self.location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.jobs = jobs
        self._lock_file = lock_file
        self._client = boto3_client(endpoint_url, jobs)
        self._fast = fast_put(self._client, self.bucket, jobs)  # the hot path's PUT (see s3client)
        self._objects: dict[str, _Object | None] = {}  # HEADs and our own writes, this batch
        self._listed: dict[str, int] | None = None  # rel -> size, from the last listing of the whole prefix
        self._ahead: dict[tuple[str, str], Future[Placed]] = {}  # (payload path, rel) -> its placement
        self._pool: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()

    # -- names and errors -------------------------------------------------------------------

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def _failure(self, exc: Exception, rel: str, doing: str) -> ObjectStoreError:
        where = f"{self.location}/{rel}" if rel else self.location
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", "")
            if code == "NoSuchBucket" or (code == "404" and not rel):  # a HEAD of the bucket has no body
                return ObjectStoreError(f"cannot {doing}: no bucket {self.bucket!r} on this endpoint", where)
            return ObjectStoreError(f"cannot {doing}: the object store answered {code} ({message})", where)
        return ObjectStoreError(f"cannot {doing}: {exc}", where)

    def _call(self, doing: str, rel: str, request: Callable[..., Any], **params: Any) -> Any:
        """One request; a failure the store answers (or botocore's exhausted retries) as ObjectStoreError."""
        try:
            return request(Bucket=self.bucket, **params)
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, rel, doing) from exc

    # -- BaseArchive ------------------------------------------------------------------------

    def create(self) -> None:
        """Check that the bucket is there, answers, and refuses to overwrite (an object store
        has no directories to make).

        A store that ignored ``If-None-Match: *`` would replace objects silently, so the
        archive keeps a probe object that it writes create-only on every run: the store
        must answer 412. Once the probe is there, that costs one request per run.

        Raises:
            ObjectStoreError: no such bucket, access denied, or no answer.
            NoClobberUnsupported: the store wrote over the probe.
        """
        self._call("reach the bucket", "", self._client.head_bucket)
        for attempt in range(2):  # the first run creates the probe; a second PUT must then be refused
            try:
                self._send(PROBE, _PROBE_BYTES, len(_PROBE_BYTES), _PROBE_SHA256, {"IfNoneMatch": "*"}, fast=False)
            except (_Taken, _Raced):
                return
            if attempt:
                raise NoClobberUnsupported(
                    "the object store ignored If-None-Match: * (it wrote over an object); committing into it could "
                    "replace files, so nothing is placed", f"{self.location}/{PROBE}")  # fmt: skip

    def lock(self, timeout: float | None) -> AbstractContextManager[None]:
        check_lock_timeout(timeout)
        if self._lock_file is None:  # with PostgreSQL nothing is locked, and lock() is never asked for
            msg = f"{self.location}: committing with an SQLite manifest needs its path (the lock is next to it)"
            raise UsageError(msg)
        self.create()
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
        data = self._download(rel)  # written by another tool: no hash on it, so it is read
        return hashlib.sha256(data).hexdigest(), len(data)

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
        return False  # an object is always a copy: no local file is ever one of its names

    def link(self, src: str, dst: str) -> Placed:
        found = self._head(src)
        if found is None:
            raise FileNotFoundError(2, "no such object", f"{self.location}/{src}")
        sha256 = found.sha256 or self._require(self.hash(src), src)[0]
        return self._create(dst, lambda: self._download(src), found.size, sha256)

    def replace(self, src: str, dst: str) -> None:
        found = self._head(src)
        if found is None:
            raise FileNotFoundError(2, "no such object", f"{self.location}/{src}")
        sha256 = found.sha256 or self._require(self.hash(src), src)[0]
        current = self._objects.get(dst) if dst in self._objects else self._head(dst)
        if current is None:  # nothing there to replace: a create-only write, as any placement
            if self._create(dst, lambda: self._download(src), found.size, sha256) is Placed.EXISTS:
                raise ObjectStoreError("an object was written at this name meanwhile; nothing replaced, rerun",
                                       f"{self.location}/{dst}")  # fmt: skip
        else:
            self._write(dst, self._download(src), found.size, sha256, {"IfMatch": current.etag}, changed=(
                f"the object changed since it was read (ETag {current.etag}); nothing replaced, rerun"))  # fmt: skip
        self.remove(src)

    def remove(self, rel: str) -> None:
        if rel in self._objects and self._objects[rel] is None:
            return  # known gone this batch: a versioned bucket would gain a delete marker for nothing
        self._call("remove the object", rel, self._client.delete_object, Key=self._key(rel))
        self._objects[rel] = None
        if self._listed is not None:
            self._listed.pop(rel, None)

    def files(self, folder: tuple[str, ...] = ()) -> list[str]:
        top = "/".join(folder)
        found: dict[str, int] = {}
        paginator = self._client.get_paginator("list_objects_v2")
        prefix = self._key(top) + "/" if top else (f"{self.prefix}/" if self.prefix else "")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[self._rel(item["Key"])] = int(item["Size"])
        except (ClientError, BotoCoreError) as exc:
            raise self._failure(exc, top, "list the archive") from exc
        if not folder:
            self._listed = found  # a listing of the whole prefix answers exists() and size() until release()
            return sorted(rel for rel in found if rel.split("/", 1)[0] != STATE_DIR)
        return sorted(found)

    def open(self, rel: str) -> BinaryIO:
        # A real file (anonymous, gone when closed), not a BytesIO: readers of headers take its fd.
        local = tempfile.TemporaryFile()  # noqa: SIM115 -- the caller closes it
        local.write(self._download(rel))
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

    # -- the requests -----------------------------------------------------------------------

    def _head(self, rel: str) -> _Object | None:
        if rel in self._objects:
            return self._objects[rel]
        found = self._fetch(rel)
        self._objects[rel] = found
        return found

    def _fetch(self, rel: str) -> _Object | None:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self._key(rel))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise self._failure(exc, rel, "read the object's hash") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, rel, "read the object's hash") from exc
        sha256 = head.get("Metadata", {}).get("sha256")
        return _Object(sha256, int(head["ContentLength"]), head["ETag"])

    def _download(self, rel: str) -> bytes:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._key(rel))
            data: bytes = reply["Body"].read()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise FileNotFoundError(2, "no such object", f"{self.location}/{rel}") from exc
            raise self._failure(exc, rel, "read the object") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, rel, "read the object") from exc
        return data

    def _require(self, found: tuple[str, int] | None, rel: str) -> tuple[str, int]:
        if found is None:
            raise FileNotFoundError(2, "no such object", f"{self.location}/{rel}")
        return found

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
        has that key: ``CREATED``, or ``EXISTS`` with what holds it known (:meth:`_head`)."""
        for attempt in range(_CREATE_ATTEMPTS):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 2.0))
            try:
                etag = self._send(rel, body(), size, sha256, {"IfNoneMatch": "*"})
            except _Taken:
                found = self._fetch(rel)
                if found is None:
                    continue  # removed between the 412 and the HEAD: ask again
                self._objects[rel] = found
                return Placed.EXISTS
            except _Raced:
                found = self._fetch(rel)
                if found is not None:
                    self._objects[rel] = found
                    return Placed.EXISTS
                continue  # the write we raced did not land (yet): ours goes again
            self._objects[rel] = _Object(sha256, size, etag)
            return Placed.CREATED
        raise ObjectStoreError(f"concurrent writes kept racing ours ({_CREATE_ATTEMPTS} attempts)",
                               f"{self.location}/{rel}")  # fmt: skip

    def _write(self, rel: str, data: bytes, size: int, sha256: str, condition: dict[str, str], *, changed: str) -> None:
        """Write *rel* under *condition* (If-Match): a failed condition is never retried over."""
        for attempt in range(_CREATE_ATTEMPTS):
            if attempt:
                time.sleep(min(0.05 * 2**attempt, 2.0))
            try:
                etag = self._send(rel, data, size, sha256, condition)
            except _Taken as exc:
                found = self._fetch(rel)
                if found is None or found.sha256 != sha256:
                    raise ObjectStoreError(changed, f"{self.location}/{rel}") from exc
                etag = found.etag  # our own write, whose reply was lost, retried
            except _Raced:
                continue
            self._objects[rel] = _Object(sha256, size, etag)
            return
        raise ObjectStoreError(f"concurrent writes kept racing ours ({_CREATE_ATTEMPTS} attempts)",
                               f"{self.location}/{rel}")  # fmt: skip

    def _send(
        self, rel: str, body: bytes | int, size: int, sha256: str, condition: dict[str, str], *, fast: bool = True
    ) -> str:
        """One conditional write; its ETag. Raises _Taken (412), _Raced (409) or ObjectStoreError."""
        key = self._key(rel)
        if fast and isinstance(body, bytes) and self._fast is not None and condition == {"IfNoneMatch": "*"}:
            try:
                return self._fast.create(key, body, sha256)
            except Taken as exc:  # a 412 or a 409: the HEAD that follows tells them apart
                raise _Taken from exc
            except Unsure:
                pass  # boto3 sends it again, and says what went wrong if it goes wrong again
        try:
            if isinstance(body, int):
                return self._multipart(key, body, size, sha256, condition)
            reply = self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=CONTENT_TYPE,
                                        ChecksumSHA256=_b64(bytes.fromhex(sha256)), Metadata={"sha256": sha256},
                                        **condition)  # fmt: skip
            return str(reply["ETag"])
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 412 or _code(exc) == "PreconditionFailed":
                raise _Taken from exc
            if status == 409 or _code(exc) == "ConditionalRequestConflict":
                raise _Raced from exc
            raise self._failure(exc, rel, "write the object") from exc
        except BotoCoreError as exc:
            raise self._failure(exc, rel, "write the object") from exc

    def _multipart(self, key: str, fd: int, size: int, sha256: str, condition: dict[str, str]) -> str:
        """A multipart upload of the file at *fd*, completed under *condition*; aborted on any failure."""
        client = self._client
        started = client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=CONTENT_TYPE,
                                                 ChecksumAlgorithm="SHA256", Metadata={"sha256": sha256})  # fmt: skip
        upload_id = started["UploadId"]
        try:
            parts = []
            digest = hashlib.sha256()
            for number, chunk in enumerate(_chunks(fd, size, self.part_size), start=1):
                digest.update(chunk)
                checksum = _b64(hashlib.sha256(chunk).digest())
                part = client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=chunk, ChecksumSHA256=checksum)  # fmt: skip
                parts.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumSHA256": checksum})
            if digest.hexdigest() != sha256:
                where = f"{self.location}/{self._rel(key)}"
                raise ObjectStoreError("the file changed while it was uploaded; nothing placed", where)
            try:
                done = client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                        MultipartUpload={"Parts": parts}, **condition)  # fmt: skip
            except ClientError as exc:
                if _code(exc) != "NoSuchUpload":
                    raise
                # A completion retried after its reply was lost: the upload is gone because it completed.
                # Whose object holds the key is for a HEAD, and the decision, to say, as after any 412.
                upload_id = ""
                raise _Taken from exc
            upload_id = ""
            return str(done["ETag"])
        finally:
            if upload_id:
                try:
                    client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except (ClientError, BotoCoreError) as exc:  # the store expires it by its lifecycle rules
                    log.warning("could not abort the multipart upload of %s: %s", key, exc)


class _Taken(Exception):
    """412: the condition failed (If-None-Match: an object has the key; If-Match: another ETag)."""


class _Raced(Exception):
    """409 ConditionalRequestConflict: a concurrent write to the key raced ours."""


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


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
