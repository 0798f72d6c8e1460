"""Printing reports and manifest rows for people."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from dicomcommit.committing import CommitReport
from dicomcommit.manifest import Record
from dicomcommit.recovery import RecoverReport


def print_summary(report: CommitReport, archive: Path, out: TextIO) -> None:
    """Print the counts of *report*, and what to do next."""
    verb = "would be" if report.dry_run else "were"
    print(f"run {report.run}{' (dry run: nothing changed)' if report.dry_run else ''}", file=out)
    for label, value in report.counts().items():
        print(f"  {label:<11} {value:>7}", file=out)
    for name, reason in report.left_in_place[:20]:
        print(f"  left in place: {name} ({reason})", file=out)
    if len(report.left_in_place) > 20:
        print(f"  ... and {len(report.left_in_place) - 20} more left in place (--json lists all)", file=out)
    if report.needs_review:
        print(f"{report.conflicts} conflicts and {report.invalid} invalid files {verb} recorded; "
              f"see: dicomcommit review {archive} --status conflict|invalid", file=out)  # fmt: skip


def print_table(records: list[Record], out: TextIO) -> None:
    """Print *records* as an aligned table, long values shortened in the middle."""
    if not records:
        print("no rows", file=out)
        return
    header = ("ID", "STATUS", "TARGET", "PATH", "SHA256", "DETAIL")
    rows = [
        (str(r.id), r.status, _short(r.target or "-", 60), _short(r.path, 48), r.sha256[:12], _short(r.detail, 60))
        for r in records
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _short(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return f"{text[:half]}…{text[-(width - 1 - half) :]}"


def print_recovery(report: RecoverReport, out: TextIO) -> None:
    """Print what recover found or did; missing and mismatched bytes first and loudly."""
    for label, items in (("MISSING", report.missing), ("MISMATCHED", report.mismatched)):
        for item in items:
            print(f"{label}: {item}", file=out)
    verb = "would be" if report.check else "were"
    lines = (
        (report.finished, f"staged files already linked to their target {verb} finished as committed"),
        (report.parts_moved, f"abandoned .part files {verb} set aside as invalid"),
        (report.parts_left, ".part files are young or still open: left alone"),
        (report.tmp_removed, f"leftover temp copies {verb} removed"),
        (report.rows_added, f"archive files with no manifest row {verb} recorded"),
    )
    for items, text in lines:
        if items:
            print(f"{len(items):>7} {text}", file=out)
    if not report.needs_attention and not any(items for items, _ in lines):
        print("consistent: nothing to recover", file=out)
