"""The receivers' benchmark rows run (scripts/_bench_receive.py, through scripts/bench.py), and
what they say is kept is true: dicomcommit keeps every version it was sent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).parent.parent / "scripts" / "bench.py"
# --quick: 40 instances, 4 identical re-sends, 10 second versions
DISTINCT, SECOND_VERSIONS, SENT = 40, 10, 54


def _dcmtk_installed() -> bool:
    """DCMTK's storescp, not pynetdicom's script of the same name (on the PATH in an active venv)."""
    for directory in [*os.get_exec_path(), "/usr/bin"]:
        path = Path(directory) / "storescp"
        if path.is_file() and os.access(path, os.X_OK):
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return True
    return False


def test_bench_only_receive_quick_reports_every_installed_receiver(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--only", "receive", "--quick", "--json", "--dir", str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    report = json.loads(result.stdout)
    assert report["pg_skipped"] == "--only receive"
    assert report["s3_skipped"] == "--only receive"
    assert list(tmp_path.iterdir()) == []  # it cleans up after itself
    if not _dcmtk_installed():  # scripts/test installs it: CI always runs the rows
        assert "DCMTK" in report["receive_skipped"]
        return
    orthanc = shutil.which("Orthanc", path=os.pathsep.join([*os.get_exec_path(), "/usr/sbin"]))
    expected = {"storescp", "dicomcommit", "dicomcommit --no-fsync", "pynetdicom, no storage"}
    expected |= {"Orthanc"} if orthanc else set()
    rows = {row["name"].removeprefix("receive: "): row for row in report["rows"]}
    assert set(rows) == expected
    assert all(row["rate"] > 0 and row["files"] == SENT for row in rows.values())
    assert rows["storescp"]["ratio"] is None
    assert all(rows[name]["ratio"] > 0 for name in expected - {"storescp"})
    assert rows["dicomcommit"]["target"] == ">= 0.5x"

    r = report["receive"]
    assert (r["distinct"], r["second_versions"], r["sent"]) == (DISTINCT, SECOND_VERSIONS, SENT)
    assert ("Orthanc" in r["skipped"]) == (not orthanc)
    for name in ("dicomcommit", "dicomcommit --no-fsync"):  # every version, recorded and whole
        ours = r["peers"][name]
        assert (ours["instances"], ours["firsts_kept"], ours["seconds_kept"]) == (DISTINCT, SECOND_VERSIONS,
                                                                                  SECOND_VERSIONS)  # fmt: skip
        assert ours["manifest"] == {"committed": DISTINCT, "conflict": SECOND_VERSIONS, "duplicate": SENT - DISTINCT
                                    - SECOND_VERSIONS}  # fmt: skip
        assert ours["left_in_staging"] == 0
        assert ours["hash_mismatches"] == 0
        assert ours["conflict_files"] == SECOND_VERSIONS
        assert ours["stop_seconds"] > 0
    assert r["all_second_versions_kept"] is True
    # storescp names files by SOP Instance UID: each second version replaced its first
    assert (r["peers"]["storescp"]["firsts_kept"], r["peers"]["storescp"]["seconds_kept"]) == (0, SECOND_VERSIONS)
    if orthanc:  # "OverwriteInstances": false keeps each first version and drops the second
        assert (r["peers"]["Orthanc"]["firsts_kept"], r["peers"]["Orthanc"]["seconds_kept"]) == (SECOND_VERSIONS, 0)
    assert all(p["instances"] == DISTINCT for p in r["peers"].values() if "instances" in p)
    assert elapsed < 60


def test_bench_only_receive_and_no_receive_are_refused_together(tmp_path: Path) -> None:
    args = [sys.executable, str(SCRIPT), "--quick", "--json", "--dir", str(tmp_path)]
    refused = subprocess.run([*args, "--no-receive", "--only", "receive"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2
    assert "--only receive and --no-receive" in refused.stderr
