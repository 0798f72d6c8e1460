"""Object-store archives (s3://bucket/prefix) against a real S3-compatible server process on
loopback (moto, tests/s3_server.py), through a fault-injecting proxy of our own (tests/s3_proxy.py).

Every bucket is versioned: a key with more than one version was overwritten, which only a
person's recorded decision (resolve --keep staged) may do.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomcommit import Stager, commit, ingest, recover, resolve_many
from dicomcommit.archives import open_archive
from dicomcommit.archives.s3 import S3Archive
from dicomcommit.cli.main import main
from dicomcommit.errors import NoClobberUnsupported, ObjectStoreError, UsageError
from dicomcommit.manifests import open_manifest
from dicomcommit.manifests.records import Record, Status
from dicomcommit.naming import DEFAULT_TEMPLATE, attrs_from_dataset, parse_template
from tests.s3_proxy import FaultProxy
from tests.s3_server import MotoServer

Env = dict[str, str]


def DEFAULT_TEMPLATE_RENDER(ds: Dataset) -> str:  # noqa: N802 -- reads as the template it renders
    template = parse_template(DEFAULT_TEMPLATE)
    return template.render(attrs_from_dataset(ds, template.keywords))


@pytest.fixture
def store(s3_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    """This process reaches the server through the proxy, by the standard AWS chain; a request
    the proxy holds times out after 2 s (then botocore retries it)."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3_proxy.env({}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DICOMCOMMIT_S3_TIMEOUT", "2")
    return s3_proxy


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files above 5 MiB (S3's smallest part) go multipart, in 5 MiB parts."""
    monkeypatch.setattr(S3Archive, "multipart_threshold", 5 << 20)
    monkeypatch.setattr(S3Archive, "part_size", 5 << 20)


def stage(staging: Path, datasets: list[Dataset]) -> list[Path]:
    return Stager(staging).stage_many(datasets)


def rows(manifest: str) -> list[Record]:
    with open_manifest("unused", manifest=manifest) as opened:
        return opened.records()


def data_keys(server: MotoServer, bucket: str) -> list[str]:
    """The keys of committed files (not dicomcommit's own, below .dicomcommit/)."""
    return [key for key in server.keys(bucket) if "/.dicomcommit/" not in key]


def one_version_each(server: MotoServer, bucket: str, *, except_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every key of the bucket has exactly one version and no delete marker (nothing overwritten)."""
    versions = server.versions(bucket)
    bad = {k: v for k, v in versions.items() if k not in except_keys and (len(v) != 1 or v[0]["DeleteMarker"])}
    assert not bad, bad
    return versions


def check_archive(server: MotoServer, bucket: str, prefix: str, manifest: str) -> list[Record]:
    """Every row's path holds an object with the row's bytes, which carry their sha256 on them."""
    found = rows(manifest)
    for row in found:
        key = f"{prefix}/{row.path}"
        head = server.admin.head_object(Bucket=bucket, Key=key)
        assert head["Metadata"]["sha256"] == row.sha256, row
        assert hashlib.sha256(server.read(bucket, key)).hexdigest() == row.sha256
    return found


def cli(argv: list[str], env: Env, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicomcommit", *argv], env=env, capture_output=True, text=True,
                          check=False, timeout=timeout)  # fmt: skip


# -- commit ---------------------------------------------------------------------------------


def test_commit_creates_each_object_once_with_its_hash(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    staged = stage(staging, [make_ds(i) for i in range(30)])
    expected = {hashlib.sha256(p.read_bytes()).hexdigest() for p in staged}

    report = commit(staging, f"s3://{s3_bucket}/arch", manifest=manifest)

    assert report.counts()["committed"] == 30
    assert [p.name for p in staging.iterdir() if not p.name.startswith(".")] == []
    found = check_archive(s3_server, s3_bucket, "arch", manifest)
    assert {r.sha256 for r in found} == expected
    versions = one_version_each(s3_server, s3_bucket)
    assert len([key for key in versions if "/.dicomcommit/" not in key]) == 30
    key = f"arch/{found[0].path}"
    assert s3_server.admin.head_object(Bucket=s3_bucket, Key=key)["ContentType"] == "application/dicom"
    # One create-only PUT per file: no HEAD, no GET before a write. (And the probe's two: created,
    # then refused, as it is on every later run: the store does not overwrite.)
    assert store.requests("PUT") == 30 + 2
    assert store.requests("GET") == 0
    assert s3_server.read(s3_bucket, "arch/.dicomcommit/no-clobber-probe")


def test_duplicates_and_conflicts_are_answered_by_a_head_and_kept_under_their_hash(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/p/q"
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(10)])
    commit(staging, url, manifest=manifest)
    again = stage(staging, [make_ds(i) for i in range(4)] + [make_ds(i, 1) for i in range(4, 7)])
    different = {hashlib.sha256(p.read_bytes()).hexdigest() for p in again[4:]}
    store.clear(stats=True)

    report = commit(staging, url, manifest=manifest)

    assert report.counts() == {"committed": 0, "duplicates": 4, "conflicts": 3, "invalid": 0, "skipped": 0}
    conflicts = [r for r in check_archive(s3_server, s3_bucket, "p/q", manifest) if r.status is Status.CONFLICT]
    assert {r.path for r in conflicts} == {f".dicomcommit/conflicts/{sha}.dcm" for sha in different}
    assert all(r.existing_sha256 not in (None, r.sha256) for r in conflicts)
    one_version_each(s3_server, s3_bucket)
    assert store.requests("GET") == 0  # each 412 answered by a HEAD, not a download
    assert store.requests("HEAD") >= 7


def test_without_obstore_boto3_sends_every_request(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    store: FaultProxy,
    make_ds: Callable[..., Dataset],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """obstore is the fast path's client; without it, boto3 alone gives the same outcomes."""
    assert S3Archive(f"s3://{s3_bucket}/a")._bucket._fast is not None  # installed here: the other tests use it
    monkeypatch.setattr("dicomcommit.archives.s3client._fast_store", lambda *_: None)
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/a"
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(8)])
    rule = store.add("PUT", action="status", status=409, header="If-None-Match", count=2)
    assert commit(staging, url, manifest=manifest).counts()["committed"] == 8
    assert store.fired(rule) == 2
    stage(staging, [make_ds(0), make_ds(1, 1)])
    counts = commit(staging, url, manifest=manifest).counts()
    assert (counts["duplicates"], counts["conflicts"]) == (1, 1)
    check_archive(s3_server, s3_bucket, "a", manifest)
    one_version_each(s3_server, s3_bucket)


