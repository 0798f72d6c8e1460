"""Writing and committing files, for scripts/bench.py: staging against pydicom.dcmwrite,
commit against the raw link+unlink floor and a naive header-reading loop, and the scaling
check of a large commit.

The commit rows use the layout of a real job: 5 patients, one study and one series each
(a few big directories), staged by two Stager processes.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from _bench_core import Bench, Row, collect, faster, peak_rss_kib, slower
from dicomcommit import Stager, commit
from dicomcommit.manifests.sqlite import SQLiteManifest as Manifest
from dicomcommit.naming import DEFAULT_TEMPLATE, attrs_from_dataset, parse_template
from dicomcommit.synthetic import synthetic_dataset

SIZES = {"tiny": 32, "ct": 512}  # 2.3 KB and 0.5 MB files
ROOT = "1.2.826.0.1.3680043.10.4242"
PATIENTS = 5
#: A template with a keyword no stager records (commit reads each file's header for it).
UNRECORDED_TEMPLATE = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}-{Rows}x{Columns}.dcm"


def datasets(kind: str, count: int, offset: int = 0) -> list[Dataset]:
    """*count* instances spread over :data:`PATIENTS` patients, one study and series each."""
    items = []
    for i in range(offset, offset + count):
        ds = synthetic_dataset(ROOT, i, size=SIZES[kind])
        patient = i % PATIENTS
        ds.PatientID = f"BENCH{patient}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}.1.{patient}", f"{ROOT}.2.{patient}"
        items.append(ds)
    return items


# --- writing ---------------------------------------------------------------------------


def write_plain(directory: Path, items: list[Dataset]) -> None:
    for i, ds in enumerate(items):
        pydicom.dcmwrite(directory / f"{i}.dcm", ds, enforce_file_format=True)


def write_plain_durable(directory: Path, items: list[Dataset]) -> None:
    """The floor of one synchronous durable write: dcmwrite, fsync the file, fsync its directory."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, ds in enumerate(items):
            with open(directory / f"{i}.dcm", "wb") as f:
                pydicom.dcmwrite(f, ds, enforce_file_format=True)
                f.flush()
                os.fsync(f.fileno())
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_staged(directory: Path, items: list[Dataset], durable: bool) -> None:
    with Stager(directory, durable=durable) as stager:
        for ds in items:
            stager.stage(ds)


def write_staged_many(directory: Path, items: list[Dataset], durable: bool) -> None:
    with Stager(directory, durable=durable) as stager:
        stager.stage_many(items)


def bench_staging(bench: Bench, kind: str, n: int) -> list[Row]:
    items = datasets(kind, n)
    fresh = bench.fresh
    w = bench.compare(n, {
        "plain": (lambda: fresh("plain"), lambda d: write_plain(d, items)),
        "plain-durable": (lambda: fresh("plain"), lambda d: write_plain_durable(d, items)),
        "stage-off": (lambda: fresh("stage"), lambda d: write_staged(d, items, False)),
        "stage-on": (lambda: fresh("stage"), lambda d: write_staged(d, items, True)),
        "many-off": (lambda: fresh("many"), lambda d: write_staged_many(d, items, False)),
        "many-on": (lambda: fresh("many"), lambda d: write_staged_many(d, items, True)),
    }, cold=True)  # fmt: skip
    plain = Row("pydicom.dcmwrite", kind, n, w["plain"])
    durable = Row("dcmwrite + fsync file, dir", kind, n, w["plain-durable"])
    return [
        plain,
        slower(Row("Stager.stage (fsync off)", kind, n, w["stage-off"]), plain, 1.05),
        slower(Row("Stager.stage_many (fsync off)", kind, n, w["many-off"]), plain, 1.05),
        durable,
        slower(Row("Stager.stage (durable)", kind, n, w["stage-on"]), durable, 1.1),
        slower(Row("Stager.stage_many (durable)", kind, n, w["many-on"]), durable, None),
    ]


def _stage_worker(directory: str, items: list[Dataset], many: bool, barrier: Any, out: Any) -> None:
    barrier.wait()
    started = time.monotonic()
    if many:
        write_staged_many(Path(directory), items, durable=True)
    else:
        write_staged(Path(directory), items, durable=False)
    out.put((started, time.monotonic()))


