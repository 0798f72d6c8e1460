"""One trial of scripts/torture_random.py, and the invariants it checks.

The trial copies its inputs and runs the command there unkilled (its duration, its first
change on disk, the state to converge to); SIGKILLs the command on the original at a random
moment; checks what the kill left; runs recover, the command again and ``recover --check``;
and checks the end state. Each broken invariant counts in the trial's KindTotals and adds a
line to its failures.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from _torture_io import (
    STATE,
    TIMEOUT,
    Row,
    Snapshot,
    child_env,
    copy_tree,
    file_sha,
    parses,
    read_rows,
    repoint_journal,
    run_checked,
    run_killed,
    run_watched,
    shape_of,
    snapshot,
)
from _torture_kinds import PLANS, Plan, Trial


def trial(t: Trial) -> None:
    t.work.mkdir()
    plan = PLANS[t.kind](t)
    t.totals.files += plan.files
    ref = t.root / "ref"
    copy_tree(t.work, ref)
    repoint_journal(ref / "staging")
    duration, first_change = run_watched(*plan.command(ref), ref, ref / "archive" / STATE)
    for step in plan.ref_tail(ref):
        run_checked(*step, ref)

    before, rows_before, shape = snapshot(t.work / "archive"), read_rows(t.work / "archive"), shape_of(t.work)
    # Before its first change on disk, a command has run no step of the protocol yet.
    low = 0.8 * t.env.startup if first_change is None else 0.9 * first_change
    high = max(low, duration)
    delay = t.rng.uniform(low, low + (high - low) * t.shrink)
    killed = run_killed(*plan.command(t.work), t.work, delay)
    if killed:
        t.totals.killed += 1
        t.totals.changed += shape_of(t.work) != shape
    else:
        t.totals.finished += 1
    change = "?" if first_change is None else f"{first_change:.3f}"
    what = "killed" if killed else "finished"
    t.label += f" ({what} at {delay:.3f} s; unkilled: first change at {change}, done at {duration:.3f})"

    after = snapshot(t.work / "archive")
    _check_complete(t, after, None)
    _check_kept(t, plan, before, rows_before, after, when="after the kill")
    _check_gone_only_if_recorded(t, plan)

    for number, step in enumerate(plan.tail(t.work)):
        if run_checked(*step, t.work) == 3 and number == 0:
            t.totals.flagged += 1
    result = subprocess.run(plan.check(t.work), cwd=t.work, env=child_env(None), capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)  # fmt: skip
    if result.returncode != 0:
        said = f"{result.stdout[-1500:]}{result.stderr[-500:]}"
        t.fail("unconverged", f"recover --check exits {result.returncode}: {said}")
    _check_end(t, plan, before, rows_before)
    _check_converged(t, ref)


def _check_complete(t: Trial, snap: Snapshot, rows: list[Row] | None) -> None:
    """Final names parse (and match their one committed row); hash-named copies match their names."""
    committed: dict[str, list[Row]] = {}
    for row in rows or ():
        if row.status == "committed":
            committed.setdefault(row.path, []).append(row)
    for rel, (_, sha) in snap.items():
        if rel.startswith(f"{STATE}/"):
            if Path(rel).name.split(".")[0] != sha:
                t.fail("partial", f"{rel} does not hold the bytes its name says (sha256 {sha})")
            continue
        if not parses(t.work / "archive" / rel):
            t.fail("partial", f"{rel} does not parse")
        if rows is None:
            continue
        mine = committed.get(rel, [])
        if not mine:
            t.fail("partial", f"{rel} has no committed row")
        elif len(mine) > 1:
            t.fail("recorded_twice", f"{rel} has {len(mine)} committed rows: {[(r.id, r.source) for r in mine]}")
        if any(r.sha256 not in (None, sha) for r in mine):
            t.fail("partial", f"{rel} has sha256 {sha}, its row says {[r.sha256 for r in mine]}")


def _check_kept(t: Trial, plan: Plan, before: Snapshot, rows_before: list[Row], after: Snapshot, *, when: str) -> None:
    """Names present before the kill keep their inode and bytes; no bytes vanish."""
    present = {sha for _, sha in after.values()}
    targets = {r.target for r in rows_before if r.status == "conflict"}
    for sha in sorted({sha for _, sha in before.values()} - present):
        t.fail("lost", f"{when}: bytes {sha[:12]} were in the archive before the kill and are gone")
    for rel, (inode, sha) in before.items():
        now = after.get(rel)
        if now == (inode, sha) or sha not in present:
            continue
        if plan.keep is not None and rel.startswith(f"{STATE}/conflicts/") and now is None:
            continue  # resolve gave these bytes another name (they are present: checked above)
        swapped = after.get(f"{STATE}/replaced/{sha}.dcm", (0, ""))[1] == sha
        if plan.keep == "staged" and rel in targets and now is not None and swapped:
            continue
        t.fail("replaced", f"{when}: {rel} was {(inode, sha[:12])}, is {now}")


def _check_gone_only_if_recorded(t: Trial, plan: Plan) -> None:
    rows = read_rows(t.work / "archive")
    snap = snapshot(t.work / "archive")
    for item in plan.expected:
        if (t.work / item.disk).exists():
            continue
        held = [r for r in rows if r.source == item.source and snap.get(r.path, (0, ""))[1] == item.sha256]
        if not held:
            t.fail("lost", f"after the kill: {item.disk} is gone, its bytes not recorded")


def _check_end(t: Trial, plan: Plan, before: Snapshot, rows_before: list[Row]) -> None:
    archive = t.work / "archive"
    rows, after = read_rows(archive), snapshot(archive)
    _check_complete(t, after, rows)
    _check_kept(t, plan, before, rows_before, after, when="at the end")
    by_source = Counter(r.source for r in rows)
    for source, count in by_source.items():
        if count > 1:
            t.fail("recorded_twice", f"{source} has {count} rows")
    for item in plan.expected:
        mine = [r for r in rows if r.source == item.source]
        if len(mine) != 1:
            if not mine:
                t.fail("lost", f"{item.disk} has no row")
            continue
        row = mine[0]
        held = after.get(row.path, (0, ""))[1]
        if row.sha256 not in (None, item.sha256) or held != item.sha256:
            t.fail("lost", f"{item.disk}: its row {row} does not hold its bytes ({item.sha256[:12]})")
        if (t.work / item.disk).exists():
            t.fail("left", f"{item.disk} is still there")
    for rel, (inode, sha) in plan.kept_in_source.items():
        path = t.work / "source" / rel
        if not path.is_file() or path.stat().st_ino != inode or file_sha(path) != sha:
            t.fail("lost", f"source/{rel} (not DICOM) was removed or changed")
    if plan.keep is not None:
        _check_resolved(t, plan.keep, rows_before, rows, after)
    _check_left_and_escaped(t)


def _check_left_and_escaped(t: Trial) -> None:
    archive, staging = t.work / "archive", t.work / "staging"
    if staging.is_dir() and t.kind in ("commit", "recover"):
        left = [p for p in staging.rglob("*") if p.is_file() and not p.relative_to(staging).parts[0].startswith(".")]
        if left:
            t.fail("left", f"left in staging: {[str(p.relative_to(staging)) for p in left]}", len(left))
    allowed = [archive, staging, t.work / "source", t.work / "ledger.txt"]
    for path in t.work.rglob("*"):
        if path.is_file() and not any(a == path or a in path.parents for a in allowed):
            t.fail("escaped", f"{path} written outside the archive")


def _check_resolved(t: Trial, keep: str, rows_before: list[Row], rows: list[Row], after: Snapshot) -> None:
    """Every conflict decided as asked; every row's bytes where the row says."""
    now = {r.id: r for r in rows}
    for old in rows_before:
        row = now.get(old.id)
        if row is None:
            t.fail("lost", f"row #{old.id} disappeared")
            continue
        if old.status == "conflict" and row.resolution not in (keep, "replaced"):
            t.fail("unconverged", f"conflict #{old.id} is {row.status}/{row.resolution}, not resolved --keep {keep}")
        held = after.get(row.path, (0, ""))[1]
        if row.sha256 is None or held == row.sha256:
            continue
        elsewhere = sorted(rel for rel, (_, sha) in after.items() if sha == row.sha256)
        if elsewhere:
            t.fail("stale", f"row #{row.id} {row.status} says its bytes are at {row.path}, which holds "
                            f"{held[:12] or 'nothing'}; they are at {elsewhere[0]}")  # fmt: skip
        else:
            t.fail("lost", f"row #{row.id} {row.status} says {row.path}, which holds {held[:12] or 'nothing'}")


def _check_converged(t: Trial, ref: Path) -> None:
    got, want = _end_state(t.work), _end_state(ref)
    for what, mine, theirs in (("files", got[0], want[0]), ("rows", got[1], want[1])):
        extra, missing = sorted(mine - theirs), sorted(theirs - mine)
        if extra or missing:
            t.fail("unconverged", f"{what} differ from an unkilled run's: extra {extra[:4]}, missing {missing[:4]}")


def _end_state(base: Path) -> tuple[set[tuple[str, str]], set[tuple[str, ...]]]:
    files = {(rel, sha) for rel, (_, sha) in snapshot(base / "archive").items()}
    counted = Counter(
        (r.source.removeprefix(f"{base}/"), r.status, r.target or "", r.path, r.resolution or "")
        for r in read_rows(base / "archive")
    )
    return files, {(*key, str(n)) for key, n in counted.items()}
