"""A fault-injecting HTTP/1.1 reverse proxy for the object-store tests, in front of tests/s3_server.py's moto.

The S3 code under test talks to the proxy's endpoint as it would to S3; the proxy forwards each request to the
upstream server, unless a *rule* the test set says otherwise. A rule matches requests by method, and optionally by
a regular expression searched in the path, a header that must be present and a substring of the query string; it
applies to the next ``count`` matching requests (or to all of them, with ``count=None``) and does one thing:

``delay``
    sleep ``delay_ms`` before forwarding (an asyncio sleep: concurrent requests overlap, as on a WAN). Every
    matching delay rule adds its delay, and a delay rule does not stop other rules from applying.
``status``
    answer ``status`` with an S3 XML error body (``code``, ``message``) at once, without forwarding; a 2xx
    ``status`` is a bare success instead (an ETag, no body): a store that pretends to have written.
``timeout``
    read the whole request, never answer it and never forward it: hold the connection until the client closes
    it or ``hold_s`` has passed.
``drop_after_forward``
    forward the request, read the upstream's whole reply (so the write did happen), then close the client's
    connection without sending it a byte of that reply.

Of the rules that match a request, all delays add up, then the first (oldest) status / timeout / drop rule acts.

The proxy runs in a process of its own (``python -m tests.s3_proxy``), so its event loop never competes with the
test process for the GIL. It imports nothing but the standard library, so it starts in a few tens of ms.
It keeps client connections alive (botocore reuses them, as with S3), answers ``Expect: 100-continue`` itself
before it reads a body, and opens a fresh upstream connection per request (werkzeug, under moto, closes its
connection after every reply anyway). Bodies are buffered whole, both ways; a chunked reply from upstream reaches
the client re-framed with a Content-Length.

Control protocol, on the proxy's own port (paths under ``/__proxy__/`` are never forwarded nor counted):

``POST /__proxy__/rules``    body: a JSON rule (the keyword arguments of :meth:`FaultProxy.add`) -> ``{"id": N}``
``DELETE /__proxy__/rules``  remove every rule (``?stats=1``: reset the counters and the log too) -> ``{}``
``GET /__proxy__/stats``     ``{"requests": {METHOD: n}, "fired": {"ID": n}, "rules": [...], "log": [...]}``
``GET /__proxy__/ping``      ``{"ok": true}``, once the proxy serves

``log`` holds the last :data:`LOG_SIZE` requests as ``[method, path, query, outcome]``, where outcome is
``"forwarded 200"``, ``"status 409"``, ``"timeout"``, ``"dropped 200"`` or ``"upstream error"``.

This module also holds the standard-library helpers both test servers use to start a child process on a socket
we bound for it (no race for a free port), to wait until it answers, and to have it exit when the test process
is gone (even SIGKILLed).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[1]  # the child processes run ``python -m tests.…`` from here
CONTROL = "/__proxy__/"
LOG_SIZE = 10_000
HEAD_LIMIT = 1 << 20  # the longest request or reply head we read (S3's are a few KiB)
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
UPSTREAM_TIMEOUT = 120.0  # a reply moto has not finished in this long is a bug, not a fault to wait out
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "upgrade", "expect", "trailer"})
Action = Literal["delay", "status", "timeout", "drop_after_forward"]
ACTIONS: tuple[Action, ...] = ("delay", "status", "timeout", "drop_after_forward")
DEFAULT_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    409: "ConditionalRequestConflict",
    412: "PreconditionFailed",
    500: "InternalError",
    503: "SlowDown",
}


# -- helpers shared with tests/s3_server.py: a child process on a socket we bound --------------------------------


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to *host*:*port* (0: a free port) and listening, for a child process to inherit.

    Binding here rather than in the child means no other process can take the port between our choosing it and
    the child's binding it, and connections made before the child serves wait in the backlog."""
    sock = socket.socket(socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may rebind while old ones TIME_WAIT
        sock.bind((host, port))
        sock.listen(1024)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def spawn(module: str, args: list[str], sock: socket.socket, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m module --fd N --parent PID *args`` from the repository's root, inheriting the listening *sock*
    as fd N, its output appended to *log*. Our copy of the socket is closed: the child owns it from now on."""
    try:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", module, "--fd", str(sock.fileno()), "--parent", str(os.getpid()), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),),
                start_new_session=True,  # a ^C in the terminal is pytest's to handle, not the server's
                cwd=ROOT,
                env=env,
            )
    finally:
        sock.close()


def wait_answering(proc: subprocess.Popen[bytes], port: int, path: str, log: Path, what: str) -> None:
    """Poll ``GET path`` on 127.0.0.1:*port* until any HTTP reply comes; raise (and kill *proc*) with the end of
    *log* if the process exits or nothing answers within :data:`START_TIMEOUT`."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}) while starting; {log_tail(log)}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
        except (OSError, http.client.HTTPException) as error:
            if time.monotonic() > deadline:
                end(proc)
                raise RuntimeError(f"{what} did not answer in {START_TIMEOUT:.0f} s; {log_tail(log)}") from error
            time.sleep(0.02)
            continue
        finally:
            conn.close()
        return


def end(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    """Send *sig* to *proc* (then SIGKILL if it lingers) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def exit_with_parent(parent: int) -> None:
    """In a child: exit as soon as *parent* (the test process) is gone, even if it was SIGKILLed and could not
    stop us — a test run killed by a timeout must not leave servers behind."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def child_arguments(description: str, *extra: tuple[str, dict[str, Any]]) -> argparse.Namespace:
    """A child's command line: ``--fd`` (the inherited listening socket), ``--parent`` and *extra* options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fd", type=int, required=True, help="a listening TCP socket inherited from the parent")
    parser.add_argument("--parent", type=int, required=True, help="the test process: we exit when it is gone")
    for name, options in extra:
        parser.add_argument(name, **options)
    args = parser.parse_args()
    exit_with_parent(args.parent)
    return args


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        tail = []
    return f"the end of {log}:\n" + "\n".join(tail)


def aws_env(endpoint: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that reaches *endpoint* through the standard AWS chain.

    It is *base* (default: ours) without any ``AWS_*`` variable — no profile, session token, per-service
    endpoint, retry setting or config file of the machine's leaks in — plus a dummy key, the region and the
    endpoint. The config and credentials files are /dev/null so ``~/.aws`` is not read either."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 -- moto's conventional dummy, no secret
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


# -- the proxy itself (runs in the child process) -----------------------------------------------------------------


@dataclass
class Rule:
    """One fault rule, as the control endpoint receives it (JSON) and reports it."""

    id: int
    action: Action
    method: str = "*"
    path: str | None = None
    header: str | None = None
    query: str | None = None
    count: int | None = 1  # None: forever
    delay_ms: float = 0.0
    status: int = 0
    code: str = ""
    message: str = ""
    hold_s: float = 60.0
    fired: int = 0
    _path_re: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}: one of {', '.join(ACTIONS)}")
        if self.action == "status" and not 100 <= self.status <= 599:
            raise ValueError("a status rule needs a status code (100-599)")
        if self.count is not None and self.count < 1:
            raise ValueError("count is at least 1 (None: every matching request)")
        self.method = self.method.upper()
        self._path_re = re.compile(self.path) if self.path is not None else None

    def matches(self, request: Request) -> bool:
        if self.count is not None and self.fired >= self.count:
            return False
        if self.method not in {"*", request.method}:
            return False
        if self._path_re is not None and not self._path_re.search(request.path):
            return False
        if self.header is not None and request.header(self.header) is None:
            return False
        return self.query is None or self.query in request.query

    def report(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes  # as framed on the wire: raw chunks when chunked

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("Connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


class BadMessage(Exception):
    """A request or reply we cannot parse: the connection is closed."""


def parse_headers(lines: list[str]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise BadMessage(f"bad header line {line!r}")
        headers.append((name, value.strip()))
    return headers


def header_of(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


async def read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """A chunked body: (its raw bytes, trailers included; its decoded content)."""
    raw, content = bytearray(), bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        raw += line
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as error:
            raise BadMessage(f"bad chunk size line {line!r}") from error
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                raw += trailer
                if trailer == b"\r\n":
                    return bytes(raw), bytes(content)
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        content += chunk[:-2]


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    """The next request on a client connection, body included; None at a clean end of the connection.

    ``Expect: 100-continue`` is answered here, before the body is read: botocore otherwise waits a second."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise BadMessage("the connection ended inside a request head") from error
        return None
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")[:-2]
    try:
        method, target, version = lines[0].split(" ")
    except ValueError as error:
        raise BadMessage(f"bad request line {lines[0]!r}") from error
    request = Request(method.upper(), target, version, parse_headers(lines[1:]), b"")
    chunked = "chunked" in (request.header("Transfer-Encoding") or "").lower()
    length = int(request.header("Content-Length") or 0)
    if (chunked or length) and (request.header("Expect") or "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    if chunked:
        request.body = (await read_chunked(reader))[0]
    elif length:
        request.body = await reader.readexactly(length)
    return request


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes  # decoded: the client gets it with a Content-Length


async def read_reply(reader: asyncio.StreamReader, method: str) -> Reply:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[:-2]
        try:
            _version, code, *reason = lines[0].split(" ", 2)
            status = int(code)
        except ValueError as error:
            raise BadMessage(f"bad status line {lines[0]!r}") from error
        if not 100 <= status < 200:  # interim replies (we strip Expect, so moto sends none) are skipped
            break
    headers = parse_headers(lines[1:])
    body = b""
    if method == "HEAD" or status in {204, 304}:
        pass
    elif "chunked" in (header_of(headers, "transfer-encoding") or "").lower():
        body = (await read_chunked(reader))[1]
    elif (length := header_of(headers, "content-length")) is not None:
        body = await reader.readexactly(int(length))
    else:
        body = await reader.read()  # delimited by the end of the connection
    return Reply(status, reason[0] if reason else "", headers, body)


def reply_bytes(reply: Reply, method: str, *, close: bool) -> bytes:
    """*reply* framed for the client: our own Connection header, and a Content-Length for the body we hold."""
    dropped = {*HOP_BY_HOP, "transfer-encoding"}
    if method != "HEAD":  # a HEAD's Content-Length is the object's size: keep it
        dropped.add("content-length")
    lines = [f"HTTP/1.1 {reply.status} {reply.reason}"]
    lines += [f"{k}: {v}" for k, v in reply.headers if k.lower() not in dropped]
    if method != "HEAD" and reply.status not in {204, 304}:
        lines.append(f"Content-Length: {len(reply.body)}")
    if close:
        lines.append("Connection: close")
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + (b"" if method == "HEAD" else reply.body)


def error_reply(status: int, code: str, message: str, request_id: str) -> Reply:
    if 200 <= status < 300:  # a success that never happened (a store ignoring a condition)
        headers = [("ETag", f'"{request_id}"'), ("x-amz-request-id", request_id), ("Server", "FaultProxy")]
        return Reply(status, http.client.responses.get(status, "OK"), headers, b"")
    code = code or DEFAULT_CODES.get(status, "InternalError")
    message = message or f"injected by tests/s3_proxy.py ({code})"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
    ).encode()
    reason = http.client.responses.get(status, "Error")
    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id), ("Server", "FaultProxy")]
    return Reply(status, reason, headers, body)


def json_reply(status: int, value: object) -> Reply:
    reason = http.client.responses.get(status, "")
    return Reply(status, reason, [("Content-Type", "application/json")], json.dumps(value).encode())


class Proxy:
    """The proxy's state and connection handler (in the child process, on one event loop: no locks needed)."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[Rule] = []
        self.ids = itertools.count(1)
        self.requests: collections.Counter[str] = collections.Counter()
        self.fired: collections.Counter[int] = collections.Counter()
        self.log: collections.deque[list[str]] = collections.deque(maxlen=LOG_SIZE)
        self.serial = itertools.count(1)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await read_request(reader, writer)
                if request is None:
                    break
                if not await self.serve(request, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to tell
        except (BadMessage, ValueError, asyncio.LimitOverrunError) as error:
            print(f"s3_proxy: closing a client connection: {error!r}", file=sys.stderr, flush=True)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def serve(self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer (or not) one request; True if the connection goes on."""
        if request.path.startswith(CONTROL):
            writer.write(reply_bytes(self.control(request), request.method, close=not request.keep_alive))
            await writer.drain()
            return request.keep_alive
        self.requests[request.method] += 1
        matched = [rule for rule in self.rules if rule.matches(request)]
        for rule in matched:
            rule.fired += 1
            self.fired[rule.id] += 1
        delay = sum(rule.delay_ms for rule in matched if rule.action == "delay")
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        fault = next((rule for rule in matched if rule.action != "delay"), None)
        entry = [request.method, request.path, request.query]
        self.log.append(entry)
        if fault is not None and fault.action == "status":
            entry.append(f"status {fault.status}")
            reply = error_reply(fault.status, fault.code, fault.message, f"FAULT{next(self.serial):012d}")
            writer.write(reply_bytes(reply, request.method, close=not request.keep_alive))
            await writer.drain()
            return request.keep_alive
        if fault is not None and fault.action == "timeout":
            entry.append("timeout")
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(fault.hold_s):
                    while await reader.read(65536):  # whatever the client sends is ignored, until it hangs up
                        pass
            return False
        try:
            async with asyncio.timeout(UPSTREAM_TIMEOUT):
                reply = await self.forward(request)
        except (OSError, TimeoutError, BadMessage, asyncio.IncompleteReadError) as error:
            # The upstream is gone (killed) or broken: the client sees its connection close, as with a dead S3.
            entry.append("upstream error")
            print(f"s3_proxy: upstream failed {request.method} {request.target}: {error!r}", file=sys.stderr)
            return False
        if fault is not None:  # drop_after_forward
            entry.append(f"dropped {reply.status}")
            return False
        entry.append(f"forwarded {reply.status}")
        writer.write(reply_bytes(reply, request.method, close=not request.keep_alive))
        await writer.drain()
        return request.keep_alive

    async def forward(self, request: Request) -> Reply:
        """*request* on a fresh upstream connection; the whole reply."""
        reader, writer = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
        try:
            lines = [f"{request.method} {request.target} HTTP/1.1"]
            lines += [f"{k}: {v}" for k, v in request.headers if k.lower() not in HOP_BY_HOP]
            lines.append("Connection: close")
            writer.write("\r\n".join([*lines, "", ""]).encode("latin-1") + request.body)
            await writer.drain()
            return await read_reply(reader, request.method)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def control(self, request: Request) -> Reply:
        what = request.path.removeprefix(CONTROL)
        if what == "ping" and request.method == "GET":
            return json_reply(200, {"ok": True})
        if what == "stats" and request.method == "GET":
            return json_reply(200, self.stats())
        if what == "rules" and request.method == "POST":
            try:
                spec = json.loads(request.body)
                if not isinstance(spec, dict) or {"id", "fired"} & spec.keys():
                    raise ValueError("a rule is a JSON object without id or fired")
                rule = Rule(id=next(self.ids), **spec)
            except (ValueError, TypeError, re.error) as error:
                return json_reply(400, {"error": str(error)})
            self.rules.append(rule)
            return json_reply(200, {"id": rule.id})
        if what == "rules" and request.method == "DELETE":
            self.rules.clear()
            if parse_qs(urlsplit(request.target).query).get("stats") == ["1"]:
                self.requests.clear()
                self.fired.clear()
                self.log.clear()
            return json_reply(200, {})
        return json_reply(404, {"error": f"no control {request.method} {request.path}"})

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "fired": {str(k): v for k, v in self.fired.items()},
            "rules": [rule.report() for rule in self.rules],
            "log": list(self.log),
        }


