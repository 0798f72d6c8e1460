"""``dicomcommit manifest copy``: move a manifest from SQLite to PostgreSQL (or back), for
an archive that outgrows one host.

Every row and run is copied as it is (ids, hosts and resolutions included) into a new,
empty manifest, read back and compared row by row. Only then is the old one marked as
moved, in the same transaction that kept writers out while it was read: from then on it
refuses to be used, naming the new one, and so does a commit that had it open.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from dicomcommit.errors import ManifestError
from dicomcommit.manifests import Location, open_manifest


@dataclass(frozen=True)
class Copied:
    """What ``manifest copy`` copied."""

    source: str
    dest: str
    rows: int
    runs: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {**asdict(self), "verified": True}


def copy_manifest(source: Location, dest: Location) -> Copied:
    """Copy the manifest *source* into the new manifest *dest* (each a path, ``sqlite:///path``
    or ``postgresql://...``), verify it row by row, and mark *source* as moved.

    Raises:
        UsageError: a location is not a manifest location.
        ManifestError: *source* has no manifest, has files claimed by committers (running,
            or dead and not recovered yet), *dest* is not empty, or the copy read back differs
            (then *source* is left as it was, and *dest* holds the unverified copy).
    """
    with open_manifest(".", manifest=source) as old, open_manifest(".", manifest=dest, create=True) as new:
        if old.location == new.location:
            raise ManifestError(f"{old.location} is both FROM and TO")
        with old.moving(new.location):
            busy = old.live_claims() + old.expired_claims()
            if busy:
                raise ManifestError(f"{old.location} has {len(busy)} files claimed by committers (running, or dead: "
                                    "run recover first); copy it once they are done")  # fmt: skip
            records, runs = old.records(), old.runs()
            if not new.shared:
                _one_host_keys(records, new.location)
            new.load(records, runs)
            _verify(records, new.records(), "rows", new.location)
            _verify(runs, new.runs(), "runs", new.location)
        return Copied(old.location, new.location, len(records), len(runs))


def _one_host_keys(records: list[Any], where: str) -> None:
    """An SQLite manifest has one host: its rerun key (source, and sha256 or path) leaves the
    host out. Refuse rows of two hosts that would share one."""
    seen: dict[tuple[str, str], str] = {}
    for record in records:
        host = seen.setdefault(record.key(), record.host)
        if host != record.host:
            raise ManifestError(f"{where} is SQLite, whose rows are keyed by source and hash alone (one host), but "
                                f"hosts {host!r} and {record.host!r} both have {record.key()[0]!r} with those bytes; "
                                "keep this manifest in PostgreSQL")  # fmt: skip


def _verify(expected: list[Any], found: list[Any], what: str, where: str) -> None:
    """Raise unless *found* (read back from the copy) equals *expected*, item by item."""
    if len(found) != len(expected):
        raise ManifestError(f"the copy in {where} holds {len(found)} {what}, not {len(expected)}; "
                            "the old manifest is unchanged")  # fmt: skip
    for old, new in zip(expected, found, strict=True):
        if old != new:
            raise ManifestError(f"the copy in {where} differs from the old manifest at {old!r}: read back {new!r}; "
                                "the old manifest is unchanged")  # fmt: skip
