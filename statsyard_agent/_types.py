"""The values that cross module boundaries: parser → aggregator → flush batch → writer.

They are plain, immutable and free of IO so that every stage can be tested alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

#: Tags of one series: ``(key, value)`` pairs, sorted and without duplicate pairs.
#: A bare DogStatsD tag ``web`` becomes ``("web", "")``.
Tags = tuple[tuple[str, str], ...]

FloatArray = npt.NDArray[np.float64]


class MetricKind(enum.Enum):
    """The StatsD type letters we accept, with their wire spelling as value."""

    COUNTER = "c"
    GAUGE = "g"
    TIMER = "ms"
    HISTOGRAM = "h"
    DISTRIBUTION = "d"
    SET = "s"


class Metric(NamedTuple):
    """One parsed metric line (after DogStatsD value packing, one line may carry several values).

    ``values`` holds the numeric values (empty for sets); ``members`` holds set members (empty
    for every other kind). ``delta`` is true for a gauge line whose value carried an explicit
    ``+``/``-`` sign while ``gauge_sign = "delta"``; such a Metric carries exactly one value.
    ``rate`` satisfies ``0 < rate <= 1``. ``timestamp`` is the DogStatsD ``|T`` value, parsed
    and validated but not used for bucketing (as statsd_exporter does).
    """

    name: str
    kind: MetricKind
    values: tuple[float, ...]
    members: tuple[str, ...]
    rate: float
    tags: Tags
    delta: bool
    container_id: str | None
    timestamp: int | None


class Event(NamedTuple):
    """A DogStatsD event ``_e{title_len,text_len}:title|text|...``."""

    title: str
    text: str
    alert_type: str
    tags: Tags


class ServiceCheck(NamedTuple):
    """A DogStatsD service check ``_sc|name|status|...``; ``status`` is 0..3."""

    name: str
    status: int
    tags: Tags


class Rollup(enum.IntEnum):
    """How a stored series is consolidated into a coarser step (never a blanket average).

    SUM      counts and sums: the values add up.
    MIN      ``lower``: the smallest value.
    MAX      ``upper`` and set counts: the largest value.
    LAST     gauges: the latest value.
    AVERAGE  stats with no exact combination (median, std): mean of the points present.
    RATE     per-second rates (``rate``, ``count_ps``): sum(value * interval) / step, i.e.
             recomputed from the count over the whole step, missing intervals counting as 0.
    MEAN     means (``mean``, ``mean_P``): weighted by the sibling count series (``count`` for
             ``mean``, ``count_P`` for ``mean_P``), i.e. sum(mean_i * count_i) / sum(count_i).
    """

    SUM = 1
    MIN = 2
    MAX = 3
    LAST = 4
    AVERAGE = 5
    RATE = 6
    MEAN = 7


@dataclass(frozen=True, slots=True)
class SketchPoint:
    """A mergeable quantile sketch of one timer/histogram/distribution series for one interval.

    ``name`` is the series' base name (e.g. ``stats.timers.api.latency``); the sketch's own
    encoding lives in :mod:`statsyard_agent._sketch` (``LogSketch.to_bytes``).
    """

    name: str
    tags: Tags
    sketch: bytes


@dataclass(frozen=True, slots=True)
class FlushBatch:
    """Everything one flush produced, columnar: point ``i`` is ``names[i]``, ``tags[i]`` ...

    ``timestamp`` is the end of the flushed interval in whole unix seconds (flushes are aligned
    to multiples of the interval); ``interval`` is its length in seconds.
    """

    timestamp: int
    interval: float
    names: tuple[str, ...]
    tags: tuple[Tags, ...]
    rollups: tuple[Rollup, ...]
    values: FloatArray
    sketches: tuple[SketchPoint, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.names)
