"""``(name, tags) -> series id`` without a Python object per series.

Why not a dict: a dict keyed by ``(name, tags)`` costs, per series, a 56-byte key tuple, a
28-byte int for the id and about 40 bytes of table, i.e. ~125 bytes on top of the name itself,
and the index holds one entry per *stored* series (a StatsD timer is ~14 of them). This table
keeps only an open-addressing array of int32 ids (linear probing, load factor at most 1/2, so
8 to 16 bytes per series) and compares keys against the index's own ``names`` / ``tags``
columns, which it shares rather than copies (``names`` is a :class:`~._names.NameColumn` in the
index, read in bulk with its ``take``; a plain list works too).

Lookups are vectorised: :func:`hash_keys` hashes a whole batch of keys in C, :meth:`KeyTable.find`
probes every key at once with numpy, one probe round per step of the longest probe sequence,
and confirms each candidate by comparing the key itself (never the hash alone), so a hash
collision costs a probe, never a wrong id. Nothing is ever removed (the index is append-only),
which is what makes parallel insertion and linear probing without tombstones correct.

Hashes are Python's ``hash`` of the ``(name, tags)`` tuple: randomised per process, so they are
never stored on disk, and a table is rebuilt from the keys when it grows.
"""

from __future__ import annotations

import operator
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from statsyard_agent._types import Tags

from ._names import NameColumn

IntArray = npt.NDArray[np.int64]
Key = tuple[str, Tags]

_EMPTY = -1
_MIN_SLOTS = 16


def hash_keys(names: Sequence[str], tags: Sequence[Tags]) -> IntArray:
    """``hash((names[i], tags[i]))`` for every ``i`` (one C-level pass; zip reuses its tuple)."""
    return np.fromiter(map(hash, zip(names, tags, strict=True)), dtype=np.int64, count=len(names))


def distinct(hashes: IntArray) -> bool:
    """Whether the hashes are pairwise different (then so are their keys). A sort: numpy's
    hash-based ``unique`` is several times slower on 10^6 int64."""
    if len(hashes) < 2:
        return True
    ordered = np.sort(hashes)
    return bool((ordered[1:] != ordered[:-1]).all())


def _equal(left: Iterable[object], right: Iterable[object], count: int) -> npt.NDArray[np.bool_]:
    return np.fromiter(map(operator.eq, left, right), dtype=bool, count=count)


def take_names(
    names: Sequence[str], ids: list[int], inflated: dict[int, bytes] | None = None
) -> Iterable[str]:
    """``names[i] for i in ids``: in bulk from a :class:`NameColumn` (a region inflated and
    decoded at once, blocks cached in ``inflated`` if given), lazily from a list."""
    if isinstance(names, NameColumn):
        return names.take(ids, inflated)
    return map(names.__getitem__, ids)


