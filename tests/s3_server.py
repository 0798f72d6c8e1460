"""A throwaway S3-compatible server for tests: moto's S3 backend in a process of its own, on loopback.

The child process (``python -m tests.s3_server --fd N --parent PID``) serves moto's S3 app alone with werkzeug's
threaded server, instead of the ``moto_server`` command's dispatcher, which costs ~3.5 ms of CPU per request
looking for the service among every moto module. Requests are path-style (``PUT /bucket/key``); moto keeps everything in
memory (bodies spill to temporary files under the server's directory), so :meth:`MotoServer.kill` loses it all.

Moto checks a conditional write (``If-None-Match: *``, ``If-Match``) and then writes, with nothing held between
the two: in a threaded server, two concurrent ``PutObject(IfNoneMatch="*")`` of one key can both succeed, which
S3 never allows. So by default (``atomic=True``) the child runs one request at a time through moto, after it has
read the request's whole body: each request is then atomic, as S3's conditional writes are. S3's
``409 ConditionalRequestConflict`` (two conditional writes in flight at once) never comes from moto: inject it with
tests/s3_proxy.py.

Everything lives under the directory it is given: ``moto.log`` (the server's output) and ``tmp/``.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
import botocore.config
import botocore.session

from tests.s3_proxy import aws_env, child_arguments, end, listening_socket, spawn, wait_answering

REGION = "us-east-1"
KEY = SECRET = "testing"  # noqa: S105 -- moto accepts any credentials; these are the conventional dummies

_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def s3_client(endpoint: str, **config: Any) -> Any:
    """A boto3 S3 client for *endpoint*: dummy credentials, us-east-1, path-style addressing.

    *config* goes to :class:`botocore.config.Config` (e.g. ``read_timeout=1, retries={"total_max_attempts": 1}``;
    note that botocore's ``retries={"max_attempts": n}`` means n *retries*, n + 1 attempts). One boto3 session
    is shared, so the service model is loaded once; it reads no ``~/.aws`` file. Close the client when done."""
    global _session  # noqa: PLW0603 -- one lazily made session for the whole test process
    with _session_lock:  # creating clients from one session is not thread-safe
        if _session is None:
            core = botocore.session.Session()
            core.set_config_variable("config_file", os.devnull)
            core.set_config_variable("credentials_file", os.devnull)
            _session = boto3.session.Session(botocore_session=core)
        return _session.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
            config=botocore.config.Config(s3={"addressing_style": "path"}, **config),
        )


def bucket_name() -> str:
    """A fresh bucket name S3 accepts (3-63 characters: lowercase letters, digits and hyphens)."""
    return f"t-{uuid.uuid4().hex[:12]}"


class MotoServer:
    """moto's S3 in a child process under *base*, on 127.0.0.1 and a free port.

    ``with MotoServer(base) as server:`` starts it and always stops it. After :meth:`stop` or :meth:`kill`,
    :meth:`start` serves again on the same port, empty."""

    def __init__(self, base: Path, *, atomic: bool = True) -> None:
        self.base = base
        self.atomic = atomic
        self.port: int = 0
        self.log = base / "moto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self._client_lock = threading.Lock()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the server and wait until it answers HTTP (moto's import takes a second or two)."""
        if self.running:
            return
        if importlib.util.find_spec("moto") is None:
            raise RuntimeError("the S3 tests need moto[server]: install the dev extras, pip install -e '.[dev]'")
        tmp = self.base / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        # The port is bound here and the socket inherited, so no other process can take it before moto serves.
        sock = listening_socket(port=self.port)
        self.port = sock.getsockname()[1]
        env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
        args = [] if self.atomic else ["--concurrent"]
        self._proc = spawn("tests.s3_server", args, sock, self.log, env)
        wait_answering(self._proc, self.port, "/", self.log, "the moto S3 server")

    def stop(self) -> None:
        """Terminate the server and wait for it."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, and reap it (every bucket and object is gone)."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            end(self._proc, sig)
            self._proc = None
        with self._client_lock:  # its pooled sockets would otherwise warn (ResourceWarning) when collected
            if self._client is not None:
                self._client.close()
                self._client = None

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A child process's whole environment to reach this server through the standard AWS chain:
        *base* (default: ours) without any ``AWS_*`` variable, plus ``AWS_ENDPOINT_URL``, dummy keys, the region
        (tests/s3_proxy.py's :func:`aws_env`)."""
        return aws_env(self.endpoint, base)

    def client(self, **config: Any) -> Any:
        """A new boto3 S3 client for this server (see :func:`s3_client`); close it when done."""
        return s3_client(self.endpoint, **config)

    @property
    def admin(self) -> Any:
        """The server's own client, shared, for the harness's checks (never closed by callers)."""
        with self._client_lock:
            if self._client is None:
                self._client = self.client(max_pool_connections=32)
            return self._client

    def create_bucket(self, name: str | None = None, *, versioning: bool = True) -> str:
        """Create a bucket (a fresh name by default), versioned unless told otherwise; returns its name."""
        name = name or bucket_name()
        self.admin.create_bucket(Bucket=name)
        if versioning:
            self.admin.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def read(self, bucket: str, key: str) -> bytes:
        """The current content of *key*, straight from the server."""
        return bytes(self.admin.get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys under *prefix* that have a current version, in S3's order."""
        pages = self.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def versions(self, bucket: str, prefix: str = "") -> dict[str, list[dict[str, Any]]]:
        """Per key under *prefix*: its versions and delete markers, the latest first.

        Each is the ``list_object_versions`` entry (``VersionId``, ``IsLatest``, ``LastModified``, and for a
        version ``ETag`` and ``Size``) plus ``"DeleteMarker": True/False``. "Every key was written once and never
        deleted" reads ``all(len(v) == 1 and not v[0]["DeleteMarker"] for v in versions.values())``."""
        found: dict[str, list[dict[str, Any]]] = {}
        pages = self.admin.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                for entry in page.get(kind, []):
                    found.setdefault(entry["Key"], []).append({**entry, "DeleteMarker": marker})
        for entries in found.values():
            entries.sort(key=lambda e: (e["IsLatest"], e["LastModified"]), reverse=True)
        return found


# -- the child process ----------------------------------------------------------------------------------------------


class Atomic:
    """WSGI middleware: read each request's whole body, then run it through *app* alone, reply included.

    Bodies are read before the lock is taken, so a slow upload does not hold up other requests."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        if environ.get("wsgi.input_terminated"):  # chunked: werkzeug dechunks and ends the stream
            body = stream.read()
        else:
            remaining = int(environ.get("CONTENT_LENGTH") or 0)
            parts = []
            while remaining > 0 and (part := stream.read(min(remaining, 1 << 20))):
                parts.append(part)
                remaining -= len(part)
            body = b"".join(parts)
        environ["wsgi.input"] = io.BytesIO(body)
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return list(result)
            finally:
                if hasattr(result, "close"):
                    result.close()


def serve(fd: int, *, atomic: bool) -> None:
    """Serve moto's S3 on the listening socket *fd* until killed."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app  # noqa: PLC0415
    from werkzeug.serving import make_server  # noqa: PLC0415

    class QuietHandler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """No line per request: it costs CPU and says nothing a test needs."""

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = create_backend_app("s3")
    wsgi = Atomic(app) if atomic else app
    server = make_server("127.0.0.1", 0, wsgi, threaded=True, request_handler=QuietHandler, fd=fd)
    print(f"moto S3 serving on 127.0.0.1:{server.port} ({'atomic' if atomic else 'concurrent'})", flush=True)
    server.serve_forever()


def main() -> None:
    concurrent = ("--concurrent", {"action": "store_true", "help": "let moto run requests at once (not atomic)"})
    args = child_arguments("moto's S3 alone, for tests/s3_server.py (a child process)", concurrent)
    serve(args.fd, atomic=not args.concurrent)


if __name__ == "__main__":
    main()
