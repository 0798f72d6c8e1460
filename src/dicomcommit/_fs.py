"""Filesystem primitives: exclusive creation, no-clobber links, symlink-proof directory walks.

Everything below an archive root is reached through directory file descriptors opened
with ``O_NOFOLLOW``, so a directory swapped for a symlink is refused rather than followed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import time
import uuid
from enum import Enum

from dicomcommit.errors import NoClobberUnsupported
from dicomcommit.layout import PART_SUFFIX

FILE_MODE = 0o644  # the kernel applies the umask, as for any file a program creates
DIR_MODE = 0o755
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted where a file should be must not hang.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# errno values by which link(2) says "this filesystem has no hard links".
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})


class Placed(Enum):
    """What a no-clobber link found at its destination."""

    CREATED = "created"  # the destination is now our file
    SAME_INODE = "same-inode"  # the destination already was our file (an earlier, interrupted run)
    EXISTS = "exists"  # another file holds the destination; nothing was changed


def write_exclusive(
    dir_fd: int, name: str, data: bytes | memoryview, *, durable: bool, mode: int = FILE_MODE, stamp: bool = False
) -> os.stat_result:
    """Create *name* in *dir_fd* with *data*; it must not exist. Removes it again on failure.

    ``O_EXCL|O_NOFOLLOW``: a planted file or symlink at the name makes this fail instead of
    writing through it. With *stamp*, the file's mtime is set to the present moment read
    from the fine clock: the kernel stamps writes from a coarse clock (one tick is several
    milliseconds), so any later write, even in the same tick, leaves another mtime, and
    (inode, size, mtime) identifies these bytes (on filesystems with nanosecond times).
    Returns the file's stat after writing.
    """
    fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if stamp:
                moment = time.time_ns()
                os.utime(fd, ns=(moment, moment))
            if durable:
                os.fsync(fd)
            return os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(dir_fd, name)
        raise


def fsync_dir(dir_fd: int) -> None:
    """Make the directory entries created or removed in *dir_fd* durable."""
    os.fsync(dir_fd)


def open_dir(path: str | os.PathLike[str], *, dir_fd: int | None = None) -> int:
    """Open a directory for ``*at`` calls without following a symlink at its last component."""
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def open_root(path: str | os.PathLike[str]) -> int:
    """Open a directory the user named; a symlink there is the user's choice and is followed."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_read(name: str, dir_fd: int) -> int:
    """Open a file for reading without following a symlink."""
    return os.open(name, _READ_FLAGS, dir_fd=dir_fd)


def link_noclobber(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str, *, where: str) -> Placed:
    """Give the file *src* the extra name *dst*; never replaces what is at *dst*.

    ``link(2)`` fails with ``EEXIST`` atomically, unlike ``rename(2)``, which replaces its
    target silently. On ``EEXIST`` we compare inodes: NFS can report a failure for a link
    that did happen, and a rerun after a crash finds its own earlier link.

    Raises:
        NoClobberUnsupported: the filesystem has no hard links (we never fall back to rename).
        OSError: any other failure, ``EXDEV`` included (the caller copies across filesystems).
    """
    try:
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except FileExistsError:
        return Placed.SAME_INODE if same_inode(src_dir_fd, src, dst_dir_fd, dst) else Placed.EXISTS
    except OSError as exc:
        if exc.errno in _NO_LINK_ERRNOS:
            raise NoClobberUnsupported(
                "this filesystem refuses hard links, the only no-clobber primitive we use; "
                "refusing to fall back to a clobbering rename",
                where,
                exc,
            ) from exc
        raise
    return Placed.CREATED


