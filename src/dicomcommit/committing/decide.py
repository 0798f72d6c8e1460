"""The decision: what happens to one staged file, from what is known of it and what the
archive answered when the file asked for a name. Pure: no I/O of its own.

A file asks for names one at a time (:class:`Place`); each answer is final or names the
next place to ask:

- its target: created -> committed; ours already (an interrupted run linked it) or
  identical bytes there -> as :func:`_already_there`; other bytes -> by the conflict
  policy: ``error`` refuses, ``suffix`` asks for the derived name, ``record`` for the
  conflict copy;
- the derived name (``suffix``): created or ours -> committed; identical bytes -> as above;
  other bytes -> the conflict copy;
- the conflict copy (``conflicts/<sha256>.dcm``): identical bytes of a recorded conflict ->
  duplicate of it; else -> conflict;
- the invalid copy (``invalid/<sha256>``): invalid, whatever was there (named by hash).

Commit, its dry run, ingest and recover all run through it (the dry run against an archive
that only records what it would do).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

from dicomcommit._fs import Placed
from dicomcommit.layout import CONFLICTS_DIR, INVALID_DIR
from dicomcommit.manifests.records import FOUND_IN_ARCHIVE, Status
from dicomcommit.naming import derived_name

OnConflict = Literal["record", "suffix", "error"]
ON_CONFLICT_CHOICES: tuple[OnConflict, ...] = ("record", "suffix", "error")


class Role(Enum):
    """Which of a file's possible names a placement asks for."""

    TARGET = "target"
    DERIVED = "derived"  # <stem>~<sha256 prefix>.<ext>, with on_conflict="suffix"
    CONFLICT_COPY = "conflict copy"
    INVALID_COPY = "invalid copy"


@dataclass(slots=True)
class File:
    """What is known of the staged file when it asks for a name."""

    source: str  # as the manifest names it
    target: str | None  # the name its attributes render to (None: invalid)
    sha256: str | None  # its bytes' hash, read (always, once a name it asked for was taken)
    claimed: str | None = None  # the hash its journal line claims
    extra_links: int = 0  # other hard links it has (then it was copied, not linked)
    invalid: str | None = None  # why it is not DICOM that can be named
    host: str = ""  # the host it is on (a source is named per host)


@dataclass(slots=True)
class Place:
    """Ask the archive for the name *rel*. ``existing`` carries the hash of what holds the
    target (None: not a regular file) from the target's answer to later steps."""

    role: Role
    rel: str
    existing: str | None = None


@dataclass(slots=True)
class Holder:
    """A committed manifest row of the name that was taken."""

    id: int
    source: str
    sha256: str | None
    host: str = ""


@dataclass(slots=True)
class Recorded:
    """The manifest's row of this very file (its source and its bytes), from an earlier run."""

    path: str  # where its bytes are kept
    status: Status


@dataclass(slots=True)
class Answer:
    """What the archive answered, and what the run and the manifest know of the name."""

    placed: Placed
    sha256: str | None = None  # for EXISTS: the hash of what holds it (None: not a regular file)
    # An earlier file of this run holds it (its row is not in yet), or another committer's file
    # with these bytes does (claimed; recorded by that committer or by recover).
    placed_this_run: bool = False
    holder: Holder | None = None  # the committed row at the name (target and derived names)
    open_conflict: bool = False  # a recorded, open conflict keeps its bytes there (conflict copy)
    recorded: Recorded | None = None  # an earlier run's row of this very file, its bytes still there


@dataclass(slots=True)
class Outcome:
    """The file's outcome: the record commit writes for it."""

    status: Status
    path: str
    detail: str = ""
    existing_sha256: str | None = None
    claims: int | None = None  # the row (found in the archive by recover) this file takes over
    sha256: str | None = None  # the hash to record when the file's own was not read (its earlier row's)


@dataclass(slots=True)
class Leave:
    """The file stays where it is, with why (an ingest source's file that is not DICOM)."""

    reason: str


@dataclass(slots=True)
class Refuse:
    """``on_conflict="error"``: stop at this conflict, leaving the file staged."""

    target: str


@dataclass(slots=True)
class Redescribe:
    """The file's bytes are not the ones its journal line describes: name it from its own
    header, as a foreign file, and start again."""


Step = Place | Outcome | Leave | Refuse | Redescribe


def first(file: File, *, set_aside_invalid: bool) -> Place | Leave:
    """The first name a file asks for: its target; an invalid file's copy (a staging
    directory keeps what it cannot name) or, from an ingest source, nothing."""
    if file.invalid is not None or file.target is None:
        if not set_aside_invalid:
            return Leave(file.invalid or "no target")
        assert file.sha256 is not None, "an invalid file is hashed before it is set aside"
        return Place(Role.INVALID_COPY, "/".join((*INVALID_DIR, file.sha256)))
    return Place(Role.TARGET, file.target)