def test_two_files_of_one_batch_that_want_one_name(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    """The first asks first: only it is sent ahead, so the second never races it into a second row."""
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    stage(staging, [make_ds(0), make_ds(0), make_ds(0, 1), make_ds(1)])
    sent: list[str] = []
    real = S3Archive.prepare

    def recording(self: S3Archive, placements: list[tuple[Any, str]]) -> None:
        sent.extend(rel for _, rel in placements)
        real(self, placements)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(S3Archive, "prepare", recording)
        report = commit(staging, f"s3://{s3_bucket}/a", manifest=manifest)
    assert len(sent) == len(set(sent)) == 2
    assert report.counts() == {"committed": 2, "duplicates": 1, "conflicts": 1, "invalid": 0, "skipped": 0}
    committed = [r.path for r in rows(manifest) if r.status is Status.COMMITTED]
    assert len(committed) == len(set(committed)) == 2
    one_version_each(s3_server, s3_bucket)


def test_large_files_go_multipart_with_the_same_condition(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    store: FaultProxy,
    make_ds: Callable[..., Dataset],
    small_parts: None,
) -> None:
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/big"
    staging.mkdir()
    big = [make_ds(0), make_ds(0, 1)]
    for i, ds in enumerate(big):
        ds.PixelData = bytes([i]) * (11 << 20)
    stage(staging, big[:1])
    assert commit(staging, url, manifest=manifest).counts()["committed"] == 1
    assert store.requests("POST") >= 2  # create and complete (the parts are PUTs)
    stage(staging, big[1:])

    report = commit(staging, url, manifest=manifest)

    assert report.counts()["conflicts"] == 1  # the completion was refused (412), the copy kept
    found = check_archive(s3_server, s3_bucket, "big", manifest)
    assert len(found) == 2
    assert all(r.size > 11 << 20 for r in found)
    one_version_each(s3_server, s3_bucket)
    uploads = s3_server.admin.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []  # none left open


def test_dry_run_writes_nothing(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(5)])
    report = commit(staging, f"s3://{s3_bucket}/a", manifest=manifest, dry_run=True)
    assert report.counts()["committed"] == 5
    assert s3_server.keys(s3_bucket) == []
    assert store.requests("PUT") == 0
    assert len(list(staging.glob("*.dcm"))) == 5


