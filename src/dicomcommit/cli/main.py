"""dicomcommit: many processes write DICOM files into one archive, and none is ever lost.

Exit codes: 0 done and nothing needs review; 1 a failure (nothing lost, the message says
what and where); 2 a usage error; 3 done, but conflicts or invalid files were recorded
(or, with --on-conflict error, a conflict stopped the commit; for recover: something
needs attention).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from dicomcommit._version import __version__
from dicomcommit.cli.demo import run_demo
from dicomcommit.cli.display import (
    PrintableFormatter,
    print_csv,
    print_recovery,
    print_shown,
    print_summary,
    print_table,
    printable,
)
from dicomcommit.cli.progress import progress_bar
from dicomcommit.cli.receive import add_receive_command, run_receive
from dicomcommit.cli.values import (
    add_manifest_option,
    add_store_options,
    archive_location,
    count,
    directory,
    port,
    seconds,
)
from dicomcommit.committing.driver import DEFAULT_BATCH, DEFAULT_SETTLE, ON_CONFLICT_CHOICES, Progress, commit
from dicomcommit.committing.ingest import ingest
from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.committing.recover import DEFAULT_PART_AGE, recover
from dicomcommit.committing.resolve import KEEP_CHOICES, resolve_many
from dicomcommit.errors import EXIT_ATTENTION, EXIT_OK, DicomCommitError, UsageError
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.copying import copy_manifest
from dicomcommit.manifests.records import STATUSES
from dicomcommit.naming import DEFAULT_TEMPLATE
from dicomcommit.review.report import write_report
from dicomcommit.review.serve import LOOPBACK, serve_review
from dicomcommit.review.show import show

log = logging.getLogger("dicomcommit")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dicomcommit`` command."""
    parser = _Parser(prog="dicomcommit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dicomcommit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_writing_commands(sub)
    add_receive_command(sub)
    _add_review_commands(sub)
    _add_upkeep_commands(sub)
    return parser


Subparsers = argparse._SubParsersAction  # argparse exposes no public name for it


def _add_writing_commands(sub: Subparsers[_Parser]) -> None:
    c = sub.add_parser("commit", help="commit staged files into the archive")
    c.add_argument("staging", type=Path, help="the staging directory")
    c.add_argument(
        "archive", type=archive_location, help="the archive root (created if missing), or s3://bucket/prefix"
    )
    c.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"final name over DICOM keywords [{DEFAULT_TEMPLATE}]")
    c.add_argument("--on-conflict", choices=ON_CONFLICT_CHOICES, default="record", help="what to do with a conflict")
    c.add_argument("--allow-collisions", action="store_true", help="accept a template without {SOPInstanceUID}")
    c.add_argument("--dry-run", action="store_true", help="report what would happen; change nothing")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.add_argument("--no-fsync", action="store_true", help="skip fsync (only for data you can regenerate)")
    c.add_argument(
        "--settle",
        type=seconds,
        default=DEFAULT_SETTLE,
        metavar="SECONDS",
        help="leave files no stager wrote for a later run until they are unmodified this long; 0 takes them "
        f"at once [{DEFAULT_SETTLE:g}]",
    )
    _add_lock_options(c)
    add_manifest_option(c)
    add_store_options(c, jobs=True)

    i = sub.add_parser("ingest", help="commit an existing tree of DICOM files (copy, or --move)")
    i.add_argument("source", type=Path, help="a tree of files: any names, nested, mixed with other files")
    i.add_argument(
        "archive", type=archive_location, help="the archive root (created if missing), or s3://bucket/prefix"
    )
    i.add_argument("--move", action="store_true", help="remove each source file once it is committed or recorded")
    i.add_argument("--template", default=DEFAULT_TEMPLATE, help=f"final name over DICOM keywords [{DEFAULT_TEMPLATE}]")
    i.add_argument("--on-conflict", choices=ON_CONFLICT_CHOICES, default="record", help="what to do with a conflict")
    i.add_argument("--allow-collisions", action="store_true", help="accept a template without {SOPInstanceUID}")
    i.add_argument("--jobs", type=count, default=1, metavar="N", help="header-reading processes, at most 1 per CPU [1]")
    i.add_argument("--dry-run", action="store_true", help="report what would happen; change nothing")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.add_argument("--no-fsync", action="store_true", help="skip fsync (only for data you can regenerate)")
    i.add_argument(
        "--settle",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help=f"leave files modified less than this ago for a later run [{DEFAULT_SETTLE:g} with --move, else 0]",
    )
    _add_lock_options(i)
    add_manifest_option(i)
    add_store_options(i, jobs=False)


