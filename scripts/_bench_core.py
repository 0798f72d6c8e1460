"""What every part of scripts/bench.py shares: the rows it prints, fresh directories, and
variants timed in interleaved runs."""

from __future__ import annotations

import os
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Variant = tuple[Callable[[], Any], Callable[[Any], None]]  # (prepare, timed)


@dataclass
class Row:
    name: str
    kind: str
    files: int
    rate: float  # files/s, median
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None


def faster(row: Row, base: Row, at_least: float) -> Row:
    """*row*, whose rate must be at least *at_least* times the rate of *base*."""
    ratio = row.rate / base.rate
    return Row(row.name, row.kind, row.files, row.rate, base.name, ratio, f">= {at_least:g}x", ratio >= at_least)


def slower(row: Row, base: Row, at_most: float | None) -> Row:
    """*row*, whose time may be at most *at_most* times that of *base* (None: shown, no target)."""
    slowdown = base.rate / row.rate
    if at_most is None:
        return Row(row.name, row.kind, row.files, row.rate, base.name, slowdown, "(time)")
    return Row(row.name, row.kind, row.files, row.rate, base.name, slowdown, f"time <= {at_most:g}x",
               slowdown <= at_most)  # fmt: skip


class Bench:
    def __init__(self, root: Path, runs: int) -> None:
        self.root = root
        self.runs = runs
        self._dirs = 0
        self.cache_dropped = False

    def fresh(self, name: str) -> Path:
        self._dirs += 1
        path = self.root / f"{self._dirs:04d}-{name}"
        path.mkdir()
        return path

    def next_to_last(self, name: str) -> Path:
        """A path (not created) beside the directory :meth:`fresh` made last."""
        return self.root / f"{self._dirs:04d}-{name}"

    def compare(self, files: int, variants: dict[str, Variant], *, cold: bool = False) -> dict[str, float]:
        """Median files/s of each variant; runs interleave variants, so that a slow phase of
        the machine (or of the filesystem) does not fall on one variant only.

        *cold*: also empty the page cache before each run (when allowed). Writers then fill
        pages the kernel has used before: in a VM, memory touched for the first time can
        cost more than the write itself, and would fall on whichever variant came first.
        """
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(self.runs):
            for name, (prepare, timed) in variants.items():
                arg = prepare()
                os.sync()  # start from clean writeback: no variant pays for the last one's dirty pages
                if cold:
                    self.cache_dropped = drop_page_cache()
                started = time.perf_counter()
                timed(arg)
                rates[name].append(files / (time.perf_counter() - started))
        return {name: statistics.median(values) for name, values in rates.items()}


def drop_page_cache() -> bool:
    """Free the clean page cache (root only); False when not allowed."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
    except OSError:
        return False
    return True


def collect(out: Any, children: list[Any], count: int) -> list[Any]:
    """*count* results from the children's queue; fails, instead of waiting forever, when a
    child dies without sending its result."""
    results: list[Any] = []
    while len(results) < count:
        try:
            results.append(out.get(timeout=1))
        except queue.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a benchmark child failed (exit code {dead[0].exitcode}); see its stderr") from None
    return results


def peak_rss_kib() -> int:
    """This process image's peak RSS. Not ru_maxrss: Linux carries that across exec, so a
    spawned child would report its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
