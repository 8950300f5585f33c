"""The receive path's pre-aggregator and ``Aggregator.merge``: same series, same values, same
counts as parsing every line and adding it to the aggregator."""

from __future__ import annotations

import logging
import math
import pickle
import time
from array import array
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statsyard_agent import _ingest
from statsyard_agent._aggregate import Aggregator, AggregatorConfig, Partial, build_flush_batch
from statsyard_agent._ingest import EVICT_AFTER_TAKES, PreAggregator, SimpleCounts
from statsyard_agent._protocol import Parser, ParserConfig
from statsyard_agent._types import Event, FlushBatch, MetricKind
from statsyard_agent.storage import Reader

from .conftest import make_config, start_agent, statsd_client

Points = dict[tuple[str, tuple[tuple[str, str], ...]], float]
PARSER = ParserConfig()
AGGREGATOR = AggregatorConfig()


def points(batch: FlushBatch) -> Points:
    return dict(zip(zip(batch.names, batch.tags, strict=True), batch.values.tolist(), strict=True))


def reference(
    datagrams: list[bytes], parser_config: ParserConfig = PARSER, config: AggregatorConfig = AGGREGATOR
) -> tuple[Points, SimpleCounts, Aggregator]:
    """What the agent did before the pre-aggregator: parse_datagram, then add each item."""
    parser, aggregator, counts = Parser(parser_config), Aggregator(config), SimpleCounts()
    for datagram in datagrams:
        result = parser.parse_datagram(datagram)
        counts.lines += result.lines
        counts.metrics += len(result.metrics)
        counts.events += len(result.events)
        counts.service_checks += len(result.service_checks)
        for error in result.errors:
            counts.parse_errors[error.reason] += 1
        for metric in result.metrics:
            aggregator.add(metric)
        for event in result.events:
            aggregator.add_event(event)
        for check in result.service_checks:
            aggregator.add_service_check(check)
    return points(build_flush_batch(aggregator.take_snapshot(100, 10.0))), counts, aggregator


def preaggregated(
    datagrams: list[bytes],
    parser_config: ParserConfig = PARSER,
    config: AggregatorConfig = AGGREGATOR,
    takes: int = 1,
    via_pickle: bool = False,
    evict_after: int = EVICT_AFTER_TAKES,
    batch: int = 0,
) -> tuple[Points, SimpleCounts, Aggregator]:
    """The same through the pre-aggregator, merged ``takes`` times in the interval; with
    ``batch``, ``batch`` datagrams at a time through the vectorised ``feed_many`` (forced even
    for a few lines)."""
    counts, aggregator = SimpleCounts(), Aggregator(config)
    preagg = PreAggregator(Parser(parser_config), counts, config.max_series, evict_after)
    every = max(1, math.ceil(len(datagrams) / takes))
    pending: list[bytes] = []
    with mock.patch.object(_ingest, "VECTOR_MIN_BYTES", 0):
        for i, datagram in enumerate(datagrams):
            if batch:
                pending.append(datagram)
                if len(pending) == batch:
                    preagg.feed_many(pending)
                    pending = []
            else:
                preagg.feed(datagram)
            if (i + 1) % every == 0:
                preagg.feed_many(pending)
                pending = []
                partial = preagg.take()
                aggregator.merge(pickle.loads(pickle.dumps(partial)) if via_pickle else partial)
        preagg.feed_many(pending)
    aggregator.merge(preagg.take())
    return points(build_flush_batch(aggregator.take_snapshot(100, 10.0))), counts, aggregator


def same_counts(a: SimpleCounts, b: SimpleCounts) -> None:
    assert (a.lines, a.metrics, a.events, a.service_checks) == (
        b.lines,
        b.metrics,
        b.events,
        b.service_checks,
    )
    assert +a.parse_errors == +b.parse_errors


def same_points(got: Points, want: Points) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == value or (math.isnan(got[key]) and math.isnan(value)), key


