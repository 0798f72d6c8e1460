"""What a commit run reports: counts, the rows that need review, and what it left in place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dicomcommit.manifests.records import REVIEWED, NewRecord, Record, Status

_COUNTED = {Status.COMMITTED: "committed", Status.DUPLICATE: "duplicates", Status.CONFLICT: "conflicts",
            Status.INVALID: "invalid"}  # fmt: skip


@dataclass
class CommitReport:
    """What one commit run did (or, with ``dry_run``, would do)."""

    committed: int = 0
    duplicates: int = 0
    conflicts: int = 0
    invalid: int = 0
    run: str = ""
    dry_run: bool = False
    #: The conflicts and invalid files of this run, as stored (in a dry run: every predicted
    #: outcome, not stored). Every outcome is in the manifest: ``Manifest(archive).records(run=report.run)``.
    records: list[Record | NewRecord] = field(default_factory=list)
    #: Files left where they were, with why: unfinished .part files, symlinks, special files,
    #: and (ingest) files that are not DICOM.
    left_in_place: list[tuple[str, str]] = field(default_factory=list)
    #: (A shared manifest) files another committer had claimed: it commits them (or, if it
    #: died, a rerun once its lease has expired, or ``recover``, does).
    claimed_elsewhere: int = 0

    @property
    def skipped(self) -> int:
        """How many files were left where they were."""
        return len(self.left_in_place)

    @property
    def needs_review(self) -> bool:
        """True when conflicts or invalid files were recorded."""
        return bool(self.conflicts or self.invalid)

    def count(self, record: Record | NewRecord) -> None:
        """Add *record* to the counts and the list."""
        field_name = _COUNTED[record.status]
        setattr(self, field_name, getattr(self, field_name) + 1)
        if self.dry_run or record.status in REVIEWED:
            self.records.append(record)

    def counts(self) -> dict[str, int]:
        """The counts as a dict."""
        return {k: getattr(self, k) for k in ("committed", "duplicates", "conflicts", "invalid", "skipped")}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary: the counts, and the records that need review."""
        key = "planned" if self.dry_run else "needs_review"
        left = [{"file": name, "reason": reason} for name, reason in self.left_in_place]
        return {"run": self.run, "dry_run": self.dry_run, **self.counts(), key: [r.to_dict() for r in self.records],
                "left_in_place": left, "claimed_elsewhere": self.claimed_elsewhere}  # fmt: skip
