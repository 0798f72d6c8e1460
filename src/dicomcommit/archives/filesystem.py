"""The archive itself: its state directory, its lock, and the checks every command makes."""

from __future__ import annotations

import errno
import math
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from dicomcommit.errors import CommitError, LockTimeout, UsageError
from dicomcommit.layout import LOCK_NAME, STATE_DIR


def archive_lock(archive: Path, timeout: float | None) -> Locked:
    """The archive lock (``ARCHIVE/.dicomcommit/lock``), creating the state directory if needed.

    *timeout*: seconds to wait for it (0: try once), or None to wait as long as it takes.

    Raises:
        UsageError: *timeout* is negative, infinite or not a number (checked first).
        CommitError: the state directory cannot be made, or is not a real directory.
    """
    check_lock_timeout(timeout)
    return Locked(FileLock(make_state_dir(archive) / LOCK_NAME, timeout=-1 if timeout is None else timeout))


def check_lock_timeout(timeout: float | None) -> None:
    """Refuse a lock timeout that is not None or a finite number of seconds, 0 or more.

    Raises:
        UsageError: naming the value (filelock would take a negative one as "forever").
    """
    if timeout is not None:
        check_seconds("lock_timeout", timeout, "or None")


def check_seconds(what: str, seconds: float, alternative: str = "") -> None:
    """Refuse a duration that is not a finite number of seconds, 0 or more (nan, inf, -1).

    Raises:
        UsageError: naming *what* and the value.
    """
    if not (isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0):
        tail = f" {alternative}" if alternative else ""
        raise UsageError(f"{what} must be a finite number of seconds, 0 or more{tail}; not {seconds!r}")


def check_dirs(staging: Path, archive: Path, *, what: str = "staging directory") -> tuple[Path, Path]:
    """Check that *staging* is a directory, *archive* is one or is missing, and neither holds the other.

    Raises:
        UsageError: naming which of the two is wrong.
    """
    if not staging.is_dir():
        raise UsageError(f"{what} {staging} does not exist or is not a directory")
    if archive.exists() and not archive.is_dir():
        raise UsageError(f"archive {archive} is not a directory")
    s, a = staging.resolve(), archive.resolve()
    if s == a or s in a.parents or a in s.parents:
        raise UsageError(f"{what} {staging} and archive {archive} must not contain each other")
    return staging, archive


def make_state_dir(archive: Path) -> Path:
    """Create ``ARCHIVE/.dicomcommit`` if needed; refuse it if it is not a real directory.

    Raises:
        CommitError: it cannot be created, or it is a symlink or a file (the manifest and
            the lock would then be written wherever it points).
    """
    state = archive / STATE_DIR
    if archive.is_dir() and os.statvfs(archive).f_flag & os.ST_RDONLY:
        raise CommitError(
            f"the archive is on a read-only filesystem ({os.strerror(errno.EROFS)})", archive, OSError(errno.EROFS, "")
        )
    try:
        archive.mkdir(parents=True, exist_ok=True)
        os.mkdir(state, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CommitError(f"cannot create the archive's state directory ({exc.strerror})", state, exc) from exc
    if not stat.S_ISDIR(os.lstat(state).st_mode):
        raise CommitError("not a real directory (a symlink or a file); refusing to write through it", state)
    return state


def new_run_id() -> str:
    """A run id: UTC time, then 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + os.urandom(3).hex()


class Locked:
    """The archive lock as a context manager that raises our LockTimeout."""

    def __init__(self, lock: FileLock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        try:
            self._lock.acquire()
        except FileLockTimeout as exc:
            raise LockTimeout(str(self._lock.lock_file), float(self._lock.timeout)) from exc
        except OSError as exc:  # a symlink planted at the lock path (never followed), permissions...
            raise CommitError(f"cannot take the archive lock ({exc.strerror})", self._lock.lock_file, exc) from exc

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