def test_ingest_copies_a_tree_into_the_store(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    source, manifest = tmp_path / "tree", str(tmp_path / "m.sqlite")
    (source / "a" / "b").mkdir(parents=True)
    for i in range(6):
        make_ds(i).save_as(source / "a" / ("b" if i % 2 else "") / f"f{i}.dcm", enforce_file_format=True)
    (source / "notes.txt").write_text("not DICOM")
    report = ingest(source, f"s3://{s3_bucket}/in", manifest=manifest)
    assert report.counts()["committed"] == 6
    assert len(check_archive(s3_server, s3_bucket, "in", manifest)) == 6
    assert (source / "a" / "f0.dcm").exists()  # copied, not moved
    one_version_each(s3_server, s3_bucket)


# -- what a user can get wrong, and what the store can refuse ----------------------------------


def test_an_object_store_needs_a_manifest(tmp_path: Path, store: FaultProxy, s3_bucket: str) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(UsageError, match="--manifest"):
        commit(staging, f"s3://{s3_bucket}/a")
    for argv in (
        ["commit", str(staging), f"s3://{s3_bucket}/a"],
        ["review", f"s3://{s3_bucket}/a"],
        ["recover", f"s3://{s3_bucket}/a"],
        ["resolve", f"s3://{s3_bucket}/a", "1", "--keep", "both"],
    ):
        assert main(argv) == 2, argv


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        ("gs://bucket/p", "unknown archive URL"),
        ("s3:///p", "s3://bucket/prefix"),
        ("s3://bucket/a/../b", "'..'"),
        ("s3://bucket//b", "empty"),
    ],
)
def test_malformed_archive_urls_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], archive: str, message: str
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    assert main(["commit", str(staging), archive, "--manifest", str(tmp_path / "m.sqlite")]) == 2
    assert message in capsys.readouterr().err


def test_jobs_must_be_a_positive_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    assert main(["commit", str(staging), "s3://bucket/p", "--manifest", str(tmp_path / "m"), "--jobs", "0"]) == 2


