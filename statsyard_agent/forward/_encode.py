"""Pure encoders: a :class:`FlushBatch` in, spool records in a sink's wire format out.

No IO here. Each record carries at most ``max_points`` points, so a send of one or more whole
records stays within the sink's request size. Records of one sink concatenate into a valid
request: Graphite lines simply follow each other, and protobuf messages merge by concatenation
(repeated fields append), so several spooled ``WriteRequest`` fragments are one ``WriteRequest``.

Series naming, shared by both encoders:

* NaN values are skipped, as the local storage skips them (a NaN is "no value"); ±Inf cannot be
  written in Graphite plaintext and is skipped there (counted by the caller as ``unencodable``).
* The sink's ``tags`` are added to each series and win over a series tag of the same name.
* A bare DogStatsD tag (``#web``, stored as ``("web", "")``) is sent as ``web=true``: neither
  Graphite tags nor Prometheus labels can be present without a value, and dropping it would
  merge ``x|#web`` into ``x``.
"""

from __future__ import annotations

import math
import re
import struct
from typing import NamedTuple

from statsyard_agent._types import FlushBatch, Tags

#: Label bytes are cached per series; the cache is simply cleared when it reaches this size.
SERIES_CACHE_MAX = 1 << 18


class Record(NamedTuple):
    """One spool record: an encoded payload and what it holds."""

    payload: bytes
    points: int
    timestamp: int


class Encoded(NamedTuple):
    records: list[Record]
    skipped: int  # points that cannot be written in this format (counted as dropped)


def _merge_tags(tags: Tags, extra: Tags) -> list[tuple[str, str]]:
    if not extra:
        return [(k, v or "true") for k, v in tags]
    merged = {k: v or "true" for k, v in tags}
    merged.update(extra)
    return sorted(merged.items())


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _split(parts: list[bytes], timestamp: int, max_points: int) -> list[Record]:
    return [
        Record(b"".join(parts[i : i + max_points]), len(parts[i : i + max_points]), timestamp)
        for i in range(0, len(parts), max_points)
    ]


# --- Graphite plaintext ------------------------------------------------------------------

_GRAPHITE_NAME = re.compile(r"[\s;]")
_GRAPHITE_TAG_KEY = re.compile(r"[\s;!^=]")
_GRAPHITE_TAG_VALUE = re.compile(r"[\s;]")


def graphite_series(name: str, tags: list[tuple[str, str]]) -> str:
    """``name;k=v;k2=v2`` with the characters Graphite's tag syntax forbids replaced by ``_``
    (whitespace and ``;`` anywhere, ``!^=`` in tag names, a leading ``~`` in a tag value)."""
    text = _GRAPHITE_NAME.sub("_", name) or "_"
    for key, value in tags:
        value = _GRAPHITE_TAG_VALUE.sub("_", value)
        if value.startswith("~"):
            value = "_" + value[1:]
        text += f";{_GRAPHITE_TAG_KEY.sub('_', key) or '_'}={value}"
    return text


class GraphiteEncoder:
    """``name;tag=v value timestamp\\n`` lines, timestamps in whole seconds."""

    def __init__(self, extra_tags: Tags = (), max_points: int = 2000) -> None:
        self.extra_tags = extra_tags
        self.max_points = max_points
        self._prefixes: dict[tuple[str, Tags], str] = {}

    def encode(self, batch: FlushBatch) -> Encoded:
        prefixes = self._prefixes
        if len(prefixes) > SERIES_CACHE_MAX:
            prefixes.clear()
        suffix = f" {batch.timestamp}\n"
        lines: list[bytes] = []
        skipped = 0
        for name, tags, value in zip(batch.names, batch.tags, batch.values.tolist(), strict=True):
            if not math.isfinite(value):
                skipped += not math.isnan(value)
                continue
            prefix = prefixes.get((name, tags))
            if prefix is None:
                prefix = graphite_series(name, _merge_tags(tags, self.extra_tags)) + " "
                prefixes[(name, tags)] = prefix
            lines.append((prefix + _number(value) + suffix).encode())
        return Encoded(_split(lines, batch.timestamp, self.max_points), skipped)


# --- Prometheus remote write 1.0 ---------------------------------------------------------
#
#   message WriteRequest { repeated TimeSeries timeseries = 1; ... }
#   message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; ... }
#   message Label        { string name = 1; string value = 2; }
#   message Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms
#
# Hand-written because it is four fields and the label part of a series never changes between
# flushes: it is built once per series and cached, so a flush costs one small sample encoding
# per point (bench/forward_encode.py compares this with the protobuf package).

_METRIC_NAME_BAD = re.compile(r"[^a-zA-Z0-9_:]")
_LABEL_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
_DOUBLE = struct.Struct("<d")


def _varint(value: int) -> bytes:
    value &= 0xFFFF_FFFF_FFFF_FFFF  # int64: negative numbers take ten bytes, as in protobuf
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prometheus_name(name: str) -> str:
    """A metric name matching ``[a-zA-Z_:][a-zA-Z0-9_:]*`` (others characters become ``_``)."""
    name = _METRIC_NAME_BAD.sub("_", name)
    return "_" + name if not name or name[0].isdigit() else name


def prometheus_label(name: str) -> str:
    """A label name matching ``[a-zA-Z_][a-zA-Z0-9_]*`` that is not reserved (``__``)."""
    name = _LABEL_NAME_BAD.sub("_", name)
    if not name or name[0].isdigit():
        name = "_" + name
    return "tag" + name if name.startswith("__") else name


def series_labels(name: str, tags: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The sorted, unique, non-empty labels of one series (the spec's requirements); of two
    tags that sanitize to the same label name, the later one wins."""
    labels = {prometheus_label(k): v for k, v in tags if v}
    labels["__name__"] = prometheus_name(name)
    return sorted(labels.items(), key=lambda kv: kv[0].encode())


def encode_labels(labels: list[tuple[str, str]]) -> bytes:
    """The ``labels`` fields of a TimeSeries."""
    return b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in labels)


def encode_sample(value: float, timestamp_ms: int) -> bytes:
    """One ``samples`` field of a TimeSeries."""
    sample = b"\x09" + _DOUBLE.pack(value) + b"\x10" + _varint(timestamp_ms)
    return b"\x12" + _varint(len(sample)) + sample


class RemoteWriteEncoder:
    """Records of ``WriteRequest.timeseries`` fields: one TimeSeries (one sample) per point."""

    def __init__(self, extra_tags: Tags = (), max_points: int = 2000) -> None:
        self.extra_tags = extra_tags
        self.max_points = max_points
        self._labels: dict[tuple[str, Tags], bytes] = {}

    def encode(self, batch: FlushBatch) -> Encoded:
        cache = self._labels
        if len(cache) > SERIES_CACHE_MAX:
            cache.clear()
        timestamp_ms = batch.timestamp * 1000
        series: list[bytes] = []
        for name, tags, value in zip(batch.names, batch.tags, batch.values.tolist(), strict=True):
            if math.isnan(value):
                continue  # NaN would read as a (non-stale) NaN sample; the local store skips it
            labels = cache.get((name, tags))
            if labels is None:
                labels = encode_labels(series_labels(name, _merge_tags(tags, self.extra_tags)))
                cache[(name, tags)] = labels
            body = labels + encode_sample(value, timestamp_ms)
            series.append(b"\x0a" + _varint(len(body)) + body)
        return Encoded(_split(series, batch.timestamp, self.max_points), 0)
