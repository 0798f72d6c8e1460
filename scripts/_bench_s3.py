"""The object-store archive's measurements for scripts/bench.py (which turns them into rows).

:func:`vs_put_loop` (the issue's ``s3_commit_vs_put_loop``): files/s of one ``commit()`` of N
staged files into ``s3://bucket/prefix``, against a sequential boto3 ``put_object`` loop of
the same files' bytes (no condition, no checksum: the cheapest thing a script can do), both
through the same fault proxy (tests/s3_proxy.py) with ``delay_ms`` added to every request,
a WAN-like round trip, in front of the same moto server (tests/s3_server.py, a process of its
own on loopback). The loop runs on the first ``loop_files`` files only: its rate per file is
what it is, and 2,000 sequential round trips would take a minute a run.

Both also run with no added delay: then the moto server, a Python process at about 3-4 ms of
CPU per PUT on this machine's 2 cores, bounds both, and the ratio says how much of the
client's own cost commit hides.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicomcommit import Stager, commit

if TYPE_CHECKING:
    from tests.s3_proxy import FaultProxy
    from tests.s3_server import MotoServer

    from _bench_core import Bench

_REPO = Path(__file__).resolve().parent.parent


class Unavailable(Exception):
    """boto3 or moto is missing: the object-store rows are skipped, for this reason."""


@contextlib.contextmanager
def store(bench: Bench) -> Iterator[tuple[MotoServer, FaultProxy]]:
    """A moto server and a fault proxy in front of it, under the bench's directory while they run.

    Raises:
        Unavailable: boto3 or moto is not installed.
    """
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))  # the test suite's servers
    try:
        from tests.s3_proxy import FaultProxy  # noqa: PLC0415 -- boto3 and moto only when wanted
        from tests.s3_server import MotoServer  # noqa: PLC0415
    except ImportError as exc:
        raise Unavailable(f"boto3 or moto is missing ({exc}): pip install -e '.[dev]'") from exc
    with MotoServer(bench.fresh("moto")) as server, FaultProxy(server.port, bench.fresh("proxy")) as proxy:
        yield server, proxy


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """This process's AWS chain pointed at the proxy, for the span of a measurement."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def vs_put_loop(
    bench: Bench, server: MotoServer, proxy: FaultProxy, items: list[Dataset], *, delay_ms: float, loop_files: int
) -> dict[str, float]:
    """Median files/s of ``commit`` (``ours``) and of the sequential put loop (``loop``)."""
    proxy.clear(stats=True)
    if delay_ms:
        proxy.add("*", action="delay", delay_ms=delay_ms, count=None)
    from tests.s3_server import s3_client  # noqa: PLC0415 -- (importable: store() checked)

    rates: dict[str, list[float]] = {"ours": [], "loop": []}
    with _environment(proxy.env()):
        for _ in range(bench.runs):
            bucket = server.create_bucket()
            staging = bench.fresh("s3-staging")
            with Stager(staging, durable=True) as stager:
                paths = stager.stage_many(items)
            blobs = [p.read_bytes() for p in paths[:loop_files]]
            manifest = str(bench.fresh("s3-manifest") / "manifest.sqlite")

            started = time.perf_counter()
            report = commit(staging, f"s3://{bucket}/ours", manifest=manifest)
            rates["ours"].append(len(items) / (time.perf_counter() - started))
            if report.committed != len(items):
                raise RuntimeError(f"commit committed {report.committed} of {len(items)} files")

            loop = s3_client(proxy.endpoint)  # through the same proxy; made before timing
            try:
                started = time.perf_counter()
                for i, blob in enumerate(blobs):
                    loop.put_object(Bucket=bucket, Key=f"loop/{i}.dcm", Body=blob)
                rates["loop"].append(len(blobs) / (time.perf_counter() - started))
            finally:
                loop.close()
    proxy.clear()
    return {name: statistics.median(values) for name, values in rates.items()}


def client_cpu_per_file(proxy: FaultProxy, server: MotoServer, bench: Bench, items: list[Dataset]) -> dict[str, Any]:
    """CPU seconds this process spends per file committed, and the moto server's (from /proc)."""
    bucket = server.create_bucket()
    staging = bench.fresh("s3-cpu")
    with Stager(staging, durable=True) as stager:
        stager.stage_many(items)
    manifest = str(bench.fresh("s3-cpu-manifest") / "manifest.sqlite")
    proxy.clear(stats=True)
    with _environment(proxy.env()):
        ours, theirs = os.times(), _cpu_of(server.pid)
        commit(staging, f"s3://{bucket}/cpu", manifest=manifest)
        after, theirs_after = os.times(), _cpu_of(server.pid)
    n = len(items)
    return {
        "files": n,
        "commit_cpu_ms_per_file": 1000 * (after.user + after.system - ours.user - ours.system) / n,
        "moto_cpu_ms_per_file": 1000 * (theirs_after - theirs) / n,
    }


def _cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