def test_a_bucket_that_does_not_exist(
    tmp_path: Path, store: FaultProxy, make_ds: Callable[..., Dataset], capsys: pytest.CaptureFixture[str]
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    staged = stage(staging, [make_ds(i) for i in range(3)])
    assert main(["commit", str(staging), "s3://no-such-bucket-here/a", "--manifest", manifest]) == 1
    assert "no bucket 'no-such-bucket-here'" in capsys.readouterr().err
    assert all(p.exists() for p in staged)


def test_a_bucket_that_refuses_writes(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    store: FaultProxy,
    make_ds: Callable[..., Dataset],
    capsys: pytest.CaptureFixture[str],
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    staged = stage(staging, [make_ds(i) for i in range(5)])
    store.add("PUT", action="status", status=403, code="AccessDenied", message="Access Denied", count=None)
    assert main(["commit", str(staging), f"s3://{s3_bucket}/a", "--manifest", manifest]) == 1
    err = capsys.readouterr().err
    assert "AccessDenied" in err
    assert all(p.exists() for p in staged)
    assert s3_server.keys(s3_bucket) == []
    assert rows(manifest) == []
    store.clear()
    assert commit(staging, f"s3://{s3_bucket}/a", manifest=manifest).counts()["committed"] == 5


def test_a_store_that_ignores_if_none_match_is_refused(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    """A store that answers 200 to a create-only PUT on an existing key would overwrite files:
    nothing is placed into it (the probe object is written create-only on every run)."""
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    staged = stage(staging, [make_ds(i) for i in range(3)])
    commit(staging, f"s3://{s3_bucket}/a", manifest=manifest)  # the probe is there now
    staged = stage(staging, [make_ds(i) for i in range(3, 6)])
    store.add("PUT", action="status", status=200, path="no-clobber-probe", count=None)
    with pytest.raises(NoClobberUnsupported, match="ignored If-None-Match"):
        commit(staging, f"s3://{s3_bucket}/a", manifest=manifest)
    assert all(p.exists() for p in staged)
    assert len(data_keys(s3_server, s3_bucket)) == 3
    store.clear()
    assert commit(staging, f"s3://{s3_bucket}/a", manifest=manifest).counts()["committed"] == 3
    one_version_each(s3_server, s3_bucket)


def test_a_store_that_ignores_the_condition_on_multipart_completion_is_refused(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    store: FaultProxy,
    make_ds: Callable[..., Dataset],
    small_parts: None,
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    ds = make_ds(0)
    ds.PixelData = b"\x01" * (6 << 20)
    [staged] = stage(staging, [ds])
    store.add("POST", action="status", status=200, path="no-clobber-probe", query="uploadId", count=None)
    with pytest.raises(NoClobberUnsupported, match="multipart completion"):
        commit(staging, f"s3://{s3_bucket}/a", manifest=manifest)
    assert staged.exists()
    assert data_keys(s3_server, s3_bucket) == []


# -- faults on the way: each one converges, and nothing is overwritten --------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"action": "status", "status": 409, "header": "If-None-Match", "count": 3}, id="409-raced"),
        pytest.param({"action": "status", "status": 503, "count": 4}, id="503"),
        pytest.param({"action": "timeout", "count": 2}, id="timeout"),
        pytest.param({"action": "drop_after_forward", "count": 3}, id="reply-lost"),
    ],
)
def test_commit_through_faults(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    store: FaultProxy,
    make_ds: Callable[..., Dataset],
    fault: dict[str, Any],
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(12)])
    rule = store.add("PUT", path=r"/DEMO[^?]*\.dcm$", **fault)  # the files' own PUTs, not the probe's

    report = commit(staging, f"s3://{s3_bucket}/f", manifest=manifest, jobs=4)

    assert store.fired(rule) == fault["count"]
    assert report.counts()["committed"] == 12
    assert len(check_archive(s3_server, s3_bucket, "f", manifest)) == 12
    one_version_each(s3_server, s3_bucket)
    assert list(staging.glob("*.dcm")) == []


def test_a_multipart_completion_whose_reply_was_lost(  # noqa: PLR0917 -- pytest fixtures
    tmp_path: Path,
    s3_server: MotoServer,
    s3_bucket: str,
    store: FaultProxy,
    make_ds: Callable[..., Dataset],
    small_parts: None,
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    ds = make_ds(0)
    ds.PixelData = b"\x07" * (6 << 20)
    stage(staging, [ds])
    rule = store.add("POST", action="drop_after_forward", query="uploadId", count=1)
    assert commit(staging, f"s3://{s3_bucket}/m", manifest=manifest).counts()["committed"] == 1
    assert store.fired(rule) == 1
    check_archive(s3_server, s3_bucket, "m", manifest)
    one_version_each(s3_server, s3_bucket)


def test_a_store_that_keeps_failing_stops_the_commit_and_loses_nothing(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    staged = stage(staging, [make_ds(i) for i in range(6)])
    store.add("PUT", action="status", status=503, count=None)
    with pytest.raises(ObjectStoreError, match="SlowDown"):
        commit(staging, f"s3://{s3_bucket}/f", manifest=manifest)
    assert all(p.exists() for p in staged)
    store.clear()
    assert commit(staging, f"s3://{s3_bucket}/f", manifest=manifest).counts()["committed"] == 6


# -- a committer killed mid-batch -------------------------------------------------------------------


def test_sigkill_mid_batch_then_rerun_and_recover(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    """Placements were sent ahead: many objects exist, no row does. A rerun records each of
    them from a 412 and a HEAD (our hash), and recover finds nothing left to do."""
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/k"
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(40)])
    env = {**store.env(), "DICOMCOMMIT_CRASH_AT": "commit:after-link:10"}
    killed = cli(["commit", str(staging), url, "--manifest", manifest], env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    placed = len(data_keys(s3_server, s3_bucket))
    assert placed >= 10
    assert rows(manifest) == []

    rerun = cli(["commit", str(staging), url, "--manifest", manifest, "--json"], store.env())
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["committed"] == 40
    assert len(check_archive(s3_server, s3_bucket, "k", manifest)) == 40
    checked = cli(["recover", url, str(staging), "--manifest", manifest, "--check"], store.env())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    one_version_each(s3_server, s3_bucket)


def test_recover_reconciles_the_manifest_with_a_listing(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/r"
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(5)])
    commit(staging, url, manifest=manifest)
    gone = rows(manifest)[0]
    s3_server.admin.delete_object(Bucket=s3_bucket, Key=f"r/{gone.path}")
    stray = b"written by another tool, with no hash on it"
    s3_server.admin.put_object(Bucket=s3_bucket, Key="r/other/tool.dcm", Body=stray)
    s3_server.admin.put_object(Bucket=s3_bucket, Key="elsewhere/not-ours.dcm", Body=b"outside the prefix")

    report = recover(url, manifest=manifest)

    assert report.rows_added == ["other/tool.dcm"]
    assert report.missing == [f"#{gone.id} committed {gone.path}"]
    added = [r for r in rows(manifest) if r.path == "other/tool.dcm"]
    assert added[0].sha256 == hashlib.sha256(stray).hexdigest()
    assert added[0].size == len(stray)


def test_rebuild_manifest_from_the_store(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest, url = tmp_path / "staging", tmp_path / "m.sqlite", f"s3://{s3_bucket}/rb"
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(4)])
    commit(staging, url, manifest=str(manifest))
    stage(staging, [make_ds(0, 1)])
    commit(staging, url, manifest=str(manifest))
    manifest.write_bytes(b"not a database at all" * 100)

    report = recover(url, manifest=str(manifest), rebuild_manifest=True)

    assert report.set_aside is not None
    assert Path(report.set_aside).exists()
    rebuilt = {(r.status, r.target) for r in rows(str(manifest))}
    committed = {r for r in rebuilt if r[0] is Status.COMMITTED}
    assert len(committed) == 4
    conflict = [r for r in rebuilt if r[0] is Status.CONFLICT]
    assert len(conflict) == 1
    assert conflict[0][1] in {target for _, target in committed}  # named from its header, read from the store


# -- resolve ----------------------------------------------------------------------------------------


@pytest.fixture
def conflicts(tmp_path: Path, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]) -> tuple[str, str]:
    """An archive with 3 open conflicts: (url, manifest)."""
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/c"
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(3)])
    commit(staging, url, manifest=manifest)
    stage(staging, [make_ds(i, 1) for i in range(3)])
    assert commit(staging, url, manifest=manifest).counts()["conflicts"] == 3
    store.clear(stats=True)
    return url, manifest


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(None, id="no-fault"),
        pytest.param({"action": "status", "status": 409, "header": "If-Match"}, id="409"),
        pytest.param({"action": "status", "status": 503, "header": "If-Match"}, id="503"),
        pytest.param({"action": "timeout", "header": "If-Match"}, id="timeout"),
        pytest.param({"action": "drop_after_forward", "header": "If-Match"}, id="reply-lost"),
    ],
)
def test_resolve_keep_staged_replaces_only_if_match(
    s3_server: MotoServer,
    s3_bucket: str,
    store: FaultProxy,
    conflicts: tuple[str, str],
    fault: dict[str, Any] | None,
) -> None:
    url, manifest = conflicts
    before = {r.id: r for r in rows(manifest) if r.status is Status.CONFLICT}
    rule = None if fault is None else store.add("PUT", **fault)

    done = resolve_many(url, "staged", manifest=manifest)

    if rule is not None:
        assert store.fired(rule) == 1
    assert {r.status for r in done} == {Status.COMMITTED}
    for row in done:
        old = before[row.id].existing_sha256
        assert hashlib.sha256(s3_server.read(s3_bucket, f"c/{row.target}")).hexdigest() == row.sha256
        assert hashlib.sha256(s3_server.read(s3_bucket, f"c/.dicomcommit/replaced/{old}.dcm")).hexdigest() == old
    versions = s3_server.versions(s3_bucket)
    targets = {f"c/{r.target}" for r in done}
    copies = {f"c/{r.path}" for r in before.values()}
    for key, kept in versions.items():
        if key in targets:  # replaced, by a recorded decision: the old version, then ours
            assert [v["DeleteMarker"] for v in kept] == [False, False], key
        elif key in copies:  # the conflict copy, removed once its bytes had their name
            assert [v["DeleteMarker"] for v in kept] == [True, False], key
        else:
            assert [v["DeleteMarker"] for v in kept] == [False], key
    check_archive(s3_server, s3_bucket, "c", manifest)


