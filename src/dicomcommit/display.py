"""Printing reports and manifest rows for people."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from dicomcommit.committing import CommitReport
from dicomcommit.manifest import Record


def print_summary(report: CommitReport, archive: Path, out: TextIO) -> None:
    """Print the counts of *report*, and what to do next."""
    verb = "would be" if report.dry_run else "were"
    print(f"run {report.run}{' (dry run: nothing changed)' if report.dry_run else ''}", file=out)
    for label, value in report.counts().items():
        print(f"  {label:<11} {value:>7}", file=out)
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
