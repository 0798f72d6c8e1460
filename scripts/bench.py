#!/usr/bin/env python3
"""Benchmarks: dicomcommit against baselines measured in the same run.

    .venv/bin/python scripts/bench.py            # full run (several minutes, a few GB of disk)
    .venv/bin/python scripts/bench.py --quick    # smoke run (seconds)
    .venv/bin/python scripts/bench.py --json     # machine-readable
    .venv/bin/python scripts/bench.py --only pg  # the PostgreSQL manifest's rows only
    .venv/bin/python scripts/bench.py --only s3  # the object-store archive's rows only
    .venv/bin/python scripts/bench.py --only receive  # the receivers side by side only

The PostgreSQL manifest's rows (scripts/_bench_pg.py) run on a throwaway server of their own
(tests/pg_server.py); without PostgreSQL's binaries, or with --no-pg, they are skipped. The
object-store rows (scripts/_bench_s3.py) run against moto on loopback (tests/s3_server.py)
through the fault proxy (tests/s3_proxy.py), which adds 20 ms to every request; --no-s3 skips them.
The receivers' rows (scripts/_bench_receive.py) send one stream with 4 DCMTK storescu at once
to storescp, Orthanc (when installed) and dicomcommit receive; without DCMTK, or with
--no-receive, they are skipped.

Every variant runs on fresh directories, and nothing is deleted until the end: on some
filesystems, deleting thousands of files slows later file creation for a while, which
would penalise whichever variant came next. Figures are medians over --runs runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

import _bench_pg
import _bench_receive
import _bench_s3
from dicomcommit import Stager, commit
from dicomcommit.manifests.sqlite import SQLiteManifest as Manifest
from dicomcommit.naming import DEFAULT_TEMPLATE, attrs_from_dataset, parse_template
from dicomcommit.synthetic import synthetic_dataset

Variant = tuple[Callable[[], Any], Callable[[Any], None]]  # (prepare, timed)
SIZES = {"tiny": 32, "ct": 512}  # 2.3 KB and 0.5 MB files
_ROOT = "1.2.826.0.1.3680043.10.4242"


@dataclass
class Row:
    name: str
    kind: str
    files: int
    rate: float  # files/s, median
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None


class Bench:
    def __init__(self, root: Path, runs: int) -> None:
        self.root = root
        self.runs = runs
        self._dirs = 0
        self.cache_dropped = False

    def fresh(self, name: str) -> Path:
        self._dirs += 1
        path = self.root / f"{self._dirs:04d}-{name}"
        path.mkdir()
        return path

    def compare(
        self, files: int, variants: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]], *, cold: bool = False
    ) -> dict[str, float]:
        """Median files/s of each variant; runs interleave variants, so that a slow phase of
        the machine (or of the filesystem) does not fall on one variant only.

        *cold*: also empty the page cache before each run (when allowed). Writers then fill
        pages the kernel has used before: in a VM, memory touched for the first time can
        cost more than the write itself, and would fall on whichever variant came first.
        """
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(self.runs):
            for name, (prepare, timed) in variants.items():
                arg = prepare()
                os.sync()  # start from clean writeback: no variant pays for the last one's dirty pages
                if cold:
                    self.cache_dropped = drop_page_cache()
                started = time.perf_counter()
                timed(arg)
                rates[name].append(files / (time.perf_counter() - started))
        return {name: statistics.median(values) for name, values in rates.items()}


def drop_page_cache() -> bool:
    """Free the clean page cache (root only); False when not allowed."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    except OSError:
        return False
    return True


def datasets(kind: str, count: int, offset: int = 0) -> list[Dataset]:
    return [synthetic_dataset(_ROOT, offset + i, size=SIZES[kind]) for i in range(count)]


# --- writing ---------------------------------------------------------------------------


def write_plain(directory: Path, items: list[Dataset]) -> None:
    for i, ds in enumerate(items):
        pydicom.dcmwrite(directory / f"{i}.dcm", ds, enforce_file_format=True)


def write_staged(directory: Path, items: list[Dataset], durable: bool) -> None:
    with Stager(directory, durable=durable) as stager:
        for ds in items:
            stager.stage(ds)


def write_staged_many(directory: Path, items: list[Dataset], durable: bool) -> None:
    with Stager(directory, durable=durable) as stager:
        stager.stage_many(items)


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
        spans: list[tuple[float, float]] = _collect(out, workers, len(workers))
        for w in workers:
            w.join()
        rates.append(share * procs / (max(e for _, e in spans) - min(s for s, _ in spans)))
    return statistics.median(rates)


# --- committing ------------------------------------------------------------------------


def prepare_foreign(bench: Bench, items: list[Dataset]) -> tuple[Path, Path]:
    """Files another tool wrote earlier: on disk already (synced before timing), no journal."""
    staging = bench.fresh("staging")
    write_plain(staging, items)
    os.sync()
    return staging, bench.root / f"{bench._dirs:04d}-archive"


def prepare_staged(bench: Bench, items: list[Dataset]) -> tuple[Path, Path]:
    """Files staged by Stager in its default, durable mode."""
    staging = bench.fresh("staging")
    write_staged_many(staging, items, durable=True)
    return staging, bench.root / f"{bench._dirs:04d}-archive"


def floor_link_unlink(dirs: tuple[Path, Path], targets: list[str]) -> None:
    """The raw floor: link each file to a name known in advance, then unlink it."""
    staging, archive = dirs
    made: set[str] = set()
    for i, rel in enumerate(targets):
        parent = os.path.dirname(rel)
        if parent not in made:
            os.makedirs(archive / parent, exist_ok=True)
            made.add(parent)
        os.link(staging / f"{i}.dcm", archive / rel)
        os.unlink(staging / f"{i}.dcm")


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


def our_commit(dirs: tuple[Path, Path]) -> None:
    # The bench wrote its foreign files a moment ago: no settle time, or none would be taken.
    report = commit(dirs[0], dirs[1], settle=0)
    if report.left_in_place:  # a benchmark that did not do the work must not report a figure
        raise RuntimeError(f"commit left {len(report.left_in_place)} files in place: {report.left_in_place[0]}")


def commit_bytes_read(bench: Bench) -> list[dict[str, Any]]:
    """Bytes one commit reads for one foreign file of 0.5 MB and of 50 MB (from /proc/self/io:
    everything read, the manifest included)."""
    results = []
    for label, size in (("0.5 MB", 512), ("50 MB", 5120)):
        staging = bench.fresh(f"bytes-{size}")
        path = staging / f"{size}.dcm"
        pydicom.dcmwrite(path, synthetic_dataset(_ROOT, size, size=size), enforce_file_format=True)
        file_bytes = path.stat().st_size
        before = _rchar()
        commit(staging, bench.root / f"{bench._dirs:04d}-archive", settle=0)
        used = _rchar() - before
        results.append({"file": label, "file_bytes": file_bytes, "bytes_read_by_commit": used})
    return results


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


# --- scale -----------------------------------------------------------------------------


def _collect(out: Any, children: list[Any], count: int) -> list[Any]:
    """*count* results from the children's queue; fails, instead of waiting forever, when a
    child dies without sending its result."""
    results: list[Any] = []
    while len(results) < count:
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a benchmark child failed (exit code {dead[0].exitcode}); see its stderr") from None
    return results


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
    peak_kib = _peak_rss_kib()
    out.put(
        {"files": report.committed, "seconds": elapsed, "manifest_seconds": spent[0], "peak_rss_mb": peak_kib / 1024}
    )


