"""The exception hierarchy: one root, each class narrowing a builtin and carrying an exit code."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ATTENTION = 3


class DicomCommitError(Exception):
    """Root of every error dicomcommit raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(DicomCommitError, ValueError):
    """A bad argument: a template, a directory, an option value."""

    exit_code = EXIT_USAGE


class TemplateError(UsageError):
    """A naming template that cannot be used (unknown keyword, unsafe literal, ...)."""


class EncodeError(DicomCommitError, ValueError):
    """pydicom could not encode the dataset; nothing was written."""


class MismatchError(EncodeError):
    """The bytes to stage do not carry the naming attributes they must (:attr:`keyword` says which)."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(message)
        self.keyword = keyword


class FileOpError(DicomCommitError, OSError):
    """An operating-system call failed on a named file; nothing was lost.

    Carries ``errno`` and ``filename`` like the :class:`OSError` it wraps.
    """

    def __init__(self, message: str, path: str | os.PathLike[str], cause: OSError | None = None) -> None:
        errno = cause.errno if cause is not None else None
        super().__init__(errno, message, os.fspath(path))

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}"


class StageError(FileOpError):
    """Staging a dataset failed; no staged file (complete or partial) was left behind."""


class CommitError(FileOpError):
    """Committing a file failed; it is still where it was (in the staging directory)."""


class IngestError(CommitError):
    """Ingesting a file failed; it is still where it was in the source tree."""


class ResolveError(FileOpError):
    """Carrying out a recorded decision on a conflict failed; rerunning resolve finishes it."""


class ArchiveError(FileOpError):
    """The archive itself refused an operation: a component that is not a real directory,
    a read-only filesystem, a state directory that cannot be made."""


class ObjectStoreError(ArchiveError):
    """An object store refused a request, or could not be reached after retries (no such
    bucket, access denied, a server that keeps failing); nothing staged was lost."""


class LockError(ArchiveError):
    """The archive lock cannot be taken at all (permissions, a symlink planted at its path)."""


class NoClobberUnsupported(ArchiveError):
    """The archive's filesystem has no no-clobber primitive (hard links): we fail closed."""


class TargetExistsError(DicomCommitError, FileExistsError):
    """A file already exists at the final name and overwriting was not asked for."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.EEXIST, "file exists", os.fspath(path))

    def __str__(self) -> str:
        return f"file exists: {self.filename}"


class ConflictError(DicomCommitError, FileExistsError):
    """A staged file differs from the committed file at its target (``on_conflict="error"``)."""

    exit_code = EXIT_ATTENTION

    def __init__(self, staged: str, target: str) -> None:
        super().__init__(errno.EEXIST, "a different file is already committed at the target", target)
        self.staged = staged
        self.target = target

    def __str__(self) -> str:
        return f"conflict: {self.staged} wants {self.target}, which holds a different file"


class LockTimeout(DicomCommitError, TimeoutError):
    """The archive lock could not be acquired in time."""

    def __init__(self, lock_path: str, timeout: float) -> None:
        super().__init__(f"archive lock {lock_path} not acquired within {timeout:g} s")
        self.lock_path = lock_path


class ReceiveError(DicomCommitError):
    """The receiver cannot listen on its port, or cannot keep its own state (its Storage
    Commitment requests) in the staging directory."""


class ManifestError(DicomCommitError):
    """The manifest is missing, unreadable, or has no such row."""


class ManifestDamaged(ManifestError):
    """The manifest file is corrupt: ``recover --rebuild-manifest`` rebuilds it from the archive."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def names_os_errors(
    what: str, error: type[FileOpError] = CommitError
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a public call so that any ``OSError`` it lets through leaves it as an
    *error* naming the file (or, without one, the call's first argument)."""

    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(function)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return function(*args, **kwargs)
            except DicomCommitError:
                raise
            except OSError as exc:
                where: Any = exc.filename or (args[0] if args else "")
                raise error(f"{what} failed ({exc.strerror})", where, exc) from exc

        return wrapper

    return decorate