@pytest.mark.parametrize("keep", ["both", "existing"])
def test_resolve_keep_both_and_existing(
    s3_server: MotoServer, s3_bucket: str, store: FaultProxy, conflicts: tuple[str, str], keep: str
) -> None:
    url, manifest = conflicts
    store.add("PUT", action="status", status=503, count=2)
    done = resolve_many(url, keep, manifest=manifest)  # type: ignore[arg-type]
    assert len(done) == 3
    status = Status.COMMITTED if keep == "both" else Status.RESOLVED
    assert {r.status for r in done} == {status}
    check_archive(s3_server, s3_bucket, "c", manifest)
    assert not [k for k in s3_server.keys(s3_bucket) if "/conflicts/" in k]
    versions = s3_server.versions(s3_bucket)
    assert all(
        not v[-1]["DeleteMarker"] and len([x for x in v if not x["DeleteMarker"]]) == 1 for v in versions.values()
    )


def test_replace_refuses_an_object_changed_since_it_was_read(
    s3_server: MotoServer, s3_bucket: str, store: FaultProxy
) -> None:
    archive = open_archive(f"s3://{s3_bucket}/x")
    admin = s3_server.admin
    admin.put_object(
        Bucket=s3_bucket, Key="x/new.dcm", Body=b"new", Metadata={"sha256": hashlib.sha256(b"new").hexdigest()}
    )
    admin.put_object(Bucket=s3_bucket, Key="x/target.dcm", Body=b"old")
    assert archive.sha256("target.dcm") == hashlib.sha256(b"old").hexdigest()  # read: its ETag is known
    admin.put_object(Bucket=s3_bucket, Key="x/target.dcm", Body=b"changed by someone else")
    with pytest.raises(ObjectStoreError, match="changed since it was read"):
        archive.replace("new.dcm", "target.dcm")
    assert s3_server.read(s3_bucket, "x/target.dcm") == b"changed by someone else"
    assert s3_server.read(s3_bucket, "x/new.dcm") == b"new"