async def serve_forever(sock: socket.socket, upstream_host: str, upstream_port: int) -> None:
    proxy = Proxy(upstream_host, upstream_port)
    server = await asyncio.start_server(proxy.handle, sock=sock, limit=HEAD_LIMIT, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    upstream = ("--upstream", {"required": True, "help": "HOST:PORT of the S3 server to forward to"})
    args = child_arguments("the fault-injecting proxy of tests/s3_proxy.py (a child process)", upstream)
    host, _, port = args.upstream.rpartition(":")
    sock = socket.socket(fileno=args.fd)
    asyncio.run(serve_forever(sock, host, int(port)))


# -- the test process's handle --------------------------------------------------------------------------------------


class FaultProxy:
    """The proxy in a child process, in front of ``upstream_host:upstream_port``; its log under *base*.

    ``with FaultProxy(server.port, base) as proxy:`` starts it and always stops it. :meth:`add` sets rules,
    :meth:`clear` removes them, :meth:`stats` reads the counters (see the module's docstring)."""

    def __init__(self, upstream_port: int, base: Path, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.base = base
        self.port: int = 0
        self.log = base / "proxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

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

    def start(self) -> None:
        """Start the proxy on a free port (the same one again after :meth:`stop`) and wait until it answers."""
        if self.running:
            return
        self.base.mkdir(parents=True, exist_ok=True)
        sock = listening_socket(port=self.port)
        self.port = sock.getsockname()[1]
        upstream = f"{self.upstream_host}:{self.upstream_port}"
        self._proc = spawn("tests.s3_proxy", ["--upstream", upstream], sock, self.log, dict(os.environ))
        wait_answering(self._proc, self.port, CONTROL + "ping", self.log, "the fault proxy")

    def stop(self) -> None:
        """Stop the proxy: every connection through it ends (rules and counters are gone with it)."""
        if self._proc is not None:
            end(self._proc)
            self._proc = None

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A child process's whole environment to reach S3 through this proxy (see :func:`aws_env`)."""
        return aws_env(self.endpoint, base)

    def add(
        self,
        method: str = "*",
        *,
        action: Action,
        path: str | None = None,
        header: str | None = None,
        query: str | None = None,
        count: int | None = 1,
        delay_ms: float = 0,
        status: int = 0,
        code: str = "",
        message: str = "",
        hold_s: float = 60.0,
    ) -> int:
        """Add a rule (see the module's docstring); returns its id, for :meth:`fired`.

        *method* ``"*"`` matches every method; *path* is a regular expression searched in the request's path
        as sent (percent-encoded, ``/bucket/key`` with path-style addressing); *header* is a header name that
        must be present; *query* a substring of the raw query string. *count* ``None``: forever."""
        spec = {
            "method": method,
            "action": action,
            "path": path,
            "header": header,
            "query": query,
            "count": count,
            "delay_ms": delay_ms,
            "status": status,
            "code": code,
            "message": message,
            "hold_s": hold_s,
        }
        status_code, answer = self._control("POST", "rules", spec)
        if status_code != 200:
            raise ValueError(f"the proxy refused the rule {spec}: {answer.get('error')}")
        return int(answer["id"])

    def clear(self, *, stats: bool = False) -> None:
        """Remove every rule; with *stats*, reset the request counters and the log too."""
        self._control("DELETE", "rules?stats=1" if stats else "rules")

    def stats(self) -> dict[str, Any]:
        """``{"requests": {METHOD: n}, "fired": {rule id: n}, "rules": [...], "log": [[method, path, query,
        outcome], ...]}``: requests seen (control requests aside) and faults fired per rule."""
        answer = self._control("GET", "stats")[1]
        answer["fired"] = {int(k): v for k, v in answer["fired"].items()}
        return answer

    def requests(self, method: str) -> int:
        """How many *method* requests the proxy has seen."""
        return int(self.stats()["requests"].get(method.upper(), 0))

    def fired(self, rule: int) -> int:
        """How many times rule *rule* has applied."""
        return int(self.stats()["fired"].get(rule, 0))

    def _control(self, method: str, what: str, body: object = None) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, CONTROL + what, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status not in {200, 400}:
                raise RuntimeError(f"the proxy's control {method} {what} answered {response.status}: {answer}")
            return response.status, answer
        finally:
            conn.close()


if __name__ == "__main__":
    main()
