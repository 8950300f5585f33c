"""The aggregator against a plain-Python model of Etsy statsd (stats.js + process_metrics.js +
the graphite backend with legacyNamespace=false), plus idle TTL, cardinality and snapshot rules."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statsyard_agent._aggregate import (
    Aggregator,
    AggregatorConfig,
    Partial,
    SampleChunk,
    Snapshot,
    build_flush_batch,
)
from statsyard_agent._exceptions import ConfigError
from statsyard_agent._sketch import LogSketch
from statsyard_agent._types import Event, FlushBatch, Metric, MetricKind, Rollup, ServiceCheck, Tags

from .test_timerstats import LABELS, etsy_timer

C, G, MS, H, D, S = (
    MetricKind.COUNTER,
    MetricKind.GAUGE,
    MetricKind.TIMER,
    MetricKind.HISTOGRAM,
    MetricKind.DISTRIBUTION,
    MetricKind.SET,
)
NAMESPACE = {MS: "timers", H: "histograms", D: "distributions"}
TIMER_ROLLUPS = {
    "count": Rollup.SUM,
    "count_ps": Rollup.RATE,
    "sum": Rollup.SUM,
    "sum_squares": Rollup.SUM,
    "mean": Rollup.MEAN,
    "median": Rollup.AVERAGE,
    "lower": Rollup.MIN,
    "upper": Rollup.MAX,
    "std": Rollup.AVERAGE,
    "count_": Rollup.SUM,
    "mean_": Rollup.MEAN,
    "sum_": Rollup.SUM,
    "sum_squares_": Rollup.SUM,
    "upper_": Rollup.MAX,
    "lower_": Rollup.MIN,
}

Points = dict[tuple[str, Tags], tuple[Rollup, float]]


def metric(
    name: str,
    kind: MetricKind,
    values: Iterable[float] = (),
    *,
    rate: float = 1.0,
    tags: Tags = (),
    delta: bool = False,
    members: Iterable[str] = (),
) -> Metric:
    return Metric(name, kind, tuple(values), tuple(members), rate, tags, delta, None, None)


def points(batch: FlushBatch) -> Points:
    out = {
        (name, tags): (rollup, float(value))
        for name, tags, rollup, value in zip(
            batch.names, batch.tags, batch.rollups, batch.values, strict=True
        )
    }
    assert len(out) == len(batch), "a (name, tags) pair was emitted twice"
    assert len(batch.values) == len(batch.names) == len(batch.tags) == len(batch.rollups)
    return out


def flush(aggregator: Aggregator, timestamp: int, interval: float = 10.0) -> FlushBatch:
    return build_flush_batch(aggregator.take_snapshot(timestamp, interval))


def timer_rollup(stat: str) -> Rollup:
    per_percentile = re.fullmatch(r"(count|mean|sum|sum_squares|upper|lower)_(top)?[0-9_]+", stat)
    return TIMER_ROLLUPS[per_percentile.group(1) + "_" if per_percentile else stat]


class EtsyModel:
    """What Etsy statsd emits per flush, written straight from its JavaScript (no idle TTL)."""

    def __init__(self, prefix: str, pcts: list[float]) -> None:
        self.prefix = prefix
        self.pcts = pcts
        self.counters: dict[tuple[str, Tags], float] = {}
        self.gauges: dict[tuple[str, Tags], float] = {}
        self.timers: dict[tuple[MetricKind, str, Tags], list[tuple[float, float]]] = {}
        self.sets: dict[tuple[str, Tags], set[str]] = {}

    def add(self, m: Metric) -> None:
        key = (m.name, m.tags)
        if m.kind is C:
            for v in m.values:  # counters[key] += Number(value) * (1 / sampleRate)
                self.counters[key] = self.counters.get(key, 0.0) + v * (1 / m.rate)
        elif m.kind is G:
            for v in m.values:
                self.gauges[key] = (self.gauges.get(key, 0.0) + v) if m.delta else v
        elif m.kind is S:
            self.sets.setdefault(key, set()).update(m.members)
        else:
            self.timers.setdefault((m.kind, m.name, m.tags), []).extend((v, 1 / m.rate) for v in m.values)

    def flush(self, interval: float) -> Points:
        p = self.prefix
        out: Points = {}
        for (name, tags), total in self.counters.items():
            out[(f"{p}.counters.{name}.count", tags)] = (Rollup.SUM, total)
            out[(f"{p}.counters.{name}.rate", tags)] = (Rollup.RATE, total / interval)
            self.counters[(name, tags)] = 0.0
        for (name, tags), value in self.gauges.items():
            out[(f"{p}.gauges.{name}", tags)] = (Rollup.LAST, value)
        for (kind, name, tags), samples in self.timers.items():
            base = f"{p}.{NAMESPACE[kind]}.{name}"
            if samples:
                count = 0.0
                for _, inverse_rate in samples:  # timer_counters[key] += 1 / sampleRate
                    count += inverse_rate
                stats = etsy_timer([v for v, _ in samples], count, interval, self.pcts)
            else:
                stats = {"count": 0.0, "count_ps": 0.0}
            for stat, value in stats.items():
                out[(f"{base}.{stat}", tags)] = (timer_rollup(stat), float(value))
            samples.clear()
        for (name, tags), members in self.sets.items():
            out[(f"{p}.sets.{name}.count", tags)] = (Rollup.MAX, float(len(members)))
            members.clear()
        return out


def assert_points_match(got: Points, want: Points) -> None:
    assert got.keys() == want.keys()
    for key, (rollup, value) in want.items():
        assert got[key][0] is rollup, key
        # Sums may differ from Etsy's left-to-right running sums in the last bits.
        assert got[key][1] == pytest.approx(value, rel=1e-9, abs=1e-6), key


# -- semantics, table-driven -------------------------------------------------------------------

CASES: list[tuple[str, list[Metric], dict[str, float]]] = [
    (
        "counter sums value / rate as floats",
        [metric("hits", C, [1.5], rate=0.1), metric("hits", C, [2, -0.5])],
        {"stats.counters.hits.count": 16.5, "stats.counters.hits.rate": 1.65},
    ),
    (
        "packed counter values",
        [metric("hits", C, [1, 2, 3], rate=0.5)],
        {"stats.counters.hits.count": 12.0, "stats.counters.hits.rate": 1.2},
    ),
    (
        "gauge set, then delta",
        [metric("temp", G, [10]), metric("temp", G, [-3], delta=True), metric("temp", G, [+1.5], delta=True)],
        {"stats.gauges.temp": 8.5},
    ),
    (
        "gauge delta without a value starts at 0",
        [metric("temp", G, [-4], delta=True)],
        {"stats.gauges.temp": -4},
    ),
    ("packed gauge: the last value wins", [metric("temp", G, [1, 7, 3])], {"stats.gauges.temp": 3}),
    ("gauge rate is ignored", [metric("temp", G, [5], rate=0.5)], {"stats.gauges.temp": 5}),
    (
        "set counts distinct members",
        [metric("users", S, members=["a", "b"]), metric("users", S, members=["b", "c", "a"])],
        {"stats.sets.users.count": 3},
    ),
    (
        "timer with sample rate: count is sum(1 / rate)",
        [metric("lat", MS, [10], rate=0.1), metric("lat", MS, [20, 30])],
        {
            "stats.timers.lat.count": 12,
            "stats.timers.lat.count_ps": 1.2,
            "stats.timers.lat.mean": 20,
            "stats.timers.lat.upper_90": 30,
            "stats.timers.lat.count_90": 3,
        },
    ),
    (
        "histogram and distribution have their own namespaces",
        [metric("lat", H, [1, 2]), metric("lat", D, [5])],
        {"stats.histograms.lat.sum": 3, "stats.distributions.lat.sum": 5},
    ),
    (
        "same name, different kinds: separate series",
        [metric("x", C, [1]), metric("x", G, [2]), metric("x", MS, [3]), metric("x", S, members=["m"])],
        {
            "stats.counters.x.count": 1,
            "stats.gauges.x": 2,
            "stats.timers.x.sum": 3,
            "stats.sets.x.count": 1,
        },
    ),
]


@pytest.mark.parametrize(("lines", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_semantics(lines: list[Metric], expected: dict[str, float]) -> None:
    aggregator = Aggregator(AggregatorConfig())
    for line in lines:
        assert aggregator.add(line)
    got = {name: value for (name, _), (_, value) in points(flush(aggregator, 10)).items()}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value), name


def test_tags_stay_out_of_the_name_and_split_series() -> None:
    aggregator = Aggregator(AggregatorConfig(prefix="app"))
    web = (("env", "prod"), ("role", "web"))
    aggregator.add(metric("hits", C, [1], tags=web))
    aggregator.add(metric("hits", C, [2], tags=(("env", "prod"),)))
    got = points(flush(aggregator, 10))
    assert got[("app.counters.hits.count", web)] == (Rollup.SUM, 1.0)
    assert got[("app.counters.hits.count", (("env", "prod"),))] == (Rollup.SUM, 2.0)


def test_empty_prefix_has_no_leading_dot() -> None:
    aggregator = Aggregator(AggregatorConfig(prefix=""))
    aggregator.add(metric("hits", C, [1]))
    aggregator.add_event(Event("t", "x", "info", ()))
    assert set(flush(aggregator, 10).names) == {"counters.hits.count", "counters.hits.rate", "events"}


def test_events_and_service_checks() -> None:
    aggregator = Aggregator(AggregatorConfig())
    tags = (("env", "prod"), ("web", ""))
    for alert in ("error", "error", "info"):
        assert aggregator.add_event(Event("deploy", "text", alert, tags))
    assert aggregator.add_service_check(ServiceCheck("db up", 2, (("zone", "a"),)))
    # A tag equal to the added one is not duplicated; tags stay sorted.
    assert aggregator.add_service_check(ServiceCheck("db up", 2, (("check", "db up"), ("zone", "a"))))
    got = points(flush(aggregator, 10))
    assert got == {
        ("stats.events", (("alert_type", "error"), ("env", "prod"), ("web", ""))): (Rollup.SUM, 2.0),
        ("stats.events", (("alert_type", "info"), ("env", "prod"), ("web", ""))): (Rollup.SUM, 1.0),
        ("stats.service_checks", (("check", "db up"), ("status", "2"), ("zone", "a"))): (Rollup.SUM, 2.0),
    }
    assert aggregator.active_series == 3


def test_rollups_and_percentile_names() -> None:
    aggregator = Aggregator(AggregatorConfig(percentiles=(90, 99.9, -10)))
    aggregator.add(metric("lat", MS, range(1, 21)))
    got = points(flush(aggregator, 10))
    suffixes = {name.removeprefix("stats.timers.lat."): rollup for (name, _), (rollup, _) in got.items()}
    assert suffixes == {
        **{stat: TIMER_ROLLUPS[stat] for stat in ("count", "count_ps", "sum", "sum_squares", "mean")},
        **{stat: TIMER_ROLLUPS[stat] for stat in ("median", "lower", "upper", "std")},
        **{f"{stat}_{label}": TIMER_ROLLUPS[stat + "_"] for stat in ("count", "mean", "sum", "sum_squares")
           for label in ("90", "99_9", "top10")},
        "upper_90": Rollup.MAX,
        "upper_99_9": Rollup.MAX,
        "lower_top10": Rollup.MIN,
    }  # fmt: skip


def test_sketch_points_per_timer_series() -> None:
    aggregator = Aggregator(AggregatorConfig())
    aggregator.add(metric("lat", MS, [1.0, 2.0, 3.0], tags=(("a", "1"),)))
    aggregator.add(metric("lat", MS, [100.0], rate=0.25, tags=(("a", "1"),)))
    aggregator.add(metric("lat", D, [7.0]))
    aggregator.add(metric("hits", C, [1]))
    batch = flush(aggregator, 10)
    by_key = {(s.name, s.tags): LogSketch.from_bytes(s.sketch) for s in batch.sketches}
    assert by_key.keys() == {("stats.timers.lat", (("a", "1"),)), ("stats.distributions.lat", ())}
    sketch = by_key[("stats.timers.lat", (("a", "1"),))]
    assert sketch.count == 7.0  # 3 samples at rate 1 and one standing for 4
    assert sketch.quantile(0.5) == pytest.approx(100.0, rel=0.01)  # the weighted median
    assert sketch.quantile(0.0) == pytest.approx(1.0, rel=0.01)
    # No sketch for a timer without samples in the interval.
    assert flush(aggregator, 20).sketches == ()


# -- idle series and the TTL ---------------------------------------------------------------------


def test_idle_series_emit_etsy_idle_values_then_expire() -> None:
    aggregator = Aggregator(AggregatorConfig(idle_ttl=20.0))
    aggregator.add(metric("c", C, [1]))
    aggregator.add(metric("g", G, [5]))
    aggregator.add(metric("t", MS, [1, 2]))
    aggregator.add(metric("h", H, [1]))
    aggregator.add(metric("s", S, members=["x"]))
    aggregator.add_event(Event("e", "", "info", ()))
    assert len(flush(aggregator, 10)) > 20
    idle = {
        ("stats.counters.c.count", ()): (Rollup.SUM, 0.0),
        ("stats.counters.c.rate", ()): (Rollup.RATE, 0.0),
        ("stats.gauges.g", ()): (Rollup.LAST, 5.0),
        ("stats.timers.t.count", ()): (Rollup.SUM, 0.0),
        ("stats.timers.t.count_ps", ()): (Rollup.RATE, 0.0),
        ("stats.histograms.h.count", ()): (Rollup.SUM, 0.0),
        ("stats.histograms.h.count_ps", ()): (Rollup.RATE, 0.0),
        ("stats.sets.s.count", ()): (Rollup.MAX, 0.0),
        ("stats.events", (("alert_type", "info"),)): (Rollup.SUM, 0.0),
    }
    assert points(flush(aggregator, 20)) == idle
    assert points(flush(aggregator, 30)) == idle  # 30 - 10 = 20: not more than the TTL yet
    assert aggregator.active_series == 6
    assert points(flush(aggregator, 40)) == {}
    assert (aggregator.active_series, aggregator.expired_series) == (0, 6)
    # Data again: the series comes back from scratch.
    aggregator.add(metric("g", G, [1], delta=True))
    assert points(flush(aggregator, 50)) == {("stats.gauges.g", ()): (Rollup.LAST, 1.0)}
    assert aggregator.active_series == 1


def test_gauge_delta_builds_on_the_value_kept_from_earlier_intervals() -> None:
    aggregator = Aggregator(AggregatorConfig())
    aggregator.add(metric("g", G, [5]))
    flush(aggregator, 10)
    aggregator.add(metric("g", G, [2], delta=True))
    assert points(flush(aggregator, 20)) == {("stats.gauges.g", ()): (Rollup.LAST, 7.0)}
    aggregator.add(metric("g", G, [-1], delta=True))
    aggregator.add(metric("g", G, [3]))
    assert points(flush(aggregator, 30)) == {("stats.gauges.g", ()): (Rollup.LAST, 3.0)}


def test_ttl_counts_from_the_last_flush_with_data() -> None:
    aggregator = Aggregator(AggregatorConfig(idle_ttl=15.0))
    aggregator.add(metric("c", C, [1]))
    flush(aggregator, 10)
    aggregator.add(metric("c", C, [1]))
    flush(aggregator, 20)
    assert ("stats.counters.c.count", ()) in points(flush(aggregator, 30))
    assert points(flush(aggregator, 40)) == {}
    assert aggregator.expired_series == 1


def test_zero_ttl_forgets_at_the_first_idle_flush() -> None:
    aggregator = Aggregator(AggregatorConfig(idle_ttl=0.0))
    aggregator.add(metric("g", G, [3]))
    assert points(flush(aggregator, 10)) == {("stats.gauges.g", ()): (Rollup.LAST, 3.0)}
    assert points(flush(aggregator, 11)) == {}
    assert aggregator.active_series == 0


# -- cardinality guard ---------------------------------------------------------------------------


def test_cardinality_guard_refuses_new_keys_and_counts_them() -> None:
    aggregator = Aggregator(AggregatorConfig(max_series=2, idle_ttl=10.0))
    assert aggregator.add(metric("a", C, [1]))
    assert aggregator.add(metric("a", MS, [1]))  # same name, other kind: a second series
    assert not aggregator.add(metric("b", C, [1]))
    assert not aggregator.add(metric("b", C, [1]))
    assert not aggregator.add(metric("a", C, [1], tags=(("k", "v"),)))
    assert not aggregator.add(metric("a", MS, [1], rate=0.5, tags=(("k", "v"),)))
    assert not aggregator.add_event(Event("e", "", "info", ()))
    assert not aggregator.add_service_check(ServiceCheck("x", 0, ()))
    assert aggregator.add(metric("a", C, [5]))  # known keys still accept data
    assert aggregator.active_series == 2
    assert aggregator.rejected_series == 5  # distinct refused keys in this interval
    assert aggregator.rejected_metrics == 6  # refused calls
    got = points(flush(aggregator, 10))
    assert got[("stats.counters.a.count", ())] == (Rollup.SUM, 6.0)
    assert not any(name.startswith(("stats.counters.b", "stats.events")) for name, _ in got)
    # Idle keys within the TTL still hold their place ...
    assert not aggregator.add(metric("b", C, [1]))
    assert aggregator.rejected_series == 6  # a new interval counts the key again
    flush(aggregator, 20)
    # ... until they expire and make room.
    flush(aggregator, 31)
    assert aggregator.active_series == 0
    assert aggregator.add(metric("b", C, [1]))


def test_metric_without_values_is_harmless() -> None:
    aggregator = Aggregator(AggregatorConfig())
    assert aggregator.add(metric("t", MS, []))
    assert aggregator.add(metric("g", G, []))
    assert aggregator.add(metric("c", C, []))
    assert points(flush(aggregator, 10)) == {
        ("stats.timers.t.count", ()): (Rollup.SUM, 0.0),
        ("stats.timers.t.count_ps", ()): (Rollup.RATE, 0.0),
        ("stats.counters.c.count", ()): (Rollup.SUM, 0.0),
        ("stats.counters.c.rate", ()): (Rollup.RATE, 0.0),
    }


# -- snapshots -----------------------------------------------------------------------------------


def test_snapshot_is_detached_and_build_is_repeatable() -> None:
    aggregator = Aggregator(AggregatorConfig())
    aggregator.add(metric("t", MS, [1, 2, 3]))
    aggregator.add(metric("t", MS, [4], rate=0.5))
    aggregator.add(metric("c", C, [1]))
    aggregator.add(metric("g", G, [1]))
    aggregator.add(metric("s", S, members=["a"]))
    snapshot = aggregator.take_snapshot(10, 10.0)
    first = build_flush_batch(snapshot)
    # Later lines land in the next interval, never in the snapshot being built.
    for line in (
        metric("t", MS, [100]),
        metric("t", MS, [100], rate=0.1),
        metric("c", C, [100]),
        metric("g", G, [100]),
        metric("g", G, [1], delta=True),
        metric("s", S, members=["b"]),
    ):
        aggregator.add(line)
    second = build_flush_batch(snapshot)
    assert points(first) == points(second)
    assert first.sketches == second.sketches
    assert (first.timestamp, first.interval) == (10, 10.0)
    assert points(first)[("stats.timers.t.count", ())] == (Rollup.SUM, 5.0)
    assert points(flush(aggregator, 20))[("stats.gauges.g", ())] == (Rollup.LAST, 101.0)


def test_points_come_in_first_seen_order_whatever_the_arrival_order() -> None:
    """The same series flush after flush give the same point order (what lets the storage
    recognise a batch of known series without a hash lookup per point), whichever order their
    lines came in, and with some of them idle."""
    keys = [(kind, f"{kind.value}{i}") for i in range(30) for kind in (C, G, MS, H, D, S)]

    def feed(aggregator: Aggregator, order: list[int], skip: int = 0) -> None:
        for i in order:
            kind, name = keys[i]
            if i % 7 == skip and skip:
                continue  # idle this interval
            if kind is S:
                aggregator.add(metric(name, kind, members=["m"]))
            elif kind in (MS, H, D):
                aggregator.add(metric(name, kind, [float(i)], rate=0.5 if i % 5 == 0 else 1.0))
            else:
                aggregator.add(metric(name, kind, [float(i)]))

    def order_of(batch: FlushBatch) -> list[tuple[str, Tags]]:
        return list(zip(batch.names, batch.tags, strict=True))

    rng = np.random.default_rng(5)
    aggregator = Aggregator(AggregatorConfig())
    feed(aggregator, list(range(len(keys))))
    first = flush(aggregator, 10)
    for step in range(1, 4):
        feed(aggregator, rng.permutation(len(keys)).tolist())
        batch = flush(aggregator, 10 + 10 * step)
        assert order_of(batch) == order_of(first)
        assert [p.name for p in batch.sketches] == [p.name for p in first.sketches]
    # Counters and sets going idle keep their place (they emit zeros where they were).
    flat = [k for k in keys if k[0] in (C, S)]
    only = Aggregator(AggregatorConfig())
    for kind, name in flat:
        only.add(metric(name, kind, members=["m"]) if kind is S else metric(name, kind, [1.0]))
    all_active = flush(only, 10)
    for kind, name in flat[::-1][::3]:
        only.add(metric(name, kind, members=["m"]) if kind is S else metric(name, kind, [1.0]))
    some_idle = flush(only, 20)
    assert order_of(some_idle) == order_of(all_active)
    assert 0.0 in some_idle.values.tolist()
    # With the same timers idle twice in a row (whatever the arrival order), the same order again.
    feed(aggregator, rng.permutation(len(keys)).tolist(), skip=3)
    with_idle = flush(aggregator, 60)
    feed(aggregator, rng.permutation(len(keys)).tolist(), skip=3)
    assert order_of(flush(aggregator, 70)) == order_of(with_idle)


def test_empty_aggregator() -> None:
    aggregator = Aggregator(AggregatorConfig())
    batch = flush(aggregator, 10)
    assert len(batch) == 0
    assert batch.values.dtype == np.float64
    assert batch.sketches == ()
    assert isinstance(aggregator.take_snapshot(20, 10.0), Snapshot)


@pytest.mark.parametrize("interval", [0.0, -1.0, math.nan, math.inf])
def test_take_snapshot_rejects_bad_intervals(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        Aggregator(AggregatorConfig()).take_snapshot(10, interval)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"percentiles": (0.0,)}, "percentiles"),
        ({"percentiles": (100.1,)}, "percentiles"),
        ({"percentiles": (-101.0,)}, "percentiles"),
        ({"percentiles": (math.nan,)}, "percentiles"),
        ({"percentiles": (90, 90.0)}, "percentiles"),
        ({"percentiles": ("x",)}, "percentiles"),
        ({"idle_ttl": -1.0}, "idle_ttl"),
        ({"idle_ttl": math.inf}, "idle_ttl"),
        ({"max_series": -1}, "max_series"),
        ({"max_series": 1.5}, "max_series"),
        ({"prefix": 3}, "prefix"),
    ],
)
def test_config_validation_names_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        AggregatorConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def test_config_normalises_percentiles_to_floats() -> None:
    assert AggregatorConfig(percentiles=(90, -10)).percentiles == (90.0, -10.0)


# -- against the Etsy model ----------------------------------------------------------------------

NAMES = ["api", "db.query", "x"]
TAGSETS: list[Tags] = [(), (("env", "prod"),), (("env", "prod"), ("host", "a"))]
numbers = st.one_of(
    st.integers(-1000, 1000).map(float), st.floats(-1e5, 1e5, allow_nan=False, allow_subnormal=False)
)
lines = st.builds(
    lambda kind, name, tags, values, rate, delta, members: metric(
        name,
        kind,
        [] if kind is S else values[:1] if kind is G and delta else values,
        rate=rate,
        tags=tags,
        delta=delta and kind is G,
        members=members if kind is S else (),
    ),
    st.sampled_from([C, G, MS, H, D, S]),
    st.sampled_from(NAMES),
    st.sampled_from(TAGSETS),
    st.lists(numbers, min_size=1, max_size=4),
    st.sampled_from([1.0, 1.0, 0.5, 0.1, 0.3]),
    st.booleans(),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=3),
)


@settings(max_examples=120, deadline=None)
@given(
    intervals=st.lists(st.lists(lines, max_size=40), min_size=1, max_size=3),
    pcts=st.lists(st.sampled_from(sorted(LABELS)), max_size=4, unique=True),
)
def test_matches_the_etsy_model(intervals: list[list[Metric]], pcts: list[float]) -> None:
    aggregator = Aggregator(AggregatorConfig(percentiles=tuple(pcts), idle_ttl=1e9))
    model = EtsyModel("stats", pcts)
    for i, interval_lines in enumerate(intervals):
        for line in interval_lines:
            assert aggregator.add(line)
            model.add(line)
        batch = flush(aggregator, 10 * (i + 1), 10.0)
        assert_points_match(points(batch), model.flush(10.0))
        got = points(batch)
        for sketch_point in batch.sketches:
            sketch = LogSketch.from_bytes(sketch_point.sketch)
            base = (sketch_point.name, sketch_point.tags)
            assert sketch.count == pytest.approx(got[(base[0] + ".count", base[1])][1])
            lower, upper = got[(base[0] + ".lower", base[1])][1], got[(base[0] + ".upper", base[1])][1]
            assert sketch.quantile(0.0) == pytest.approx(lower, rel=0.0101, abs=1e-9)
            assert sketch.quantile(1.0) == pytest.approx(upper, rel=0.0101, abs=1e-9)


def _chunked(metrics: list[Metric]) -> Partial:
    """A partial holding the timer-like metrics' samples as one SampleChunk (what a receive
    worker's shipment becomes), keys in first-arrival order."""
    grouped: dict[tuple[MetricKind, tuple[str, Tags], float], list[float]] = {}
    for m in metrics:
        grouped.setdefault((m.kind, (m.name, m.tags), m.rate), []).extend(m.values)
    keys = [key for key, values in grouped.items() if values]
    lengths = [len(grouped[key]) for key in keys]
    bounds = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    values = np.array([v for key in keys for v in grouped[key]], dtype=np.float64)
    return Partial(sample_chunks=[SampleChunk(keys, bounds, values)])