def stage_in_processes(bench: Bench, kind: str, files: int, procs: int, *, many: bool) -> float:
    """Files/s of *procs* stager processes at once: ``stage()`` without fsync (CPU only: shows
    whether stagers contend), or durable ``stage_many`` (shows the disk's flushes too)."""
    ctx = multiprocessing.get_context("fork")
    rates: list[float] = []
    for run in range(bench.runs):
        directory = bench.fresh(f"stage-{procs}p")
        barrier, out = ctx.Barrier(procs), ctx.Queue()
        share = files // procs
        workers = [
            ctx.Process(
                target=_stage_worker,
                args=(str(directory), datasets(kind, share, (run * procs + p) * share), many, barrier, out),
            )
            for p in range(procs)
        ]
        for w in workers:
            w.start()
        spans: list[tuple[float, float]] = collect(out, workers, len(workers))
        for w in workers:
            w.join()
        rates.append(share * procs / (max(e for _, e in spans) - min(s for s, _ in spans)))
    return statistics.median(rates)


def bench_stagers(bench: Bench, kind: str, n: int) -> list[Row]:
    rows = []
    for many, label in ((False, "stage, fsync off"), (True, "stage_many, durable")):
        one = stage_in_processes(bench, kind, n, 1, many=many)
        two = stage_in_processes(bench, kind, n, 2, many=many)
        single = Row(f"{label}, 1 process", kind, n, one)
        rows += [single, faster(Row(f"{label}, 2 processes", kind, n, two), single, 1.8)]
    return rows


# --- committing ------------------------------------------------------------------------


def prepare_foreign(bench: Bench, items: list[Dataset]) -> tuple[Path, Path]:
    """Files another tool wrote earlier: on disk already (synced before timing), no journal."""
    staging = bench.fresh("staging")
    write_plain(staging, items)
    return staging, bench.next_to_last("archive")


def prepare_floor(bench: Bench, items: list[Dataset], targets: list[str]) -> tuple[list[str], list[str]]:
    """Plain files, and the target directories made already: (sources, targets) as str paths."""
    staging, archive = prepare_foreign(bench, items)
    for parent in {os.path.dirname(rel) for rel in targets}:
        os.makedirs(archive / parent)
    return [f"{staging}/{i}.dcm" for i in range(len(items))], [f"{archive}/{rel}" for rel in targets]


def _stage_half(directory: str, items: list[Dataset]) -> None:
    write_staged_many(Path(directory), items, durable=True)


def prepare_staged(bench: Bench, items: list[Dataset]) -> tuple[Path, Path]:
    """Files staged by two Stager processes in their default, durable mode."""
    staging = bench.fresh("staging")
    ctx = multiprocessing.get_context("fork")
    half = len(items) // 2
    stagers = [ctx.Process(target=_stage_half, args=(str(staging), part)) for part in (items[:half], items[half:])]
    for p in stagers:
        p.start()
    for p in stagers:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a stager process failed (exit code {p.exitcode})")
    return staging, bench.next_to_last("archive")


def floor_link_unlink(paths: tuple[list[str], list[str]]) -> None:
    """The raw floor, what ``mv`` does: link each file to a name known in advance, in a
    directory made in advance, then unlink it; str paths."""
    link, unlink = os.link, os.unlink
    for src, dst in zip(*paths, strict=True):
        link(src, dst)
        unlink(src)


def naive_commit(dirs: tuple[Path, Path]) -> None:
    """What a careful script does: read each header, then link and unlink."""
    staging, archive = dirs
    template = parse_template(DEFAULT_TEMPLATE)
    for name in sorted(os.listdir(staging)):
        path = staging / name
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = archive / template.render(attrs_from_dataset(ds, template.keywords))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
        os.unlink(path)


def our_commit(dirs: tuple[Path, Path], template: str = DEFAULT_TEMPLATE, durable: bool = True) -> None:
    # The bench wrote its foreign files a moment ago: no settle time, or none would be taken.
    report = commit(dirs[0], dirs[1], template=template, durable=durable, settle=0)
    if report.left_in_place or report.conflicts or report.invalid:  # a run that did not do the work reports no figure
        raise RuntimeError(f"commit did not commit every file: {report.counts()} {report.left_in_place[:1]}")


