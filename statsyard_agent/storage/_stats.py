"""``storage stats`` and ``storage verify``: read-only inspection of a data directory.

Both are safe while the agent writes: they take no lock, write nothing, and treat a file that
vanishes mid-scan (a sealed WAL segment, a compacted partition) as gone rather than broken.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from statsyard_agent._exceptions import CorruptDataError, StorageError

from . import _files, _index, _records, _wal
from ._index import SeriesIndex
from ._partition import HEADER_SIZE, Header, PartitionFile, parse_header

Progress = Callable[[int, int], None]


def _writer_running(data_dir: Path) -> bool:
    """True when a writer holds the directory's lock (its WAL tail may be mid-append)."""
    try:
        fd = os.open(data_dir / _files.LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)
    return False


def _file_size(path: Path) -> int:
    with contextlib.suppress(OSError):
        return path.stat().st_size
    return 0


def storage_stats(data_dir: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Sizes and counts of a data directory, JSON-serialisable, read from file sizes and
    partition headers only.

    Keys: ``series`` (point series), ``sketch_series``, ``groups`` (the retention of each
    group), ``partitions``, ``points`` and ``bytes_per_point`` over all partitions (point bytes:
    sketches excluded, headers and tables included; ``bytes_per_point_all_in`` counts the
    sketches too), ``sketch_slots``, ``sketch_bytes``,
    ``index_bytes``, ``wal_bytes``, ``wal_segments``, ``quarantined``, ``bytes_total``, and
    ``tiers``: per ``g<gid>/<step>s`` its ``retention`` and the same counts for its
    partitions. ``progress(done, total)`` is called once per file examined. Safe while the
    agent runs. Raises StorageError when ``data_dir`` is not a data directory.
    """
    data_dir = Path(data_dir)
    _files.read_marker(data_dir)
    index = SeriesIndex(data_dir / _files.INDEX)
    index.refresh()
    segments = _files.list_wal_segments(data_dir)
    tier_dirs = _files.list_tier_dirs(data_dir)
    partitions = [(gid, step, p) for gid, step, d in tier_dirs for _s, _e, p in _files.list_partitions(d)]
    total = len(segments) + len(partitions) + 1
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    tick()
    wal_bytes = 0
    for _seq, path in segments:
        wal_bytes += _file_size(path)
        tick()
    per_tier: dict[str, dict[str, Any]] = {}
    for gid, step, _d in tier_dirs:
        tiers = index.groups.get(gid, ())
        retention = next((str(t) for t in tiers if t.step == step), None)
        per_tier[f"g{gid}/{step}s"] = {"retention": retention, **_counts()}
    for gid, step, path in partitions:
        entry = per_tier[f"g{gid}/{step}s"]
        header = _partition_header(path)
        if header is not None:
            entry["partitions"] += 1
            entry["bytes"] += header.table_offset + header.table_length
            entry["points"] += header.points
            entry["sketch_slots"] += header.sketch_slots
            entry["sketch_bytes"] += header.sketch_bytes
        tick()
    overall = _counts()
    for entry in per_tier.values():
        for key in overall:
            overall[key] += entry[key]
        entry["bytes_per_point"] = _ratio(entry["bytes"] - entry["sketch_bytes"], entry["points"])
        entry["bytes_per_point_all_in"] = _ratio(entry["bytes"], entry["points"])
    index_bytes = _file_size(data_dir / _files.INDEX)
    quarantine = data_dir / _files.QUARANTINE_DIR
    quarantined = len(os.listdir(quarantine)) if quarantine.is_dir() else 0
    return {
        "series": len(index.point_ids),
        "sketch_series": len(index.sketch_ids),
        "groups": {f"g{gid}": ",".join(str(t) for t in tiers) for gid, tiers in index.groups.items()},
        "partitions": overall["partitions"],
        "points": overall["points"],
        "bytes_per_point": _ratio(overall["bytes"] - overall["sketch_bytes"], overall["points"]),
        "bytes_per_point_all_in": _ratio(overall["bytes"], overall["points"]),
        "sketch_slots": overall["sketch_slots"],
        "sketch_bytes": overall["sketch_bytes"],
        "tiers": per_tier,
        "index_bytes": index_bytes,
        "wal_bytes": wal_bytes,
        "wal_segments": len(segments),
        "quarantined": quarantined,
        "bytes_total": index_bytes + wal_bytes + overall["bytes"],
    }


def _counts() -> dict[str, int]:
    return {"partitions": 0, "bytes": 0, "points": 0, "sketch_slots": 0, "sketch_bytes": 0}


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def _partition_header(path: Path) -> Header | None:
    """A partition's header (None when it vanished or is damaged: verify reports that)."""
    try:
        with open(path, "rb") as fh:
            return parse_header(fh.read(HEADER_SIZE))
    except (OSError, CorruptDataError):
        return None


def verify_storage(data_dir: Path, progress: Progress | None = None) -> list[str]:
    """Check every checksum of a data directory; returns the problems found ([] = all good).

    Checks the series index, every WAL segment and every partition (header, table and each
    chunk). While a writer runs, an incomplete record at the very end of the newest WAL
    segment or of the index is an append in progress, not a problem. Raises StorageError
    when ``data_dir`` is not a data directory.
    """
    data_dir = Path(data_dir)
    _files.read_marker(data_dir)
    live = _writer_running(data_dir)
    problems: list[str] = []
    segments = _files.list_wal_segments(data_dir)
    tiers = _files.list_tier_dirs(data_dir)
    partitions = [p for _g, _s, d in tiers for _a, _b, p in _files.list_partitions(d)]
    total = 1 + len(segments) + len(partitions)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    problems.extend(_verify_log(data_dir / _files.INDEX, _index.MAGIC, live, last=True))
    tick()
    for i, (_seq, path) in enumerate(segments):
        problems.extend(_verify_log(path, _wal.MAGIC, live, last=i == len(segments) - 1))
        tick()
    for path in partitions:
        problems.extend(_verify_partition(path))
        tick()
    return problems


def _verify_log(path: Path, magic: bytes, live: bool, *, last: bool) -> list[str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"{path}: cannot read ({_files.describe_os_error(exc)})"]
    if not raw.startswith(magic):
        if live and last and magic.startswith(raw):
            return []
        return [f"{path}: bad magic (not a StatsYard file)"]
    payloads: list[memoryview] = []
    scan = _records.scan(raw, len(magic), payloads)
    if scan.torn and not (live and last):
        return [
            f"{path}: {len(raw) - scan.end} bytes after offset {scan.end} fail their checksum "
            "(a torn write; the writer truncates it when it next opens the directory)"
        ]
    return []


def _verify_partition(path: Path) -> list[str]:
    try:
        with PartitionFile.open(path) as part:
            part.verify()
    except FileNotFoundError:
        return []  # compacted, expired or quarantined meanwhile
    except OSError as exc:
        return [f"{path}: cannot read ({_files.describe_os_error(exc)})"]
    except CorruptDataError as exc:
        return [f"{path}: {exc}"]
    return []


__all__ = ["StorageError", "storage_stats", "verify_storage"]
