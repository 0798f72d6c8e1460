"""What review and show print for people, and the progress of commit and ingest: tables as wide
as the output, values whole, nothing read as markup or as a control, a bar per file on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from rich.cells import cell_len

from dicomcommit import Manifest, Stager, commit, ingest
from dicomcommit.cli.display import print_table
from dicomcommit.cli.main import main
from dicomcommit.manifests.records import Record, Status
from tests.conftest import write_foreign, write_settled

MakeDs = Callable[..., Dataset]
# No colour or terminal forced from outside, and no width: each test says what it wants.
ENV = {k: v for k, v in os.environ.items() if k not in {"COLUMNS", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"}}
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def archive(dirs: tuple[Path, Path], make_ds: MakeDs) -> Path:
    """Two conflicts (their details differ: each names its own hash), two committed files, and
    two invalid ones (whose details are the same)."""
    staging, archive = dirs
    stager = Stager(staging)
    for index, variant in ((1, 0), (1, 1), (2, 0), (2, 1)):
        stager.stage(make_ds(index, variant))
    write_settled(staging / "junk.txt", "junk")
    write_settled(staging / "more-junk.bin", b"\x00" * 300)
    report = commit(staging, archive, durable=False)
    assert (report.committed, report.conflicts, report.invalid) == (2, 2, 2)
    return archive


@pytest.fixture(autouse=True)
def _no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)


def _records(archive: Path, status: str | None = None) -> list[Record]:
    with Manifest(archive) as manifest:
        return manifest.records(status)


def _review(archive: Path, capsys: pytest.CaptureFixture[str], *options: str) -> list[str]:
    assert main(["review", str(archive), *options]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.splitlines()


def _cells(lines: list[str], header: str, after: str | None) -> list[str]:
    """The whole value of one column in each row of a printed table (*lines*, its header first):
    the text under *header*, up to the column *after* it, joined over the lines of the row."""
    start = lines[0].index(header)
    end = lines[0].index(after) if after is not None else None
    rows: list[str] = []
    for line in lines[1:]:
        if line.startswith("DETAIL"):  # the detail every row shares, under the table
            break
        if line[: lines[0].index("ID") + 2].strip():  # a row starts where its ID is
            rows.append("")
        rows[-1] += line[start:end].strip()
    return rows


def test_review_has_a_source_column(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = _review(archive, capsys, "--status", "all")
    assert lines[0].split()[:6] == ["ID", "STATUS", "TARGET", "PATH", "SOURCE", "SHA256"]
    assert _cells(lines, "SOURCE", "SHA256") == [r.source for r in _records(archive)]


def test_review_prints_targets_and_uids_whole(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Never shortened in the middle: the SOP Instance UID at the end of a target stays readable."""
    lines = _review(archive, capsys, "--status", "all")
    records = _records(archive)
    assert _cells(lines, "TARGET", "PATH") == [r.target or "-" for r in records]
    assert _cells(lines, "PATH", "SOURCE") == [r.path for r in records]
    assert len(lines) == 1 + len(records)  # not a terminal, no COLUMNS: a row is a line, for grep


