"""A dry run's archive: it answers as the real archive would, after what the run has done
so far, and records what it would place instead of placing it."""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager
from typing import BinaryIO

from dicomcommit._fs import Placed
from dicomcommit.archives.base import BaseArchive, Payload
from dicomcommit.hashing import hash_at


class Rehearsal(BaseArchive):
    """Stands in for *real* in a dry run. It reads *real*, and takes no lock."""

    def __init__(self, real: BaseArchive) -> None:
        self.real = real
        self.location = real.location
        self.keeps_copies = real.keeps_copies
        self.placed: dict[str, str] = {}  # name -> the local path of the file that would hold it

    def create(self) -> None:
        """A dry run creates nothing; it checks that the archive can be read."""
        self.real.check()

    def check(self) -> None:
        self.real.check()

    def lock(self, timeout: float | None) -> AbstractContextManager[None]:
        self.real.check()
        return contextlib.nullcontext()

    def place(self, payload: Payload, rel: str) -> Placed:
        holder = self.placed.get(rel)
        if holder is not None:
            return Placed.SAME_INODE if holder == payload.path else Placed.EXISTS
        if self.real.exists(rel):
            return Placed.SAME_INODE if self.real.holds(payload.path, rel) else Placed.EXISTS
        self.placed[rel] = payload.path
        return Placed.CREATED

    def hash(self, rel: str) -> tuple[str, int] | None:
        holder = self.placed.get(rel)
        return self.real.hash(rel) if holder is None else hash_at(holder)

    def size(self, rel: str) -> int | None:
        holder = self.placed.get(rel)
        return self.real.size(rel) if holder is None else os.stat(holder, follow_symlinks=False).st_size

    def exists(self, rel: str) -> bool:
        return rel in self.placed or self.real.exists(rel)

    def holds(self, path: str | os.PathLike[str], rel: str) -> bool:
        holder = self.placed.get(rel)
        return self.real.holds(path, rel) if holder is None else os.fspath(path) == holder

    def link(self, src: str, dst: str) -> Placed:
        raise NotImplementedError("a dry run links nothing inside the archive")

    def replace(self, src: str, dst: str) -> None:
        raise NotImplementedError("a dry run replaces nothing")

    def remove(self, rel: str) -> None:
        raise NotImplementedError("a dry run removes nothing")

    def files(self, folder: tuple[str, ...] = ()) -> list[str]:
        return self.real.files(folder)

    def open(self, rel: str) -> BinaryIO:
        return self.real.open(rel)

    def sync(self) -> None:
        """Nothing to make durable."""

    def release(self) -> None:
        self.real.release()
