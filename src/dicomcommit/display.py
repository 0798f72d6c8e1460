"""Printing reports and manifest rows for people."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TextIO

from dicomcommit.committing import CommitReport
from dicomcommit.manifest import Record
from dicomcommit.recovery import RecoverReport
from dicomcommit.review import Shown


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
        (
            str(r.id),
            r.status,
            _short(r.target or "-", 60),
            _short(r.path, 48),
            (r.sha256 or "-")[:12],
            _short(r.detail, 60),
        )
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
        (report.hashed, f"rows with no hash yet {verb} given the hash of their bytes"),
    )
    for items, text in lines:
        if items:
            print(f"{len(items):>7} {text}", file=out)
    if not report.needs_attention and not any(items for items, _ in lines):
        print("consistent: nothing to recover", file=out)


CSV_COLUMNS = ("id", "status", "target", "path", "source", "size", "sha256", "existing_sha256", "run", "time",
               "detail", "resolution", "resolved_by", "resolved_at")  # fmt: skip


def print_csv(records: list[Record], out: TextIO) -> None:
    """Print *records* as CSV with a header row (attributes left out: they are JSON)."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for record in records:
        row = record.to_dict()
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])


def print_shown(shown: Shown, archive: Path, out: TextIO) -> None:
    """Print a row; for a conflict, both files side by side and what differs."""
    r = shown.record
    print(f"#{r.id} {r.status}: {r.target or '-'}", file=out)
    print(f"  bytes at {r.path} ({r.size} bytes, sha256 {r.sha256 or 'not computed yet'})", file=out)
    print(f"  staged as {r.source} in run {r.run} at {r.time}", file=out)
    if r.detail:
        print(f"  {r.detail}", file=out)
    if r.resolution:
        print(f"  resolved ({r.resolution}) by {r.resolved_by} at {r.resolved_at}", file=out)
    if shown.existing is None or shown.staged is None or shown.diff is None:
        return
    width = 40
    print(f"\n  {'':<28} {'existing (committed)':<{width}} staged (conflict)", file=out)
    for label, a, b in (
        ("file", shown.existing.path, shown.staged.path),
        ("size", str(shown.existing.size), str(shown.staged.size)),
        ("sha256", str(shown.existing.sha256)[:32], str(shown.staged.sha256)[:32]),
    ):
        print(f"  {label:<28} {_clip(a, width):<{width}} {b}", file=out)
    if shown.diff.error:
        print(f"  {shown.diff.error}", file=out)
    for e in shown.diff.elements:
        print(f"  {e.tag} {e.keyword[:16]:<16} {_clip(e.existing, width):<{width}} {e.staged}", file=out)
    pixels = {None: "no pixel data", True: "pixel data DIFFERS", False: "pixel data identical"}[
        shown.diff.pixels_differ
    ]
    print(f"  {pixels}", file=out)
    print(f"\n  resolve with: dicomcommit resolve {archive} {r.id} --keep existing|staged|both", file=out)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else f"{text[: width - 1]}…"
