"""StatsYard's local time-series store: a WAL, rolled-up tiers of immutable partitions, a reader.

The agent writes through one :class:`TSDB` per data directory; any number of :class:`Reader`
objects (other threads or processes: the HTTP API, the ``query`` command) read it concurrently.
The pure helpers for retention strings, time specs and Graphite globs are re-exported here.
"""

from __future__ import annotations

from ._config import StorageConfig as StorageConfig
from ._glob import Glob as Glob
from ._reader import Reader as Reader
from ._reader import SeriesData as SeriesData
from ._reader import SeriesKey as SeriesKey
from ._retention import DEFAULT_RETENTION as DEFAULT_RETENTION
from ._retention import Tier as Tier
from ._retention import parse_retention as parse_retention
from ._stats import storage_stats as storage_stats
from ._stats import verify_storage as verify_storage
from ._timespec import parse_time as parse_time
from ._tsdb import TSDB as TSDB
from ._tsdb import WriterStats as WriterStats

__all__ = [
    "DEFAULT_RETENTION",
    "TSDB",
    "Glob",
    "Reader",
    "SeriesData",
    "SeriesKey",
    "StorageConfig",
    "Tier",
    "WriterStats",
    "parse_retention",
    "parse_time",
    "storage_stats",
    "verify_storage",
]
