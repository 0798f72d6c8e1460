"""The archive as a POSIX directory: create-only placement with ``link(2)``, and
everything else through directory fds opened without following symlinks.

- ``ARCHIVE/.dicomcommit/`` holds dicomcommit's own files; commit and resolve hold the lock
  ``ARCHIVE/.dicomcommit/lock`` (filelock, ``flock``) per batch; it is never deleted.
- A name is placed with ``link(2)``, which fails with ``EEXIST`` instead of replacing
  anything (never ``rename(2)``, which replaces silently). A file with other hard links, or
  on another filesystem (``EXDEV``), is first copied into ``.dicomcommit/tmp/`` (fsynced),
  and the copy is linked: the archive never shares an inode with a name outside it.
- Directories that gained or lost entries are made durable once per batch (:meth:`sync`): one
  ``syncfs`` of the filesystem where that is as good as fsync, else an fsync of each.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from dicomcommit import _fs
from dicomcommit.archives.base import BaseArchive, Payload
from dicomcommit.checks import check_lock_timeout
from dicomcommit.errors import ArchiveError, LockError, LockTimeout, NoClobberUnsupported
from dicomcommit.hashing import hash_at
from dicomcommit.layout import LOCK_NAME, STATE_DIR, TMP_DIR

#: Bytes a batch copies ahead at most (ingest's copy mode), made durable together.
COPY_AHEAD_BYTES = 256 << 20


class FilesystemArchive(BaseArchive):
    """The archive at the directory *root* (created, with its state directory, on the first
    placement). With *durable*, :meth:`sync` fsyncs every directory that changed."""

    def __init__(self, root: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self.durable = durable
        self._tree: _DirTree | None = None

    @property
    def tree(self) -> _DirTree:
        """The directories of this batch (opened on first use, closed by :meth:`release`)."""
        if self._tree is None:
            self._tree = _DirTree(self.root, durable=self.durable, tmp=TMP_DIR)  # FileNotFoundError: no archive yet
        return self._tree

    def lock(self, timeout: float | None) -> Locked:
        """The archive lock (``ARCHIVE/.dicomcommit/lock``), creating the state directory if needed.

        Raises:
            UsageError: *timeout* is negative, infinite or not a number (checked first).
            ArchiveError: the state directory cannot be made, or is not a real directory.
        """
        check_lock_timeout(timeout)
        lock_file = make_state_dir(self.root) / LOCK_NAME
        return Locked(FileLock(lock_file, timeout=-1 if timeout is None else timeout))

    def create(self) -> None:
        make_state_dir(self.root)

    def prepare(self, placements: list[tuple[Payload, str]]) -> None:
        """Copy the batch's files that are copied, not linked (ingest's copy mode, files with
        other hard links), into ``.dicomcommit/tmp/`` at once, and make the copies durable
        together (one syncfs where it covers them), before any of them gets a name."""
        copied = [payload for payload, _ in placements if payload.copy or payload.nlink > 1]
        if copied:
            self.tree.copy_ahead(copied, owner=self.owner)

    def place(self, payload: Payload, rel: str) -> _fs.Placed:
        dirs, name = _fs.split_rel(rel)
        return self.tree.link_in(payload.dir_fd, payload.name, dirs, name, open_src=payload.open, copy=payload.copy,
                                 nlink=payload.nlink, owner=self.owner)  # fmt: skip

    def size(self, rel: str) -> int | None:
        st = self._stat(rel)
        return st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None

    def hash(self, rel: str) -> tuple[str, int] | None:
        found = self._parent(rel)
        return None if found is None else hash_at(found[1], dir_fd=found[0])

    def exists(self, rel: str) -> bool:
        return self._stat(rel) is not None

    def holds(self, path: str | os.PathLike[str], rel: str) -> bool:
        st = self._stat(rel)
        return st is not None and os.path.samestat(os.stat(path, follow_symlinks=False), st)

    # Every lookup goes through directory fds opened without following symlinks, as
    # placement does: a directory of the archive swapped for a symlink is refused
    # (ArchiveError) by all of them alike, never followed by one and refused by another.
    def _parent(self, rel: str) -> tuple[int, str] | None:
        """(fd of the directory of *rel*, its last component); None when that directory is not there."""
        dirs, name = _fs.split_rel(rel)
        try:
            return self.tree.dir_fd(dirs, create=False), name
        except FileNotFoundError:  # the archive, or a directory of the name, is not there
            return None

    def _stat(self, rel: str) -> os.stat_result | None:
        found = self._parent(rel)
        if found is None:
            return None
        try:
            return os.stat(found[1], dir_fd=found[0], follow_symlinks=False)
        except FileNotFoundError:
            return None

    def link(self, src: str, dst: str) -> _fs.Placed:
        src_dirs, src_name = _fs.split_rel(src)
        dst_dirs, dst_name = _fs.split_rel(dst)
        placed = _fs.link_noclobber(self.tree.dir_fd(src_dirs), src_name, self.tree.dir_fd(dst_dirs), dst_name,
                                    where=str(self.root / dst))  # fmt: skip
        self.tree.touch(dst_dirs)
        return placed

    def replace(self, src: str, dst: str) -> None:
        src_dirs, src_name = _fs.split_rel(src)
        dst_dirs, dst_name = _fs.split_rel(dst)
        # rename(2) replaces the target atomically: readers see the old file or the new one
        os.rename(src_name, dst_name, src_dir_fd=self.tree.dir_fd(src_dirs), dst_dir_fd=self.tree.dir_fd(dst_dirs))
        self.tree.touch(src_dirs)
        self.tree.touch(dst_dirs)

    def remove(self, rel: str) -> None:
        dirs, name = _fs.split_rel(rel)
        try:
            dir_fd = self.tree.dir_fd(dirs, create=False)
        except FileNotFoundError:
            return
        _fs.unlink_quietly(dir_fd, name)
        self.tree.touch(dirs)

    def files(self, folder: tuple[str, ...] = ()) -> list[str]:
        top = self.root.joinpath(*folder)
        found = []
        for directory, dirs, names in os.walk(top):
            rel_dir = os.path.relpath(directory, self.root)
            if rel_dir == ".":
                dirs[:] = [d for d in dirs if d != STATE_DIR]
                rel_dir = ""
            found += [f"{rel_dir}/{n}" if rel_dir else n for n in names]
        return sorted(found)

    def open(self, rel: str) -> BinaryIO:
        found = self._parent(rel)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), f"{self.root}/{rel}")
        return os.fdopen(_fs.open_read(found[1], found[0]), "rb")

    def sync(self) -> None:
        if self._tree is not None and self.durable:
            self._tree.fsync_touched()

    def release(self) -> None:
        if self._tree is not None:
            self._tree.close()
            self._tree = None


def make_state_dir(archive: Path) -> Path:
    """Create ``ARCHIVE/.dicomcommit`` if needed; refuse it if it is not a real directory.

    Raises:
        ArchiveError: it cannot be created, or it is a symlink or a file (the manifest and
            the lock would then be written wherever it points).
    """
    state = archive / STATE_DIR
    if archive.is_dir() and os.statvfs(archive).f_flag & os.ST_RDONLY:
        raise ArchiveError(
            f"the archive is on a read-only filesystem ({os.strerror(errno.EROFS)})", archive, OSError(errno.EROFS, "")
        )
    try:
        archive.mkdir(parents=True, exist_ok=True)
        os.mkdir(state, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ArchiveError(f"cannot create the archive's state directory ({exc.strerror})", state, exc) from exc
    if not stat.S_ISDIR(os.lstat(state).st_mode):
        raise ArchiveError("not a real directory (a symlink or a file); refusing to write through it", state)
    return state


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
            raise LockError(f"cannot take the archive lock ({exc.strerror})", self._lock.lock_file, exc) from exc

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _DirTree:
    """Directories below *root*, opened without following symlinks and cached by path.

    Remembers which directories received or lost entries, so durable mode can fsync each
    of them once per batch instead of once per file. At most *max_open* directories stay
    open; the least recently used is closed first (after its fsync, if it was touched and
    the tree is durable), so a batch spread over many series never runs out of fds.
    """

    def __init__(self, root: Path, *, durable: bool = True, tmp: tuple[str, ...] = (), max_open: int = 256) -> None:
        self.root = root
        self.durable = durable
        self._tmp = tmp
        self._max_open = max_open
        self._root_fd = _fs.open_root(root)
        self._fds: OrderedDict[tuple[str, ...], int] = OrderedDict({(): self._root_fd})
        self._touched: set[tuple[str, ...]] = set()
        self._copies: dict[str, str] = {}  # durable copies in tmp made ahead, by source file name

    def dir_fd(self, parts: tuple[str, ...], *, create: bool = True) -> int:
        """Return an fd for the directory *parts* below the root, creating it when asked.

        Raises:
            ArchiveError: a component exists but is a symlink or not a directory.
        """
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        parent = self.dir_fd(parts[:-1], create=create)
        name = parts[-1]
        try:
            fd = _fs.open_dir(name, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, _fs.DIR_MODE, dir_fd=parent)
                self._touched.add(parts[:-1])
            except FileExistsError:
                pass  # another committer made it between our open and our mkdir
            fd = self._open_checked(name, parent, parts)
        except OSError as exc:
            raise self._not_a_dir(parts, exc) from exc
        self._fds[parts] = fd
        while len(self._fds) > self._max_open:
            self._evict()
        return fd

    def _evict(self) -> None:
        parts, fd = next((p, f) for p, f in self._fds.items() if p)  # the oldest, never the root
        if parts in self._touched:
            if self.durable and not self._root_syncfs_covers(fd):
                _fs.fsync_dir(fd)
            self._touched.discard(parts)
            self._touched.add(())  # one syncfs of the root's filesystem covers it (or: fsynced, harmless)
        del self._fds[parts]
        os.close(fd)

    def _open_checked(self, name: str, parent: int, parts: tuple[str, ...]) -> int:
        try:
            return _fs.open_dir(name, dir_fd=parent)
        except OSError as exc:
            raise self._not_a_dir(parts, exc) from exc

    def _not_a_dir(self, parts: tuple[str, ...], exc: OSError) -> ArchiveError:
        path = self.root.joinpath(*parts)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return ArchiveError("not a real directory (a symlink or a file); refusing to follow it", path, exc)
        return ArchiveError(f"cannot open directory ({exc.strerror})", path, exc)

    def link_in(
        self,
        src_dir_fd: int,
        src: str,
        dirs: tuple[str, ...],
        name: str,
        *,
        open_src: Callable[[], int],
        copy: bool,
        nlink: int | None = None,
        owner: str = "",
    ) -> _fs.Placed:
        """Give the file *src* the name *dirs*/*name* below the root, never clobbering.

        With *copy*, when the file has other hard links, or when it is on another filesystem (``EXDEV``), its bytes are
        first copied into the tree's *tmp* directory (fsynced when durable), and the copy is
        linked: the root then never shares an inode with what it copied from. (A *copy* whose
        destination turns out to be the same inode was linked there by an interrupted earlier
        run, before it had other names: ``SAME_INODE``, as for a link; asked only when the
        name is taken, so the common case costs no stat.)

        Raises:
            NoClobberUnsupported: the filesystem has no hard links.
            OSError: any other failure.
        """
        dst_fd = self.dir_fd(dirs)
        where = "/".join((str(self.root), *dirs, name))
        placed = None
        # A file with other names (hard links) is copied: linked, it would share its inode
        # with a name outside the root, and truncating that name would empty ours.
        if nlink is None:  # the caller's stat, when it has one, saves a syscall per file
            nlink = os.stat(src, dir_fd=src_dir_fd, follow_symlinks=False).st_nlink
        copy = copy or nlink > 1
        if not copy:
            try:
                placed = _fs.link_noclobber(src_dir_fd, src, dst_fd, name, where=where)
            except NoClobberUnsupported:
                raise
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
        if placed is None:
            tmp_fd = self.dir_fd(self._tmp)
            tmp = self._copies.pop(src, None) or _fs.copy_exclusive(open_src(), tmp_fd, durable=self.durable,
                                                                    owner=owner)  # fmt: skip
            try:
                placed = _fs.link_noclobber(tmp_fd, tmp, dst_fd, name, where=where)
            finally:
                _fs.unlink_quietly(tmp_fd, tmp)
            if placed is _fs.Placed.SAME_INODE:  # a fresh copy: NFS reported a failure for a link that happened
                placed = _fs.Placed.CREATED
            elif placed is _fs.Placed.EXISTS and _fs.same_inode(src_dir_fd, src, dst_fd, name):
                placed = _fs.Placed.SAME_INODE  # the file itself is there: an interrupted earlier run linked it
        if placed is not _fs.Placed.EXISTS:
            # Also an earlier run's link (SAME_INODE): that run may have died before its fsync.
            self.touch(dirs)
        return placed

    def copy_ahead(self, payloads: list[Payload], *, owner: str) -> None:
        """Copy each payload's bytes into *tmp* for :meth:`link_in` to link, and (durable)
        make all the copies durable with one flush: bytes durable before any name.

        At most :data:`COPY_AHEAD_BYTES` are copied ahead: a copy whose name turns out to be
        taken (a rerun of ingest finds every file there) is removed only at the batch's end,
        so the space held at once stays bounded; the rest are copied one by one, each made
        durable before its link. A payload that cannot be copied now is left to
        :meth:`link_in`, which copies it again and reports the error with its name.
        """
        tmp_fd = self.dir_fd(self._tmp)
        made: dict[str, str] = {}
        room = COPY_AHEAD_BYTES
        try:
            for payload in payloads:
                with contextlib.suppress(OSError):
                    copied, size = _copy_of(payload, tmp_fd, owner)
                    made[payload.name] = copied
                    room -= size
                if room <= 0:
                    break
            if self.durable:
                try:
                    _fs.flush_files(tmp_fd, list(made.values()))
                except OSError as exc:
                    where = self.root.joinpath(*self._tmp)
                    raise ArchiveError(f"cannot make the copies durable ({exc.strerror})", where, exc) from exc
        except BaseException:
            for tmp in made.values():
                _fs.unlink_quietly(tmp_fd, tmp)
            raise
        self._copies.update(made)

    def touch(self, parts: tuple[str, ...]) -> None:
        """Note that the directory *parts* gained or lost an entry."""
        self._touched.add(parts)

    def fsync_touched(self) -> None:
        """Make every touched directory durable, and forget them: one ``syncfs`` of each
        filesystem where it is as good as fsync (:func:`~dicomcommit._fs.syncfs_covers`), else
        an fsync of each directory, deepest first."""
        parts = sorted(self._touched, key=len, reverse=True)
        _fs.sync_dirs([self.dir_fd(p, create=False) for p in parts])
        self._touched.clear()

    def _root_syncfs_covers(self, fd: int) -> bool:
        """Whether the directory *fd* is on the root's filesystem, and its syncfs covers it."""
        return os.fstat(fd).st_dev == os.fstat(self._root_fd).st_dev and _fs.syncfs_covers(self._root_fd)

    def close(self) -> None:
        """Remove the copies made ahead that were not linked, and close every cached directory fd."""
        if self._copies:
            tmp_fd = self.dir_fd(self._tmp)
            for tmp in self._copies.values():
                _fs.unlink_quietly(tmp_fd, tmp)
            self._copies.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _copy_of(payload: Payload, tmp_fd: int, owner: str) -> tuple[str, int]:
    """(name, size) of a copy of *payload*'s bytes in *tmp_fd*, not synced (a batch keeps no
    fd per file open)."""
    fd = _fs.open_read(payload.name, payload.dir_fd)
    try:
        return _fs.copy_exclusive(fd, tmp_fd, durable=False, owner=owner), os.fstat(fd).st_size
    finally:
        os.close(fd)