@settings(max_examples=150, deadline=None)
@given(
    intervals=st.lists(
        st.tuples(st.lists(lines, max_size=30), st.lists(lines, max_size=30), st.lists(lines, max_size=10)),
        min_size=1,
        max_size=3,
    ),
    max_series=st.sampled_from([0, 3, 8, 1000]),
)
def test_merged_sample_chunks_give_what_add_gives(
    intervals: list[tuple[list[Metric], list[Metric], list[Metric]]], max_series: int
) -> None:
    """Chunks merged between adds (rates 1 and others, several kinds, series added both ways,
    a tight series cap, idle series) flush exactly as adding every metric one by one does."""
    config = AggregatorConfig(max_series=max_series, idle_ttl=15.0)
    by_add, by_merge = Aggregator(config), Aggregator(config)
    for step, (before, chunked, after) in enumerate(intervals):
        timed = [m for m in chunked if m.kind in (MS, H, D)]
        for m in before + timed + after:
            by_add.add(m)
        for m in before:
            by_merge.add(m)
        by_merge.merge(_chunked(timed))
        for m in after:
            by_merge.add(m)
        expected, got = flush(by_add, 10 * (step + 1)), flush(by_merge, 10 * (step + 1))
        assert points(got) == points(expected)
        assert sorted((p.name, p.tags, p.sketch) for p in got.sketches) == sorted(
            (p.name, p.tags, p.sketch) for p in expected.sketches
        )
        assert by_merge.active_series == by_add.active_series
        # A merged entry is refused once however many samples it holds (Partial's rule), so
        # only whether anything was refused compares.
        assert (by_merge.rejected_metrics > 0) == (by_add.rejected_metrics > 0)
