"""Content hashes of files: sha256 of whole files, read in chunks, symlinks never followed."""

from __future__ import annotations

import errno
import hashlib
import os
import stat

_CHUNK = 1 << 20


def hash_at(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> tuple[str, int] | None:
    """(sha256, size) of the regular file at *path* (relative to *dir_fd*, if given).

    A symlink there is not followed. Returns None when nothing is there, or when it is a
    symlink, a directory or a special file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    try:
        return hash_file(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def sha256_at(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> str | None:
    """The hash of the regular file at *path*; None as :func:`hash_at`."""
    found = hash_at(path, dir_fd=dir_fd)
    return None if found is None else found[0]


def hash_file(fd: int) -> tuple[str, int]:
    """Return (sha256 hex, size) of the whole file open at *fd*."""
    os.lseek(fd, 0, os.SEEK_SET)
    digest = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, _CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size