class KeyTable(Mapping[Key, int]):
    """A read-mostly mapping from ``(name, tags)`` to the id of a series of one namespace.

    ``names`` and ``tags`` are the index's columns by id (the same list objects, appended by the
    index); the table only holds ids. Insert with :meth:`insert_new` (keys known to be absent
    and distinct), look up many keys with :meth:`find`. As a ``Mapping`` it supports ``in``,
    ``[]``, ``get``, ``len``, ``==`` with a dict, and iterates in ascending id order, which is
    the order of registration (what the dict it replaces gave).
    """

    __slots__ = ("_count", "_names", "_slots", "_tags")

    def __init__(self, names: Sequence[str], tags: list[Tags]) -> None:
        self._names = names
        self._tags = tags
        self._slots: npt.NDArray[np.int32] = np.full(_MIN_SLOTS, _EMPTY, dtype=np.int32)
        self._count = 0

    # -- Mapping ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, key: Key) -> int:
        try:
            name, tags = key
            probe = hash(key)
        except (TypeError, ValueError):
            raise KeyError(key) from None
        slots = self._slots
        mask = len(slots) - 1
        pos = probe & mask
        while (sid := int(slots[pos])) != _EMPTY:
            if self._names[sid] == name and self._tags[sid] == tags:
                return sid
            pos = (pos + 1) & mask
        raise KeyError(key)

    def __iter__(self) -> Iterator[Key]:
        ids = self._ids().tolist()
        yield from zip(take_names(self._names, ids), map(self._tags.__getitem__, ids), strict=True)

    def items(self) -> ItemsView[Key, int]:
        """Like a dict's, but iterated without a lookup per key."""
        return _Items(self)

    def _ids(self) -> IntArray:
        slots = self._slots
        return np.sort(slots[slots != _EMPTY]).astype(np.int64)

    # -- bulk ------------------------------------------------------------------------------------

    def find(self, hashes: IntArray, names: Sequence[str], tags: Sequence[Tags]) -> IntArray:
        """The id of each key ``(names[i], tags[i])`` (whose hash is ``hashes[i]``), -1 if absent."""
        count = len(hashes)
        out = np.full(count, -1, dtype=np.int64)
        if not self._count or not count:
            return out
        slots = self._slots
        mask = len(slots) - 1
        todo = np.arange(count)
        pos = hashes & mask
        known_names, known_tags = self._names, self._tags
        if isinstance(known_names, NameColumn) and 8 * count >= len(known_names):
            # Many keys: decode every stored name once for all the probe rounds (transient)
            # instead of a region per round.
            known_names = known_names[:]
        inflated: dict[int, bytes] = {}  # blocks inflated by one round serve the next ones
        while len(todo):
            cand = slots[pos]
            live = cand != _EMPTY
            if not live.all():  # an empty slot ends the probe: absent
                todo, pos, cand = todo[live], pos[live], cand[live]
                if not len(todo):
                    break
            which, held = todo.tolist(), cand.tolist()
            n = len(which)
            same = _equal(map(names.__getitem__, which), take_names(known_names, held, inflated), n)
            same &= _equal(map(tags.__getitem__, which), map(known_tags.__getitem__, held), n)
            out[todo[same]] = cand[same]
            other = ~same
            todo, pos = todo[other], (pos[other] + 1) & mask
        return out

    def insert_new(self, ids: IntArray, hashes: IntArray) -> None:
        """Add series ``ids`` whose keys (hashes ``hashes``) are distinct and not in the table."""
        if not len(ids):
            return
        self._count += len(ids)
        if 2 * self._count > len(self._slots):
            self._grow()
        self._place(ids.astype(np.int32), hashes)

    def _grow(self) -> None:
        """Double until the load is at most 1/2, and place the ids held so far again (their
        hashes recomputed from the columns: str objects cache theirs, so that is cheap)."""
        size = len(self._slots)
        while 2 * self._count > size:
            size *= 2
        old = self._slots
        held = old[old != _EMPTY]
        self._slots = np.full(size, _EMPTY, dtype=np.int32)
        if len(held):
            id_list = held.tolist()
            names = list(take_names(self._names, id_list))
            tags = list(map(self._tags.__getitem__, id_list))
            self._place(held, hash_keys(names, tags))

    def _place(self, ids: npt.NDArray[np.int32], hashes: IntArray) -> None:
        """Linear probing for many keys at once: each round, every key still unplaced writes its
        id into its current slot if free; the one whose id is there afterwards owns it (one per
        slot), the others move one slot on. Keys never move once placed."""
        slots = self._slots
        mask = len(slots) - 1
        pos = hashes & mask
        todo = ids
        while len(todo):
            free = slots[pos] == _EMPTY
            slots[pos[free]] = todo[free]
            placed = slots[pos] == todo
            todo, pos = todo[~placed], (pos[~placed] + 1) & mask


class _Items(ItemsView[Key, int]):
    _mapping: KeyTable

    def __iter__(self) -> Iterator[tuple[Key, int]]:
        table = self._mapping
        ids = table._ids().tolist()
        names = take_names(table._names, ids)
        yield from zip(zip(names, map(table._tags.__getitem__, ids), strict=True), ids, strict=True)
