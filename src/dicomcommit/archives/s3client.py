"""The requests of an object-store archive to its bucket: conditional writes, HEAD, GET,
listing, delete; boto3 for every kind of request, and obstore for the one a commit makes per
file, the create-only PUT of a small object.

Why two clients. botocore is pure Python: on the machine the benchmark runs on, one
PutObject costs about 2.9 ms of CPU under the GIL, so a committer tops out near 340 PUTs/s
however many are in flight. obstore (Rust, the ``object_store`` crate) costs about 0.4 ms and
releases the GIL while it waits. But obstore answers both 412 Precondition Failed and 409
ConditionalRequestConflict as ``AlreadyExistsError``, returns no user metadata on HEAD, has
no condition on multipart completion, and does not retry a PUT that timed out. So obstore
sends the common request, and boto3 everything else: the HEAD that tells "taken" from
"raced" (both are answered by a HEAD anyway), multipart uploads, ``If-Match`` writes,
listings, reads and deletes; and a PUT whose obstore attempt failed in any other way than
"already exists" is sent again by boto3 (a conditional PUT can be sent twice: the second
meets the first's object, 412, and the HEAD says whose it is).

Both are configured from the one standard AWS chain that boto3 resolves: endpoint
(``--endpoint-url``, ``AWS_ENDPOINT_URL``, the config file), region and credentials.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dicomcommit.errors import ObjectStoreError, UsageError

if TYPE_CHECKING:
    from obstore.store import ClientConfig

log = logging.getLogger("dicomcommit")

ENV_TIMEOUT = "DICOMCOMMIT_S3_TIMEOUT"  # seconds a request may take to connect, and to answer
RETRIES = 5  # retries of a request that failed in a way worth retrying (5xx, throttling, lost connections)
CONTENT_TYPE = "application/dicom"
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}

__all__ = ["ENV_TIMEOUT", "Head", "Raced", "S3Bucket", "Taken"]


class Taken(Exception):
    """412: the condition failed (If-None-Match: the key has an object; If-Match: another ETag)."""


class Raced(Exception):
    """409 ConditionalRequestConflict: a concurrent write to the key raced ours (or obstore's
    "already exists", which may be either: a HEAD says)."""


@dataclass(frozen=True, slots=True)
class Head:
    """What a HEAD says of an object."""

    sha256: str | None  # its metadata: a claim, proven only by *checksum* (or by reading the bytes)
    size: int
    etag: str
    checksum: str | None = None  # x-amz-checksum-sha256, as the store computed it (single-part objects)
    put: str | None = None  # the token of the request that wrote it (dicomcommit's own writes)

    @property
    def verified(self) -> bool:
        """Whether the store itself vouches for *sha256* (it checked the bytes against it)."""
        return self.sha256 is not None and self.checksum == b64_of(self.sha256)


def b64_of(sha256: str) -> str:
    """A hex sha256 as S3's ``x-amz-checksum-sha256`` carries it."""
    return base64.b64encode(bytes.fromhex(sha256)).decode("ascii")


def timeout() -> float:
    """Seconds a request may take to connect, and to answer (``$DICOMCOMMIT_S3_TIMEOUT``, default 60).

    Raises:
        UsageError: not a positive number.
    """
    text = os.environ.get(ENV_TIMEOUT) or "60"
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1
    if not 0 < seconds < float("inf"):
        raise UsageError(f"{ENV_TIMEOUT} must be a positive number of seconds, not {text!r}")
    return seconds


