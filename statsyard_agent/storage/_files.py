"""The data directory's layout and the few filesystem primitives the engine relies on.

Layout (every name below is fixed or numeric: no series name ever becomes part of a path)::

    <data_dir>/
        statsyard.json        marker + metadata (format version, xfiles_factor); written atomically
        LOCK                  flock()ed by the single writer; holds its pid for the error message
        series.idx            append-only series index (id -> name, tags, rollup, retention group)
        wal/<seq:010d>.wal    write-ahead log segments
        data/g<gid>/<step>s/<start>-<end>.part   immutable partitions, one directory per tier
        quarantine/           partitions that failed their checksum, moved aside

A partition is written as ``<name>.tmp``, fsynced, renamed into place and the directory fsynced,
so it is either whole or absent; leftover ``*.tmp`` files are removed when the writer opens.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

from statsyard_agent._exceptions import StorageError

MARKER = "statsyard.json"
LOCK = "LOCK"
INDEX = "series.idx"
WAL_DIR = "wal"
DATA_DIR = "data"
QUARANTINE_DIR = "quarantine"
TMP_SUFFIX = ".tmp"
PART_SUFFIX = ".part"
WAL_SUFFIX = ".wal"

FORMAT_NAME = "statsyard-tsdb"
FORMAT_VERSION = 1


def describe_os_error(exc: OSError) -> str:
    """A short human reason for an OSError, with advice for the usual suspects."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        return f"{reason} (the disk is full: free space, the batch will be retried)"
    if exc.errno == errno.EDQUOT:
        return f"{reason} (disk quota exceeded: raise the quota or free space)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{reason} (check the owner and permissions of the data directory)"
    if exc.errno == errno.EROFS:
        return f"{reason} (the filesystem is read-only)"
    if exc.errno == errno.ENOENT:
        return f"{reason} (was the data directory removed?)"
    return reason


def storage_error(action: str, path: Path | str, exc: OSError) -> StorageError:
    """Translate an OSError at the boundary: ``StorageError("cannot <action> <path>: why")``."""
    return StorageError(f"cannot {action} {path}: {describe_os_error(exc)}")


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or unlink inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until everything is written (a regular file may accept a short write)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_atomic(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``path`` whole or not at all: tmp file, fsync, rename, fsync of the directory.

    Raises OSError (callers translate it); the tmp file is removed on failure.
    """
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(path.parent)


def read_marker(data_dir: Path) -> dict[str, Any]:
    """The marker's metadata; StorageError when ``data_dir`` is not a StatsYard data directory."""
    path = data_dir / MARKER
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not data_dir.is_dir():
            raise StorageError(f"{data_dir} does not exist (no StatsYard data here)") from None
        raise StorageError(
            f"{data_dir} is not a StatsYard data directory (no {MARKER}); "
            "point --data-dir at the directory the agent writes"
        ) from None
    except OSError as exc:
        raise storage_error("read", path, exc) from exc
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise StorageError(f"{path} is not valid JSON ({exc}); the directory is damaged") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise StorageError(f"{data_dir} is not a StatsYard data directory ({path} is foreign)")
    if meta.get("version") != FORMAT_VERSION:
        raise StorageError(
            f"{data_dir} uses storage format version {meta.get('version')!r}; this StatsYard "
            f"reads version {FORMAT_VERSION} only"
        )
    return meta


def write_marker(data_dir: Path, meta: dict[str, Any], *, fsync: bool) -> None:
    """Atomically (re)write the marker with ``meta`` plus the format name and version."""
    body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}
    write_atomic(data_dir / MARKER, json.dumps(body, sort_keys=True).encode() + b"\n", fsync=fsync)


def tier_dir(data_dir: Path, gid: int, step: int) -> Path:
    """Where the partitions of retention group ``gid``'s tier with ``step`` seconds live."""
    return data_dir / DATA_DIR / f"g{gid}" / f"{step}s"


def partition_name(start: int, end: int) -> str:
    return f"{start}-{end}{PART_SUFFIX}"


def parse_partition_name(name: str) -> tuple[int, int] | None:
    """``(start, end)`` of a partition file name, or None for anything else (tmp files...)."""
    if not name.endswith(PART_SUFFIX):
        return None
    first, sep, second = name[: -len(PART_SUFFIX)].partition("-")
    if not sep or not first.isdigit() or not second.isdigit():
        return None
    start, end = int(first), int(second)
    return (start, end) if start < end else None


def wal_segment_name(seq: int) -> str:
    return f"{seq:010d}{WAL_SUFFIX}"


def parse_wal_segment_name(name: str) -> int | None:
    stem = name[: -len(WAL_SUFFIX)] if name.endswith(WAL_SUFFIX) else ""
    return int(stem) if stem.isdigit() else None


def list_wal_segments(data_dir: Path) -> list[tuple[int, Path]]:
    """WAL segments as ``(seq, path)``, oldest first; an absent wal/ directory means none."""
    wal = data_dir / WAL_DIR
    try:
        names = os.listdir(wal)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        seq = parse_wal_segment_name(name)
        if seq is not None:
            out.append((seq, wal / name))
    out.sort()
    return out


def list_tier_dirs(data_dir: Path) -> list[tuple[int, int, Path]]:
    """Every ``(gid, step, path)`` tier directory present under data/."""
    root = data_dir / DATA_DIR
    out = []
    try:
        groups = os.listdir(root)
    except FileNotFoundError:
        return []
    for gname in groups:
        if not (gname.startswith("g") and gname[1:].isdigit()):
            continue
        try:
            steps = os.listdir(root / gname)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for sname in steps:
            if sname.endswith("s") and sname[:-1].isdigit():
                out.append((int(gname[1:]), int(sname[:-1]), root / gname / sname))
    out.sort()
    return out


def list_partitions(directory: Path) -> list[tuple[int, int, Path]]:
    """Partitions in one tier directory as ``(start, end, path)``, sorted; none if absent."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        parsed = parse_partition_name(name)
        if parsed is not None:
            out.append((parsed[0], parsed[1], directory / name))
    out.sort()
    return out
