"""The series index: ``series.idx``, an append-only, checksummed log of series definitions.

Every series gets a dense integer id the first time it is written; partitions and WAL records
refer to series by id only, so no name (``../``, NUL, newlines, 10 KB of unicode...) ever
reaches a path or a format string. The index also records the retention *group* of each series
(the tiers it was created with, carbon's storage-schemas semantics: a later change of the
configuration applies to new series only) and its kind:

* kinds 1..7 are :class:`~statsyard_agent._types.Rollup` values (a point series);
* kind 0 is a sketch series (the mergeable quantile sketch of a timer's base name); point and
  sketch series live in separate namespaces, so ``x`` may be both;
* kind 255 marks an id whose definition was lost (see :data:`LOST_KIND`).

A point series is identified by ``(name, tags)``; a second rollup sent later for the same pair
does not create a new series (the first one wins, as a Whisper file keeps its aggregation).

Records (framed by :mod:`._records`):

* ``GROUP``: ``u32 gid, u32 n, n * (u32 step, u64 retention)``
* ``SERIES``: a columnar batch of new series with consecutive ids (see :func:`encode_series`).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from statsyard_agent._exceptions import CorruptDataError, StorageError
from statsyard_agent._types import Rollup, Tags, join_names

from . import _records
from ._files import storage_error
from ._keytable import KeyTable, distinct, hash_keys
from ._names import SEPARATOR, NameColumn
from ._retention import Tier

MAGIC = b"SYIDX\x00\x00\x01"
SKETCH_KIND = 0
#: An id the WAL used but whose definition was lost (index tail lost in a crash without
#: fsync): it is burnt so that it can never be handed to another series; never listed.
LOST_KIND = 255

_GROUP = 1
_SERIES = 2
_GROUP_HEAD = struct.Struct("<BxxxII")
_TIER = struct.Struct("<IQ")
_SERIES_HEAD = struct.Struct("<BxxxIII")

IntArray = npt.NDArray[np.int64]

#: ``mean`` -> ``count`` and ``mean_90`` -> ``count_90``: the MEAN rollup's weight series.
# same_keys compares at most max(_MAX_RUNS, points // _MIN_RUN) runs of consecutive ids (each
# inflates its stored block of names): past that a hash lookup is cheaper.
_MAX_RUNS = 64
_MIN_RUN = 4096
_MEAN_NODE = re.compile(r"(?:^|(?<=\.))mean(_[^.]*)?$")


def _encode_str(text: str) -> bytes:
    # surrogatepass: a name decoded with surrogateescape upstream still round-trips.
    return text.encode("utf-8", "surrogatepass")


def _decode_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


def sibling_count_name(name: str) -> str | None:
    """The count series weighting a MEAN series: ``a.mean`` -> ``a.count``, else None."""
    head, dot, last = name.rpartition(".")
    # Fast paths for the usual last nodes (what the regex gives for them; it scans the name).
    if last == "mean":
        return f"{head}{dot}count"
    if last.startswith("mean_") and "\n" not in last:
        return f"{head}{dot}count{last[4:]}"
    match = _MEAN_NODE.search(name)
    if match is None:
        return None
    return f"{name[: match.start()]}count{match.group(1) or ''}"


def encode_group(gid: int, tiers: Sequence[Tier]) -> bytes:
    parts = [_GROUP_HEAD.pack(_GROUP, gid, len(tiers))]
    parts.extend(_TIER.pack(t.step, t.retention) for t in tiers)
    return b"".join(parts)


def encode_series(
    first_id: int,
    names: Sequence[str],
    tags: Sequence[Tags],
    kinds: Sequence[int] | npt.NDArray[Any],
    gids: Sequence[int] | npt.NDArray[Any],
) -> bytes:
    """One SERIES record for the series ``first_id, first_id + 1, ...`` given as columns
    (``kinds[i]`` a Rollup value or :data:`SKETCH_KIND`): header, then columns (kinds u8, gids
    u32, tag counts u32, string lengths u32) and every string (name, then key/value of each
    tag) concatenated."""
    count = len(names)
    if not (len(tags) == len(kinds) == len(gids) == count):
        raise ValueError("encode_series: columns differ in length")
    if any(tags):
        strings: list[str] = []
        for name, tag in zip(names, tags, strict=True):
            strings.append(name)
            for key, value in tag:
                strings.append(key)
                strings.append(value)
        tag_counts = np.fromiter(map(len, tags), dtype="<u4", count=count)
    else:  # the common case: no tags at all, one string per series
        strings = list(names)
        tag_counts = np.zeros(count, dtype="<u4")
    text = "".join(strings)
    if text.isascii():
        # One encode for the lot; in ASCII a string's length is its length in bytes.
        blob = text.encode("ascii")
        lengths = np.fromiter(map(len, strings), dtype="<u4", count=len(strings))
    else:
        encoded = [_encode_str(string) for string in strings]
        blob = b"".join(encoded)
        lengths = np.fromiter(map(len, encoded), dtype="<u4", count=len(encoded))
    del text
    head = _SERIES_HEAD.pack(_SERIES, first_id, count, len(strings))
    return b"".join(
        [
            head,
            np.asarray(kinds, dtype="<u1").tobytes(),
            np.asarray(gids, dtype="<u4").tobytes(),
            tag_counts.tobytes(),
            lengths.tobytes(),
            blob,
        ]
    )


def _decode_strings(blob: bytes, starts: list[int], ends: list[int]) -> list[str]:
    """The strings at ``blob[starts[i]:ends[i]]`` (UTF-8, surrogatepass)."""
    if blob.isascii():
        # One decode, then str slices: in ASCII, byte offsets are character offsets.
        text = blob.decode("ascii")
        return [text[a:b] for a, b in zip(starts, ends, strict=True)]
    return [_decode_str(blob[a:b]) for a, b in zip(starts, ends, strict=True)]


class SeriesIndex:
    """The in-memory index: ids <-> (name, tags), kinds, groups, MEAN siblings.

    Built by replaying ``series.idx``; the writer appends through :meth:`apply` after a
    durable write, a reader catches up with :meth:`refresh` (it only reads new bytes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # A buffer, not a list of str: one name per stored series for the life of the process
        # (see _names). Tags stay a list: its tuples are shared with the aggregator's keys.
        self.names = NameColumn()
        self.tags: list[Tags] = []
        self._kinds = np.zeros(16, dtype=np.uint8)
        # 4 bytes per stored series each, not 8: gids are u32 on disk, and ids fit in int32 as
        # in the key tables; the properties below widen them (a transient copy per call).
        self._gids = np.zeros(16, dtype=np.uint32)
        self._sibling = np.full(16, -1, dtype=np.int32)
        self.groups: dict[int, tuple[Tier, ...]] = {}
        # Not dicts: see _keytable (they read names/tags above, by id).
        self.point_ids = KeyTable(self.names, self.tags)
        self.sketch_ids = KeyTable(self.names, self.tags)
        self._pending_mean: dict[tuple[str, Tags], list[int]] = {}
        self.offset = 0  # end of the valid prefix of the file read so far
        self.file_size = 0
        self.torn = False
        self.version = 0  # bumped whenever series are added (readers cache by it)

    # -- queries ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def kind(self, sid: int) -> int:
        return int(self._kinds[sid])

    def gid(self, sid: int) -> int:
        return int(self._gids[sid])

    @property
    def kinds(self) -> npt.NDArray[np.uint8]:
        """Kind of every series by id (a view: valid until the next change)."""
        return self._kinds[: len(self.names)]

    @property
    def gids(self) -> IntArray:
        """Retention group of every series by id (a copy)."""
        return self._gids[: len(self.names)].astype(np.int64)

    def gids_of(self, ids: IntArray) -> IntArray:
        """Retention group of series ``ids`` (each a valid id), without copying every group."""
        return self._gids[ids].astype(np.int64)

    @property
    def siblings(self) -> IntArray:
        """Count sibling of every MEAN series by id, -1 elsewhere (a copy)."""
        return self._sibling[: len(self.names)].astype(np.int64)

    def sibling(self, sid: int) -> int:
        """The id of a MEAN series' count sibling (same tags), or -1."""
        return int(self._sibling[sid]) if sid < len(self.names) else -1

    def same_keys(self, ids: IntArray, names: Sequence[str], tags: Sequence[Tags]) -> bool:
        """Whether series ``ids[i]`` is ``(names[i], tags[i])`` for every ``i`` (``ids`` valid).

        No hashing and no ``str`` per stored name: the writer's check that a batch has the same
        series as the previous one. ``ids`` are cut into runs of consecutive ids (a batch's
        series are registered a block at a time, in batch order, so a batch of known series
        has a few runs); each run's names are compared as bytes against the stored block, its
        tags as a list slice, in C. Too many runs (series registered in another order) is
        answered False: the caller's hash lookup costs less than a comparison per run.
        """
        count = len(ids)
        if count != len(names) or count != len(tags):
            return False
        if not count:
            return True
        cuts = np.flatnonzero(np.diff(ids) != 1) + 1
        if len(cuts) > max(_MAX_RUNS, count // _MIN_RUN):
            return False
        bounds = [0, *cuts.tolist(), count]
        firsts = ids[bounds[:-1]].tolist()
        known_tags = self.tags
        column = self.names
        for first, lo, hi in zip(firsts, bounds, bounds[1:], strict=False):
            if known_tags[first : first + hi - lo] != list(tags[lo:hi]):
                return False
            if column.joined_compares:
                # A run's names joined (from a PointNames batch: no string made per point).
                if not column.matches_joined(first, hi - lo, join_names(names, lo, hi, SEPARATOR)):
                    return False
            elif not column.matches(first, names[lo:hi]):
                return False
        return True

    def group_id(self, tiers: tuple[Tier, ...]) -> int | None:
        for gid, known in self.groups.items():
            if known == tiers:
                return gid
        return None

    # -- building ----------------------------------------------------------------------------

    def apply(self, payload: bytes | memoryview) -> None:
        """Apply one record; raises CorruptDataError when it does not decode or fit."""
        kind = payload[0]
        try:
            if kind == _GROUP:
                self._apply_group(payload)
            elif kind == _SERIES:
                self._apply_series(payload)
            else:
                raise CorruptDataError(f"unknown series index record type {kind}")
        except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
            raise CorruptDataError(f"bad series index record: {exc}") from exc

    def _apply_group(self, payload: bytes | memoryview) -> None:
        _, gid, count = _GROUP_HEAD.unpack_from(payload, 0)
        tiers = tuple(
            Tier(*_TIER.unpack_from(payload, _GROUP_HEAD.size + i * _TIER.size)) for i in range(count)
        )
        if len(payload) != _GROUP_HEAD.size + count * _TIER.size or not tiers:
            raise CorruptDataError("bad group record length")
        self.groups[gid] = tiers

    def _apply_series(self, payload: bytes | memoryview) -> None:
        _, first_id, count, nstrings = _SERIES_HEAD.unpack_from(payload, 0)
        if first_id != len(self.names):
            raise CorruptDataError(f"series record starts at id {first_id}, expected {len(self.names)}")
        pos = _SERIES_HEAD.size
        kinds = np.frombuffer(payload, dtype="<u1", count=count, offset=pos)
        pos += count
        gids = np.frombuffer(payload, dtype="<u4", count=count, offset=pos)
        pos += 4 * count
        tag_counts = np.frombuffer(payload, dtype="<u4", count=count, offset=pos)
        pos += 4 * count
        lengths = np.frombuffer(payload, dtype="<u4", count=nstrings, offset=pos)
        pos += 4 * nstrings
        if int(tag_counts.sum(dtype=np.int64)) * 2 + count != nstrings:
            raise CorruptDataError("series record: tag counts do not match the strings")
        ends = np.cumsum(lengths, dtype=np.int64) + pos
        if nstrings and int(ends[-1]) != len(payload):
            raise CorruptDataError("series record: string lengths do not match the payload")
        # Usually one group: skip np.unique.
        one = count and int(gids.min()) == int(gids.max())
        used = [int(gids[0])] if one else np.unique(gids).tolist()
        if ((kinds > max(Rollup)) & (kinds != LOST_KIND)).any() or any(g not in self.groups for g in used):
            raise CorruptDataError("series record: unknown kind or group")
        blob = bytes(payload[pos:])
        starts = (ends - lengths - pos).tolist()
        strings = _decode_strings(blob, starts, (ends - pos).tolist())
        if nstrings == count:  # no tags anywhere: one string per series
            new_names = strings
            new_tags: list[Tags] = [()] * count
        else:
            new_names = []
            new_tags = []
            pos = 0
            for n in tag_counts.tolist():
                new_names.append(strings[pos])
                if n:
                    flat = strings[pos + 1 : pos + 1 + 2 * n]
                    new_tags.append(tuple(zip(flat[0::2], flat[1::2], strict=True)))
                else:
                    new_tags.append(())
                pos += 1 + 2 * n
        self.add_series(new_names, new_tags, kinds, gids)

    def add_series(
        self,
        names: list[str],
        tags: list[Tags],
        kinds: npt.NDArray[Any],
        gids: npt.NDArray[Any] | list[int],
        *,
        new_point_hashes: IntArray | None = None,
    ) -> None:
        """Append series ``len(self), len(self) + 1, ...`` (the columns of one SERIES record).

        Used by :meth:`apply` and by the writer right after it made the same record durable
        (so that it does not decode what it just encoded). The first definition of a
        ``(name, tags)`` wins; ids of :data:`LOST_KIND` are burnt, never listed.
        ``new_point_hashes``: from the writer when these are all distinct point series the index
        does not hold yet, their :func:`~._keytable.hash_keys` (saves checking and hashing again).
        """
        first = len(self.names)
        count = len(names)
        total = first + count
        self._reserve(total)
        kinds = np.asarray(kinds, dtype=np.uint8)
        self._kinds[first:total] = kinds
        self._gids[first:total] = gids
        self._sibling[first:total] = -1
        self.names.extend(names)
        self.tags.extend(tags)
        # The lookups below mostly hit the names just added: read them from the list.
        with self.names.recent(first, names):
            point_ids = self.point_ids
            key_names: Sequence[str]
            key_tags: Sequence[Tags]
            if new_point_hashes is not None:
                key_names, key_tags = names, tags
                point_ids.insert_new(np.arange(first, total, dtype=np.int64), new_point_hashes)
            else:
                point = (kinds != LOST_KIND) & (kinds != SKETCH_KIND)
                if point.all():
                    key_names, key_tags = names, tags
                    _add_first(point_ids, np.arange(first, total, dtype=np.int64), names, tags)
                else:
                    where = np.flatnonzero(point)
                    key_names = [names[i] for i in where.tolist()]
                    key_tags = [tags[i] for i in where.tolist()]
                    sketch = np.flatnonzero(kinds == SKETCH_KIND)
                    if len(sketch):
                        _add_first(
                            self.sketch_ids,
                            sketch + first,
                            [names[i] for i in sketch.tolist()],
                            [tags[i] for i in sketch.tolist()],
                        )
                    _add_first(point_ids, where + first, key_names, key_tags)
            self._resolve_pending_mean(key_names, key_tags)
            mean = np.flatnonzero(kinds == Rollup.MEAN).tolist()
            if mean:
                count_names: list[str] = []
                count_tags: list[Tags] = []
                sids: list[int] = []
                for i in mean:
                    count_name = sibling_count_name(names[i])
                    if count_name is not None:
                        count_names.append(count_name)
                        count_tags.append(tags[i])
                        sids.append(first + i)
                others = point_ids.find(hash_keys(count_names, count_tags), count_names, count_tags)
                self._sibling[sids] = others
                pending = self._pending_mean
                for j in np.flatnonzero(others < 0).tolist():
                    pending.setdefault((count_names[j], count_tags[j]), []).append(sids[j])
        self.version += 1

    def _resolve_pending_mean(self, names: Sequence[str], tags: Sequence[Tags]) -> None:
        """MEAN series registered before their count sibling: link those now defined (among
        the point series just added, ``names``/``tags``)."""
        pending = self._pending_mean
        if not pending:
            return
        point_ids = self.point_ids
        if len(pending) <= len(names):
            wanted = list(pending)
            want_names = [name for name, _ in wanted]
            want_tags = [tags for _, tags in wanted]
            ids = point_ids.find(hash_keys(want_names, want_tags), want_names, want_tags)
            found = [(wanted[j], int(ids[j])) for j in np.flatnonzero(ids >= 0).tolist()]
        else:
            keys = dict.fromkeys(key for key in zip(names, tags, strict=True) if key in pending)
            found = [(key, point_ids[key]) for key in keys]
        for key, sid in found:
            self._sibling[pending.pop(key)] = sid

    def _reserve(self, size: int) -> None:
        """Room for ``size`` series in the per-id arrays, growing them geometrically."""
        capacity = len(self._kinds)
        if size <= capacity:
            return
        size = max(size, 2 * capacity)
        used = len(self.names)
        # np.empty: pages beyond the used prefix are only touched when series arrive.
        for attr in ("_kinds", "_gids", "_sibling"):
            old = getattr(self, attr)
            new = np.empty(size, dtype=old.dtype)
            new[:used] = old[:used]
            setattr(self, attr, new)

    # -- the file ----------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read records appended since the last call; True when anything new was applied.

        Stops (without error) at an incomplete or bad record: the writer may be writing it.
        Raises StorageError when the file cannot be read or does not start with the magic.
        """
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size == self.file_size and not self.torn:
                    return False
                if self.offset == 0:
                    head = fh.read(len(MAGIC))
                    if head != MAGIC:
                        if size < len(MAGIC) and MAGIC.startswith(head):
                            return False  # being created
                        raise StorageError(f"{self.path} is not a StatsYard series index")
                    self.offset = len(MAGIC)
                fh.seek(self.offset)
                buf = fh.read()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise storage_error("read", self.path, exc) from exc
        payloads: list[memoryview] = []
        result = _records.scan(buf, 0, payloads)
        applied = 0
        for payload in payloads:
            try:
                self.apply(payload)
            except CorruptDataError as exc:
                raise StorageError(f"{self.path} is damaged: {exc}") from exc
            applied += 1
        self.offset += result.end
        self.file_size = size
        self.torn = result.torn
        return applied > 0


def _add_first(table: KeyTable, ids: IntArray, names: Sequence[str], tags: Sequence[Tags]) -> None:
    """Add each series ``ids[i]`` keyed ``(names[i], tags[i])`` to ``table`` unless its key is
    there already or earlier in these columns (the first definition wins)."""
    if not len(ids):
        return
    hashes = hash_keys(names, tags)
    absent = np.flatnonzero(table.find(hashes, names, tags) < 0)
    if len(absent) < len(ids):
        ids, hashes = ids[absent], hashes[absent]
        names = [names[i] for i in absent.tolist()]
        tags = [tags[i] for i in absent.tolist()]
    if not distinct(hashes):
        # Equal keys within the columns (or merely equal hashes): keep first occurrences.
        positions: dict[tuple[str, Tags], int] = {}
        for i, key in enumerate(zip(names, tags, strict=True)):
            positions.setdefault(key, i)
        keep = np.fromiter(positions.values(), dtype=np.int64, count=len(positions))
        ids, hashes = ids[keep], hashes[keep]
    table.insert_new(ids, hashes)