# -- the other commands, through the CLI ------------------------------------------------------------


def test_review_show_report_and_resolve_through_the_cli(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, conflicts: tuple[str, str]
) -> None:
    url, manifest = conflicts
    env = store.env()
    listed = cli(["review", url, "--manifest", manifest, "--json"], env)
    assert listed.returncode == 0, listed.stderr
    ids = [r["id"] for r in json.loads(listed.stdout)]
    assert len(ids) == 3
    shown = cli(["show", url, str(ids[0]), "--manifest", manifest, "--json"], env)
    assert shown.returncode == 0, shown.stderr
    both = json.loads(shown.stdout)
    assert both["existing"]["path"].startswith(f"{url}/")
    assert both["staged"]["sha256"]
    page = tmp_path / "report.html"
    assert cli(["report", url, "--manifest", manifest, "-o", str(page)], env).returncode == 0
    assert page.read_text().count("<img") >= 6
    resolved = cli(["resolve", url, "--all", "--keep", "both", "--manifest", manifest, "--json"], env)
    assert resolved.returncode == 0, resolved.stderr
    assert cli(["recover", url, "--manifest", manifest, "--check", "--verify"], env).returncode == 0


def test_the_next_commands_printed_name_the_manifest_and_endpoint(
    tmp_path: Path, s3_bucket: str, store: FaultProxy, conflicts: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """An object store cannot be reached again without them: the hints a person copies say them."""
    url, manifest = conflicts
    row = next(r for r in rows(manifest) if r.status is Status.CONFLICT)
    assert main(["show", url, str(row.id), "--manifest", manifest, "--endpoint-url", store.endpoint]) == 0
    hint = capsys.readouterr().out.splitlines()[-1]
    command = hint.split()[2:]
    assert command == ["dicomcommit", "resolve", url, str(row.id), "--keep", "existing|staged|both", "--manifest",
                       manifest, "--endpoint-url", store.endpoint]  # fmt: skip
    command[5] = "both"
    assert main(command[1:]) == 0  # the hint, as a person would paste it


def test_endpoint_url_option_overrides_the_environment(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    stage(staging, [make_ds(0)])
    env = {**store.env(), "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # nothing listens there
    done = cli(["commit", str(staging), f"s3://{s3_bucket}/e", "--manifest", manifest, "--endpoint-url",
                store.endpoint], env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(data_keys(s3_server, s3_bucket)) == 1


# -- found in review ---------------------------------------------------------------------------------


def test_a_hash_in_metadata_is_no_proof_of_the_bytes(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    """Another tool's object with other bytes, but metadata that claims the staged file's hash:
    the staged file is kept as a conflict (its bytes were read), never dropped as a duplicate."""
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/m"
    staging.mkdir()
    [path] = stage(staging, [make_ds(0)])
    ours = path.read_bytes()
    sha256 = hashlib.sha256(ours).hexdigest()
    target = DEFAULT_TEMPLATE_RENDER(make_ds(0))
    s3_server.admin.put_object(Bucket=s3_bucket, Key=f"m/{target}", Body=b"other bytes", Metadata={"sha256": sha256})

    report = commit(staging, url, manifest=manifest)

    assert report.counts()["conflicts"] == 1
    [row] = rows(manifest)
    assert row.existing_sha256 == hashlib.sha256(b"other bytes").hexdigest()
    assert s3_server.read(s3_bucket, f"m/{row.path}") == ours


def test_verify_reads_the_bytes(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/v"
    staging.mkdir()
    stage(staging, [make_ds(0), make_ds(1)])
    commit(staging, url, manifest=manifest)
    row = rows(manifest)[0]
    key = f"v/{row.path}"
    changed = bytearray(s3_server.read(s3_bucket, key))
    changed[-1] ^= 0xFF  # same size, same metadata, other bytes
    s3_server.admin.put_object(Bucket=s3_bucket, Key=key, Body=bytes(changed), Metadata={"sha256": row.sha256 or ""})
    assert recover(url, manifest=manifest).mismatched == []  # (sizes and names only, without --verify)
    assert [m.split(":")[0] for m in recover(url, manifest=manifest, verify=True).mismatched] == [
        f"#{row.id} {row.path}"
    ]


def test_recover_with_a_staging_directory_finishes_what_was_placed(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    """On a filesystem, recover finishes a staged file whose inode is at its name; here, one
    whose bytes are."""
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/k"
    staging.mkdir()
    stage(staging, [make_ds(i) for i in range(12)])
    store.add("PUT", action="delay", delay_ms=300, path=r"\.3\.1[01]\.dcm$", count=None)  # these two land last
    killed = cli(["commit", str(staging), url, "--manifest", manifest, "--jobs", "4"],
                 {**store.env(), "DICOMCOMMIT_CRASH_AT": "commit:after-link:3"})  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    time.sleep(1)  # a PUT on its way when the committer died lands
    placed = len(data_keys(s3_server, s3_bucket))
    assert 3 <= placed < 12

    report = recover(url, staging, manifest=manifest)

    assert len(report.finished) == placed
    assert report.rows_added == []  # recorded as the staged files they are, not as found in the archive
    assert len(list(staging.glob("*.dcm"))) == 12 - placed
    assert {r.status for r in rows(manifest)} == {Status.COMMITTED}
    assert commit(staging, url, manifest=manifest).counts()["committed"] == 12 - placed
    one_version_each(s3_server, s3_bucket)


def test_check_and_dry_run_write_nothing_and_see_a_missing_bucket(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    staging, manifest, url = tmp_path / "staging", str(tmp_path / "m.sqlite"), f"s3://{s3_bucket}/c"
    staging.mkdir()
    stage(staging, [make_ds(0)])
    commit(staging, url, manifest=manifest)
    stage(staging, [make_ds(1)])
    store.clear(stats=True)
    store.add("PUT", action="status", status=403, code="AccessDenied", count=None)  # read-only credentials
    assert main(["recover", url, "--manifest", manifest, "--check"]) == 0
    assert main(["commit", str(staging), url, "--manifest", manifest, "--dry-run"]) == 0
    assert store.requests("PUT") == 0
    with pytest.raises(ObjectStoreError, match="no bucket 'no-such-bucket-here'"):
        commit(staging, "s3://no-such-bucket-here/c", manifest=str(tmp_path / "other.sqlite"), dry_run=True)


@pytest.mark.parametrize(
    ("argv", "env", "code", "message"),
    [
        (["--endpoint-url", "127.0.0.1:1"], {}, 2, "http:// or https://"),
        ([], {"DICOMCOMMIT_S3_TIMEOUT": "soon"}, 2, "DICOMCOMMIT_S3_TIMEOUT"),
        ([], {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, 1, "credentials"),
    ],
)
def test_what_a_user_gets_wrong_about_the_store(  # noqa: PLR0917 -- pytest parameters
    tmp_path: Path, store: FaultProxy, s3_bucket: str, argv: list[str], env: Env, code: int, message: str
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    full = {**store.env(), **env}
    for name in [n for n, v in env.items() if v == ""]:
        del full[name]
    done = cli(["commit", str(staging), f"s3://{s3_bucket}/a", "--manifest", str(tmp_path / "m.sqlite"), *argv], full)
    assert done.returncode == code, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("archive", ["s3:/bucket/a", "gs://bucket/a", "file:///tmp/a"])
def test_a_url_that_is_not_s3_never_becomes_a_local_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, archive: str
) -> None:
    monkeypatch.chdir(tmp_path)
    staging = tmp_path / "staging"
    staging.mkdir()
    assert main(["commit", str(staging), archive, "--manifest", "m.sqlite"]) == 2
    assert main(["demo", "--archive", archive]) == 2
    with pytest.raises(UsageError, match="unknown archive URL"):
        commit(staging, archive, manifest="m.sqlite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staging"]
    assert main(["demo", "--archive", "s3://bucket/a", "--files", "1", "--workers", "1"]) == 2


def test_no_header_value_names_a_key_outside_the_prefix(
    tmp_path: Path, s3_server: MotoServer, s3_bucket: str, store: FaultProxy, make_ds: Callable[..., Dataset]
) -> None:
    """Guarantee 4 on a store: a key is the prefix and the sanitized name, whatever the header says."""
    staging, manifest = tmp_path / "staging", str(tmp_path / "m.sqlite")
    staging.mkdir()
    hostile = []
    for i, value in enumerate(["../../escape", "/abs", "..", "a/../../b", "%(PatientID)s", "x\\..\\y"]):
        ds = make_ds(i)
        ds.PatientID = value
        hostile.append(ds)
    stage(staging, hostile)
    report = commit(staging, f"s3://{s3_bucket}/in/side", manifest=manifest)
    assert report.counts()["committed"] == len(hostile)
    keys = s3_server.keys(s3_bucket)
    assert keys
    assert all(key.startswith("in/side/") for key in keys)
    for key in keys:
        assert not ({"", ".", ".."} & set(key.split("/"))), key
