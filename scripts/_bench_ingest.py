"""Ingest of an existing tree, whole process (Python start-up included), for scripts/bench.py:
``dicomcommit ingest`` (durable, copy mode) against the naive loop a script would run.

The tree: 30 series directories of small CT files (about 2.5 KB each), with a few files
that are not DICOM beside them, as exported trees have.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom

from _bench_core import Bench, Row, faster, slower
from _bench_files import ROOT
from dicomcommit.synthetic import synthetic_dataset

SERIES = 30
OTHERS_PER_SERIES = 2  # a DICOMDIR-less export's README and thumbnails.db, say

# What a careful script does: read each header (no pixels), make the directories, copy.
NAIVE = """
import os, shutil, sys
import pydicom
source, archive = sys.argv[1:]
for directory, _, names in os.walk(source):
    for name in names:
        path = os.path.join(directory, name)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        target = os.path.join(archive, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                              ds.SOPInstanceUID + ".dcm")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(path, target)
"""


def make_tree(root: Path, files: int) -> int:
    """Write *files* DICOM files in :data:`SERIES` series directories below *root*; returns the
    number of files the tree holds in all."""
    per_series = max(files // SERIES, 1)
    total = 0
    for series in range(SERIES):
        folder = root / f"patient{series // 6}" / f"study{series // 3}" / f"series{series}"
        folder.mkdir(parents=True)
        for i in range(per_series):
            index = series * per_series + i
            ds = synthetic_dataset(ROOT, 20_000_000 + index)
            ds.SeriesInstanceUID = f"{ROOT}.2.{20_000_000 + series}"
            pydicom.dcmwrite(folder / f"IM{i:05d}", ds, enforce_file_format=True)
        (folder / "README.txt").write_text("exported by a viewer\n")
        (folder / "Thumbs.db").write_bytes(bytes(range(256)) * 8)
        total += per_series + OTHERS_PER_SERIES
    return total


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(argv[:3])}... exited {done.returncode}: {done.stderr[-500:]}")


def naive(dirs: tuple[Path, Path]) -> None:
    _run([sys.executable, "-c", NAIVE, str(dirs[0]), str(dirs[1])])


def ours(dirs: tuple[Path, Path], *options: str) -> None:
    cli = Path(sys.executable).with_name("dicomcommit")
    _run([str(cli), "ingest", str(dirs[0]), str(dirs[1]), *options])


def bench_ingest(bench: Bench, files: int) -> list[Row]:
    source = bench.fresh("ingest-source")
    total = make_tree(source, files)
    kind = "tiny"

    def archive() -> tuple[Path, Path]:
        return source, bench.fresh("ingest-archive") / "archive"

    c = bench.compare(total, {
        "naive": (archive, naive),
        "ours": (archive, ours),
        "jobs2": (archive, lambda d: ours(d, "--jobs", "2")),
        "no-fsync": (archive, lambda d: ours(d, "--no-fsync")),
    })  # fmt: skip
    loop = Row("naive dcmread+copy2 loop (process)", kind, total, c["naive"])
    no_fsync = Row("ingest --no-fsync (process)", kind, total, c["no-fsync"], loop.name, c["no-fsync"] / c["naive"])
    return [
        loop,
        faster(Row("ingest, durable (process)", kind, total, c["ours"]), loop, 2),
        faster(Row("ingest --jobs 2, durable (process)", kind, total, c["jobs2"]), loop, 3),
        no_fsync,
        slower(Row("ingest, durable", kind, total, c["ours"]), no_fsync, 1.3),
    ]
