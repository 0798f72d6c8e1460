"""Printing reports and manifest rows for people.

Every value printed here goes through :func:`printable` first: header values and file
names are data from outside, and a terminal obeys the control sequences in them.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from types import TracebackType
from typing import TextIO, TypeAlias

from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.committing.recover import RecoverReport
from dicomcommit.manifests.records import Record, Status
from dicomcommit.review.show import Shown

_SURROGATE_BYTES = range(0xDC80, 0xDD00)  # os.fsdecode's stand-ins for the bytes 0x80-0xFF
_ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def printable(text: str) -> str:
    """*text* safe to write to a terminal, with every character that is not printable escaped.

    C0 and C1 controls and DEL become ``\\x1b``-style escapes; the lone surrogates that
    ``os.fsdecode`` (surrogateescape) makes of bytes that are not UTF-8 become ``\\x`` and
    that byte (``caf\\xe9.dcm``), so such names can also be encoded for output; any other
    character that is not printable (format characters such as U+202E, separators other
    than the space) becomes ``\\uXXXX``. Backslashes are left alone: DICOM multi-values
    and many names use them, and the escapes need only be safe, not reversible (``--json``
    is the lossless output).
    """
    if text.isprintable():  # nearly always: one C-speed pass, no copy
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return f"\\x{code:02x}"
    if code in _SURROGATE_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class PrintableFormatter(logging.Formatter):
    """A log formatter whose messages (and tracebacks, line by line) pass through :func:`printable`.

    A log message quotes file names and header values; escaping the whole message also
    keeps a newline in a value from forging a log line of its own.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return printable(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:  # noqa: N802 (logging's name)
        return _lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 (logging's name)
        return _lines(super().formatStack(stack_info))


def _lines(text: str) -> str:
    return "\n".join(printable(line) for line in text.split("\n"))


def _say(line: str, out: TextIO) -> None:
    """Print one line; every line printed here goes through this, so none can carry a control."""
    print(printable(line), file=out)


def print_summary(report: CommitReport, archive: str | Path, out: TextIO, options: str = "") -> None:
    """Print the counts of *report*, and what to do next (*options*: those the next command needs too)."""
    verb = "would be" if report.dry_run else "were"
    _say(f"run {report.run}{' (dry run: nothing changed)' if report.dry_run else ''}", out)
    for label, value in report.counts().items():
        _say(f"  {label:<11} {value:>7}", out)
    for name, reason in report.left_in_place[:20]:
        _say(f"  left in place: {name} ({reason})", out)
    if len(report.left_in_place) > 20:
        _say(f"  ... and {len(report.left_in_place) - 20} more left in place (--json lists all)", out)
    if report.claimed_elsewhere:
        _say(f"  {report.claimed_elsewhere} files were claimed by other committers, which commit them (if one died, "
             "a rerun does once its lease has expired)", out)  # fmt: skip
    if report.needs_review:
        _say(f"{report.conflicts} conflicts and {report.invalid} invalid files {verb} recorded; "
             f"see: dicomcommit review {archive} --status conflict|invalid{options}", out)  # fmt: skip


def print_table(records: list[Record], out: TextIO) -> None:
    """Print *records* as an aligned table, long values shortened in the middle."""
    if not records:
        _say("no rows", out)
        return
    header = ("ID", "STATUS", "TARGET", "PATH", "SHA256", "DETAIL")
    # Escaped before measuring, so that the columns line up with what is printed.
    rows = [
        (
            str(r.id),
            printable(r.status),
            _short(printable(r.target or "-"), 60),
            _short(printable(r.path), 48),
            printable((r.sha256 or "-")[:12]),
            _short(printable(r.detail), 60),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        _say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), out)


def _short(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[:half]}…{text[-(width - 1 - half) :]}"


def print_recovery(report: RecoverReport, out: TextIO) -> None:
    """Print what recover found or did; missing and mismatched bytes first and loudly."""
    for label, items in (("MISSING", report.missing), ("MISMATCHED", report.mismatched)):
        for item in items:
            _say(f"{label}: {item}", out)
    if report.set_aside:
        _say(f"the damaged manifest was kept as {report.set_aside}; a new one was rebuilt from the archive", out)
    verb = "would be" if report.check else "were"
    lines = (
        (report.finished, f"staged files already linked to their target {verb} finished as committed"),
        (report.parts_moved, f"abandoned .part files {verb} set aside as invalid"),
        (report.parts_left, ".part files are young or still open: left alone"),
        (report.tmp_removed, f"leftover temp copies {verb} removed"),
        (report.rows_added, f"archive files with no manifest row {verb} recorded"),
        (report.hashed, f"rows with no hash yet {verb} given the hash of their bytes"),
        (report.resolves_finished, f"decisions an interrupted resolve carried out {verb} recorded"),
    )
    for items, text in lines:
        if items:
            _say(f"{len(items):>7} {text}", out)
    if not report.needs_attention and not any(items for items, _ in lines):
        _say("consistent: nothing to recover", out)


CSV_COLUMNS = ("id", "status", "target", "path", "source", "size", "sha256", "existing_sha256", "run", "time",
               "detail", "resolution", "resolved_by", "resolved_at", "host")  # fmt: skip


def print_csv(records: list[Record], out: TextIO) -> None:
    """Print *records* as CSV with a header row (attributes left out: they are JSON).

    Text cells are escaped as :func:`printable` does (CSV goes to terminals too, and a name
    that is not UTF-8 could not be written otherwise); ``--json`` keeps every value exactly.
    """
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for record in records:
        row = record.to_dict()
        writer.writerow(["" if row[c] is None else _cell(row[c]) for c in CSV_COLUMNS])


def _cell(value: object) -> object:
    return printable(value) if isinstance(value, str) else value


def print_shown(shown: Shown, archive: str | Path, out: TextIO, options: str = "") -> None:
    """Print a row; for a conflict, both files side by side and what differs (*options*: as for print_summary)."""
    r = shown.record
    _say(f"#{r.id} {r.status}: {r.target or '-'}", out)
    _say(f"  bytes at {r.path} ({r.size} bytes, sha256 {r.sha256 or 'not computed yet'})", out)
    _say(f"  staged as {r.source} in run {r.run} at {r.time}", out)
    if r.detail:
        _say(f"  {r.detail}", out)
    if r.resolution and r.status is Status.CONFLICT:  # decided, then interrupted
        _say(f"  decided (--keep {r.resolution}) by {r.resolved_by} at {r.resolved_at}, not carried out yet: "
             "rerun that resolve, or recover", out)  # fmt: skip
    elif r.resolution:
        _say(f"  resolved ({r.resolution}) by {r.resolved_by} at {r.resolved_at}", out)
    if shown.existing is None or shown.staged is None or shown.diff is None:
        return
    width = 40
    print(file=out)
    _say(f"  {'':<28} {'existing (committed)':<{width}} staged (conflict)", out)
    for label, a, b in (
        ("file", shown.existing.path, shown.staged.path),
        ("size", str(shown.existing.size), str(shown.staged.size)),
        ("sha256", str(shown.existing.sha256)[:32], str(shown.staged.sha256)[:32]),
    ):
        _say(f"  {label:<28} {_clip(a, width):<{width}} {b}", out)
    if shown.diff.error:
        _say(f"  {shown.diff.error}", out)
    for e in shown.diff.elements:
        _say(f"  {e.tag} {printable(e.keyword)[:16]:<16} {_clip(e.existing, width):<{width}} {e.staged}", out)
    pixels = shown.diff.pixels
    if shown.diff.pixels_differ:
        pixels = pixels.replace("differs", "DIFFERS", 1)
    _say(f"  {printable(pixels)}", out)
    print(file=out)
    _say(f"  resolve with: dicomcommit resolve {archive} {r.id} --keep existing|staged|both{options}", out)


def _clip(text: str, width: int) -> str:
    """*text* escaped, then cut to *width* (escaped first, so the column lines up)."""
    text = printable(text)
    return text if len(text) <= width else f"{text[: width - 1]}…"
