"""Which partitions a tier has, and which of them to read for a time range."""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from . import _files
from ._partition import PartitionFile


@dataclass(frozen=True, slots=True)
class PartRef:
    """A partition file covering ``[start, end)`` of one tier."""

    start: int
    end: int
    path: Path

    @property
    def span(self) -> int:
        return self.end - self.start


def list_tier(data_dir: Path, gid: int, step: int) -> list[PartRef]:
    """The partitions of one tier, sorted by start (a missing directory means none)."""
    directory = _files.tier_dir(data_dir, gid, step)
    return [PartRef(s, e, p) for s, e, p in _files.list_partitions(directory)]


def cover(parts: list[PartRef], start: int, end: int) -> list[PartRef]:
    """Non-overlapping partitions to read for ``[start, end)``, widest first.

    Overlaps only exist for a moment (a full partition written, the small ones it compacts
    not yet deleted); both hold the same data, and the wide one wins.
    """
    chosen: list[PartRef] = []
    candidates = [p for p in parts if p.start < end and p.end > start]
    for part in sorted(candidates, key=lambda p: (-p.span, p.start)):
        if all(part.end <= c.start or part.start >= c.end for c in chosen):
            chosen.append(part)
    chosen.sort(key=lambda p: p.start)
    return chosen


class Catalog:
    """The writer's view of every partition, kept in memory (it is the only one changing
    them), so maintenance never lists directories; loaded once from disk at open."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._tiers: dict[tuple[int, int], list[PartRef]] = {}
        for gid, step, directory in _files.list_tier_dirs(data_dir):
            parts = [PartRef(s, e, p) for s, e, p in _files.list_partitions(directory)]
            self._tiers[(gid, step)] = parts

    def tier(self, gid: int, step: int) -> list[PartRef]:
        """The partitions of one tier sorted by start (a copy: safe to mutate the catalog)."""
        return list(self._tiers.get((gid, step), ()))

    def tiers(self) -> list[tuple[int, int, list[PartRef]]]:
        return [(g, s, list(parts)) for (g, s), parts in sorted(self._tiers.items())]

    def add(self, gid: int, step: int, ref: PartRef) -> None:
        parts = self._tiers.setdefault((gid, step), [])
        parts[:] = [p for p in parts if p.path != ref.path]
        parts.append(ref)
        parts.sort(key=lambda p: (p.start, p.end))

    def remove(self, path: Path) -> None:
        for parts in self._tiers.values():
            parts[:] = [p for p in parts if p.path != path]


class PartitionCache:
    """Open partitions by path (and inode, as a path may be reused), least recently used
    closed first: at most ``size`` file descriptors, however many series are read."""

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._open: OrderedDict[tuple[Path, int], PartitionFile] = OrderedDict()

    def get(self, path: Path) -> PartitionFile:
        """Raises FileNotFoundError when the file is gone, CorruptDataError when damaged."""
        inode = os.stat(path).st_ino
        key = (path, inode)
        cached = self._open.get(key)
        if cached is not None:
            self._open.move_to_end(key)
            return cached
        opened = PartitionFile.open(path)
        self._open[key] = opened
        while len(self._open) > self._size:
            _, old = self._open.popitem(last=False)
            old.close()
        return opened

    def forget(self, path: Path) -> None:
        for key in [k for k in self._open if k[0] == path]:
            with contextlib.suppress(Exception):
                self._open.pop(key).close()

    def clear(self) -> None:
        for part in self._open.values():
            part.close()
        self._open.clear()
