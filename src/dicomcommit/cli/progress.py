"""A progress bar for commit and ingest: per file, with the rate and the time left.

Drawn only on a terminal. Anywhere else (a pipe, a log file, a cron mail) nothing is
drawn: a bar is carriage returns and cursor controls, which a file keeps as garbage, and
the summary printed at the end says what was done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TextIO

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from dicomcommit.cli.display import is_terminal, rich_console
from dicomcommit.committing.driver import Progress as ProgressCallback


class _RateColumn(ProgressColumn):
    """Files per second, over rich's window of recent updates."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("? files/s" if speed is None else f"{speed:,.0f} files/s", style="progress.data.speed")


def _columns(verb: str, width: int) -> list[ProgressColumn]:
    """What the bar shows: as much as fits on one line of a terminal *width* wide (a bar
    that wrapped onto a second line would leave a copy of itself at each redraw)."""
    room = width - len(verb) - 22  # the counts ("1000000/1000000 100%") and the spaces around them
    # The parts beyond the counts, most wanted first, with the room each takes (a space included).
    wanted = {"rate": 18, "ETA": 12, "elapsed": 16}
    shown = set()
    for part, needs in wanted.items():
        if room - needs >= 10:  # and a bar of 10 at the least
            shown.add(part)
            room -= needs
    columns: list[ProgressColumn] = [TextColumn(verb, markup=False), BarColumn(bar_width=max(5, min(40, room - 1))),
                                     MofNCompleteColumn(), TaskProgressColumn()]  # fmt: skip
    if "rate" in shown:
        columns.append(_RateColumn())
    if "elapsed" in shown:
        columns += [TextColumn("elapsed"), TimeElapsedColumn()]
    if "ETA" in shown:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return columns


@contextlib.contextmanager
def progress_bar(verb: str, out: TextIO, *, enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """While the block runs, a ``progress(done, total)`` callback drawing a bar on *out*.

    The callback only records the counts (it is called once per file, under the archive's
    lock); rich redraws the bar from a thread of its own, ten times a second. Until the
    first call the bar pulses: the staging directory is being scanned. Log lines written
    to ``sys.stderr`` meanwhile appear above the bar. Yields None (and draws nothing) when
    not *enabled* or when *out* is not a terminal.
    """
    if not enabled or not is_terminal(out):
        yield None
        return
    # What the bar shows is counts and a fixed verb: nothing from outside. A logged line,
    # which rich prints above the bar, is read without markup (see rich_console), and left
    # for the terminal to wrap: a path in it stays one line to copy.
    console = rich_console(out, soft_wrap=True)
    bar = Progress(*_columns(verb, console.width), console=console,
                   redirect_stdout=False)  # (stdout may be a file: only our own stderr goes above the bar)  # fmt: skip
    task = bar.add_task(verb, total=None)

    def advance(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield advance
