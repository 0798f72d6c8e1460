"""The benchmark script runs (its figures are reported, never asserted as timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.pg_server import pg_bin

SCRIPT = Path(__file__).parent.parent / "scripts" / "bench.py"
# --quick commits 40 files per committer
PG_ROWS = {"commit, SQLite manifest", "commit, PostgreSQL manifest", "commit, PostgreSQL, 1 process",
           "commit, PostgreSQL, 2 x 40 files"}  # fmt: skip
S3_ROWS = {"put_object loop, 20 ms added", "commit into S3, 20 ms added", "put_object loop, 0 ms added",
           "commit into S3, 0 ms added"}  # fmt: skip


def test_bench_quick_runs_and_reports_every_variant(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--no-receive", "--dir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    report = json.loads(result.stdout)
    names = {row["name"] for row in report["rows"]}
    assert {"pydicom.dcmwrite", "dcmwrite + fsync file, dir", "link+unlink floor", "naive dcmread commit",
            "commit (staged files)", "commit (staged, --no-fsync)", "commit (staged, header keyword)",
            "commit (foreign files)", "Stager.stage (durable)", "stage, fsync off, 2 processes",
            "stage_many, durable, 2 processes", "naive dcmread+copy2 loop (process)", "ingest, durable (process)",
            "ingest --jobs 2, durable (process)", "ingest --no-fsync (process)"} <= names  # fmt: skip
    assert names >= S3_ROWS  # boto3, obstore and moto are dev dependencies: never skipped
    assert "s3_skipped" not in report
    assert report["s3_cpu"]["commit_cpu_ms_per_file"] > 0
    if _have_postgres():  # CI has it (scripts/test installs it): the rows must be there
        assert names >= PG_ROWS
        assert "pg_skipped" not in report
    else:
        assert "PostgreSQL" in report["pg_skipped"]
    assert all(row["rate"] > 0 for row in report["rows"])
    assert [h["file"] for h in report["header_bytes"]] == ["0.5 MB", "50 MB"]
    read = [h["bytes_read_by_commit"] for h in report["header_bytes"]]
    assert 0 < read[1] < report["header_bytes"][0]["file_bytes"]  # not even one small file's worth
    assert report["scale"]["large"]["files"] == 400
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself


def test_bench_no_pg_and_only_pg_select_the_postgresql_rows(tmp_path: Path) -> None:
    """--no-pg reports the rows skipped; --only pg runs nothing else (and is refused with --no-pg)."""
    args = [sys.executable, str(SCRIPT), "--quick", "--json", "--dir", str(tmp_path)]
    skipped = json.loads(subprocess.run([*args, "--no-pg", "--no-s3", "--no-receive", "--scale", "0", "--kinds"],
                                        capture_output=True, text=True, check=True, timeout=300).stdout)  # fmt: skip
    assert skipped["pg_skipped"] == "--no-pg"
    assert skipped["s3_skipped"] == "--no-s3"
    assert not any("PostgreSQL" in row["name"] for row in skipped["rows"])
    refused = subprocess.run([*args, "--no-pg", "--only", "pg"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert "--only pg and --no-pg" in refused.stderr
    if _have_postgres():
        only = json.loads(subprocess.run([*args, "--only", "pg"], capture_output=True, text=True, check=True,
                                         timeout=300).stdout)  # fmt: skip
        assert {row["name"] for row in only["rows"]} == PG_ROWS
        assert only["s3_skipped"] == "--only pg"
        assert "header_bytes" not in only
        assert "scale" not in only
    assert list(tmp_path.iterdir()) == []


def test_bench_only_s3_runs_the_object_store_rows_alone(tmp_path: Path) -> None:
    args = [sys.executable, str(SCRIPT), "--quick", "--json", "--dir", str(tmp_path)]
    only = json.loads(subprocess.run([*args, "--only", "s3"], capture_output=True, text=True, check=True,
                                     timeout=300).stdout)  # fmt: skip
    assert {row["name"] for row in only["rows"]} == S3_ROWS
    assert only["pg_skipped"] == "--only s3"
    refused = subprocess.run([*args, "--no-s3", "--only", "s3"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert list(tmp_path.iterdir()) == []


def _have_postgres() -> bool:
    try:
        pg_bin()
    except RuntimeError:
        return False
    return True
