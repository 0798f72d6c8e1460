"""Many hosts, one object-store archive, one PostgreSQL manifest: committers at once on
overlapping sets, and a committer killed mid-batch that another host's recover finishes.

Each "host" is a process with its own DICOMCOMMIT_HOST and its own local staging directory;
they share nothing but the bucket (through the fault proxy, which adds a delay to every
request so that their requests interleave) and the database.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

from dicomcommit import Stager
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Record, Status
from tests.s3_proxy import FaultProxy
from tests.s3_server import MotoServer
from tests.test_s3 import data_keys


def _records(url: str) -> list[Record]:
    with open_manifest("unused", manifest=url) as opened:
        return opened.records()


def _commit(
    staging: Path, archive: str, url: str, env: dict[str, str], host: str, *options: str, **extra: str
) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "dicomcommit", "commit", str(staging), archive, "--manifest", url, "--json",
            "--batch-size", "25", *options]  # fmt: skip
    return subprocess.Popen(argv, env={**env, "DICOMCOMMIT_HOST": host, **extra}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_three_hosts_commit_overlapping_sets_at_once(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    s3_proxy: FaultProxy,
    pg_url: str,
    make_ds: Callable[..., Dataset],
) -> None:
    """Host 0 stages instances 0-59, host 1 20-79 (the same bytes), host 2 0-79 with other
    bytes for every third one: each name ends with one object, committed once; every staged
    file has exactly one row, under its own host."""
    archive = f"s3://{s3_bucket}/shared"
    plans = {
        "h0": [make_ds(i) for i in range(60)],
        "h1": [make_ds(i) for i in range(20, 80)],
        "h2": [make_ds(i, 1 if i % 3 == 0 else 0) for i in range(80)],
    }
    stagings = {}
    for host, datasets in plans.items():
        stagings[host] = tmp_path / host
        stagings[host].mkdir()
        Stager(stagings[host]).stage_many(datasets)
    s3_proxy.add("*", action="delay", delay_ms=5, count=None)
    raced = s3_proxy.add("PUT", action="status", status=409, header="If-None-Match", path=r"\.dcm$", count=5)

    env = s3_proxy.env()
    procs = {host: _commit(stagings[host], archive, pg_url, env, host) for host in plans}
    for host, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 3), f"{host}: {err}"
        json.loads(out)

    records = _records(pg_url)
    assert Counter(r.host for r in records) == {host: len(d) for host, d in plans.items()}
    assert len({(r.host, r.source) for r in records}) == len(records)
    for staging in stagings.values():
        assert list(staging.glob("*.dcm")) == []
    committed = [r for r in records if r.status is Status.COMMITTED]
    assert len({r.path for r in committed}) == len(committed) == 80
    by_target = {r.path: r for r in committed}
    for r in records:
        key = f"shared/{r.path}"
        assert hashlib.sha256(s3_server.read(s3_bucket, key)).hexdigest() == r.sha256, r
        if r.status is Status.DUPLICATE:  # of a committed file, or of a conflict's kept copy
            kept = by_target.get(r.path) or next(c for c in records if c.status is Status.CONFLICT and c.path == r.path)
            assert r.sha256 == kept.sha256
        if r.status is Status.CONFLICT:
            assert r.path == f".dicomcommit/conflicts/{r.sha256}.dcm"
            assert r.sha256 != by_target[r.target or ""].sha256
    # Every third instance has two contents: one is committed, the other kept as one conflict
    # (and, staged twice, once more recorded as its duplicate).
    assert sum(r.status is Status.CONFLICT for r in records) == 27
    assert s3_proxy.fired(raced) == 5
    versions = s3_server.versions(s3_bucket)
    assert all(len(v) == 1 and not v[0]["DeleteMarker"] for v in versions.values()), versions
    check = subprocess.run([sys.executable, "-m", "dicomcommit", "recover", archive, "--manifest", pg_url, "--check"],
                           env=env, capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_host_killed_mid_batch_is_finished_by_another_hosts_recover(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    s3_proxy: FaultProxy,
    pg_url: str,
    make_ds: Callable[..., Dataset],
) -> None:
    archive = f"s3://{s3_bucket}/k"
    staging = tmp_path / "h0"
    staging.mkdir()
    Stager(staging).stage_many([make_ds(i) for i in range(30)])
    env = {**s3_proxy.env(), "DICOMCOMMIT_LEASE_SECONDS": "1"}
    killed = _commit(staging, archive, pg_url, env, "h0", DICOMCOMMIT_CRASH_AT="commit:after-link:5")
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    time.sleep(2.5)  # its lease expires (and a PUT that was on its way when it died lands)
    placed = len(data_keys(s3_server, s3_bucket))
    assert placed >= 5

    other = subprocess.run([sys.executable, "-m", "dicomcommit", "recover", archive, "--manifest", pg_url, "--json"],
                           env={**env, "DICOMCOMMIT_HOST": "h9"}, capture_output=True, text=True, check=False,
                           timeout=120)  # fmt: skip
    report = json.loads(other.stdout)
    assert len(report["claims_finished"]) == placed, other.stdout
    assert len(report["claims_ended"]) == 25 - placed  # the first batch's 25 claims, less those finished

    rerun = _commit(staging, archive, pg_url, env, "h0")
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    records = _records(pg_url)
    assert len(records) == 30
    assert {r.status for r in records} == {Status.COMMITTED}
    assert {r.host for r in records} == {"h0"}
    assert list(staging.glob("*.dcm")) == []
    versions = s3_server.versions(s3_bucket)
    assert len(data_keys(s3_server, s3_bucket)) == 30
    assert all(len(v) == 1 and not v[0]["DeleteMarker"] for v in versions.values())


def test_a_lost_reply_is_recognised_as_our_own_write(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    s3_proxy: FaultProxy,
    pg_url: str,
    make_ds: Callable[..., Dataset],
) -> None:
    """Two hosts stage the same 10 files. Each PUT of theirs lands but its reply is lost, so it
    is sent again and meets an object with these bytes, while the other host's claim on them is
    live. The token on the object says which write it was: one committed row per name (each
    was a duplicate on both hosts, and no row said where the bytes came from)."""
    archive = f"s3://{s3_bucket}/lost"
    stagings = {}
    for n, host in enumerate(("h0", "h1")):
        stagings[host] = tmp_path / host
        stagings[host].mkdir()
        Stager(stagings[host]).stage_many([make_ds(i) for i in range(10)])
        Stager(stagings[host]).stage_many([make_ds(i) for i in range(100 + 20 * n, 120 + 20 * n)])
    s3_proxy.add("*", action="delay", delay_ms=100, count=None)
    lost = s3_proxy.add("PUT", action="drop_after_forward", path=r"\.3\.[0-9]\.dcm$", count=10)
    env = {**s3_proxy.env(), "DICOMCOMMIT_S3_TIMEOUT": "5"}
    procs = [_commit(stagings[host], archive, pg_url, env, host, "--jobs", "1") for host in stagings]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 3), err
    assert s3_proxy.fired(lost) == 10
    shared = [r for r in _records(pg_url) if r.path.endswith(tuple(f".3.{i}.dcm" for i in range(10)))]
    assert Counter(r.status for r in shared) == {Status.COMMITTED: 10, Status.DUPLICATE: 10}
    assert all(not list(s.glob("*.dcm")) for s in stagings.values())
