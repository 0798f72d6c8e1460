"""The crash torture, fast subset: every kill point, then recover and commit; nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicomcommit._faults import POINTS

SCRIPT = Path(__file__).parent.parent / "scripts" / "torture.py"


@pytest.mark.slow
def test_twenty_crash_trials_lose_nothing(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--trials", "20", "--seed", "1", "--json", "--dir", str(tmp_path)],
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
