"""Where dicomcommit keeps its own files: inside an archive (all below ``.dicomcommit/``),
and the names of files in a staging directory."""

from __future__ import annotations

STAGED_SUFFIX = ".dcm"  # a staged file, complete
PART_SUFFIX = ".part"  # an unfinished stage (staging directories only): commit never takes one

STATE_DIR = ".dicomcommit"
CONFLICTS_DIR = (STATE_DIR, "conflicts")  # staged files that lost their name: <sha256>.dcm
INVALID_DIR = (STATE_DIR, "invalid")  # staged files that are not DICOM Part 10: <sha256>
TMP_DIR = (STATE_DIR, "tmp")  # copies across filesystems, between copy and link
REJECTED_DIR = (STATE_DIR, "rejected")  # conflicts resolved --keep existing: <sha256>.dcm
REPLACED_DIR = (STATE_DIR, "replaced")  # files replaced by resolve --keep staged: <sha256>.dcm
LOCK_NAME = "lock"  # the archive lock; never deleted
MANIFEST_NAME = "manifest.sqlite"
