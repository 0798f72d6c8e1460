"""The crash torture, fast subsets: kills at every named step, and SIGKILLs of the real CLI at
random moments; then recover and rerun; nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicomcommit._faults import POINTS

SCRIPT = Path(__file__).parent.parent / "scripts" / "torture.py"


@pytest.mark.slow
@pytest.mark.parametrize("manifest", [[], ["--postgresql"]], ids=["sqlite", "postgresql"])
def test_twenty_crash_trials_lose_nothing(tmp_path: Path, manifest: list[str]) -> None:
    """With PostgreSQL (a server of the script's own, no archive lock), as with SQLite."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--trials", "20", "--seed", "1", "--json", "--dir", str(tmp_path), *manifest],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    totals = json.loads(result.stdout)
    assert totals["failures"] == []
    assert (totals["lost"], totals["partial"], totals["replaced"], totals["escaped"]) == (0, 0, 0, 0)
    assert totals["recorded_twice"] == 0
    assert totals["left_in_staging"] == 0
    assert set(totals["killed"]) == set(POINTS)  # every step of the protocol was hit
    assert totals["staged"] > 0
    assert result.returncode == 0


@pytest.mark.slow
def test_random_time_kills_of_the_cli_lose_nothing(tmp_path: Path) -> None:
    """commit, ingest --move, resolve and recover, each SIGKILLed at a random moment, then
    recovered and rerun: three trials of each kind (and, for a kind that finished before
    every kill, retries with shorter delays until one is killed)."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--random", "--trials", "12", "--seed", "1", "--files", "24", "--jobs", "2",
         "--ensure-kill", "--json", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    totals = json.loads(result.stdout)
    failures = "\n".join(totals["failures"])
    for counter in ("lost", "partial", "replaced", "escaped", "recorded_twice", "left", "errors", "stale",
                    "unconverged"):  # fmt: skip
        assert totals[counter] == 0, f"{counter}:\n{failures}"
    for kind, counts in totals["kinds"].items():
        assert counts["trials"] >= 3, kind
        assert counts["killed"] >= 1, f"{kind} was never killed: {counts}"
    assert set(totals["kinds"]) == {"commit", "ingest", "resolve", "recover"}
    assert totals["files"] > 0
    assert result.returncode == 0, failures