class S3Bucket:
    """Requests to *bucket* at *endpoint_url* (None: the AWS chain's), *jobs* at once at most.
    Every failure leaves as :class:`ObjectStoreError`, naming *location* and what was tried.

    Raises:
        UsageError: an endpoint that is not an http(s) URL; a bad ``$DICOMCOMMIT_S3_TIMEOUT``.
    """

    def __init__(self, bucket: str, location: str, *, endpoint_url: str | None, jobs: int) -> None:
        if endpoint_url is not None and urlsplit(endpoint_url).scheme not in ("http", "https"):
            raise UsageError(f"an endpoint is an http:// or https:// URL, not {endpoint_url!r}")
        self.bucket, self.location = bucket, location
        seconds = timeout()
        config = Config(max_pool_connections=jobs + 2, connect_timeout=seconds, read_timeout=seconds,
                        retries={"mode": "standard", "max_attempts": RETRIES})  # fmt: skip
        try:
            self.client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        except ValueError as exc:  # an endpoint botocore cannot use
            raise UsageError(f"cannot use the endpoint {endpoint_url!r}: {exc}") from exc
        self._fast = _fast_store(self.client, bucket, jobs, seconds)
        self._fell_back = False

    def failure(self, exc: Exception, key: str, doing: str) -> ObjectStoreError:
        where = f"s3://{self.bucket}/{key}" if key else self.location
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code, message = error.get("Code", "?"), error.get("Message", "")
            if code == "NoSuchBucket" or (code == "404" and not key):  # a HEAD of the bucket has no body
                return ObjectStoreError(f"cannot {doing}: no bucket {self.bucket!r} on this endpoint", where)
            return ObjectStoreError(f"cannot {doing}: the object store answered {code} ({message})", where)
        return ObjectStoreError(f"cannot {doing}: {exc}", where)

    def check(self) -> None:
        """Raises ObjectStoreError unless the bucket is there and answers."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self.failure(exc, "", "reach the bucket") from exc

    def head(self, key: str) -> Head | None:
        """The object at *key*; None when there is none."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise self.failure(exc, key, "read the object's hash") from exc
        except BotoCoreError as exc:
            raise self.failure(exc, key, "read the object's hash") from exc
        meta = head.get("Metadata", {})
        return Head(meta.get("sha256"), int(head["ContentLength"]), head["ETag"], head.get("ChecksumSHA256"),
                    meta.get("put"))  # fmt: skip

    def get(self, key: str, *, etag: str | None = None) -> bytes:
        """The bytes of *key* (of the version whose ETag is *etag*, if given).

        Raises:
            FileNotFoundError: no object there (or, with *etag*, not that one any more).
        """
        condition = {} if etag is None else {"IfMatch": etag}
        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=key, **condition)["Body"].read()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND or _status(exc) == 412:
                raise FileNotFoundError(2, "no such object (or it changed)", f"s3://{self.bucket}/{key}") from exc
            raise self.failure(exc, key, "read the object") from exc
        except BotoCoreError as exc:
            raise self.failure(exc, key, "read the object") from exc
        return data

    def listing(self, prefix: str) -> dict[str, int]:
        """Every key below *prefix*, with its size."""
        found: dict[str, int] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        except (ClientError, BotoCoreError) as exc:
            raise self.failure(exc, prefix, "list the archive") from exc
        return found

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self.failure(exc, key, "remove the object") from exc

    def put(self, key: str, data: bytes, sha256: str, condition: dict[str, str], put: str, *, fast: bool = True) -> str:
        """One conditional write of *data* (its hash *sha256* as checksum and metadata, and the
        token *put*); its ETag. With *fast* and a create-only condition, obstore sends it.

        Raises:
            Taken (412), Raced (409, or obstore's "already exists"), ObjectStoreError.
        """
        meta = {"sha256": sha256, "put": put}
        if fast and self._fast is not None and condition == {"IfNoneMatch": "*"}:
            try:
                result = self._fast[0](self._fast[1], key, data, mode="create",
                                       attributes={"Content-Type": CONTENT_TYPE, **meta})  # fmt: skip
                return str(result["e_tag"] or "")
            except self._fast[2] as exc:  # a 412 or a 409: a HEAD tells them apart
                raise Raced from exc
            except Exception as exc:  # obstore's own errors: boto3 sends it again, and says what it was
                # Once said: a fault now and then is retried so, but an obstore that always fails (a
                # region it was not told, say) costs every file a second request.
                (log.debug if self._fell_back else log.warning)(
                    "obstore could not send a PUT (%s); boto3 sends it (and any other that fails so)", exc
                )
                self._fell_back = True
        try:
            reply = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=CONTENT_TYPE,
                                           ChecksumAlgorithm="SHA256", ChecksumSHA256=b64_of(sha256), Metadata=meta,
                                           **condition)  # fmt: skip
            return str(reply["ETag"])
        except ClientError as exc:
            raise self._conditional(exc, key) from exc
        except BotoCoreError as exc:
            raise self.failure(exc, key, "write the object") from exc

    def put_multipart(self, key: str, parts: Iterator[bytes], sha256: str, condition: dict[str, str], put: str) -> str:
        """A multipart upload of *parts* (whose bytes must hash to *sha256*), completed under
        *condition*; its ETag. Aborted on any failure. Raises as :meth:`put`."""
        client, meta = self.client, {"sha256": sha256, "put": put}
        try:
            started = client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=CONTENT_TYPE,
                                                     ChecksumAlgorithm="SHA256", Metadata=meta)  # fmt: skip
        except (ClientError, BotoCoreError) as exc:
            raise self.failure(exc, key, "start a multipart upload") from exc
        upload_id = started["UploadId"]
        try:
            sent, digest = [], hashlib.sha256()
            for number, chunk in enumerate(parts, start=1):
                digest.update(chunk)
                checksum = base64.b64encode(hashlib.sha256(chunk).digest()).decode("ascii")
                part = client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=chunk, ChecksumSHA256=checksum)  # fmt: skip
                sent.append({"PartNumber": number, "ETag": part["ETag"], "ChecksumSHA256": checksum})
            if digest.hexdigest() != sha256:
                raise ObjectStoreError("the bytes changed while they were uploaded; nothing placed",
                                       f"s3://{self.bucket}/{key}")  # fmt: skip
            done = client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                                    MultipartUpload={"Parts": sent}, **condition)  # fmt: skip
            upload_id = ""
            return str(done.get("ETag", ""))
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                # A completion retried after its reply was lost: the upload is gone because it
                # completed. Whose object holds the key is for a HEAD to say, as after any 412.
                upload_id = ""
                raise Taken from exc
            raise self._conditional(exc, key) from exc
        except BotoCoreError as exc:
            raise self.failure(exc, key, "write the object") from exc
        finally:
            if upload_id:
                try:
                    client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                except (ClientError, BotoCoreError) as exc:  # the store expires it by its lifecycle rules
                    log.warning("could not abort the multipart upload of %s: %s", key, exc)

    def _conditional(self, exc: ClientError, key: str) -> Exception:
        if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
            return Taken()
        if _status(exc) == 409 or _code(exc) == "ConditionalRequestConflict":
            return Raced()
        return self.failure(exc, key, "write the object")


