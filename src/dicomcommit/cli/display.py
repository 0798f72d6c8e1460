"""Printing reports and manifest rows for people.

Every value printed here goes through :func:`printable` first: header values and file
names are data from outside, and a terminal obeys the control sequences in them. Tables
are as wide as the output (a terminal's width, COLUMNS, or no limit in a pipe); a value
too long for its column wraps, laid out by rich, which is given only Text, never markup.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TextIO, TypeAlias

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

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
    """Print *records* as a table no wider than the output (see :func:`_width`).

    Long values wrap, and fold where they have no space, but are never cut: every target,
    path and UID can be read whole. A detail that every row shares is printed once, under
    the table, rather than in a column repeating it.
    """
    if not records:
        _say("no rows", out)
        return
    details = {r.detail for r in records}
    shared = details.pop() if len(details) == 1 else None
    headers = ["ID", "STATUS", "TARGET", "PATH", "SOURCE", "SHA256", *(["DETAIL"] if shared is None else [])]
    rows = ([str(r.id), r.status, r.target or "-", r.path, r.source, (r.sha256 or "-")[:12], r.detail][: len(headers)]
            for r in records)  # fmt: skip
    _print_columns(headers, rows, out, keep={0, 1, 5}, right={0})
    if shared:
        _say(f"DETAIL{' (every row)' if len(records) > 1 else ''}: {shared}", out)


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
    """Print a row; for a conflict, both files side by side and what differs (*options*: as for print_summary).

    Keywords, paths and values are printed whole: in a narrow table they wrap.
    """
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
    print(file=out)
    rows = [
        ["file", shown.existing.path, shown.staged.path],
        ["size", str(shown.existing.size), str(shown.staged.size)],
        ["sha256", str(shown.existing.sha256), str(shown.staged.sha256)],
        *([f"{e.tag} {e.keyword}", e.existing, e.staged] for e in shown.diff.elements),
    ]
    _print_columns(["", "existing (committed)", "staged (conflict)"], rows, out, indent=2)
    if shown.diff.error:
        _say(f"  {shown.diff.error}", out)
    pixels = shown.diff.pixels
    if shown.diff.pixels_differ:
        pixels = pixels.replace("differs", "DIFFERS", 1)
    _say(f"  {pixels}", out)
    print(file=out)
    _say(f"  resolve with: dicomcommit resolve {archive} {r.id} --keep existing|staged|both{options}", out)


# --- tables ------------------------------------------------------------------------------------

# A table is as wide as COLUMNS, when it is set: what the user asked for, terminal or not.
# Else a terminal's own width, so that no line of it wraps there. Else (a pipe, a file, a
# test's capture) no limit: each row stays on one line, whole, for grep and for scripts
# (rich itself would pick 80, or the width of whatever terminal stdin happens to be).
_UNLIMITED = sys.maxsize
_GAP = 2  # spaces between columns
_NARROWEST = 8  # a column is narrowed below this (or a kept one at all) only when no other can give way


def _width(out: TextIO) -> int:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if not is_terminal(out):
        return _UNLIMITED
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (OSError, ValueError):  # a terminal that reports no size (a serial line, a bare pty)
        return 80


def is_terminal(out: TextIO) -> bool:
    """Whether *out* is a terminal (False for a closed or detached stream)."""
    try:
        return out.isatty()
    except (OSError, ValueError):
        return False


def rich_console(out: TextIO, width: int | None = None, *, soft_wrap: bool = False) -> Console:
    """A console writing to *out* that interprets nothing it is given.

    No markup, emoji codes or highlighting: what is printed is data from outside, and
    ``[bold]`` in a file name is a file name. Colours and cursor control only on a
    terminal; a pipe or a file gets plain text. With *soft_wrap*, text it prints is not
    wrapped (tables still are).
    """
    terminal = is_terminal(out)
    return Console(file=out, width=width, force_terminal=terminal, color_system="auto" if terminal else None,
                   markup=False, emoji=False, highlight=False, force_jupyter=False, soft_wrap=soft_wrap)  # fmt: skip


def _print_columns(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    out: TextIO,
    *,
    keep: Collection[int] = (),
    right: Collection[int] = (),
    indent: int = 0,
) -> None:
    """Print *rows* under *headers*, every value escaped, in columns no wider in all than the
    output (:func:`_width`), *indent* spaces in, the columns in *right* justified right.

    A column is as wide as its widest value. When they are too wide together, the widest
    give way first (those in *keep* only when no other can), and the values that no longer
    fit wrap, folded where they have no space: never cut. A row that wraps is laid out by
    rich (a table of one row, at the same column widths, so that the rows line up); a row
    that fits is written directly, as rich would, a hundred times faster: a review of a
    million rows into a pipe takes seconds. No colours: a table is plain text anywhere.
    """
    cells = [[printable(value) for value in row] for row in (headers, *rows)]
    natural = [max(cell_len(row[column]) for row in cells) for column in range(len(headers))]
    room = _width(out) - indent - _GAP * (len(headers) - 1)
    widths = _fit(natural, set(keep), room)
    margin = " " * indent
    console = rich_console(io.StringIO(), sum(widths) + _GAP * (len(widths) - 1))
    for row in cells:
        if all(cell_len(cell) <= width for cell, width in zip(row, widths, strict=True)):
            line = (" " * _GAP).join(_pad(cell, width, column in right) for column, (cell, width) in
                                     enumerate(zip(row, widths, strict=True)))  # fmt: skip
            print(f"{margin}{line}".rstrip(), file=out)
            continue
        table = Table(box=None, pad_edge=False, padding=(0, _GAP // 2), show_header=False, highlight=False)
        for column, width in enumerate(widths):
            table.add_column(width=width, overflow="fold", justify="right" if column in right else "left")
        table.add_row(*map(Text, row))  # Text, not a str: rich reads no markup in it
        with console.capture() as captured:
            console.print(table)
        for line in captured.get().splitlines():
            print(f"{margin}{line}".rstrip(), file=out)


def _pad(cell: str, width: int, right: bool) -> str:
    padding = " " * (width - cell_len(cell))
    return padding + cell if right else cell + padding


def _fit(natural: list[int], keep: set[int], room: int) -> list[int]:
    """Column widths, from their *natural* ones, that add up to *room* at most (if they can):
    the widest column gives way, a character at a time, down to :data:`_NARROWEST`; a column
    in *keep*, or any below that, only when no other can any more (then down to 1)."""
    widths = list(natural)
    floors = ([natural[i] if i in keep else min(natural[i], _NARROWEST) for i in range(len(natural))],
              [1] * len(natural))  # fmt: skip
    for floor in floors:
        while sum(widths) > room:
            able = [i for i, width in enumerate(widths) if width > floor[i]]
            if not able:
                break
            widths[max(able, key=widths.__getitem__)] -= 1
    return widths
