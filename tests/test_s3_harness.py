"""The S3 test harness itself: moto's server process (tests/s3_server.py) and the fault proxy (tests/s3_proxy.py).

The object-store tests trust these to behave like S3 and to inject exactly the faults they ask for; here each
promise is checked against real requests, with boto3 as the S3 code under test uses it."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError

from tests.s3_proxy import FaultProxy
from tests.s3_server import MotoServer, bucket_name, s3_client

ONCE = {"total_max_attempts": 1}  # botocore's "max_attempts" counts retries: max_attempts=1 would try twice


@contextlib.contextmanager
def client(endpoint: str, **config: Any) -> Iterator[Any]:
    """A boto3 S3 client for *endpoint*, closed afterwards (its pooled sockets would warn when collected)."""
    made = s3_client(endpoint, **config)
    try:
        yield made
    finally:
        made.close()


def error_code(error: ClientError) -> tuple[int, str]:
    return error.response["ResponseMetadata"]["HTTPStatusCode"], error.response["Error"]["Code"]


def test_put_get_direct(s3_server: MotoServer, s3_bucket: str) -> None:
    with client(s3_server.endpoint) as s3:
        s3.put_object(Bucket=s3_bucket, Key="a/b c.dcm", Body=b"DICM" * 10)
        assert s3.get_object(Bucket=s3_bucket, Key="a/b c.dcm")["Body"].read() == b"DICM" * 10
        assert s3.head_object(Bucket=s3_bucket, Key="a/b c.dcm")["ContentLength"] == 40
    assert s3_server.keys(s3_bucket) == ["a/b c.dcm"]
    assert s3_bucket.startswith("t-")
    assert 3 <= len(s3_bucket) <= 63
    assert bucket_name() != bucket_name()


def test_conditional_put_through_proxy(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    body = bytes(range(256)) * 400  # large enough that botocore sends Expect: 100-continue and waits
    with client(s3_proxy.endpoint, retries=ONCE) as s3:
        started = time.monotonic()
        s3.put_object(Bucket=s3_bucket, Key="k", Body=body, IfNoneMatch="*")
        assert time.monotonic() - started < 0.9, "the proxy did not answer 100 Continue: botocore waited 1 s"
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket=s3_bucket, Key="k", Body=b"other", IfNoneMatch="*")
        assert error_code(refused.value) == (412, "PreconditionFailed")
        got = s3.get_object(Bucket=s3_bucket, Key="k")
        assert got["Body"].read() == body
        assert s3.head_object(Bucket=s3_bucket, Key="k")["ContentLength"] == len(body)  # a HEAD keeps its length
    assert [len(v) for v in s3_server.versions(s3_bucket).values()] == [1]
    stats = s3_proxy.stats()
    assert stats["requests"] == {"PUT": 2, "GET": 1, "HEAD": 1}
    assert [entry[3] for entry in stats["log"]] == ["forwarded 200", "forwarded 412", "forwarded 200", "forwarded 200"]


def test_if_match_through_proxy(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    """moto honours If-Match on PutObject: the ETag must be the current one's."""
    with client(s3_proxy.endpoint, retries=ONCE) as s3:
        etag = s3.put_object(Bucket=s3_bucket, Key="k", Body=b"one")["ETag"]
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"two", IfMatch=etag)
        with pytest.raises(ClientError) as stale:
            s3.put_object(Bucket=s3_bucket, Key="k", Body=b"three", IfMatch=etag)
        assert error_code(stale.value) == (412, "PreconditionFailed")
    assert s3_server.read(s3_bucket, "k") == b"two"


