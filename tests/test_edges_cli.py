"""Edges of the command line: option values, CPU caps, killed ingests, hostile names and
header values, unreadable folders, warnings. Real files, real processes."""

from __future__ import annotations

import argparse
import html
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset

import dicomcommit.cli.main as cli
from dicomcommit import Manifest, Stager, commit
from dicomcommit.archives import open_archive
from dicomcommit.cli.display import printable
from dicomcommit.cli.main import main
from dicomcommit.committing.ingest import ingest, usable_cpus
from dicomcommit.committing.recover import recover
from dicomcommit.errors import UsageError
from dicomcommit.review.show import diff_files
from dicomcommit.scanning import scan_staging
from tests.conftest import wheel_file

MakeDs = Callable[..., Dataset]
NOBODY = 65534
ENV = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"}  # no surrogateescape on stdout


def _aged(path: Path) -> Path:
    """Make a foreign file look finished long ago, as files in an existing tree are."""
    then = time.time() - 3600
    os.utime(path, (then, then))
    return path


def _write(path: Path, ds: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return _aged(path)


def _dicomcommit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomcommit", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, check=False)  # fmt: skip


# 1. Numeric options


@pytest.mark.parametrize(
    "argv",
    [
        ["commit", "{s}", "{a}", "--lock-timeout", "nan"],
        ["commit", "{s}", "{a}", "--lock-timeout", "inf"],
        ["commit", "{s}", "{a}", "--lock-timeout", "-1"],
        ["commit", "{s}", "{a}", "--lock-timeout", "soon"],
        ["commit", "{s}", "{a}", "--batch-size", "0"],
        ["commit", "{s}", "{a}", "--batch-size", "1.5"],
        ["ingest", "{s}", "{a}", "--lock-timeout", "nan"],
        ["ingest", "{s}", "{a}", "--batch-size", "-3"],
        ["ingest", "{s}", "{a}", "--jobs", "0"],
        ["ingest", "{s}", "{a}", "--jobs", "two"],
        ["recover", "{a}", "--part-age", "nan"],
        ["recover", "{a}", "--part-age", "-5"],
        ["recover", "{a}", "--part-age", "inf"],
        ["demo", "--workers", "0"],
        ["demo", "--files", "-1"],
        ["demo", "--files", "many"],
    ],
)
def test_numeric_options_refuse_bad_values_as_usage_errors(
    dirs: tuple[Path, Path], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    archive.mkdir()
    assert main([a.format(s=staging, a=archive) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dicomcommit: error: argument --"), err  # names the option
    assert argv[-1] in err
    assert not (archive / ".dicomcommit").exists()  # refused before anything was touched


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, -1.0, -0.001])
def test_the_library_refuses_bad_lock_timeouts(
    dirs: tuple[Path, Path], make_ds: MakeDs, timeout: float, tmp_path: Path
) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    with pytest.raises(UsageError, match="lock_timeout"):
        commit(staging, archive, lock_timeout=timeout)
    with pytest.raises(UsageError, match="lock_timeout"):
        ingest(staging, tmp_path / "other", lock_timeout=timeout)
    with pytest.raises(UsageError, match="lock_timeout"):
        open_archive(archive).lock(timeout)
    assert not archive.exists()  # the check comes first
    archive.mkdir()
    with pytest.raises(UsageError, match="lock_timeout"):
        recover(archive, lock_timeout=timeout)
    assert len(scan_staging(staging).files) == 1  # still staged


def test_good_lock_timeouts_still_work(dirs: tuple[Path, Path], make_ds: MakeDs) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    assert main(["commit", str(staging), str(archive), "--lock-timeout", "0", "--batch-size", "1"]) == 0


# 2. --jobs: capped at the CPUs, and the workers die with a killed ingest


def test_jobs_above_the_cpu_count_are_refused(
    tmp_path: Path, make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    _write(source / "a.dcm", make_ds(1))
    too_many = usable_cpus() + 1
    with pytest.raises(UsageError, match="CPU"):
        ingest(source, archive, jobs=too_many)
    assert main(["ingest", str(source), str(archive), "--jobs", str(too_many)]) == 2
    assert f"not {too_many}" in capsys.readouterr().err
    assert not archive.exists()
    assert ingest(source, archive, jobs=usable_cpus()).committed == 1


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is *pid*: pid -> start time (to tell a reused pid apart)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid:
            found[int(entry)] = fields[19]
    return found


def _alive(pid: int, started: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] not in ("Z", "X")  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the workers")
@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 CPUs for --jobs 2")
def test_killing_ingest_ends_its_header_reading_workers(tmp_path: Path, make_ds: MakeDs) -> None:
    source = tmp_path / "source"
    source.mkdir()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, make_ds(1), enforce_file_format=True)
    for i in range(4000):  # enough that the workers are still reading when we look
        (source / f"IM{i:05d}").write_bytes(buffer.getvalue())
    ingest_run = subprocess.Popen(
        [sys.executable, "-m", "dicomcommit", "ingest", str(source), str(tmp_path / "archive"), "--jobs", "2",
         "--no-fsync"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    workers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and ingest_run.poll() is None and time.monotonic() < deadline:
            workers = _children(ingest_run.pid)
            time.sleep(0.002)
        assert len(workers) >= 2, "the ingest ended before its workers were seen"
        ingest_run.send_signal(signal.SIGKILL)
        ingest_run.wait()
        deadline = time.monotonic() + 5
        while any(_alive(pid, started) for pid, started in workers.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid, started in workers.items() if _alive(pid, started)]
        assert not left, f"workers {left} outlived their killed ingest"
    finally:
        if ingest_run.poll() is None:
            ingest_run.kill()
            ingest_run.wait()
        for pid, started in workers.items():  # do not leave them behind when the test fails
            if _alive(pid, started):
                os.kill(pid, signal.SIGKILL)


# 3. and 8. Control characters and undecodable names in terminal output


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain/ascii name.dcm", "plain/ascii name.dcm"),
        ("ünïcode 日本語 ok", "ünïcode 日本語 ok"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),
        ("a\nb\tc\rd\x00", "a\\x0ab\\x09c\\x0dd\\x00"),
        ("del\x7f c1\x9b csi\x85", "del\\x7f c1\\x9b csi\\x85"),
        (os.fsdecode(b"caf\xe9.dcm"), "caf\\xe9.dcm"),
        (os.fsdecode(b"\xff\x80"), "\\xff\\x80"),
        ("rlo\u202etxt.exe zwsp\u200b nbsp\u00a0 ls\u2028", "rlo\\u202etxt.exe zwsp\\u200b nbsp\\u00a0 ls\\u2028"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("tag \U000e0041", "tag \\U000e0041"),
        ("back\\slash", "back\\slash"),  # left alone: DICOM multi-values use it
    ],
)
def test_printable_escapes_what_a_terminal_would_obey(text: str, shown: str) -> None:
    assert printable(text) == shown


# Any code point, surrogates included (hypothesis' characters() leaves them out), weighted
# towards controls and the surrogates os.fsdecode makes of bytes that are not UTF-8.
_ANY_CHAR = st.one_of(
    st.integers(0, 0x10FFFF).map(chr), st.integers(0, 0xFF).map(chr), st.integers(0xDC80, 0xDCFF).map(chr)
)


@given(st.text(alphabet=_ANY_CHAR))
def test_printable_output_is_printable_encodable_and_stable(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    shown.encode("utf-8")  # never a UnicodeEncodeError, whatever the name was
    assert printable(shown) == shown


@pytest.fixture
def hostile(tmp_path: Path, make_ds: MakeDs) -> tuple[Path, int, str]:
    """An archive with a conflict whose staged copy came from a non-UTF-8 file name with an
    escape sequence in it, and whose header carries terminal escapes. Returns the archive,
    the conflict's id, and its source (as os.fsdecode gives it)."""
    archive = tmp_path / "archive"
    first, second = tmp_path / "first", tmp_path / "second"
    _write(first / "IM1", make_ds(1))
    ds = make_ds(1, 1)
    ds.StudyDescription = "\x1b]0;owned\x07\x1b[2J\x7f"  # ASCII: the default character set
    name = os.fsdecode(b"caf\xe9\x1b[7m.dcm")
    _write(second / name, ds)
    assert ingest(first, archive).committed == 1
    assert ingest(second, archive).conflicts == 1
    with Manifest(archive) as manifest:
        [row] = manifest.records("conflict")
    assert row.id is not None
    return archive, row.id, row.source


def test_show_and_review_print_names_and_values_escaped(
    hostile: tuple[Path, int, str], capsys: pytest.CaptureFixture[str]
) -> None:
    archive, row_id, _ = hostile
    assert main(["show", str(archive), str(row_id)]) == 0
    out = capsys.readouterr().out
    assert "caf\\xe9\\x1b[7m.dcm" in out
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x7f" in out  # the header value, still there, escaped
    assert "StudyDescription" in out
    assert "pixel data" in out
    assert all(line.isprintable() for line in out.splitlines())
    assert main(["review", str(archive)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["ID", "STATUS", "TARGET", "PATH", "SOURCE", "SHA256"]
    assert all(line.isprintable() for line in table.splitlines())
    assert main(["review", str(archive), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "caf\\xe9\\x1b[7m.dcm" in out  # the source column
    assert all(line.isprintable() for line in out.splitlines())


def test_json_output_keeps_undecodable_names_as_valid_json(
    hostile: tuple[Path, int, str], capsys: pytest.CaptureFixture[str]
) -> None:
    archive, row_id, source = hostile
    assert main(["review", str(archive), "--json"]) == 0
    out = capsys.readouterr().out
    assert "\\udce9" in out  # json's own escape of the surrogate: ASCII, valid JSON
    assert json.loads(out)[0]["source"] == source  # and lossless: os.fsencode gives the bytes back
    assert os.fsencode(json.loads(out)[0]["source"]).endswith(b"caf\xe9\x1b[7m.dcm")
    assert main(["show", str(archive), str(row_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["record"]["source"] == source


def test_show_of_an_undecodable_name_does_not_crash_a_utf8_terminal(hostile: tuple[Path, int, str]) -> None:
    archive, row_id, _ = hostile
    done = _dicomcommit("show", str(archive), str(row_id))  # stdout strict UTF-8, as in a UTF-8 locale
    assert done.returncode == 0, done.stderr
    assert "caf\\xe9\\x1b[7m.dcm" in done.stdout
    assert "\x1b" not in done.stdout + done.stderr


def test_log_and_error_messages_are_escaped(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    staging, archive = dirs
    Stager(staging).stage(make_ds(1))
    os.symlink(tmp_path / "nowhere", staging / "link\x1b[31m")  # commit logs that it left it in place
    assert main(["commit", str(staging), str(archive)]) == 0
    captured = capsys.readouterr()
    assert "link\\x1b[31m" in captured.err
    assert "dicomcommit: warning: " in captured.err
    assert "link\\x1b[31m" in captured.out  # the summary's "left in place"
    assert "\x1b" not in captured.out + captured.err
    assert main(["review", str(tmp_path / os.fsdecode(b"no\xff\x1b[5marchive"))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dicomcommit: error: ")
    assert "no\\xff\\x1b[5marchive" in err


# 4. An unreadable folder


def _ingest_as(uid: int | None, cwd: Path, conn: Connection) -> None:
    """In a forked child: become *uid* (for root, whom permission bits do not stop), then ingest."""
    try:
        os.chdir(cwd)
        if uid is not None:
            try:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            except PermissionError as exc:  # a root without CAP_SETUID
                conn.send(("cannot drop privileges", repr(exc)))
                return
        report = ingest(Path("source"), Path("archive"))
        conn.send(("ok", report.to_dict()))
    except BaseException as exc:
        conn.send(("failed", repr(exc)))
    finally:
        conn.close()


@pytest.fixture
def unprivileged_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory the test's user, or (for root) nobody, owns and may reach."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    work = Path(tempfile.mkdtemp(prefix="dicomcommit-unreadable-"))  # pytest's tmp_path is root's, mode 0700
    try:
        if any(not (p.stat().st_mode & stat.S_IXOTH) for p in work.parents):
            pytest.skip(f"nobody cannot reach {work}")
        os.chown(work, NOBODY, NOBODY)
        yield work
    finally:
        shutil.rmtree(work)


def test_an_unreadable_folder_is_reported_and_the_ingest_goes_on(
    unprivileged_dir: Path, tmp_path: Path, make_ds: MakeDs
) -> None:
    work = unprivileged_dir
    source = work / "source"
    for rel, index in (("a/IM1", 1), ("locked/IM2", 2), ("z/deeper/IM3", 3)):
        _write(source / rel, make_ds(index))
    # Loaded now, before the child gives up root: it may not read our interpreter's files.
    ingest(source, tmp_path / "warm-up")
    as_root = os.geteuid() == 0
    if as_root:
        for path in (work, *work.rglob("*")):
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    (source / "locked").chmod(0)
    try:
        ctx = multiprocessing.get_context("fork")  # the child runs the test's own imports, as another user
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_ingest_as, args=(NOBODY if as_root else None, work, send))
        child.start()
        send.close()
        assert receive.poll(120), "the ingest did not finish"
        outcome, result = receive.recv()
        child.join()
    finally:
        (source / "locked").chmod(0o755)
    if outcome == "cannot drop privileges":
        pytest.skip(f"root here cannot become nobody: {result}")
    assert outcome == "ok", result
    assert result["committed"] == 2  # a/IM1 and z/deeper/IM3: the walk went on past locked/
    assert result["left_in_place"] == [{"file": "locked/", "reason": "cannot be read (Permission denied)"}]


def test_a_tree_that_cannot_be_listed_itself_is_still_an_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(NotADirectoryError):  # only folders below the tree are skipped
        scan_staging(not_a_folder)


# 5. *.part in an ingest tree


def test_a_dicom_file_named_part_is_ingested(tmp_path: Path, make_ds: MakeDs) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    _write(source / "x.part", make_ds(1))
    _write(source / "nested" / "y.dcm.part", make_ds(2))
    report = ingest(source, archive)
    assert (report.committed, report.left_in_place) == (2, [])
    with Manifest(archive) as manifest:
        assert sorted(r.source for r in manifest.records()) == [f"{source}/nested/y.dcm.part", f"{source}/x.part"]
    # in a staging directory, a .part file is still an unfinished stage, left alone
    staging = tmp_path / "staging"
    _write(staging / "x.part", make_ds(3))
    assert scan_staging(staging).skipped == [("x.part", "unfinished stage (.part)")]
    assert ingest(source, tmp_path / "dry", dry_run=True).committed == 2


# 6. ingest --batch-size and --lock-timeout


def test_ingest_takes_batch_size_and_lock_timeout(
    tmp_path: Path, make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    source, archive = tmp_path / "source", tmp_path / "archive"
    for index in range(3):
        _write(source / f"IM{index}", make_ds(index))
    argv = ["ingest", str(source), str(archive), "--json", "--batch-size", "1", "--lock-timeout", "0.2"]
    with open_archive(archive).lock(None):
        started = time.monotonic()
        assert main(argv) == 1  # the lock is held: given up after 0.2 s, nothing lost
        assert time.monotonic() - started < 30
    assert "not acquired within 0.2 s" in capsys.readouterr().err
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["committed"] == 3
    with Manifest(archive) as manifest:
        assert len(manifest.records()) == 3


def test_ingest_help_lists_the_lock_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--batch-size N" in out
    assert "--lock-timeout SECONDS" in out


# 7. Warnings: once each, naming the file; no decoder tracebacks


def _invalid_is(ds: Dataset) -> bytes:
    """*ds* encoded, with InstanceNumber (IS) made "xx": pydicom 3 warns when it reads that value."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    good = b"IS\x02\x00" + str(ds.InstanceNumber).encode().ljust(2)
    assert buffer.getvalue().count(good) == 1
    return buffer.getvalue().replace(good, b"IS\x02\x00xx")


def _corrupt_rle(ds: Dataset) -> Dataset:
    """*ds* (RLE Lossless) with its first frame claiming 9 segments: pydicom's decoder logs a traceback and fails."""
    data = bytearray(ds.PixelData)
    first = 8 + int.from_bytes(data[4:8], "little")  # past the Basic Offset Table item
    data[first + 8 : first + 12] = (9).to_bytes(4, "little")
    ds.PixelData = bytes(data)
    ds.StudyDescription = "corrupted copy"
    return ds


@pytest.fixture
def warning_archive(dirs: tuple[Path, Path], make_ds: MakeDs) -> tuple[Path, Path, Path]:
    """Conflicts: one whose staged file has an invalid IS value, one whose pixels cannot be decoded.
    Returns the archive and the two staged files' paths in it."""
    staging, archive = dirs
    stager = Stager(staging)
    stager.stage(make_ds(1))
    stager.stage(pydicom.dcmread(wheel_file("MR_small_RLE.dcm")))
    commit(staging, archive)
    (staging / "invalid-value.dcm").write_bytes(_invalid_is(make_ds(1, 1)))  # as a foreign tool would
    _aged(staging / "invalid-value.dcm")
    Stager(staging).stage(_corrupt_rle(pydicom.dcmread(wheel_file("MR_small_RLE.dcm"))))
    assert commit(staging, archive).conflicts == 2
    with Manifest(archive) as manifest:
        rows = manifest.records("conflict")
    by_source = {r.source: archive / r.path for r in rows}
    invalid = by_source.pop("invalid-value.dcm")
    [undecodable] = by_source.values()
    return archive, invalid, undecodable


def _lines_naming(text: str, path: Path) -> list[str]:
    return [line for line in text.splitlines() if str(path) in line]


def test_diff_files_logs_each_pydicom_warning_once_with_the_file(
    warning_archive: tuple[Path, Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    archive, invalid, _ = warning_archive
    with Manifest(archive) as manifest:
        [row] = [r for r in manifest.records("conflict") if r.source == "invalid-value.dcm"]
    assert row.target is not None
    diff = diff_files(archive / row.target, invalid)  # with warnings as errors (pyproject): none escapes
    assert diff.error is None
    assert "InstanceNumber" in {e.keyword for e in diff.elements}
    ours = [r for r in caplog.records if r.name == "dicomcommit"]
    assert [r.getMessage() for r in ours] == [f"{invalid}: " + _is_warning()]


def _is_warning() -> str:
    return (
        "Invalid value for VR IS: 'xx'. Please see "
        "<https://dicom.nema.org/medical/dicom/current/output/html/part05.html#table_6.2-1> "
        "for allowed values for each VR."
    )


def test_show_prints_a_pydicom_warning_once_naming_the_file(warning_archive: tuple[Path, Path, Path]) -> None:
    archive, invalid, _ = warning_archive
    with Manifest(archive) as manifest:
        [row] = [r for r in manifest.records("conflict") if r.source == "invalid-value.dcm"]
    done = _dicomcommit("show", str(archive), str(row.id))
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"dicomcommit: warning: {invalid}: {_is_warning()}"]
    assert "InstanceNumber" in done.stdout


def test_report_prints_warnings_once_and_no_decoder_traceback(
    warning_archive: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    archive, invalid, undecodable = warning_archive
    out = tmp_path / "report.html"
    done = _dicomcommit("report", str(archive), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert _lines_naming(done.stderr, invalid) == [f"dicomcommit: warning: {invalid}: {_is_warning()}"]
    assert done.stderr.count("Invalid value") == 1
    page = html.unescape(out.read_text())  # (as a browser shows it)
    # pydicom's own RLE decoder refuses it ("9 vs. 2 segments"); pylibjpeg-rle (the images extra) decodes it
    assert "9 vs. 2 segments" not in page
    assert str(undecodable) in page


def test_uncaught_warnings_become_one_log_line(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warning nobody records (from pydicom, anywhere) is one line of our log, not Python's two."""

    def warn_once(args: argparse.Namespace) -> int:
        warnings.warn("something odd\x1b[1m", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_review", warn_once)
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as outside pytest, which makes warnings errors
        assert main(["review", str(dirs[1])]) == 0
    assert capsys.readouterr().err.splitlines() == ["dicomcommit: warning: something odd\\x1b[1m"]