# -- table: lines where the fast path must hand over to the parser ----------------------------

EDGE_DATAGRAMS = [
    b"a:1|c\na:2|c|@0.5\na:3|c|#x:y\na:4|c|#x:y",
    b"a:1|c\r\na:2|c\r\n",  # CRLF lines: the tail keeps the \r, the parser strips it
    b"\n\n\r\n",  # empty lines are not lines
    b"a:1:2:3|ms\na:4|ms\na:5:6|c",  # packed values go to the parser
    b"g:5|g\ng:+3|g\ng:-1|g\ng:1:+2:-4|g\ng:7|g\ng:+1|g",  # set, deltas, packed, set again
    b"s:a|s\ns:b|s\ns:a:b|s\ns:|s\ns:\xff|s\ns:c|s",  # packed, empty and bad UTF-8 members
    b"s:\xc3\xa9|s\ns:\xe2\x82\xac|s|#k:v\ns:\xc3|s\ns:a\xc3\xa9b|s",  # multi-byte, cut short
    b"t:1|ms|@0.1\nt:2|ms\nt:3|ms|@0.1\nt:x|ms\nt:|ms\nt:1_0|ms\nt:nan|ms\nt:inf|ms",
    b"h:1|h\nd:2|d|#a\nd:3|d|#a\nd:4|d|@0.25|#a",
    b"a|b:1|c\na|b:2|c\nx:1|q\nx:1\nx|c\n:1|c\n.x:1|c",  # '|' in the name, bad type, no value
    b"_e{5,4}:title|text|#a:b\n_sc|check|1|#a\n_e{5,4}:title|text|#a:b\n_sc|check|1|#a",
    b"n:1|c|T1656581400\nn:2|c|T1656581400\nn:3|c|c:abc\nn:4|c|c:abc|#k",
    b"my name/with*chars:1|c\nmy name/with*chars:2|c",  # Etsy sanitising
    b"tagged;k=v;j=w:1|c\ntagged;k=v;j=w:5|c|#z",  # Graphite tags in the name
    b"k:1|c|#b,a\nk:2|c|#a,b\nk:3|c|#a,b,a",  # tag order: one series
    b"big:" + b"1" * 9000 + b"|c\nbig:1|c",  # longer than max_line_bytes
    b"big:1|c\n" + b"x" * 9000,
    b"r:1|c|@0\nr:1|c|@2\nr:1|c|@x\nr:1|c|@0.5",
]


@pytest.mark.parametrize("datagram", EDGE_DATAGRAMS)
@pytest.mark.parametrize("takes", [1, 3])
@pytest.mark.parametrize("batch", [0, 1, 2, 6])
def test_edge_lines_match_the_parser_and_aggregator(datagram: bytes, takes: int, batch: int) -> None:
    datagrams = [datagram] * 6  # after the first time on the fast path (batch: vectorised)
    want, want_counts, _ = reference(datagrams)
    got, got_counts, _ = preaggregated(datagrams, takes=takes, batch=batch)
    same_counts(got_counts, want_counts)
    same_points(got, want)


@pytest.mark.parametrize("gauge_sign", ["delta", "set"])
def test_gauge_sign_setting_is_honoured(gauge_sign: str) -> None:
    config = ParserConfig(gauge_sign=gauge_sign)  # type: ignore[arg-type]
    datagrams = [b"g:5|g\ng:+3|g", b"g:-1|g\nh:+2|g"]
    want, _, _ = reference(datagrams, config)
    got, _, _ = preaggregated(datagrams, config)
    assert got == want
    assert want[("stats.gauges.g", ())] == (7.0 if gauge_sign == "delta" else -1.0)


