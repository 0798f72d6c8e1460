"""The clients of an object-store archive: boto3 for every kind of request, and obstore for
the one request a commit makes per file, the create-only PUT of a small object.

Why two. botocore is pure Python: on the machine the benchmark runs on, one PutObject costs
about 2.9 ms of CPU under the GIL, so a committer tops out near 340 PUTs/s however many are
in flight. obstore (Rust, the ``object_store`` crate) costs about 0.4 ms and releases the GIL
while it waits. But obstore answers both 412 Precondition Failed and 409
ConditionalRequestConflict as ``AlreadyExistsError``, returns no user metadata on HEAD, has
no condition on multipart completion, and does not retry a PUT that timed out. So obstore
sends the common request, and boto3 everything else: the HEAD that tells "taken" from
"raced" (a 412 and a 409 are both answered by a HEAD anyway), multipart uploads, ``If-Match``
writes, listings, reads and deletes; and any PUT whose obstore attempt failed in a way other
than "already exists" is sent again with boto3 (a conditional PUT can be sent twice: the
second meets the first's object, 412, and the HEAD says whose it is).

Both are configured from the one standard AWS chain that boto3 resolves: endpoint
(``--endpoint-url``, ``AWS_ENDPOINT_URL``, the config file), region and credentials.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

if TYPE_CHECKING:
    from obstore.store import ClientConfig

log = logging.getLogger("dicomcommit")

ENV_TIMEOUT = "DICOMCOMMIT_S3_TIMEOUT"  # seconds a request may take to connect, and to answer
RETRIES = 5  # retries of a request that failed in a way worth retrying (5xx, throttling, lost connections)
CONTENT_TYPE = "application/dicom"

__all__ = ["CONTENT_TYPE", "ENV_TIMEOUT", "FastPut", "Taken", "Unsure", "boto3_client", "fast_put"]


class Taken(Exception):
    """obstore: an object has the key (412), or a concurrent write raced ours (409)."""


class Unsure(Exception):
    """obstore: anything else (a timeout, a lost connection, a refusal): send it again with boto3."""


def timeout() -> float:
    """Seconds a request may take to connect, and to answer (``$DICOMCOMMIT_S3_TIMEOUT``, default 60)."""
    return float(os.environ.get(ENV_TIMEOUT) or 60)


def boto3_client(endpoint_url: str | None, jobs: int) -> Any:
    """A boto3 S3 client from the standard AWS chain, *endpoint_url* overriding its endpoint."""
    seconds = timeout()
    config = Config(
        max_pool_connections=jobs + 2,
        connect_timeout=seconds,
        read_timeout=seconds,
        retries={"mode": "standard", "max_attempts": RETRIES},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class FastPut:
    """Create-only PUTs of whole objects through obstore, to *bucket* as *client* reaches it."""

    def __init__(self, client: Any, bucket: str, jobs: int) -> None:
        import obstore  # noqa: PLC0415 -- optional: fast_put() checks it is there
        from obstore.auth.boto3 import Boto3CredentialProvider  # noqa: PLC0415
        from obstore.exceptions import AlreadyExistsError  # noqa: PLC0415
        from obstore.store import S3Store  # noqa: PLC0415

        self._put, self._exists = obstore.put, AlreadyExistsError
        endpoint = str(client.meta.endpoint_url)
        parts = urlsplit(endpoint)
        virtual = (parts.hostname or "").endswith(".amazonaws.com")  # AWS itself: bucket.s3.region.amazonaws.com
        if virtual:
            endpoint = f"{parts.scheme}://{bucket}.{parts.netloc}"
        session = boto3.session.Session(region_name=client.meta.region_name)
        seconds = timedelta(seconds=timeout())
        options: ClientConfig = {"allow_http": parts.scheme == "http", "timeout": seconds, "connect_timeout": seconds,
                   "pool_max_idle_per_host": str(jobs + 2)}  # fmt: skip
        self._store = S3Store(
            bucket,
            endpoint=endpoint,
            region=client.meta.region_name or "us-east-1",
            virtual_hosted_style_request=virtual,
            checksum_algorithm="sha256",  # x-amz-checksum-sha256: the store checks the bytes it got
            credential_provider=Boto3CredentialProvider(session),
            client_options=options,
            retry_config={"max_retries": RETRIES, "retry_timeout": seconds * (RETRIES + 1)},
        )

    def create(self, key: str, data: bytes, sha256: str) -> str:
        """Create *key* with *data* (its hash as the metadata ``sha256``) if the key has no object; its ETag.

        Raises:
            Taken: the key has an object, or a concurrent write raced ours (a HEAD says which).
            Unsure: any other failure; nothing is known of the key.
        """
        try:
            result = self._put(self._store, key, data, mode="create",
                               attributes={"Content-Type": CONTENT_TYPE, "sha256": sha256})  # fmt: skip
        except self._exists as exc:
            raise Taken from exc
        except Exception as exc:  # obstore raises its own hierarchy; boto3 says what it was
            log.debug("obstore PUT of %s failed (%s); sending it with boto3", key, exc)
            raise Unsure from exc
        return str(result["e_tag"] or "")


def fast_put(client: Any, bucket: str, jobs: int) -> FastPut | None:
    """obstore's create-only PUT for *bucket*, or None when obstore is not installed (boto3 sends all)."""
    try:
        return FastPut(client, bucket, jobs)
    except ImportError:
        return None
