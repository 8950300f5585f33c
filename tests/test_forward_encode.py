"""Encoders: Graphite lines byte for byte, remote write checked against the protobuf package."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent._types import FlushBatch, Rollup, Tags
from statsyard_agent.forward._encode import (
    GraphiteEncoder,
    RemoteWriteEncoder,
    graphite_series,
    prometheus_label,
    prometheus_name,
)
from tests import prompb

TS = 1_700_000_000


def batch(points: list[tuple[str, Tags, float]], timestamp: int = TS) -> FlushBatch:
    return FlushBatch(
        timestamp,
        10.0,
        tuple(p[0] for p in points),
        tuple(p[1] for p in points),
        (Rollup.LAST,) * len(points),
        np.array([p[2] for p in points], np.float64),
    )


def graphite_text(encoder: GraphiteEncoder, b: FlushBatch) -> str:
    return "".join(r.payload.decode() for r in encoder.encode(b).records)


def test_graphite_lines() -> None:
    b = batch(
        [
            ("stats.counters.api.count", (), 42.0),
            ("stats.timers.api.mean", (("env", "prod"), ("web", "")), 1.25),
            ("stats.gauges.big", (), 1e20),
            ("stats.gauges.neg", (), -0.5),
            ("stats.gauges.nan", (), math.nan),
        ]
    )
    assert graphite_text(GraphiteEncoder(), b) == (
        f"stats.counters.api.count 42 {TS}\n"
        f"stats.timers.api.mean;env=prod;web=true 1.25 {TS}\n"
        f"stats.gauges.big 1e+20 {TS}\n"
        f"stats.gauges.neg -0.5 {TS}\n"
    )


def test_graphite_sink_tags_are_added_and_win() -> None:
    b = batch([("x", (("env", "dev"), ("zone", "a")), 1.0)])
    encoder = GraphiteEncoder(extra_tags=(("env", "prod"), ("instance", "web-01")))
    assert graphite_text(encoder, b) == f"x;env=prod;instance=web-01;zone=a 1 {TS}\n"


@pytest.mark.parametrize(
    ("name", "tags", "series"),
    [
        ("a b;c", [], "a_b_c"),
        ("x", [("k=v", "1"), ("a!b^c", "v")], "x;k_v=1;a_b_c=v"),
        ("x", [("k", "~tilde;semi colon")], "x;k=_tilde_semi_colon"),
        ("", [], "_"),
    ],
)
def test_graphite_forbidden_characters(name: str, tags: list[tuple[str, str]], series: str) -> None:
    assert graphite_series(name, tags) == series


def test_infinities_are_skipped_and_counted_in_graphite_only() -> None:
    b = batch([("a", (), math.inf), ("b", (), -math.inf), ("c", (), 1.0), ("d", (), math.nan)])
    encoded = GraphiteEncoder().encode(b)
    assert encoded.skipped == 2  # NaN is "no value" (not counted), as in the local store
    assert encoded.records[0].points == 1
    rw = RemoteWriteEncoder().encode(b)
    assert rw.skipped == 0
    decoded = prompb.decode(b"".join(r.payload for r in rw.records))
    assert [(dict(labels)["__name__"], samples[0][0]) for labels, samples in decoded] == [
        ("a", math.inf),
        ("b", -math.inf),
        ("c", 1.0),
    ]


@pytest.mark.parametrize(
    ("points", "max_points", "sizes"), [(5, 2, [2, 2, 1]), (4, 4, [4]), (1, 10, [1]), (0, 3, [])]
)
def test_records_hold_at_most_max_points(points: int, max_points: int, sizes: list[int]) -> None:
    b = batch([(f"s{i}", (), float(i)) for i in range(points)])
    for encoder in (GraphiteEncoder(max_points=max_points), RemoteWriteEncoder(max_points=max_points)):
        records = encoder.encode(b).records
        assert [r.points for r in records] == sizes
        assert all(r.timestamp == TS for r in records)


def test_remote_write_labels_follow_the_spec() -> None:
    b = batch(
        [
            (
                "stats.timers.api-v2.upper_90",
                (
                    ("Zone", "a"),
                    ("env", "prod"),
                    ("web", ""),
                    ("__name__", "evil"),
                    ("9lives", "x"),
                    ("a.b", "1"),
                    ("a_b", "2"),
                ),
                7.5,
            )
        ]
    )
    encoder = RemoteWriteEncoder(extra_tags=(("instance", "h1"),))
    ((labels, samples),) = prompb.decode(b"".join(r.payload for r in encoder.encode(b).records))
    assert labels == (
        ("Zone", "a"),
        ("_9lives", "x"),  # byte order: "9" < "_"
        ("__name__", "stats_timers_api_v2_upper_90"),
        ("a_b", "2"),  # "a.b" and "a_b" collide; the later tag wins
        ("env", "prod"),
        ("instance", "h1"),
        ("tag__name__", "evil"),
        ("web", "true"),
    )
    names = [name.encode() for name, _ in labels]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert samples == [(7.5, TS * 1000)]


@pytest.mark.parametrize(
    ("raw", "metric", "label"),
    [
        ("a.b-c", "a_b_c", "a_b_c"),
        ("1x", "_1x", "_1x"),
        ("ns:sub", "ns:sub", "ns_sub"),
        ("é", "_", "_"),
        ("", "_", "_"),
    ],
)
def test_prometheus_names(raw: str, metric: str, label: str) -> None:
    assert prometheus_name(raw) == metric
    assert prometheus_label(raw) == label


def test_records_concatenate_into_one_write_request() -> None:
    encoder = RemoteWriteEncoder(max_points=2)
    first = encoder.encode(batch([("a", (), 1.0), ("b", (), 2.0), ("c", (), 3.0)]))
    second = encoder.encode(batch([("a", (), 4.0)], timestamp=TS + 10))
    body = b"".join(r.payload for r in first.records + second.records)
    assert [(dict(labels)["__name__"], samples) for labels, samples in prompb.decode(body)] == [
        ("a", [(1.0, TS * 1000)]),
        ("b", [(2.0, TS * 1000)]),
        ("c", [(3.0, TS * 1000)]),
        ("a", [(4.0, (TS + 10) * 1000)]),
    ]


def test_cached_labels_give_the_same_bytes() -> None:
    encoder = RemoteWriteEncoder()
    b = batch([("a", (("k", "v"),), 1.0)])
    assert encoder.encode(b) == encoder.encode(b)
    assert encoder.encode(b) == RemoteWriteEncoder().encode(b)


_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_tags = st.lists(st.tuples(_names.filter(bool), _names), max_size=4).map(
    lambda pairs: tuple(sorted(set(pairs)))
)


@settings(max_examples=150, deadline=None)
@given(
    points=st.lists(st.tuples(_names, _tags, st.floats(allow_nan=False)), max_size=8),
    timestamp=st.integers(min_value=-(2**40), max_value=2**40),
)
def test_remote_write_matches_the_protobuf_package(
    points: list[tuple[str, Tags, float]], timestamp: int
) -> None:
    """Whatever the names, tags and values: the bytes decode, with the protobuf package, to
    exactly the request the package itself would build."""
    b = batch(points, timestamp)
    body = b"".join(r.payload for r in RemoteWriteEncoder().encode(b).records)
    expected = prompb.WriteRequest()
    for name, tags, value in points:
        series = expected.timeseries.add()
        merged = {prometheus_label(k): v or "true" for k, v in tags}
        merged["__name__"] = prometheus_name(name)
        for k, v in sorted(merged.items(), key=lambda kv: kv[0].encode()):
            series.labels.add(name=k, value=v)
        series.samples.add(value=value, timestamp=timestamp * 1000)
    actual = prompb.WriteRequest()
    actual.ParseFromString(body)
    assert actual == expected


@settings(max_examples=100, deadline=None)
@given(
    points=st.lists(st.tuples(_names, _tags, st.floats(allow_nan=False, allow_infinity=False)), max_size=8)
)
def test_graphite_lines_always_have_three_fields(points: list[tuple[str, Tags, float]]) -> None:
    """Every line is ``series value timestamp`` whatever the input: no stray spaces or newlines,
    and the value reads back exactly."""
    text = graphite_text(GraphiteEncoder(), batch(points))
    lines = text.split("\n")
    assert lines[-1] == ""
    assert len(lines) - 1 == len(points)
    for line, (_, _, value) in zip(lines, points, strict=False):
        fields = line.split(" ")
        assert len(fields) == 3
        assert fields[0]
        assert fields[2] == str(TS)
        assert float(fields[1]) == value