def test_counter_arithmetic_is_etsys_exactly() -> None:
    # 0.1 * (1 / 0.3) summed in order: the pre-aggregator must not re-associate it.
    datagrams = [b"c:0.1|c|@0.3\nc:0.7|c|@0.3\nc:0.2|c"] * 7
    want, _, _ = reference(datagrams)
    got, _, _ = preaggregated(datagrams)
    assert got[("stats.counters.c.count", ())] == want[("stats.counters.c.count", ())]


def test_a_bad_value_never_opens_a_series() -> None:
    counts, aggregator = SimpleCounts(), Aggregator(AggregatorConfig())
    preagg = PreAggregator(Parser(), counts, 100)
    preagg.feed(b"x:1|c\ny:5|g\nt:1|ms\ns:a|s")  # learn the specs
    preagg.take()
    preagg.feed(b"x:bad|c\ny:bad|g\nt:bad|ms\ns:|s")  # known series, bad values only
    aggregator.merge(preagg.take())
    assert aggregator.active_series == 0
    assert counts.parse_errors == {"invalid_value": 3, "malformed_line": 1}


# -- property: any bytes, same result ---------------------------------------------------------

_names = st.sampled_from(
    [b"a", b"b.c", b"x y", b"n;k=v", b"\xc3\xa9", b"a|b", b"_e{1,1}", b"_sc", b"", b".bad", b"d"]
)
_values = st.sampled_from(
    [
        b"1",
        b"0",
        b"-2",
        b"+3",
        b"2.5",
        b"0.25",
        b"1e3",
        b"1:2",
        b"+1:-1",
        b"",
        b"abc",
        b"nan",
        b"1_0",
        b" 1",
        b"\xff",
        b"m1",
        b"m2",
    ]
)
_types = st.sampled_from([b"c", b"g", b"ms", b"h", b"d", b"s", b"x", b""])
_sections = st.lists(
    st.sampled_from(
        [
            b"@0.5",
            b"@0.25",
            b"@1",
            b"@0",
            b"@x",
            b"#a:b,c",
            b"#c,a:b",
            b"#",
            b"T12",
            b"Tx",
            b"c:id",
            b"e:x",
            b"",
        ]
    ),
    max_size=3,
)


@st.composite
def _line(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from([b"", b"\r", b"_e{1,1}:a|b", b"_sc|c|0", b"garbage", b"\xff\xfe"]))
    line = draw(_names) + b":" + draw(_values) + b"|" + draw(_types)
    for section in draw(_sections):
        line += b"|" + section
    return line + draw(st.sampled_from([b"", b"", b"\r"]))


_datagrams = st.lists(st.lists(_line(), min_size=1, max_size=8).map(b"\n".join), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    datagrams=_datagrams,
    takes=st.integers(1, 12),
    via_pickle=st.booleans(),
    evict_after=st.integers(1, 3),
    batch=st.sampled_from([0, 1, 3, 50]),
    segment_limit=st.sampled_from([0, 2, 1000]),
    repeats=st.integers(1, 3),
)
def test_any_traffic_gives_what_parse_and_add_give(
    datagrams: list[bytes],
    takes: int,
    via_pickle: bool,
    evict_after: int,
    batch: int,
    segment_limit: int,
    repeats: int,
) -> None:
    datagrams = datagrams * repeats  # repeated keys take the fast (and vectorised) paths
    want, want_counts, want_agg = reference(datagrams)
    with mock.patch.object(_ingest, "SEGMENT_LIMIT", segment_limit):
        got, got_counts, got_agg = preaggregated(
            datagrams, takes=takes, via_pickle=via_pickle, evict_after=evict_after, batch=batch
        )
    same_counts(got_counts, want_counts)
    same_points(got, want)
    assert got_agg.active_series == want_agg.active_series


# -- merge ---------------------------------------------------------------------------------------


def test_merge_folds_partials_into_existing_series() -> None:
    aggregator = Aggregator(AggregatorConfig())
    parser = Parser()
    for metric in parser.parse_datagram(b"c:1|c\ng:10|g\nt:5|ms\ns:a|s").metrics:
        aggregator.add(metric)
    counts = SimpleCounts()
    preagg = PreAggregator(Parser(), counts, 100)
    preagg.feed(b"c:2|c\ng:+5|g\nt:7|ms|@0.5\ns:b|s\n_e{1,1}:a|b")
    aggregator.merge(preagg.take())
    got = points(build_flush_batch(aggregator.take_snapshot(100, 10.0)))
    assert got[("stats.counters.c.count", ())] == 3.0
    assert got[("stats.gauges.g", ())] == 15.0
    assert got[("stats.timers.t.count", ())] == 3.0  # 1 sample at rate 1, 1 at rate 0.5
    assert got[("stats.timers.t.upper", ())] == 7.0
    assert got[("stats.sets.s.count", ())] == 2.0
    assert got[("stats.events", (("alert_type", "info"),))] == 1.0


def test_merge_respects_max_series_and_counts_refusals() -> None:
    aggregator = Aggregator(AggregatorConfig(max_series=2))
    partial = Partial(
        counters={("a", ()): 1.0, ("b", ()): 1.0, ("c", ()): 1.0},
        samples={(MetricKind.TIMER, ("t", ()), 1.0): array("d", [1.0, 2.0])},
        refused=4,
        refused_keys={("c", ("c", ())), ("g", ("x", ()))},
    )
    aggregator.merge(partial)
    assert aggregator.active_series == 2
    # c refused here and by the producer (counted once), t refused here, x by the producer
    assert aggregator.rejected_series == 3
    assert aggregator.rejected_metrics == 2 + 4
    aggregator.merge(Partial(counters={("a", ()): 5.0}))  # existing series keep working
    got = points(build_flush_batch(aggregator.take_snapshot(100, 10.0)))
    assert got[("stats.counters.a.count", ())] == 6.0


def test_preaggregator_caps_its_slots_and_frees_idle_ones() -> None:
    counts = SimpleCounts()
    preagg = PreAggregator(Parser(), counts, 3, evict_after=2)
    preagg.feed(b"\n".join(b"s%d:1|c" % i for i in range(10)))
    preagg.feed(b"s0:1|c\ns9:1|c")
    partial = preagg.take()
    assert sorted(partial.counters) == [("s0", ()), ("s1", ()), ("s2", ())]
    assert partial.counters[("s0", ())] == 2.0
    assert partial.refused == 8
    assert len(partial.refused_keys) == 3  # bounded by the cap too
    assert counts.metrics == 12  # refused metrics were still parsed and counted
    for _ in range(2):  # s1 and s2 go quiet for two takes and are evicted
        preagg.feed(b"s0:1|c")
        assert list(preagg.take().counters) == [("s0", ())]
    assert preagg.slots == 1
    preagg.feed(b"s9:1|c\ns1:5|c")
    assert preagg.take().counters == {("s9", ()): 1.0, ("s1", ()): 5.0}


def test_idle_series_are_evicted_without_traffic_and_come_back_intact() -> None:
    """Takes with nothing fed age the slots too (a worker whose series all went quiet forgets
    them); evicting many at once rebuilds the tables (COMPACT_AFTER_EVICTING), after which the
    same series bind again and add up as before."""
    many = _ingest.COMPACT_AFTER_EVICTING + 100
    lines = [b"c%d:1|c" % i for i in range(many)] + [b"t%d:%d|ms" % (i, i) for i in range(50)]
    datagrams = [b"\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    preagg = PreAggregator(Parser(), SimpleCounts(), 2 * many, evict_after=2)
    with mock.patch.object(_ingest, "VECTOR_MIN_BYTES", 0):
        for _ in range(2):  # the second pass takes the batch path
            preagg.feed_many(datagrams)
        first = preagg.take()
        assert preagg.slots == many + 50
        for _ in range(2):
            assert _contents(preagg.take()) == ({}, {}, {}, {})
        assert preagg.slots == 0
        for _ in range(2):
            preagg.feed_many(datagrams)
        again = preagg.take()
    assert _contents(again) == _contents(first)
    assert again.counters[("c0", ())] == 2.0


def _contents(partial: Partial) -> tuple[object, ...]:
    samples = partial.sample_lists()
    return partial.counters, partial.gauges, partial.sets, samples


@pytest.mark.parametrize("line", [b"e:2|c|#a", b"e:+2|g", b"e:3|g", b"e:2|ms|@0.5", b"e:x|s"])
def test_an_evicted_slot_is_bound_again_without_losing_a_line(line: bytes) -> None:
    preagg = PreAggregator(Parser(), SimpleCounts(), 10, evict_after=1)
    preagg.feed(line)
    first = _contents(preagg.take())
    preagg.feed(b"other:1|c")  # this take ages e's slot, and evicts it
    preagg.take()
    assert preagg.slots == 1
    preagg.feed(line)  # e's bound entry points at the emptied cell: it is bound again
    assert _contents(preagg.take()) == first


def test_a_reused_slot_never_takes_lines_of_its_old_key_in_a_batch() -> None:
    preagg = PreAggregator(Parser(), SimpleCounts(), 10, evict_after=1)
    with mock.patch.object(_ingest, "VECTOR_MIN_BYTES", 0):
        preagg.feed_many([b"a:1|c"])  # bound by the per-line path, learnt by the batch table
        preagg.feed_many([b"a:1|c"])  # the batch path
        assert preagg.take().counters == {("a", ()): 2.0}
        preagg.feed_many([b"b:1|c"])
        preagg.take()  # a's slot ages and is evicted
        preagg.feed_many([b"c:5|ms"])  # a new series in a's old slot
        preagg.feed_many([b"a:2|c\nc:7|ms"])
        partial = preagg.take()
    assert partial.counters == {("a", ()): 2.0}
    assert partial.sample_lists() == {
        (MetricKind.TIMER, ("c", ()), 1.0): [5.0, 7.0]
    }


def test_take_hands_over_and_starts_empty() -> None:
    preagg = PreAggregator(Parser(), SimpleCounts(), 100)
    assert preagg.pending == 0
    preagg.feed(b"a:1|c\n_e{1,1}:a|b")
    assert preagg.pending == 2
    partial = preagg.take()
    assert len(partial) == 2
    assert partial.events == [Event("a", "b", "info", ())]
    assert preagg.pending == 0
    preagg.feed(b"a:1|c")  # the spec is still known: fast path into a fresh slot
    assert preagg.take().counters == {("a", ()): 1.0}


# -- the cardinality cap in the agent: refused, counted, logged once per interval ---------------


async def test_cardinality_cap_is_counted_and_logged_once_per_interval(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="statsyard_agent._flush")

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "statsyard_agent._flush"]

    agent = await start_agent(nursery, make_config(tmp_path / "data", max_series=3))
    with statsd_client(agent.udp_port) as client:
        for i in range(5):
            client.incr(f"cap.s{i}")
        client.incr("cap.s4")  # a refused series is counted once per interval
        await agent.wait_lines(6)
        with trio.fail_after(30):
            await agent.handle.flush()
        aggregator = agent.handle.state.aggregator
        assert (aggregator.active_series, aggregator.rejected_series) == (3, 2)
        warnings = logged()
        assert len(warnings) == 1
        assert "max_series=3 reached: 2 new series refused" in warnings[0]
        client.incr("cap.s0")  # existing series keep working; nothing refused: no new line
        await agent.wait_lines(7)
        with trio.fail_after(30):
            await agent.handle.flush()
        assert len(logged()) == 1
        client.incr("cap.s9")
        await agent.wait_lines(8)
        with trio.fail_after(30):
            await agent.handle.flush()
        assert aggregator.rejected_series == 3
        assert len(logged()) == 2
    assert await agent.stop() == 0


async def test_the_event_loop_receive_path_forgets_series_quiet_for_three_flushes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The agent's own receive path (workers = 0) ages its slots at every flush, also when
    nothing at all arrived since the last (it used to take only when fed, so a burst of series
    stayed bound forever); a forgotten series binds again and adds up as before."""
    agent = await start_agent(nursery, make_config(tmp_path / "data"))
    preagg = agent.handle.state.preagg
    with statsd_client(agent.udp_port) as client:
        for i in range(50):
            client.incr(f"quiet.s{i}", 2)
        await agent.wait_lines(50)
        for flush in range(_ingest.EVICT_AFTER_FLUSHES + 1):
            with trio.fail_after(30):
                await agent.handle.flush()
            assert preagg.slots == (50 if flush < _ingest.EVICT_AFTER_FLUSHES else 0)
        client.incr("quiet.s0", 3)
        await agent.wait_lines(51)
        with trio.fail_after(30):
            await agent.handle.flush()
        assert preagg.slots == 1
    assert preagg.take_or_age() is None  # quiet: nothing to merge
    assert await agent.stop() == 0
    now = int(time.time())
    reader = Reader(tmp_path / "data")
    try:
        found = reader.query("stats.counters.quiet.s0.count", now - 3600, now + 3600)
    finally:
        reader.close()
    assert sum(float(np.nansum(series.values)) for series in found) == 5.0


def test_each_take_hands_over_the_set_members_since_the_last() -> None:
    preagg = PreAggregator(Parser(), SimpleCounts(), 100)
    datagram = b"\n".join([b"s:a|s", b"s:b|s", b"t:a|s"] * 3)
    key_s, key_t = ("s", ()), ("t", ())
    with mock.patch.object(_ingest, "VECTOR_MIN_BYTES", 0):
        preagg.feed_many([datagram])  # binds the keys (the per-line path)
        preagg.feed_many([datagram])  # the vectorised path
        assert preagg.take().sets == {key_s: {"a", "b"}, key_t: {"a"}}
        preagg.feed_many([b"s:c|s\ns:a|s", b"s:c|s"])
        assert preagg.take().sets == {key_s: {"a", "c"}}
        assert preagg.take().sets == {}


def test_set_members_are_decoded_alike_in_a_batch_with_a_bad_one() -> None:
    # The batch path decodes all new members at once; one bad member must not cost the others.
    counts = SimpleCounts()
    preagg = PreAggregator(Parser(), counts, 100)
    good = [b"s:\xc3\xa9|s", b"s:x|y|s", b"s:\xe2\x82\xac|s", b"s:plain|s"]
    with mock.patch.object(_ingest, "VECTOR_MIN_BYTES", 0):
        preagg.feed_many([b"s:first|s"])  # binds the key
        preagg.feed_many([b"\n".join([*good, b"s:\xc3|s", b"s:|s"])])
    assert preagg.take().sets == {("s", ()): {"first", "\u00e9", "\u20ac", "plain"}}
    # "s:x|y|s" has type "y": a parse error, as are the cut-short and the empty member.
    assert (counts.lines, counts.metrics) == (7, 4)
    assert sum(counts.parse_errors.values()) == 3


def test_thousands_of_distinct_sample_rates_are_all_counted() -> None:
    # Adaptive samplers send ever new rates; past the table of distinct factors, lines still
    # count (through the parser's path), exactly as parse + add would.
    lines = [b"c:1|c|@%.6f" % (0.5 + i / 20_000) for i in range(5_000)]
    datagrams = [b"\n".join(lines[i : i + 50]) for i in range(0, len(lines), 50)] * 2
    want, want_counts, _ = reference(datagrams)
    for batch in (0, 20):
        got, got_counts, _ = preaggregated(datagrams, batch=batch)
        same_counts(got_counts, want_counts)
        same_points(got, want)
        assert got_counts.parse_errors == {}