def _add_lock_options(p: _Parser) -> None:
    """The options of commit and ingest that set how the archive lock is held."""
    p.add_argument("--lock-timeout", type=seconds, default=None, metavar="SECONDS", help="give up waiting for the lock")
    p.add_argument(
        "--batch-size",
        type=count,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"files per lock hold and manifest transaction [{DEFAULT_BATCH}]",
    )


def _add_review_commands(sub: Subparsers[_Parser]) -> None:
    r = sub.add_parser("review", help="list manifest rows (conflicts by default)")
    r.add_argument("archive", type=archive_location, help="the archive root, or s3://bucket/prefix")
    r.add_argument("--status", choices=(*STATUSES, "all"), default="conflict", help="which rows [conflict]")
    r.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format [table]")
    r.add_argument("--json", action="store_const", const="json", dest="format", help="the same as --format json")
    r.add_argument(
        "--serve",
        action="store_true",
        help="serve a page to decide the conflicts from, in a browser (its URL, with a token, is printed)",
    )
    r.add_argument("--host", default=LOOPBACK, help=f"with --serve: the address to listen on [{LOOPBACK}]")
    r.add_argument("--port", type=port, default=0, help="with --serve: the port [0: any free one]")
    add_manifest_option(r)
    add_store_options(r, jobs=False)

    s = sub.add_parser("show", help="one manifest row; for a conflict, both files side by side")
    s.add_argument("archive", type=archive_location, help="the archive root, or s3://bucket/prefix")
    s.add_argument("id", type=int, help="the row id (see review)")
    s.add_argument("--json", action="store_true", help="print JSON")
    add_manifest_option(s)
    add_store_options(s, jobs=False)

    rp = sub.add_parser("report", help="write a self-contained HTML page of every open conflict, images included")
    rp.add_argument("archive", type=archive_location, help="the archive root, or s3://bucket/prefix")
    rp.add_argument("-o", "--output", type=Path, required=True, help="the HTML file to write (replaced if it exists)")
    add_manifest_option(rp)
    add_store_options(rp, jobs=False)

    rs = sub.add_parser("resolve", help="decide a conflict: keep the existing file, the staged one, or both")
    rs.add_argument("archive", type=archive_location, help="the archive root, or s3://bucket/prefix")
    rs.add_argument("id", type=int, nargs="?", help="the conflict's row id (or --all)")
    rs.add_argument("--keep", choices=KEEP_CHOICES, required=True, help="which file to keep")
    rs.add_argument("--all", action="store_true", help="every open conflict (narrow with --run and --target)")
    rs.add_argument("--run", help="with --all: only conflicts of this commit run")
    rs.add_argument("--target", metavar="GLOB", help="with --all: only conflicts whose target matches (PAT01/*)")
    rs.add_argument("--json", action="store_true", help="print the updated rows as JSON")
    add_manifest_option(rs)
    add_store_options(rs, jobs=False)