def decide(step: Place, answer: Answer, file: File, on_conflict: OnConflict) -> Step:
    """The next step for *file* after the archive gave *answer* to *step*."""
    if step.role is Role.INVALID_COPY:  # named by its hash: a copy already there is these bytes
        return Outcome(Status.INVALID, step.rel, detail=file.invalid or "")
    if step.role is Role.CONFLICT_COPY:
        return _kept(step, answer)
    if answer.placed is Placed.CREATED:
        return _created(step, file)
    if answer.placed is Placed.SAME_INODE:
        how = "linked by an interrupted earlier run"
        return _already_there(step, answer, file, how=how, duplicate="already committed and recorded", linked=True)
    return _taken(step, answer, file, on_conflict)


def _kept(step: Place, answer: Answer) -> Outcome:
    """The conflict copy: named by the bytes' hash, so a copy already there of a recorded
    conflict is these bytes, already kept and reviewed."""
    if answer.placed is Placed.EXISTS and answer.open_conflict:
        detail = "identical to a recorded conflict"
        return Outcome(Status.DUPLICATE, step.rel, detail=detail, existing_sha256=step.existing)
    held = "a symlink or special file" if step.existing is None else f"a different file (sha256 {step.existing[:12]}…)"
    return Outcome(Status.CONFLICT, step.rel, detail=f"the target holds {held}", existing_sha256=step.existing)


def _created(step: Place, file: File) -> Outcome:
    if step.role is Role.TARGET and not file.extra_links:
        return Outcome(Status.COMMITTED, step.rel)  # the common case, once per file
    notes = []
    if step.role is Role.DERIVED:
        notes.append(f"conflict with {file.target} (sha256 {step.existing}); committed under a derived name")
    if file.extra_links:
        notes.append(f"copied, not linked: the file has {file.extra_links} other hard link(s)")
    existing = step.existing if step.role is Role.DERIVED else None
    return Outcome(Status.COMMITTED, step.rel, detail="; ".join(notes), existing_sha256=existing)


def _taken(step: Place, answer: Answer, file: File, on_conflict: OnConflict) -> Step:
    """Other bytes than these, or identical ones, hold the target or the derived name."""
    assert file.sha256 is not None, "a file whose name is taken is hashed first"
    assert file.target is not None
    if file.claimed is not None and file.claimed != file.sha256:
        return Redescribe()
    if answer.sha256 == file.sha256:
        how = "identical bytes were already there with no manifest row (an interrupted earlier run); recorded now"
        where = "committed" if step.role is Role.TARGET else "at the derived name"
        return _already_there(step, answer, file, how=how, duplicate=f"identical file already {where}")
    following = _other_bytes(step, answer, file, on_conflict)
    recorded = answer.recorded
    if recorded is not None and isinstance(following, Place) and following.rel != recorded.path:
        # This very file, recorded by an earlier run (a rerun of ingest, or of a commit killed
        # before it removed the file) that kept its bytes elsewhere than this run's policy
        # would: they stay there. A second place for them would be a file no row records.
        if recorded.status is Status.CONFLICT:
            detail = "an open conflict recorded by an earlier run (another conflict policy); kept there for review"
            return Outcome(Status.CONFLICT, recorded.path, detail=detail, existing_sha256=answer.sha256)
        detail = f"recorded by an earlier run ({recorded.status}), under another conflict policy; its bytes are there"
        return Outcome(Status.DUPLICATE, recorded.path, detail=detail, existing_sha256=answer.sha256)
    return following


def _other_bytes(step: Place, answer: Answer, file: File, on_conflict: OnConflict) -> Step:
    """Other bytes hold the name: the conflict policy says where this file goes next."""
    assert file.sha256 is not None
    assert file.target is not None
    conflict_copy = "/".join((*CONFLICTS_DIR, f"{file.sha256}.dcm"))
    if step.role is Role.DERIVED:
        return Place(Role.CONFLICT_COPY, conflict_copy, step.existing)
    if on_conflict == "error":
        return Refuse(file.target)
    if on_conflict == "suffix":
        return Place(Role.DERIVED, derived_name(file.target, file.sha256), answer.sha256)
    return Place(Role.CONFLICT_COPY, conflict_copy, answer.sha256)


def _already_there(
    step: Place, answer: Answer, file: File, *, how: str, duplicate: str, linked: bool = False
) -> Outcome:
    """This file's bytes hold the name already (our own earlier link, or identical bytes): a
    duplicate of the row that records them; or, when no row does (an interrupted run placed
    them but did not record them), committed now. When ``recover`` recorded them as found in
    the archive, this file claims that row: it is where they came from."""
    holder = None if answer.placed_this_run else answer.holder
    if answer.placed_this_run or (holder is not None and not holder.source.startswith(FOUND_IN_ARCHIVE)):
        if holder is not None and (holder.source, holder.host) == (file.source, file.host):
            # This very file, recorded already: still linked (killed before the unlink), it is
            # committed; copied again (a rerun of ingest), a duplicate. The same key either way,
            # so nothing is recorded twice, even when its hash was not read now.
            status = Status.COMMITTED if linked else Status.DUPLICATE
            return Outcome(status, step.rel, detail=duplicate, sha256=holder.sha256)
        return Outcome(Status.DUPLICATE, step.rel, detail=duplicate)
    claims = None if holder is None else holder.id
    return Outcome(Status.COMMITTED, step.rel, detail=how, claims=claims)
