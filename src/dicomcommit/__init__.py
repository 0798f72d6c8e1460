"""dicomcommit: many processes write DICOM files into one archive, and none is ever lost.

Stage datasets from any number of processes with :class:`Stager`, then :func:`commit`
them (or :func:`ingest` an existing tree): each gets its header-derived name with a
no-clobber hard link, identical duplicates are dropped, and different files wanting the
same name are kept as conflicts in the :class:`Manifest`, for a person to :func:`show`,
:func:`resolve`, or see in a :func:`write_report`. After a crash, :func:`recover`.
"""

from __future__ import annotations

from dicomcommit._version import __version__
from dicomcommit.committing.driver import commit
from dicomcommit.committing.ingest import ingest
from dicomcommit.committing.outcomes import CommitReport
from dicomcommit.committing.recover import RecoverReport, recover
from dicomcommit.committing.resolve import resolve, resolve_many
from dicomcommit.errors import (
    ArchiveError,
    CommitError,
    ConflictError,
    DicomCommitError,
    EncodeError,
    FileOpError,
    IngestError,
    LockError,
    LockTimeout,
    ManifestError,
    NoClobberUnsupported,
    ResolveError,
    StageError,
    TargetExistsError,
    TemplateError,
    UsageError,
)
from dicomcommit.manifests import Manifest, open_manifest
from dicomcommit.manifests.records import NewRecord, Record, Status
from dicomcommit.naming import DEFAULT_TEMPLATE, MISSING
from dicomcommit.review.report import write_report
from dicomcommit.review.show import show
from dicomcommit.staging.stager import Stager
from dicomcommit.staging.writing import dcmwrite

__all__ = [
    "DEFAULT_TEMPLATE",
    "MISSING",
    "ArchiveError",
    "CommitError",
    "CommitReport",
    "ConflictError",
    "DicomCommitError",
    "EncodeError",
    "FileOpError",
    "IngestError",
    "LockError",
    "LockTimeout",
    "Manifest",
    "ManifestError",
    "NewRecord",
    "NoClobberUnsupported",
    "Record",
    "RecoverReport",
    "ResolveError",
    "StageError",
    "Stager",
    "Status",
    "TargetExistsError",
    "TemplateError",
    "UsageError",
    "__version__",
    "commit",
    "dcmwrite",
    "ingest",
    "open_manifest",
    "recover",
    "resolve",
    "resolve_many",
    "show",
    "write_report",
]