def _add_upkeep_commands(sub: Subparsers[_Parser]) -> None:
    rc = sub.add_parser("recover", help="repair an archive (and its staging directory) after a crash")
    rc.add_argument("archive", type=archive_location, help="the archive root, or s3://bucket/prefix")
    rc.add_argument("staging", type=Path, nargs="?", help="the staging directory, to finish and tidy too")
    rc.add_argument("--check", action="store_true", help="only report (exit 3 when anything needs attention)")
    rc.add_argument("--json", action="store_true", help="print the report as JSON")
    rc.add_argument(
        "--part-age",
        type=seconds,
        default=DEFAULT_PART_AGE,
        metavar="SECONDS",
        help=f"set aside .part files older than this that no process has open [{DEFAULT_PART_AGE:g}]",
    )
    rc.add_argument(
        "--verify",
        action="store_true",
        help="also hash every recorded file against the manifest, and fill in missing hashes",
    )
    rc.add_argument(
        "--template",
        default=None,
        help="finish linked files under this template instead of the one their commit run recorded "
        f"(with --rebuild-manifest: names conflicts) [the run's; {DEFAULT_TEMPLATE}]",
    )
    rc.add_argument(
        "--rebuild-manifest",
        action="store_true",
        help="set a damaged manifest aside (kept) and rebuild its rows from the archive",
    )
    add_manifest_option(rc)
    add_store_options(rc, jobs=True)

    d = sub.add_parser("demo", help="stage synthetic datasets from several processes, then commit them")
    d.add_argument("--workers", type=count, default=4, help="stager processes [4]")
    d.add_argument("--files", type=count, default=250, help="datasets each worker stages [250]")
    d.add_argument("--staging", type=Path, default=Path("staging"), help="staging directory [staging]")
    d.add_argument("--archive", type=directory, default=Path("archive"), help="archive directory [archive]")
    add_manifest_option(d)

    m = sub.add_parser("manifest", help="manage a manifest")
    msub = m.add_subparsers(dest="manifest_command", required=True, parser_class=_Parser)
    mc = msub.add_parser("copy", help="copy a manifest into a new one (SQLite <-> PostgreSQL), verified row by row")
    mc.add_argument("source", metavar="FROM_URL", help="the manifest to copy: a path, sqlite:///path or postgresql://")
    mc.add_argument("dest", metavar="TO_URL", help="a new, empty manifest: a path, sqlite:///path or postgresql://")
    mc.add_argument("--json", action="store_true", help="print the result as JSON")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default ``sys.argv[1:]``) and return the exit code.

    Every failure dicomcommit raises on purpose becomes a one-line message and its exit
    code; anything else is a bug and keeps its traceback.
    """
    _configure_logging()
    # Scoped to this call: a program (or a test) that calls main() keeps its own warning setup.
    with warnings.catch_warnings():
        warnings.showwarning = _log_warning
        try:
            args = build_parser().parse_args(argv)
            handlers = {"commit": _commit, "ingest": _ingest, "review": _review, "show": _show, "resolve": _resolve,
                        "report": _report, "recover": _recover, "demo": _demo, "manifest": _manifest,
                        "receive": run_receive}  # fmt: skip
            return handlers[args.command](args)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else EXIT_OK
        except DicomCommitError as exc:
            print(f"dicomcommit: error: {printable(str(exc))}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("dicomcommit: interrupted; rerun the same command to finish (nothing was lost)", file=sys.stderr)
            return 130


class _StderrHandler(logging.Handler):
    """Writes to ``sys.stderr`` as it is at each record (a test, or a caller, may swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging's contract: a handler never raises into the code that logs
            self.handleError(record)


class _CliFormatter(PrintableFormatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return f"dicomcommit: {record.levelname.lower()}: {super().formatMessage(record)}"


def _configure_logging() -> None:
    """Print our logger's warnings, once each; nothing else prints (idempotent: main() may run often).

    The root logger is left alone: a handler there would print every library's records,
    pydicom's included, and pydicom logs each warning it also issues with ``warnings``.
    """
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_CliFormatter("%(message)s"))
        log.addHandler(handler)
    pydicom_log = logging.getLogger("pydicom")
    # Its copy of each warning (which we log with the file's name), and the tracebacks its
    # decoders log before raising (which we report in a line): not for a person to read.
    pydicom_log.propagate = False
    if not pydicom_log.handlers:
        pydicom_log.addHandler(logging.NullHandler())


def _log_warning(  # noqa: PLR0917 (the signature of warnings.showwarning)
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning`` for the CLI: a warning no code caught is one line of our log."""
    log.warning("%s", message)


def _demo(args: argparse.Namespace) -> int:
    return run_demo(args.staging, args.archive, workers=args.workers, files=args.files, out=sys.stdout,
                    manifest=args.manifest)  # fmt: skip


def _manifest(args: argparse.Namespace) -> int:
    copied = copy_manifest(args.source, args.dest)
    if args.json:
        json.dump(copied.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(printable(f"copied {copied.rows} rows and {copied.runs} runs from {copied.source} to {copied.dest}; "
                        "every row verified. The old manifest now refuses to be used, and names the new "
                        "one."))  # fmt: skip
    return EXIT_OK


def _commit(args: argparse.Namespace) -> int:
    with progress_bar("committing", sys.stderr, enabled=not args.json) as progress:
        report = _commit_with(args, progress)
    return _print_report(report, args)


def _commit_with(args: argparse.Namespace, progress: Progress | None) -> CommitReport:
    return commit(
        args.staging,
        args.archive,
        template=args.template,
        on_conflict=args.on_conflict,
        durable=not args.no_fsync,
        dry_run=args.dry_run,
        allow_collisions=args.allow_collisions,
        batch_size=args.batch_size,
        lock_timeout=args.lock_timeout,
        progress=progress,
        settle=args.settle,
        manifest=args.manifest,
        endpoint_url=args.endpoint_url,
        jobs=args.jobs,
    )


def _ingest(args: argparse.Namespace) -> int:
    with progress_bar("ingesting", sys.stderr, enabled=not args.json) as progress:
        report = _ingest_with(args, progress)
    return _print_report(report, args)


def _ingest_with(args: argparse.Namespace, progress: Progress | None) -> CommitReport:
    return ingest(
        args.source,
        args.archive,
        move=args.move,
        template=args.template,
        on_conflict=args.on_conflict,
        jobs=args.jobs,
        durable=not args.no_fsync,
        dry_run=args.dry_run,
        allow_collisions=args.allow_collisions,
        batch_size=args.batch_size,
        lock_timeout=args.lock_timeout,
        progress=progress,
        settle=args.settle,
        manifest=args.manifest,
        endpoint_url=args.endpoint_url,
    )


def _print_report(report: CommitReport, args: argparse.Namespace) -> int:
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print_summary(report, shlex.quote(str(args.archive)), sys.stdout, _reaching(args))
    return EXIT_ATTENTION if report.needs_review else EXIT_OK


def _reaching(args: argparse.Namespace) -> str:
    """The options the next command needs to reach the same archive: this one's --manifest and --endpoint-url."""
    words = []
    if args.manifest is not None:
        words += ["--manifest", args.manifest]
    if getattr(args, "endpoint_url", None) is not None:
        words += ["--endpoint-url", args.endpoint_url]
    return "".join(f" {shlex.quote(word)}" for word in words)


def _recover(args: argparse.Namespace) -> int:
    report = recover(args.archive, args.staging, check=args.check, part_age=args.part_age, verify=args.verify,
                     template=args.template, rebuild_manifest=args.rebuild_manifest,
                     manifest=args.manifest, endpoint_url=args.endpoint_url, jobs=args.jobs)  # fmt: skip
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print_recovery(report, sys.stdout)
    return EXIT_ATTENTION if report.needs_attention else EXIT_OK


def _review(args: argparse.Namespace) -> int:
    if args.serve:
        serve_review(args.archive, host=args.host, port=args.port, manifest=args.manifest,
                     endpoint_url=args.endpoint_url, out=sys.stdout)  # fmt: skip
        return EXIT_OK
    if args.host != LOOPBACK or args.port != 0:
        raise UsageError("--host and --port go with --serve")
    with open_manifest(args.archive, manifest=args.manifest) as manifest:
        records = manifest.records(None if args.status == "all" else args.status)
    if args.format == "json":
        json.dump([r.to_dict() for r in records], sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        print_csv(records, sys.stdout)
    else:
        print_table(records, sys.stdout)
    return EXIT_OK


def _show(args: argparse.Namespace) -> int:
    shown = show(args.archive, args.id, manifest=args.manifest, endpoint_url=args.endpoint_url)
    if args.json:
        json.dump(shown.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print_shown(shown, shlex.quote(str(args.archive)), sys.stdout, _reaching(args))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    listed = write_report(args.archive, args.output, manifest=args.manifest, endpoint_url=args.endpoint_url)
    print(printable(f"{listed} open conflicts written to {args.output}"))
    return EXIT_OK


def _resolve(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.all):
        raise UsageError("give either a row id or --all")
    if not args.all and (args.run or args.target):
        raise UsageError("--run and --target go with --all")
    ids = None if args.all else [args.id]
    records = resolve_many(args.archive, args.keep, ids=ids, run=args.run, target=args.target, manifest=args.manifest,
                           endpoint_url=args.endpoint_url)  # fmt: skip
    if args.json:
        json.dump([r.to_dict() for r in records], sys.stdout, indent=2)
        print()
    else:
        for r in records:
            print(printable(f"#{r.id}: {r.resolution} kept by {r.resolved_by}; now {r.status} at {r.path}"))
        if not records:
            print("no open conflict matched")
    return EXIT_OK
