"""The benchmark script runs (its figures are reported, never asserted as timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "bench.py"


def test_bench_quick_runs_and_reports_every_variant(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--dir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    report = json.loads(result.stdout)
    names = {row["name"] for row in report["rows"]}
    assert {"pydicom.dcmwrite", "link+unlink floor", "naive dcmread commit", "commit (staged files)",
            "commit (foreign files)", "Stager.stage (fsync on)", "stage, fsync off, 2 processes",
            "stage_many, durable, 2 processes"} <= names  # fmt: skip
    assert all(row["rate"] > 0 for row in report["rows"])
    assert [h["file"] for h in report["header_bytes"]] == ["0.5 MB", "50 MB"]
    read = [h["bytes_read_by_commit"] for h in report["header_bytes"]]
    assert 0 < read[1] < report["header_bytes"][0]["file_bytes"]  # not even one small file's worth
    assert report["scale"]["large"]["files"] == 400
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself
