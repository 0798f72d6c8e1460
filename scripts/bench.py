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
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import _bench_files as files
import _bench_ingest
import _bench_pg
import _bench_receive
import _bench_s3
from _bench_core import Bench, Row

SIZES = files.SIZES


def bench_pg(bench: Bench, n: int) -> list[Row]:
    """The PostgreSQL manifest, tiny files: one committer against SQLite, two against one."""
    kind = "tiny"
    items = files.datasets(kind, n)
    with _bench_pg.server(bench) as pg:
        c = _bench_pg.vs_sqlite(bench, pg, items)
        p = _bench_pg.committers(bench, pg, [items, files.datasets(kind, n, n)])
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
    items = files.datasets(kind, n)
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
        n = args.files if kind == "tiny" else args.ct_files
        rows += files.bench_staging(bench, kind, n)
        rows += files.bench_commit(bench, kind, n)
    rows += files.bench_stagers(bench, args.kinds[0] if args.kinds else "tiny", args.files)
    if args.ingest_files:
        rows += _bench_ingest.bench_ingest(bench, args.ingest_files)
    extra["header_bytes"] = files.commit_bytes_read(bench)
    if args.scale:
        extra["scale"] = files.scale_summary(*files.scaled(bench, [args.scale // 10, args.scale]))
    return rows


def print_table(result: dict[str, Any]) -> None:
    print(f"medians over {result['runs']} runs; ratios are against baselines measured in this run")
    if result["page_cache_dropped"] is not None:
        dropped = "emptied" if result["page_cache_dropped"] else "not emptied (needs root)"
        print(f"page cache before each write run: {dropped}")
    load = result["load_average"]
    print(f"load average (1 min) at start and end: {load['start']:.1f}, {load['end']:.1f} ({load['cpus']} CPUs)\n")
    print(f"{'variant':<36} {'kind':<5} {'files':>6} {'files/s':>9}  {'ratio':>7}  {'vs':<36} {'target':<14} ok")
    for r in result["rows"]:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"{r['name']:<36} {r['kind']:<5} {r['files']:>6} {r['rate']:>9,.0f}  {ratio:>7}  "
              f"{r['baseline']:<36} {r['target']:<14} {ok}")  # fmt: skip
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
    parser.add_argument("--files", type=int, default=4000, help="tiny files per run [4000]")
    parser.add_argument("--ct-files", type=int, default=1000, help="0.5 MB files per run [1000]")
    parser.add_argument("--ingest-files", type=int, default=5100,
                        help="DICOM files in the tree ingest copies, 0 to skip [5100]")  # fmt: skip
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
        args.ingest_files = min(args.ingest_files, 60)
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