def bench_commit(bench: Bench, kind: str, n: int) -> list[Row]:
    """Commit of staged and of foreign files, each against its baselines."""
    items = datasets(kind, n)
    targets = {}
    for text in (DEFAULT_TEMPLATE, UNRECORDED_TEMPLATE):
        template = parse_template(text)
        targets[text] = [template.render(attrs_from_dataset(ds, template.keywords)) for ds in items]
    c = bench.compare(n, {
        "floor": (lambda: prepare_floor(bench, items, targets[DEFAULT_TEMPLATE]), floor_link_unlink),
        "floor-unrecorded": (lambda: prepare_floor(bench, items, targets[UNRECORDED_TEMPLATE]), floor_link_unlink),
        "naive": (lambda: prepare_foreign(bench, items), naive_commit),
        "staged": (lambda: prepare_staged(bench, items), our_commit),
        "staged-no-fsync": (lambda: prepare_staged(bench, items), lambda d: our_commit(d, durable=False)),
        "staged-unrecorded": (lambda: prepare_staged(bench, items), lambda d: our_commit(d, UNRECORDED_TEMPLATE)),
        "foreign": (lambda: prepare_foreign(bench, items), our_commit),
    })  # fmt: skip
    floor = Row("link+unlink floor", kind, n, c["floor"])
    naive = Row("naive dcmread commit", kind, n, c["naive"], floor.name, c["naive"] / c["floor"])
    no_fsync = Row("commit (staged, --no-fsync)", kind, n, c["staged-no-fsync"], floor.name,
                   c["staged-no-fsync"] / c["floor"])  # fmt: skip
    staged = Row("commit (staged files)", kind, n, c["staged"])
    floor2 = Row("link+unlink floor, its targets", kind, n, c["floor-unrecorded"])
    return [
        floor,
        naive,
        faster(staged, floor, 0.25),
        no_fsync,
        slower(Row("commit (staged), durable", kind, n, c["staged"]), no_fsync, 1.3),
        floor2,
        faster(Row("commit (staged, header keyword)", kind, n, c["staged-unrecorded"]), floor2, 0.25),
        faster(Row("commit (foreign files)", kind, n, c["foreign"]), naive, 2),
    ]


def commit_bytes_read(bench: Bench) -> list[dict[str, Any]]:
    """Bytes one commit reads for one foreign file of 0.5 MB and of 50 MB (from /proc/self/io:
    everything read, the manifest included)."""
    results = []
    for label, size in (("0.5 MB", 512), ("50 MB", 5120)):
        staging = bench.fresh(f"bytes-{size}")
        path = staging / f"{size}.dcm"
        pydicom.dcmwrite(path, synthetic_dataset(ROOT, size, size=size), enforce_file_format=True)
        file_bytes = path.stat().st_size
        before = _rchar()
        commit(staging, bench.next_to_last("archive"), settle=0)
        used = _rchar() - before
        results.append({"file": label, "file_bytes": file_bytes, "bytes_read_by_commit": used})
    return results


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


# --- scale -----------------------------------------------------------------------------


def _scaled_commit(staging: str, archive: str, out: Any) -> None:
    """In a child process: commit, timing Manifest.add, and report peak RSS."""
    spent = [0.0]
    real_add = Manifest.add

    def timed_add(self: Manifest, records: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_add(self, records)
        finally:
            spent[0] += time.perf_counter() - started

    Manifest.add = timed_add  # type: ignore[method-assign]
    started = time.perf_counter()
    report = commit(staging, archive)
    elapsed = time.perf_counter() - started
    out.put({"files": report.committed, "seconds": elapsed, "manifest_seconds": spent[0],
             "peak_rss_mb": peak_rss_kib() / 1024})  # fmt: skip


def _stage_range(directory: str, start: int, count: int) -> None:
    with Stager(directory, durable=False) as stager:
        for i in range(start, start + count):
            stager.stage(synthetic_dataset(ROOT, i))


def scaled(bench: Bench, counts: list[int]) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    results: list[dict[str, Any]] = []
    for count in counts:
        staging = bench.fresh(f"scale-{count}")
        half = count // 2
        stagers = [ctx.Process(target=_stage_range, args=(str(staging), 10_000_000 * len(results) + s * half, half))
                   for s in range(2)]  # fmt: skip
        for p in stagers:
            p.start()
        for p in stagers:
            p.join()
        fresh = multiprocessing.get_context("spawn")  # not forked: its peak RSS must be its own
        out = fresh.Queue()
        child = fresh.Process(target=_scaled_commit, args=(str(staging), str(bench.next_to_last("arch")), out))
        child.start()
        results += collect(out, [child], 1)
        child.join()
    return results


def scale_summary(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    return {
        "small": small,
        "large": large,
        "time_ratio": large["seconds"] / small["seconds"],
        "time_ratio_ok": large["seconds"] / small["seconds"] <= 11,
        "peak_rss_ok": large["peak_rss_mb"] < 200,
        "manifest_share": large["manifest_seconds"] / large["seconds"],
        "manifest_share_ok": large["manifest_seconds"] / large["seconds"] <= 0.10,
    }
