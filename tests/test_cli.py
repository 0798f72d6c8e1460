"""The command line, run in-process: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Stager
from dicomcommit.cli.main import main
from tests.conftest import archive_files, staged_files, write_settled

MakeDs = Callable[..., Dataset]


def _counts(out: str) -> dict[str, int]:
    """The count lines of a printed summary ("  committed      2")."""
    pairs = (line.split() for line in out.splitlines() if line.startswith("  "))
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}


def _stage(staging: Path, make_ds: MakeDs, *jobs: tuple[int, int]) -> None:
    stager = Stager(staging)
    for index, variant in jobs:
        stager.stage(make_ds(index, variant))


def test_commit_exits_0_when_nothing_needs_review(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    _stage(staging, make_ds, (1, 0), (2, 0), (2, 0))
    assert main(["commit", str(staging), str(archive)]) == 0
    out = capsys.readouterr().out
    assert _counts(out) == {"committed": 2, "duplicates": 1, "conflicts": 0, "invalid": 0, "skipped": 0}
    assert len(archive_files(archive)) == 2


def test_commit_exits_3_on_conflicts_and_review_lists_them(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    _stage(staging, make_ds, (1, 0), (1, 1))
    write_settled(staging / "junk.txt", "junk")
    assert main(["commit", str(staging), str(archive), "--json"]) == 3
    report = json.loads(capsys.readouterr().out)
    assert (report["committed"], report["conflicts"], report["invalid"]) == (1, 1, 1)
    assert sorted(r["status"] for r in report["needs_review"]) == ["conflict", "invalid"]

    assert main(["review", str(archive), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["conflict"]
    assert {"id", "status", "target", "path", "sha256"} <= set(rows[0])
    assert (archive / rows[0]["path"]).is_file()

    assert main(["review", str(archive)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["ID", "STATUS", "TARGET", "PATH", "SOURCE", "SHA256"]
    assert "conflict" in table

    assert main(["review", str(archive), "--status", "invalid", "--json"]) == 0
    assert [r["source"] for r in json.loads(capsys.readouterr().out)] == ["junk.txt"]
    assert main(["review", str(archive), "--status", "all", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


def test_dry_run_changes_nothing(dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]) -> None:
    staging, archive = dirs
    _stage(staging, make_ds, (1, 0), (1, 1))
    assert main(["commit", str(staging), str(archive), "--dry-run"]) == 3
    assert "dry run" in capsys.readouterr().out
    assert not archive.exists()
    assert len(staged_files(staging)) == 2


def test_on_conflict_error_exits_3_and_leaves_it_staged(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    _stage(staging, make_ds, (1, 0))
    assert main(["commit", str(staging), str(archive), "--no-fsync"]) == 0
    _stage(staging, make_ds, (1, 1))
    assert main(["commit", str(staging), str(archive), "--on-conflict", "error"]) == 3
    assert "conflict" in capsys.readouterr().err
    assert len(staged_files(staging)) == 1


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["commit"],
        ["commit", "{staging}", "{archive}", "--on-conflict", "overwrite"],
        ["commit", "{staging}", "{archive}", "--template", "{{PatientID}}.dcm"],
        ["commit", "{staging}", "{archive}", "--template", "../{{SOPInstanceUID}}"],
        ["commit", "{staging}/missing", "{archive}"],
        ["commit", "{staging}", "{staging}"],
        ["review", "{archive}", "--status", "bogus"],
        ["demo", "--workers", "0"],
    ],
)
def test_usage_errors_exit_2(dirs: tuple[Path, Path], argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    staging, archive = dirs
    args = [a.format(staging=staging, archive=archive) for a in argv]
    assert main(args) == 2
    assert "error" in capsys.readouterr().err


def test_template_without_sop_uid_needs_the_flag(
    dirs: tuple[Path, Path], make_ds: MakeDs, capsys: pytest.CaptureFixture[str]
) -> None:
    staging, archive = dirs
    _stage(staging, make_ds, (1, 0), (2, 0))
    argv = ["commit", str(staging), str(archive), "--template", "{PatientID}/{Modality}.dcm"]
    assert main(argv) == 2
    assert "SOPInstanceUID" in capsys.readouterr().err
    # both instances want DEMO0000/CT.dcm: the second is a conflict, kept
    assert main([*argv, "--allow-collisions"]) == 3


def test_review_without_a_manifest_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["review", str(tmp_path)]) == 1
    assert "no manifest" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Exit codes" in capsys.readouterr().out


def test_demo_stages_commits_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    staging, archive = tmp_path / "staging", tmp_path / "archive"
    argv = ["demo", "--workers", "2", "--files", "40", "--staging", str(staging), "--archive", str(archive)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "every staged dataset is accounted for" in out
    assert _counts(out) == {"committed": 68, "duplicates": 8, "conflicts": 4, "invalid": 0, "skipped": 0}
    assert main(argv) == 0  # fresh UIDs each run: repeatable on the same directories
    capsys.readouterr()
    (staging / "left-over.dcm").write_bytes(b"x")
    assert main(argv) == 2
    assert "earlier run" in capsys.readouterr().err


def test_commands_start_without_importing_pynetdicom() -> None:
    """pynetdicom takes a tenth of a second to import: only ``receive`` needs it."""
    code = ("import sys, dicomcommit.cli.main\n"
            "assert 'pynetdicom' not in sys.modules, 'imported at start-up'\n"
            "from dicomcommit.receiving import Receiver\n"
            "assert 'pynetdicom' in sys.modules and Receiver.__name__ == 'Receiver'\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