def _fast_store(client: Any, bucket: str, jobs: int, seconds: float) -> tuple[Any, Any, type[Exception]] | None:
    """(obstore.put, its store for *bucket* as *client* reaches it, AlreadyExistsError); None
    when obstore is not installed or cannot be configured so (boto3 then sends every request)."""
    try:
        import obstore  # noqa: PLC0415 -- optional: without it boto3 sends every request
        from obstore.auth.boto3 import Boto3CredentialProvider  # noqa: PLC0415
        from obstore.exceptions import AlreadyExistsError  # noqa: PLC0415
        from obstore.store import S3Store  # noqa: PLC0415
    except ImportError:
        return None
    endpoint = str(client.meta.endpoint_url)
    parts = urlsplit(endpoint)
    virtual = (parts.hostname or "").endswith(".amazonaws.com")  # AWS itself: bucket.s3.region.amazonaws.com
    if virtual:
        endpoint = f"{parts.scheme}://{bucket}.{parts.netloc}"
    span = timedelta(seconds=seconds)
    # The SDKs' header naming the checksum's algorithm, as botocore sends it: some stores keep
    # (and return on HEAD) the checksum only when it is there.
    options: ClientConfig = {"allow_http": parts.scheme == "http", "timeout": span, "connect_timeout": span,
                             "pool_max_idle_per_host": str(jobs + 2),
                             "default_headers": {"x-amz-sdk-checksum-algorithm": "SHA256"}}  # fmt: skip
    try:
        credentials = Boto3CredentialProvider(boto3.session.Session(region_name=client.meta.region_name))
        store = S3Store(bucket, endpoint=endpoint, region=client.meta.region_name or "us-east-1",
                        virtual_hosted_style_request=virtual, checksum_algorithm="sha256",
                        credential_provider=credentials, client_options=options,
                        # few retries: a PUT obstore gives up on is sent again by boto3, which retries too
                        retry_config={"max_retries": 2, "retry_timeout": span * 3})  # fmt: skip
    except Exception as exc:  # no credentials yet, say: boto3's first request reports that clearly
        log.debug("obstore not used (%s): boto3 sends every request", exc)
        return None
    return obstore.put, store, AlreadyExistsError


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None if status is None else int(status)