def test_status_409_once_then_passes(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    rule = s3_proxy.add("PUT", header="If-None-Match", action="status", status=409, count=1)
    with client(s3_proxy.endpoint, retries=ONCE) as s3:
        s3.put_object(Bucket=s3_bucket, Key="plain", Body=b"x")  # no If-None-Match: not matched
        with pytest.raises(ClientError) as conflict:
            s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x", IfNoneMatch="*")
        assert error_code(conflict.value) == (409, "ConditionalRequestConflict")
        assert s3_server.keys(s3_bucket) == ["plain"], "an injected status must not reach the server"
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x", IfNoneMatch="*")
    assert s3_server.keys(s3_bucket) == ["k", "plain"]
    assert s3_proxy.fired(rule) == 1
    assert s3_proxy.requests("PUT") == 3


def test_status_503_is_retried_by_botocore(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    rule = s3_proxy.add("PUT", path=r"/k$", action="status", status=503, count=1)
    with client(s3_proxy.endpoint) as s3:  # botocore's standard retries: SlowDown is retried
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    assert s3_proxy.fired(rule) == 1
    assert s3_proxy.requests("PUT") == 2
    forever = s3_proxy.add("PUT", action="status", status=503, code="ServiceUnavailable", count=None)
    with client(s3_proxy.endpoint, retries=ONCE) as s3, pytest.raises(ClientError) as unavailable:
        s3.put_object(Bucket=s3_bucket, Key="j", Body=b"x")
    assert error_code(unavailable.value) == (503, "ServiceUnavailable")
    assert s3_proxy.fired(forever) == 1
    assert s3_server.keys(s3_bucket) == ["k"]


def test_timeout_rule(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    rule = s3_proxy.add("PUT", action="timeout", hold_s=30)
    started = time.monotonic()
    with client(s3_proxy.endpoint, read_timeout=1, retries=ONCE) as s3, pytest.raises(ReadTimeoutError):
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"x" * 100_000)
    assert time.monotonic() - started < 5
    assert s3_server.keys(s3_bucket) == []
    assert s3_proxy.fired(rule) == 1
    assert s3_proxy.stats()["log"][-1][3] == "timeout"


def test_drop_after_forward(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    rule = s3_proxy.add("PUT", action="drop_after_forward")
    with client(s3_proxy.endpoint, retries=ONCE) as s3:
        with pytest.raises(ConnectionClosedError):
            s3.put_object(Bucket=s3_bucket, Key="k", Body=b"written", IfNoneMatch="*")
        with pytest.raises(ClientError) as again:  # the retry an S3 client would make finds its own write
            s3.put_object(Bucket=s3_bucket, Key="k", Body=b"written", IfNoneMatch="*")
        assert error_code(again.value) == (412, "PreconditionFailed")
    assert s3_server.read(s3_bucket, "k") == b"written"
    assert s3_proxy.fired(rule) == 1
    assert s3_proxy.stats()["log"][0][3] == "dropped 200"


def test_delay_overlaps_concurrent_requests(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    s3_server.admin.put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    with client(s3_proxy.endpoint, max_pool_connections=20) as s3:
        s3.head_object(Bucket=s3_bucket, Key="k")  # the first request pays for botocore's lazy setup
        rule = s3_proxy.add(action="delay", delay_ms=50, count=None)

        started = time.monotonic()
        for _ in range(20):
            s3.head_object(Bucket=s3_bucket, Key="k")
        sequential = time.monotonic() - started

        with ThreadPoolExecutor(20) as pool:
            started = time.monotonic()
            list(pool.map(lambda _: s3.head_object(Bucket=s3_bucket, Key="k"), range(20)))
            concurrent = time.monotonic() - started
    assert sequential >= 1.0
    assert concurrent < 0.6, f"20 concurrent requests delayed 50 ms each took {concurrent:.2f} s: no overlap"
    assert s3_proxy.fired(rule) == 40


def test_versions(s3_server: MotoServer, s3_bucket: str) -> None:
    with client(s3_server.endpoint) as s3:
        s3.put_object(Bucket=s3_bucket, Key="p/one", Body=b"1")
        s3.put_object(Bucket=s3_bucket, Key="p/two", Body=b"2")
        s3.put_object(Bucket=s3_bucket, Key="other", Body=b"3")
        once = s3_server.versions(s3_bucket, "p/")
        assert sorted(once) == ["p/one", "p/two"]
        assert all(len(v) == 1 and not v[0]["DeleteMarker"] and v[0]["IsLatest"] for v in once.values())

        s3.put_object(Bucket=s3_bucket, Key="p/one", Body=b"1 again")  # unconditional: a second version
        s3.delete_object(Bucket=s3_bucket, Key="p/two")
    twice = s3_server.versions(s3_bucket, "p/")
    one = [(v["Size"], v["IsLatest"], v["DeleteMarker"]) for v in twice["p/one"]]
    assert one == [(7, True, False), (1, False, False)]
    assert [(v["IsLatest"], v["DeleteMarker"]) for v in twice["p/two"]] == [(True, True), (False, False)]


def test_query_and_header_matching_with_multipart(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    part_rule = s3_proxy.add("PUT", query="uploadId", action="status", status=500, count=1)
    complete_rule = s3_proxy.add("POST", query="uploadId", header="If-None-Match", action="status", status=409)
    with client(s3_proxy.endpoint, retries=ONCE) as s3:
        s3.put_object(Bucket=s3_bucket, Key="single", Body=b"x")  # a PUT without uploadId: not matched
        upload = s3.create_multipart_upload(Bucket=s3_bucket, Key="multi")["UploadId"]  # POST ?uploads
        part = {"Bucket": s3_bucket, "Key": "multi", "UploadId": upload, "PartNumber": 1, "Body": b"p" * 1000}
        with pytest.raises(ClientError) as failed:
            s3.upload_part(**part)
        assert error_code(failed.value) == (500, "InternalError")
        etag = s3.upload_part(**part)["ETag"]
        done = {"Bucket": s3_bucket, "Key": "multi", "UploadId": upload}
        parts = {"Parts": [{"ETag": etag, "PartNumber": 1}]}
        with pytest.raises(ClientError) as conflict:
            s3.complete_multipart_upload(**done, MultipartUpload=parts, IfNoneMatch="*")
        assert error_code(conflict.value) == (409, "ConditionalRequestConflict")
        s3.complete_multipart_upload(**done, MultipartUpload=parts, IfNoneMatch="*")
        again = s3.create_multipart_upload(Bucket=s3_bucket, Key="multi")["UploadId"]
        etag = s3.upload_part(**{**part, "UploadId": again})["ETag"]
        second = {"Parts": [{"ETag": etag, "PartNumber": 1}]}
        with pytest.raises(ClientError) as exists:  # moto honours If-None-Match on CompleteMultipartUpload too
            s3.complete_multipart_upload(**{**done, "UploadId": again}, MultipartUpload=second, IfNoneMatch="*")
        assert error_code(exists.value) == (412, "PreconditionFailed")
    assert s3_server.read(s3_bucket, "multi") == b"p" * 1000
    assert (s3_proxy.fired(part_rule), s3_proxy.fired(complete_rule)) == (1, 1)


def test_bad_rules_are_refused(s3_proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="unknown action"):
        s3_proxy.add("PUT", action="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="status code"):
        s3_proxy.add("PUT", action="status")
    with pytest.raises(ValueError, match="count"):
        s3_proxy.add("PUT", action="delay", delay_ms=5, count=0)
    s3_proxy.add("PUT", action="delay", delay_ms=5)
    assert len(s3_proxy.stats()["rules"]) == 1
    s3_proxy.clear()
    assert s3_proxy.stats()["rules"] == []


def test_keep_alive_expect_and_chunked_body(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy) -> None:
    """Several requests on one client connection: a chunked PUT, a PUT with Expect: 100-continue, GETs.

    moto takes unsigned requests as anonymous ones: it lets them write, and read what is public-read."""
    public = {"x-amz-acl": "public-read"}
    conn = http.client.HTTPConnection("127.0.0.1", s3_proxy.port, timeout=5)
    try:
        body = iter([b"abc", b"defg", b"h"])
        conn.request("PUT", f"/{s3_bucket}/chunked", body=body, headers=public, encode_chunked=True)
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"")
        sock = conn.sock
        conn.request("PUT", f"/{s3_bucket}/expect", body=b"12345", headers={**public, "Expect": "100-continue"})
        response = conn.getresponse()  # http.client skips the interim 100 Continue
        assert (response.status, response.read()) == (200, b"")
        for key, want in (("chunked", b"abcdefgh"), ("expect", b"12345")):
            conn.request("GET", f"/{s3_bucket}/{key}")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, want)
        assert conn.sock is sock, "the proxy closed a keep-alive connection"
    finally:
        conn.close()
    assert s3_server.read(s3_bucket, "chunked") == b"abcdefgh"
    assert s3_proxy.stats()["requests"] == {"PUT": 2, "GET": 2}


def test_env_reaches_the_proxy_from_a_child(s3_bucket: str, s3_proxy: FaultProxy, tmp_path: Path) -> None:
    env = s3_proxy.env({"PATH": "/usr/bin:/bin", "AWS_PROFILE": "prod", "AWS_ENDPOINT_URL_S3": "http://nowhere"})
    assert "AWS_PROFILE" not in env
    assert "AWS_ENDPOINT_URL_S3" not in env
    assert env["AWS_ENDPOINT_URL"] == s3_proxy.endpoint
    code = "import boto3; print(' '.join(b['Name'] for b in boto3.client('s3').list_buckets()['Buckets']))"
    listed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert listed.returncode == 0, listed.stderr
    assert s3_bucket in listed.stdout.split()
    assert s3_proxy.requests("GET") == 1


@pytest.mark.parametrize("through", ["server", "proxy"])
def test_200_concurrent_puts(s3_server: MotoServer, s3_bucket: str, s3_proxy: FaultProxy, through: str) -> None:
    endpoint = s3_server.endpoint if through == "server" else s3_proxy.endpoint
    with client(endpoint, max_pool_connections=32) as s3, ThreadPoolExecutor(32) as pool:
        etags = list(
            pool.map(lambda i: s3.put_object(Bucket=s3_bucket, Key=f"k/{i:03d}", Body=b"%d" % i)["ETag"], range(200))
        )
    assert len(etags) == 200
    assert s3_server.running
    versions = s3_server.versions(s3_bucket)
    assert sorted(versions) == [f"k/{i:03d}" for i in range(200)]
    assert all(len(v) == 1 and not v[0]["DeleteMarker"] for v in versions.values())


def test_concurrent_conditional_puts_have_one_winner(s3_server: MotoServer, s3_bucket: str) -> None:
    """The server runs requests one at a time (atomic=True): of racing If-None-Match PUTs of a key exactly one
    wins, as on S3 (unserialized moto checks, then writes, and lets two win now and then)."""
    outcomes: list[str] = []
    lock = threading.Lock()

    def put(key: str) -> None:
        try:
            s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x" * 200_000, IfNoneMatch="*")
            outcome = "won"
        except ClientError as error:
            outcome = error.response["Error"]["Code"]
        with lock:
            outcomes.append(outcome)

    with client(s3_server.endpoint, max_pool_connections=16) as s3, ThreadPoolExecutor(16) as pool:
        list(pool.map(put, [f"k{i // 16}" for i in range(5 * 16)]))
    assert sorted(set(outcomes)) == ["PreconditionFailed", "won"]
    assert outcomes.count("won") == 5
    assert all(len(v) == 1 for v in s3_server.versions(s3_bucket).values())


def test_kill_restart_and_proxy_to_a_dead_server(tmp_path: Path) -> None:
    with MotoServer(tmp_path / "moto") as server, FaultProxy(server.port, tmp_path / "proxy") as proxy:
        bucket = server.create_bucket(versioning=False)
        port, pid = server.port, server.pid
        server.kill()
        assert not server.running
        with client(server.endpoint, retries=ONCE, connect_timeout=2) as s3, pytest.raises(EndpointConnectionError):
            s3.list_buckets()
        with client(proxy.endpoint, retries=ONCE) as s3, pytest.raises(ConnectionClosedError):
            s3.list_buckets()
        assert proxy.stats()["log"][-1][3] == "upstream error"
        server.start()
        assert (server.port, server.running) == (port, True)
        assert server.pid != pid
        with client(proxy.endpoint, retries=ONCE) as s3:
            assert s3.list_buckets()["Buckets"] == [], f"a restarted moto is empty, yet has {bucket}"