def test_review_fits_the_width_it_is_given(
    archive: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    lines = _review(archive, capsys, "--status", "all")
    assert max(map(len, lines)) <= 80
    records = _records(archive)
    assert len(lines) > 1 + len(records)  # folded
    assert _cells(lines, "TARGET", "PATH") == [r.target or "-" for r in records]  # and whole, joined again
    assert _cells(lines, "PATH", "SOURCE") == [r.path for r in records]
    assert _cells(lines, "SOURCE", "SHA256") == [r.source for r in records]


def test_a_detail_every_row_shares_is_printed_once(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [detail] = {r.detail for r in _records(archive, "invalid")}
    lines = _review(archive, capsys, "--status", "invalid")
    assert "DETAIL" not in lines[0]
    assert lines[-1] == f"DETAIL (every row): {detail}"
    assert sum(detail in line for line in lines) == 1
    # Conflicts' details differ (each names the hash it conflicts with): a column of them.
    lines = _review(archive, capsys)
    assert lines[0].split()[-1] == "DETAIL"
    conflicts = _records(archive, "conflict")
    assert len({r.detail for r in conflicts}) == 2
    assert all(any(line.endswith(r.detail) for line in lines) for r in conflicts)


def test_show_prints_keywords_and_paths_whole(
    archive: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    [conflict, _] = _records(archive, "conflict")
    existing = str(archive / (conflict.target or ""))
    assert len(existing) > 40
    assert main(["show", str(archive), str(conflict.id)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  \(0008,103E\) SeriesDescription +original +reprocessed$", out, re.M)  # 17 characters
    assert re.search(rf"^  file +{re.escape(existing)} +{re.escape(str(archive / conflict.path))}$", out, re.M)
    assert str(archive / conflict.path) in out
    assert conflict.sha256 is not None
    assert conflict.sha256 in out  # the hash whole, too

    monkeypatch.setenv("COLUMNS", "60")
    assert main(["show", str(archive), str(conflict.id)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index("") + 1 : next(i for i, line in enumerate(lines) if "pixel data" in line)]
    assert max(map(len, table)) <= 60
    heading = next(line for line in table if "staged" in line)  # (the headings wrap too)
    start, end = table[0].index("existing"), heading.index("staged")
    rows = [line[:start].strip() for line in table]
    file_rows = table[rows.index("file") : rows.index("size")]
    assert "".join(line[start:end].strip() for line in file_rows) == existing
    assert "".join(line[end:].strip() for line in file_rows) == str(archive / conflict.path)
    assert any(line.strip() == "SeriesDescription" for line in table)  # wrapped onto a line of its own


@pytest.fixture
def hostile(tmp_path: Path, make_ds: MakeDs) -> tuple[Path, int, str]:
    """A conflict whose file name and header value are rich markup (and an escape sequence)."""
    archive, first, second = tmp_path / "archive", tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write_foreign(first / "IM1", make_ds(1))
    ds = make_ds(1, 1)
    ds.StudyDescription = "[blink]b[/blink] :smile:"
    name = "[bold red]x[link=https:evil.example]y:smile:\x1b[2J.dcm"  # (a name has no closing tag: no /)
    write_foreign(second / name, ds)
    assert ingest(first, archive).committed == 1
    assert ingest(second, archive).conflicts == 1
    [row] = _records(archive, "conflict")
    return archive, row.id, row.source


def test_values_are_never_read_as_markup(hostile: tuple[Path, int, str], capsys: pytest.CaptureFixture[str]) -> None:
    archive, row_id, source = hostile
    shown = source.replace("\x1b", "\\x1b")
    lines = _review(archive, capsys)
    assert _cells(lines, "SOURCE", "SHA256") == [shown]
    assert main(["show", str(archive), str(row_id)]) == 0
    out = capsys.readouterr().out
    assert shown in out
    assert "[blink]b[/blink] :smile:" in out
    assert "\x1b" not in out
    assert "😄" not in out


def _dicomcommit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomcommit", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)  # fmt: skip


def test_no_escape_sequence_or_carriage_return_goes_into_a_pipe(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    """Even with rich's own variables set to force a terminal and colours."""
    staging, archive = dirs
    stager = Stager(staging)
    for index, variant in ((1, 0), (1, 1), (2, 0)):
        stager.stage(make_ds(index, variant))
    env = {**ENV, "FORCE_COLOR": "1", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}
    runs = [_dicomcommit("commit", str(staging), str(archive), "--no-fsync", env=env)]
    [conflict] = _records(archive, "conflict")
    runs += [_dicomcommit("review", str(archive), "--status", "all", env=env),
             _dicomcommit("show", str(archive), str(conflict.id), env=env)]  # fmt: skip
    for done in runs:
        assert done.returncode in {0, 3}, done.stderr
        assert done.stdout
        assert "\x1b" not in done.stdout + done.stderr
        assert "\r" not in done.stdout + done.stderr


def _on_a_terminal(argv: list[str], stream: str, columns: int) -> tuple[str, str]:
    """Run dicomcommit with *stream* (stdout or stderr) on a pseudo-terminal *columns* wide,
    the other one a pipe; returns what each got (the terminal's without its escapes)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    out, err = (slave, subprocess.PIPE) if stream == "stdout" else (subprocess.PIPE, slave)
    env = {**ENV, "TERM": "xterm-256color"}
    with subprocess.Popen([sys.executable, "-m", "dicomcommit", *argv], stdin=subprocess.DEVNULL, stdout=out,
                          stderr=err, env=env) as proc:  # fmt: skip
        os.close(slave)
        chunks, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the process closed its end
                    break
                if not data:
                    break
                chunks.append(data)
        os.close(master)
        pipe = proc.stderr if stream == "stdout" else proc.stdout
        assert pipe is not None
        piped = pipe.read().decode()
        assert proc.wait(timeout=60) in {0, 3}
    terminal = b"".join(chunks).decode().replace("\r\n", "\n")
    return _ANSI.sub("", terminal), piped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pseudo-terminal")
@pytest.mark.parametrize(("columns", "parts"), [(100, ["files/s", "elapsed", "ETA"]), (40, [])])
def test_a_terminal_gets_a_bar_with_the_rate_and_time_left(
    dirs: tuple[Path, Path], make_ds: MakeDs, columns: int, parts: list[str]
) -> None:
    """On a narrow terminal, only what fits on one line (a bar that wraps leaves copies of itself)."""
    staging, archive = dirs
    stager = Stager(staging)
    for index in range(5):
        stager.stage(make_ds(index))
    argv = ["commit", str(staging), str(archive), "--batch-size", "2"]
    drawn, out = _on_a_terminal(argv, "stderr", columns)
    frames = drawn.replace("\n", "\r").split("\r")
    assert max(map(len, frames)) <= columns
    last = drawn.rstrip("\n").split("\r")[-1]
    assert last.startswith("committing ")
    assert "5/5 100%" in last
    assert all(part in last for part in parts)
    assert re.search(r"^  committed +5$", out, re.M)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux pseudo-terminal")
def test_a_terminal_gets_a_table_as_wide_as_it_is(archive: Path) -> None:
    drawn, _ = _on_a_terminal(["review", str(archive), "--status", "all"], "stdout", 100)
    lines = drawn.splitlines()
    assert max(map(len, lines)) <= 100
    assert _cells(lines, "TARGET", "PATH") == [r.target or "-" for r in _records(archive)]


@pytest.mark.parametrize("command", ["commit", "ingest"])
def test_progress_is_reported_per_file(dirs: tuple[Path, Path], make_ds: MakeDs, command: str) -> None:
    """Five files in batches of two: the callback sees each one decided, not each batch."""
    staging, archive = dirs
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))

    if command == "commit":
        stager = Stager(staging)
        for index in range(5):
            stager.stage(make_ds(index))
        report = commit(staging, archive, batch_size=2, durable=False, progress=progress)
    else:
        for index in range(5):
            pydicom.dcmwrite(staging / f"IM{index}", make_ds(index), enforce_file_format=True)
        report = ingest(staging, archive, batch_size=2, durable=False, progress=progress)
    assert report.committed == 5
    assert calls == [(done, 5) for done in range(1, 6)]


def test_files_gone_before_they_are_decided_still_count(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    """A file another committer took (gone since the scan) is done too: the count reaches the total."""
    staging, archive = dirs
    for index in range(3):
        write_foreign(staging / f"IM{index}", make_ds(index))
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        if done == 1:
            (staging / "IM2").unlink()  # taken by someone else after the scan

    report = commit(staging, archive, batch_size=1, durable=False, progress=progress)
    assert report.committed == 2
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_no_bar_in_process_off_a_terminal(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    assert main(["commit", str(staging), str(archive), "--no-fsync"]) == 0
    assert capsys.readouterr().err == ""


def _row(row_id: int, target: str, source: str) -> Record:
    return Record(Status.COMMITTED, target, target, source, 1, "ab" * 32, id=row_id)


@pytest.mark.parametrize("columns", ["50", "200"])
def test_rows_that_fit_and_rows_that_wrap_line_up(
    columns: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Short rows are written directly, long ones laid out by rich: both in the same columns."""
    monkeypatch.setenv("COLUMNS", columns)
    records = [_row(1, "a.dcm", "s1"), _row(22, "b/" * 40 + "c.dcm", "s2 " * 9), _row(333, "d.dcm", "s3")]
    print_table(records, sys.stdout)
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= int(columns)
    assert _cells(lines, "TARGET", "PATH") == [r.target for r in records]
    assert _cells(lines, "PATH", "SOURCE") == [r.path for r in records]
    assert [cell.replace(" ", "") for cell in _cells(lines, "SOURCE", "SHA256")] == ["s1", "s2" * 9, "s3"]
    assert _cells(lines, "SHA256", None) == ["ab" * 6] * 3
    assert [line[:3] for line in lines if line[:3].strip()] == [" ID", "  1", " 22", "333"]


def test_wide_characters_are_measured_in_cells(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CJK character takes two columns of a terminal: rows are padded and folded by cells."""
    records = [_row(1, "患者/" * 12 + "画像.dcm", "源"), _row(2, "a.dcm", "s")]
    for columns in ("60", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        print_table(records, sys.stdout)
        lines = capsys.readouterr().out.splitlines()
        assert max(map(cell_len, lines)) <= int(columns)
        # Each wide character followed by a NUL: then a character's index is its column on the screen.
        by_cell = ["".join(c + "\0" * (cell_len(c) - 1) for c in line) for line in lines]
        cells = [cell.replace("\0", "") for cell in _cells(by_cell, "TARGET", "PATH")]
        assert cells == [r.target for r in records]
        assert [cell.replace("\0", "") for cell in _cells(by_cell, "SOURCE", "SHA256")] == ["源", "s"]