def same_inode(a_dir_fd: int, a: str, b_dir_fd: int, b: str) -> bool:
    try:
        sa = os.stat(a, dir_fd=a_dir_fd, follow_symlinks=False)
        sb = os.stat(b, dir_fd=b_dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return os.path.samestat(sa, sb)


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether anything holds the name *name* in *dir_fd* (a symlink is not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def unlink_quietly(dir_fd: int, name: str) -> None:
    """Remove *name* from *dir_fd*; already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


# Filesystems whose syncfs(2) makes every dirty page, inode and directory entry durable,
# with a device cache flush, as fsync of each would (their ->sync_fs commits the journal or
# log with a flush after the writeback). tmpfs has no device: either way is a no-op.
# Elsewhere (NFS, FUSE, overlayfs, CIFS...) syncfs may do less than fsync: fsync each.
SYNCFS_FILESYSTEMS = {0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs"}
# Before Linux 5.8, syncfs returned 0 even when writeback had failed; fsync reports it.
_SYNCFS_REPORTS_ERRORS = (5, 8)
_STATFS_SIZE = 256  # struct statfs is 120 bytes on 64-bit Linux; f_type (a long) comes first


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "syncfs") and hasattr(libc, "fstatfs") else None


def _kernel_reports_syncfs_errors() -> bool:
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= _SYNCFS_REPORTS_ERRORS


_libc = _load_libc() if sys.platform == "linux" and _kernel_reports_syncfs_errors() else None


def syncfs_covers(fd: int) -> bool:
    """Whether one ``syncfs(2)`` of *fd*'s filesystem makes what was written on it durable as
    an fsync of each file and directory would: Linux 5.8 or later (syncfs reports writeback
    errors) and a filesystem of :data:`SYNCFS_FILESYSTEMS`."""
    if _libc is None:
        return False
    # Asked each time (once per batch), not cached by device: device numbers are reused
    # once a filesystem is unmounted, and another may be mounted there.
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        return False
    return (ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF) in SYNCFS_FILESYSTEMS


def syncfs(fd: int) -> None:
    """``syncfs(2)`` of *fd*'s filesystem (see :func:`syncfs_covers` for when it is enough).

    Raises:
        OSError: it failed (a writeback error: what was written may not be on disk).
    """
    assert _libc is not None, "syncfs_covers() said no syncfs"
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def flush_files(dir_fd: int, names: list[str]) -> None:
    """Make the bytes and metadata of the files *names* in *dir_fd* durable.

    One ``syncfs(2)`` of their filesystem does it for a whole batch where it is as good as
    fsync (:func:`syncfs_covers`): fsync would issue a device flush per file, which on some
    disks costs more than everything else commit does. Elsewhere each file is fsynced.
    """
    if not names:
        return
    if syncfs_covers(dir_fd):
        syncfs(dir_fd)
        return
    for name in names:
        fd = open_read(name, dir_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_dirs(fds: list[int]) -> None:
    """Make the entries created or removed in the directories *fds* durable: one ``syncfs``
    per filesystem where it covers them (:func:`syncfs_covers`), else one fsync each."""
    synced: set[int] = set()
    for fd in fds:
        dev = os.fstat(fd).st_dev
        if dev in synced:
            continue
        if syncfs_covers(fd):
            syncfs(fd)
            synced.add(dev)
        else:
            fsync_dir(fd)


def copy_exclusive(src_fd: int, dst_dir_fd: int, *, durable: bool, owner: str = "") -> str:
    """Copy the open file *src_fd* to a new uniquely named ``.part`` file in *dst_dir_fd*
    (``<owner>.<uuid>.part`` with an *owner*, see :func:`tmp_owner`).

    Used when staging and archive are on different filesystems (``EXDEV``): the copy lives
    on the archive's filesystem, so it can then be linked without clobbering.
    Returns the name of the copy; the caller unlinks it after linking.
    """
    name = f"{owner}.{uuid.uuid4().hex}{PART_SUFFIX}" if owner else f"{uuid.uuid4().hex}{PART_SUFFIX}"
    mode = os.fstat(src_fd).st_mode & 0o777
    fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=dst_dir_fd)
    try:
        try:
            os.lseek(src_fd, 0, os.SEEK_SET)
            while chunk := os.read(src_fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            # the umask applied at open(); the copy keeps the source's mode, as a link would
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_quietly(dst_dir_fd, name)
        raise
    return name


def tmp_owner(name: str) -> str:
    """The owner a temporary copy's name carries ("" for none), see :func:`copy_exclusive`."""
    owner, dot, _ = name.removesuffix(PART_SUFFIX).rpartition(".")
    return owner if dot else ""


def split_rel(rel: str) -> tuple[tuple[str, ...], str]:
    """Split an archive-relative ``a/b/c.dcm`` into (``("a", "b")``, ``"c.dcm"``)."""
    *dirs, name = rel.split("/")
    return tuple(dirs), name
