"""``dicomcommit review ARCHIVE --serve``: a local page to decide conflicts from.

The page lists the rows (open conflicts by default, filtered by status, run and a target
glob), each conflict with both images, where their pixels differ and the header
differences, and buttons that go through :func:`~dicomcommit.committing.resolve.resolve_many`,
the same crash-safe resolve the command line runs, recording who decided.

What keeps it safe to run: it listens on loopback unless told otherwise; every request
must carry the random token printed in its URL (a page of another site cannot know it, so
no cross-site request resolves anything), and on loopback the Host header must name the
server (no DNS rebinding); every answer forbids framing, caching and referrers; nothing
is written when the manifest or the archive is read only.
"""

from __future__ import annotations

import fnmatch
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from typing import Any, TextIO
from urllib.parse import urlencode

import flask
from werkzeug.serving import make_server
from werkzeug.wrappers import Response

from dicomcommit.archives import open_archive
from dicomcommit.committing.resolve import KEEP_CHOICES, Keep, decider, resolve_many
from dicomcommit.errors import DicomCommitError, LockTimeout, UsageError
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import STATUSES, Record, Status
from dicomcommit.review.pages import conflict_view, render

LOOPBACK = "127.0.0.1"
PAGE_SIZE = 20  # conflicts per page: each is two files read and decoded
LOCK_WAIT = 10.0  # seconds a decision waits for a commit holding the archive lock
_HEADERS = {
    # Images are data: URIs and styles inline; no script, no other origin, no frame.
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


class ReviewServer:
    """The review page of *archive_dir* served at *host*:*port* (0: any free port), in a thread or in the foreground."""

    def __init__(
        self,
        archive_dir: str | os.PathLike[str],
        *,
        host: str = LOOPBACK,
        port: int = 0,
        manifest: str | os.PathLike[str] | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        self.token = secrets.token_urlsafe(32)
        with open_manifest(archive_dir, manifest=manifest):  # no manifest: fail now, not on the first request
            pass
        self.app = create_app(archive_dir, token=self.token, manifest=manifest, endpoint_url=endpoint_url)
        try:
            self._server = make_server(host, port, self.app, threaded=True)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        self.port = self._server.server_port
        self.app.config["ALLOWED_HOSTS"] = _allowed_hosts(host, self.port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, token included."""
        shown = self._server.host if ":" not in self._server.host else f"[{self._server.host}]"
        return f"http://{shown}:{self.port}/?{urlencode({'token': self.token})}"

    def serve_forever(self) -> None:
        """Answer requests until :meth:`shutdown` (or Ctrl-C in the foreground)."""
        self._server.serve_forever()

    def start(self) -> None:
        """Answer requests in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="dicomcommit-review", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop answering and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def serve_review(
    archive_dir: str | os.PathLike[str],
    *,
    host: str = LOOPBACK,
    port: int = 0,
    manifest: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
    out: TextIO,
) -> None:
    """Serve the review page of *archive_dir* until interrupted, printing its URL to *out*.

    Raises:
        ManifestError: the archive has no manifest.
        UsageError: *host*:*port* cannot be listened on.
    """
    server = ReviewServer(archive_dir, host=host, port=port, manifest=manifest, endpoint_url=endpoint_url)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request, token included: not wanted
    print(f"review page (open it in a browser; Ctrl-C stops): {server.url}", file=out, flush=True)
    if host not in {LOOPBACK, "localhost", "::1"}:
        print(f"warning: listening on {host}: whoever can reach it and has the URL can resolve conflicts",
              file=out, flush=True)  # fmt: skip
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=out)
    finally:
        server.shutdown()


def _allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The Host headers a loopback server answers (None: any, for a server on another address)."""
    if host not in {LOOPBACK, "localhost", "::1"}:
        return None
    return frozenset({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"})


def create_app(
    archive_dir: str | os.PathLike[str],
    *,
    token: str,
    manifest: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
) -> flask.Flask:
    """The review page's application (see :class:`ReviewServer`)."""
    app = flask.Flask(__name__)
    app.config["ALLOWED_HOSTS"] = None
    pages = _Pages(archive_dir, token, manifest, endpoint_url)

    @app.before_request
    def guard() -> Response | None:
        allowed = app.config["ALLOWED_HOSTS"]
        if allowed is not None and flask.request.host not in allowed:
            return _refuse(f"this server answers requests for {sorted(allowed)[0]} only")
        given = flask.request.form.get("token") if flask.request.method == "POST" else flask.request.args.get("token")
        if not hmac.compare_digest((given or "").encode(), token.encode()):
            return _refuse("this page needs the token in the URL that dicomcommit review --serve printed")
        return None

    @app.after_request
    def harden(response: Response) -> Response:
        response.headers.update(_HEADERS)
        return response

    app.add_url_rule("/", "index", pages.index, methods=["GET"])
    app.add_url_rule("/resolve", "resolve", pages.decide, methods=["POST"])
    return app


class _Pages:
    """The page, and the decisions sent from it."""

    def __init__(
        self,
        archive_dir: str | os.PathLike[str],
        token: str,
        manifest: str | os.PathLike[str] | None,
        endpoint_url: str | None,
    ) -> None:
        self.archive_dir, self.token, self.manifest, self.endpoint_url = archive_dir, token, manifest, endpoint_url
        self.location = str(archive_dir)
        self.who = f"{decider()} (review page)"

    def index(self) -> Response:
        done = flask.request.args.get("done")
        return self.page(said=list(self._done_lines(done)) if done else None)

    def decide(self) -> Response:
        refused = self.read_only()
        if refused is not None:
            return self.page(error=f"nothing was resolved: {refused}", status_code=403)
        try:
            ids, keep = _decision(flask.request.form)
            records = resolve_many(self.archive_dir, keep, ids=ids, lock_timeout=LOCK_WAIT, manifest=self.manifest,
                                   endpoint_url=self.endpoint_url, who=self.who)  # fmt: skip
        except LockTimeout as exc:
            return self.page(error=f"nothing was resolved: {exc} (a commit is running: try again)", status_code=503)
        except UsageError as exc:  # another reviewer decided first, a stale page, no selection
            return self.page(error=f"nothing was resolved: {exc}", status_code=409)
        except DicomCommitError as exc:  # an operation failed half-way: rerunning finishes it
            return self.page(error=f"the resolve stopped: {exc}; press the button again to finish it", status_code=500)
        back = {k: v for k in ("status", "run", "target", "page") if (v := flask.request.form.get(k))}
        query = urlencode({"token": self.token, **back, "done": ",".join(str(r.id) for r in records)})
        return flask.redirect(f"/?{query}", code=303)  # reloading the page does not decide again

    def read_only(self) -> str | None:
        """Why nothing can be resolved now (checked at each request: a remount changes it)."""
        if not self.location.startswith("s3://"):  # (an object store says so when a write fails)
            try:
                if os.statvfs(self.archive_dir).f_flag & os.ST_RDONLY:
                    return f"the archive {self.location} is on a read-only filesystem"
            except OSError as exc:
                return f"cannot reach the archive {self.location}: {exc.strerror or exc}"
        with open_manifest(self.archive_dir, manifest=self.manifest) as opened:
            return opened.read_only()

    def page(self, *, said: list[str] | None = None, error: str | None = None, status_code: int = 200) -> Response:
        args = flask.request.values
        status = args.get("status") or Status.CONFLICT.value
        if status not in STATUSES:
            return _refuse(f"unknown status {status!r}: one of {', '.join(STATUSES)}", 400)
        text = args.get("page") or "1"
        number = int(text) if text.isdigit() else 0
        if number < 1:
            return _refuse(f"page must be a whole number, 1 or more, not {text!r}", 400)
        run, target = args.get("run") or None, args.get("target") or None
        with open_manifest(self.archive_dir, manifest=self.manifest) as opened:
            rows = [r for r in opened.records(status, run=run)
                    if target is None or fnmatch.fnmatchcase(r.target or "", target)]  # fmt: skip
            runs = sorted({r.run for r in opened.records(Status.CONFLICT)})
        first = (number - 1) * PAGE_SIZE
        shown = rows[first : first + PAGE_SIZE]
        conflicts = []
        if status == Status.CONFLICT:
            with open_archive(self.archive_dir, endpoint_url=self.endpoint_url) as archive:
                conflicts = [conflict_view(archive, row) for row in shown]
        filters = {k: v for k, v in (("status", status), ("run", run), ("target", target)) if v}
        query = {"token": self.token, **filters}
        html = render(
            "review.html",
            title=f"dicomcommit review: {self.location}",
            token=self.token,
            statuses=[s.value for s in STATUSES],
            status=status,
            run=run,
            target=target,
            runs=runs,
            filters={**filters, "page": str(number)},
            total=len(rows),
            first=first + 1,
            rows=shown,
            conflicts=conflicts,
            said=said or [],
            error=error,
            read_only=self.read_only(),
            previous={**query, "page": number - 1} if number > 1 else None,
            next={**query, "page": number + 1} if first + PAGE_SIZE < len(rows) else None,
        )
        return Response(html, status_code, content_type="text/html; charset=utf-8")

    def _done_lines(self, done: str) -> Iterator[str]:
        """What happened to the rows *done* (ids, comma-separated), as the manifest says now."""
        with open_manifest(self.archive_dir, manifest=self.manifest) as opened:
            for text in done.split(",")[: PAGE_SIZE * 10]:
                if not text.isdigit():
                    continue
                try:
                    r: Record = opened.get(int(text))
                except DicomCommitError:
                    continue
                yield (f"#{r.id}: kept {r.resolution} (decided by {r.resolved_by} at {r.resolved_at}); "
                       f"now {r.status} at {r.path}")  # fmt: skip


def _decision(form: Any) -> tuple[list[int], Keep]:
    """The rows and the choice a submitted form asks for: one row's button, or the selection's.

    Raises:
        UsageError: no row selected, or a value the page does not send.
    """
    one = form.get("one")
    if one:
        number, _, keep = one.partition(":")
        texts = [number]
    else:
        keep, texts = form.get("keep", ""), form.getlist("ids")
        if not texts:
            raise UsageError("select at least one conflict first")
    if keep not in KEEP_CHOICES:
        raise UsageError(f"keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
    try:
        ids = [int(text) for text in texts]
    except ValueError:
        raise UsageError(f"not a row id: {texts!r}") from None
    return ids, keep


def _refuse(message: str, status_code: int = 403) -> Response:
    return Response(message + "\n", status_code, content_type="text/plain; charset=utf-8")