def _peak_rss_kib() -> int:
    """This process image's peak RSS. Not ru_maxrss: Linux carries that across exec, so a
    spawned child would report its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _stage_range(directory: str, start: int, count: int) -> None:
    with Stager(directory, durable=False) as stager:
        for i in range(start, start + count):
            stager.stage(synthetic_dataset(_ROOT, i))


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
        archive = bench.root / f"{bench._dirs:04d}-arch"
        child = fresh.Process(target=_scaled_commit, args=(str(staging), str(archive), out))
        child.start()
        results += _collect(out, [child], 1)
        child.join()
    return results


def bench_kind(bench: Bench, kind: str, n: int) -> list[Row]:
    """Writing and committing *n* files of one size, each against its baselines."""
    rows = []
    items = datasets(kind, n)
    template = parse_template(DEFAULT_TEMPLATE)
    targets = [template.render(attrs_from_dataset(ds, template.keywords)) for ds in items]
    fresh = bench.fresh
    w = bench.compare(n, {
        "plain": (lambda: fresh("plain"), lambda d: write_plain(d, items)),
        "stage-off": (lambda: fresh("stage"), lambda d: write_staged(d, items, False)),
        "stage-on": (lambda: fresh("stage"), lambda d: write_staged(d, items, True)),
        "many-off": (lambda: fresh("many"), lambda d: write_staged_many(d, items, False)),
        "many-on": (lambda: fresh("many"), lambda d: write_staged_many(d, items, True)),
    }, cold=True)  # fmt: skip
    plain = w["plain"]
    rows.append(Row("pydicom.dcmwrite", kind, n, plain))
    for key, label, limit in (
        ("stage-off", "Stager.stage (fsync off)", 1.05),
        ("stage-on", "Stager.stage (fsync on)", 1.35),
        ("many-off", "Stager.stage_many (fsync off)", 1.05),
        ("many-on", "Stager.stage_many (fsync on)", 1.35),
    ):
        slowdown = plain / w[key]
        rows.append(Row(label, kind, n, w[key], "pydicom.dcmwrite", slowdown, f"time <= {limit}x", slowdown <= limit))

    c = bench.compare(n, {
        "floor": (lambda: prepare_foreign(bench, items), lambda d: floor_link_unlink(d, targets)),
        "naive": (lambda: prepare_foreign(bench, items), naive_commit),
        "staged": (lambda: prepare_staged(bench, items), our_commit),
        "foreign": (lambda: prepare_foreign(bench, items), our_commit),
    })  # fmt: skip
    floor, naive, staged, foreign = c["floor"], c["naive"], c["staged"], c["foreign"]
    rows.append(Row("link+unlink floor", kind, n, floor))
    rows.append(Row("naive dcmread commit", kind, n, naive, "link+unlink floor", naive / floor))
    rows.append(Row("commit (staged files)", kind, n, staged, "link+unlink floor", staged / floor, ">= 0.25x",
                    staged / floor >= 0.25))  # fmt: skip
    rows.append(Row("commit (foreign files)", kind, n, foreign, "naive dcmread commit", foreign / naive, ">= 2x",
                    foreign / naive >= 2))  # fmt: skip
    return rows


def bench_pg(bench: Bench, n: int) -> list[Row]:
    """The PostgreSQL manifest, tiny files: one committer against SQLite, two against one."""
    kind = "tiny"
    items = datasets(kind, n)
    with _bench_pg.server(bench) as pg:
        c = _bench_pg.vs_sqlite(bench, pg, items)
        p = _bench_pg.committers(bench, pg, [items, datasets(kind, n, n)])
    sqlite, one = "commit, SQLite manifest", "commit, PostgreSQL, 1 process"
    return [
        Row(sqlite, kind, n, c["sqlite"]),
        Row("commit, PostgreSQL manifest", kind, n, c["pg"], sqlite, c["pg"] / c["sqlite"], ">= 0.6x",
            c["pg"] / c["sqlite"] >= 0.6),
        Row(one, kind, n, p[1]),
        # Each process commits n files of its own: the same work per process as the one alone.
        Row(f"commit, PostgreSQL, 2 x {n} files", kind, 2 * n, p[2], one, p[2] / p[1], ">= 1.6x", p[2] / p[1] >= 1.6),
    ]  # fmt: skip


def bench_s3(bench: Bench, n: int, loop_files: int) -> tuple[list[Row], dict[str, Any]]:
    """Committing tiny files into an object store, against a sequential ``put_object`` loop,
    with 20 ms added to every request, and with none; and the CPU each side spends per file."""
    kind = "tiny"
    items = datasets(kind, n)
    rows = []
    with _bench_s3.store(bench) as (server, proxy):
        for delay in (20, 0):
            r = _bench_s3.vs_put_loop(bench, server, proxy, items, delay_ms=delay, loop_files=loop_files)
            loop = f"put_object loop, {delay} ms added"
            ratio = r["ours"] / r["loop"]
            target = (">= 10x", ratio >= 10) if delay else ("", None)
            rows += [Row(loop, kind, loop_files, r["loop"]),
                     Row(f"commit into S3, {delay} ms added", kind, n, r["ours"], loop, ratio, *target)]  # fmt: skip
        cpu = _bench_s3.client_cpu_per_file(proxy, server, bench, items)
    return rows, cpu


def bench_receive(bench: Bench, args: argparse.Namespace) -> tuple[list[Row], dict[str, Any]]:
    """One stream (re-sends and second versions in it) sent by 4 storescu at once to each receiver."""
    kind = args.receive_kind
    n = args.receive_files or (args.files if kind == "tiny" else args.ct_files)
    r = _bench_receive.measure(bench, n, kind=kind, size=SIZES[kind], nodelay=not args.receive_nagle)
    return [Row(**row) for row in r.pop("rows")], r


# --- the run ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    load = os.getloadavg()[0]  # other work on the machine skews every figure, ratios of processes most
    with tempfile.TemporaryDirectory(prefix="dicomcommit-bench-", dir=args.dir) as tmp:
        bench = Bench(Path(tmp), args.runs)
        if args.only is None:
            rows += run_files(bench, args, extra)
        if args.no_s3 or args.only not in (None, "s3"):
            extra["s3_skipped"] = "--no-s3" if args.no_s3 else f"--only {args.only}"
        else:
            try:
                s3_rows, extra["s3_cpu"] = bench_s3(bench, args.s3_files or args.files, args.s3_loop_files)
                rows += s3_rows
            except _bench_s3.Unavailable as exc:
                extra["s3_skipped"] = str(exc)
        if args.no_pg or args.only not in (None, "pg"):
            extra["pg_skipped"] = "--no-pg" if args.no_pg else f"--only {args.only}"
        else:
            try:
                rows += bench_pg(bench, args.pg_files or args.files)
            except _bench_pg.Unavailable as exc:
                extra["pg_skipped"] = str(exc)
        if args.no_receive or args.only not in (None, "receive"):
            extra["receive_skipped"] = "--no-receive" if args.no_receive else f"--only {args.only}"
        else:
            try:
                receive_rows, extra["receive"] = bench_receive(bench, args)
                rows += receive_rows
            except _bench_receive.Unavailable as exc:
                extra["receive_skipped"] = str(exc)
        shutil.rmtree(tmp, ignore_errors=True)  # deleting is left to the very end
    extra["load_average"] = {"cpus": os.cpu_count(), "start": load, "end": os.getloadavg()[0]}
    dropped = None if args.only is not None else bench.cache_dropped  # (None: no run writes from a cold cache)
    return {"runs": args.runs, "page_cache_dropped": dropped, "rows": [asdict(r) for r in rows], **extra}


def run_files(bench: Bench, args: argparse.Namespace, extra: dict[str, Any]) -> list[Row]:
    """Everything but the PostgreSQL manifest's rows (adding the bytes read and the scaling check to *extra*)."""
    rows: list[Row] = []
    for kind in args.kinds:
        rows += bench_kind(bench, kind, args.files if kind == "tiny" else args.ct_files)
    kind = args.kinds[0] if args.kinds else "tiny"
    for many, label in ((False, "stage, fsync off"), (True, "stage_many, durable")):
        one = stage_in_processes(bench, kind, args.files, 1, many=many)
        two = stage_in_processes(bench, kind, args.files, 2, many=many)
        rows.append(Row(f"{label}, 1 process", kind, args.files, one))
        rows.append(Row(f"{label}, 2 processes", kind, args.files, two, f"{label}, 1 process", two / one,
                        ">= 1.8x", two / one >= 1.8))  # fmt: skip

    extra["header_bytes"] = commit_bytes_read(bench)
    if args.scale:
        small, large = scaled(bench, [args.scale // 10, args.scale])
        extra["scale"] = {
            "small": small,
            "large": large,
            "time_ratio": large["seconds"] / small["seconds"],
            "time_ratio_ok": large["seconds"] / small["seconds"] <= 11,
            "peak_rss_ok": large["peak_rss_mb"] < 200,
            "manifest_share": large["manifest_seconds"] / large["seconds"],
            "manifest_share_ok": large["manifest_seconds"] / large["seconds"] <= 0.10,
        }
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"medians over {result['runs']} runs; ratios are against baselines measured in this run")
    if result["page_cache_dropped"] is not None:
        dropped = "emptied" if result["page_cache_dropped"] else "not emptied (needs root)"
        print(f"page cache before each write run: {dropped}")
    load = result["load_average"]
    print(f"load average (1 min) at start and end: {load['start']:.1f}, {load['end']:.1f} ({load['cpus']} CPUs)\n")
    print(f"{'variant':<34} {'kind':<5} {'files':>6} {'files/s':>9}  {'ratio':>7}  {'vs':<28} {'target':<14} ok")
    for r in result["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"{r['name']:<34} {r['kind']:<5} {r['files']:>6} {r['rate']:>9,.0f}  {ratio:>7}  "
              f"{r['baseline']:<28} {r['target']:<14} {ok}")  # fmt: skip
    if "pg_skipped" in result:
        print(f"\nPostgreSQL manifest rows skipped: {result['pg_skipped']}")
    if "s3_skipped" in result:
        print(f"\nobject-store rows skipped: {result['s3_skipped']}")
    if "s3_cpu" in result:
        c = result["s3_cpu"]
        print(f"\nCPU per file committed into S3 ({c['files']:,} files): commit {c['commit_cpu_ms_per_file']:.2f} ms, "
              f"the moto server {c['moto_cpu_ms_per_file']:.2f} ms")  # fmt: skip
        loop = next((r["rate"] for r in result["rows"] if r["name"] == "put_object loop, 20 ms added"), None)
        if loop and c["moto_cpu_ms_per_file"] > 0:
            bound = 1000 / c["moto_cpu_ms_per_file"]  # one PUT per file, and moto runs them one at a time
            print(f"  the server alone accepts at most {bound:,.0f} files/s: {bound / loop:.1f}x the 20 ms loop, "
                  "for any client")  # fmt: skip
    if "receive_skipped" in result:
        print(f"\nreceivers' rows skipped: {result['receive_skipped']}")
    if "receive" in result:
        _bench_receive.print_summary(result["receive"])
    if "header_bytes" in result:
        print("\nbytes one commit reads for one foreign file (header, manifest and all):")
        for h in result["header_bytes"]:
            print(f"  {h['file']:>7} file ({h['file_bytes']:,} bytes): {h['bytes_read_by_commit']:,} bytes read")
    if "scale" in result:
        s = result["scale"]
        print(
            f"\nscale: {s['small']['files']:,} files in {s['small']['seconds']:.2f} s; "
            f"{s['large']['files']:,} files in {s['large']['seconds']:.2f} s "
            f"-> {s['time_ratio']:.2f}x time (target <= 11x: {'yes' if s['time_ratio_ok'] else 'NO'})"
        )
        rss_ok = "yes" if s["peak_rss_ok"] else "NO"
        print(f"  peak RSS {s['large']['peak_rss_mb']:.0f} MB (target < 200 MB: {rss_ok}); "
              f"manifest writes {s['manifest_share']:.1%} of commit time "
              f"(target <= 10%: {'yes' if s['manifest_share_ok'] else 'NO'})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few files, one run, tiny files only")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant [3]")
    parser.add_argument("--files", type=int, default=2000, help="tiny files per run [2000]")
    parser.add_argument("--ct-files", type=int, default=400, help="0.5 MB files per run [400]")
    parser.add_argument("--scale", type=int, default=100_000, help="files for the scaling check, 0 to skip [100000]")
    parser.add_argument("--dir", default=None, help="where to put the data [the system temp dir]")
    parser.add_argument("--kinds", nargs="*", choices=sorted(SIZES), default=["tiny", "ct"],
                        help="dataset sizes (none: only the scaling check)")  # fmt: skip
    parser.add_argument("--pg-files", type=int, default=None,
                        help="tiny files per committer in the PostgreSQL manifest's rows [--files]")  # fmt: skip
    parser.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL manifest's rows")
    parser.add_argument("--s3-files", type=int, default=None, help="tiny files per commit into S3 [--files]")
    parser.add_argument("--s3-loop-files", type=int, default=200,
                        help="files per run of the sequential put_object loop (its rate per file) [200]")  # fmt: skip
    parser.add_argument("--no-s3", action="store_true", help="skip the object-store rows")
    parser.add_argument("--receive-files", type=int, default=None,
                        help="distinct instances in the receivers' stream [--files; --ct-files for ct]")  # fmt: skip
    parser.add_argument("--receive-kind", choices=sorted(SIZES), default="tiny", help="its files' size [tiny]")
    parser.add_argument("--receive-nagle", action="store_true",
                        help="leave Nagle's algorithm on in DCMTK (its default; TCP_NODELAY=1 otherwise)")  # fmt: skip
    parser.add_argument("--no-receive", action="store_true", help="skip the receivers' rows")
    parser.add_argument("--only", choices=["pg", "s3", "receive"], default=None,
                        help="run only these rows (pg: the PostgreSQL ones; s3: the object-store ones; "
                        "receive: the receivers side by side)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.files, args.ct_files, args.scale, args.kinds = 1, 40, 10, 400, ["tiny"]
        args.pg_files = min(args.pg_files or 40, 40)
        args.s3_loop_files = min(args.s3_loop_files, 20)
        args.receive_files = min(args.receive_files or 40, 40)
    for name in ("pg", "s3", "receive"):
        if args.only == name and getattr(args, f"no_{name}"):
            parser.error(f"--only {name} and --no-{name} leave nothing to run")
    result = run(args)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
