"""The opt-in Prometheus exposition of the StatsD data (``/metrics/statsd``): names, mapping
rules, deterministic collisions, counters/gauges/summaries/histograms, and a real Prometheus
server (Debian ``prometheus``) scraping the agent and reading the counters back exactly."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from statsyard_agent._aggregate import Aggregator, AggregatorConfig, build_flush_batch
from statsyard_agent._config import build_config
from statsyard_agent._exceptions import ConfigError
from statsyard_agent._promexport import (
    MAX_PENDING_BATCHES,
    PromExportConfig,
    StatsdExporter,
    parse_prometheus_config,
    sanitize_label_name,
    sanitize_metric_name,
)
from statsyard_agent._protocol import Parser, ParserConfig
from statsyard_agent._types import FlushBatch

from .conftest import make_config, start_agent
from .test_graphite import call, send

T0 = 1_700_000_000


class Feed:
    """Real parser and aggregator: StatsD lines in, flush batches out."""

    def __init__(self) -> None:
        self.parser = Parser(ParserConfig())
        self.aggregator = Aggregator(AggregatorConfig(idle_ttl=3600))

    def batch(self, lines: bytes, stamp: int, interval: float = 10.0) -> FlushBatch:
        result = self.parser.parse_datagram(lines)
        for metric in result.metrics:
            self.aggregator.add(metric)
        for event in result.events:
            self.aggregator.add_event(event)
        return build_flush_batch(self.aggregator.take_snapshot(stamp, interval))


def exporter(**config: Any) -> StatsdExporter:
    return StatsdExporter(parse_prometheus_config({"enabled": True, **config}), "stats")


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def types(text: bytes) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text.decode())}


# -- configuration ---------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"enabled": "yes"}, "prometheus.enabled"),
    ({"observer_type": "gauge"}, "prometheus.observer_type"),
    ({"quantiles": [0.5, 1.5]}, "prometheus.quantiles"),
    ({"buckets": []}, "prometheus.buckets"),
    ({"summary_max_age": 0}, "prometheus.summary_max_age"),
    ({"max_series": 1.5}, "prometheus.max_series"),
    ({"mappings": {"match": "a"}}, "prometheus.mappings"),
    ({"mappings": [{"name": "x"}]}, "prometheus.mappings[0].match"),
    ({"mappings": [{"match": "a", "name": "x", "colour": "red"}]}, "prometheus.mappings[0].colour"),
    ({"mappings": [{"match": "a", "name": "a-b"}]}, "prometheus.mappings[0].name"),
    ({"mappings": [{"match": "(", "match_type": "regex", "name": "x"}]}, "prometheus.mappings[0].match"),
    ({"mappings": [{"match": "a", "match_type": "fuzzy", "name": "x"}]}, "prometheus.mappings[0].match_type"),
    ({"mappings": [{"match": "a", "name": "x", "action": "keep"}]}, "prometheus.mappings[0].action"),
    (
        {"mappings": [{"match": "a", "name": "x", "match_metric_type": "meter"}]},
        "prometheus.mappings[0].match_metric_type",
    ),
    (
        {"mappings": [{"match": "a", "name": "x", "labels": {"__x": "y"}}]},
        "prometheus.mappings[0].labels.__x",
    ),
    ({"mappings": [{"match": "a", "name": "x", "labels": {"k": 1}}]}, "prometheus.mappings[0].labels.k"),
    (
        {"mappings": [{"match": "a", "name": "x", "observer_type": "bar"}]},
        "prometheus.mappings[0].observer_type",
    ),
]


@pytest.mark.parametrize(("section", "key"), BAD_CONFIGS)
def test_bad_config_names_the_key(section: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_prometheus_config(section)
    assert caught.value.key == key


def test_config_section_in_the_agent_config() -> None:
    config = build_config({"prometheus": {"enabled": True, "quantiles": [0.99, 0.5]}})
    assert config.prometheus.enabled
    assert config.prometheus.quantiles == (0.5, 0.99)
    assert build_config({}).prometheus == PromExportConfig()
    with pytest.raises(ConfigError) as caught:
        build_config({"prometheus": {"enable": True}})
    assert caught.value.key == "prometheus.enable"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("api.requests", "api_requests"),
        ("1st.place", "_1st_place"),
        ("a-b/c d", "a_b_c_d"),
        ("ok:name_1", "ok:name_1"),
        ("", "_"),
        ("é", "_"),
    ],
)
def test_metric_names_are_sanitised(name: str, expected: str) -> None:
    assert sanitize_metric_name(name) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("env", "env"),
        ("kube.pod-name", "kube_pod_name"),
        ("9lives", "_9lives"),
        ("__meta", "_meta"),
        ("a:b", "a_b"),
    ],
)
def test_label_names_are_sanitised(name: str, expected: str) -> None:
    assert sanitize_label_name(name) == expected


# -- values ----------------------------------------------------------------------------------------


def test_counters_are_cumulative_with_sample_rates_and_tags_as_labels() -> None:
    feed, export = Feed(), exporter()
    export.observe(feed.batch(b"orders:3|c\norders:2|c|#env:prod,kube.ns:shop\nviews:1|c|@0.1", T0))
    export.observe(feed.batch(b"orders:4|c", T0 + 10))
    export.observe(feed.batch(b"", T0 + 20))  # idle: the counter is exported as 0, keeps its total
    text = export.render()
    got = samples(text)
    assert got[("orders_total", ())] == 7
    assert got[("orders_total", (("env", "prod"), ("kube_ns", "shop")))] == 2
    assert got[("views_total", ())] == 10
    assert types(text)["orders"] == "counter"


def test_gauges_sets_and_events() -> None:
    feed, export = Feed(), exporter()
    export.observe(feed.batch(b"temp:20|g\nusers:a|s\nusers:b|s\n_e{5,4}:title|text|t:error", T0))
    export.observe(feed.batch(b"temp:+5|g\nusers:a|s", T0 + 10))
    got = samples(export.render())
    assert got[("temp", ())] == 25
    assert got[("users", ())] == 1  # distinct members in the last interval
    assert got[("statsd_events_total", (("alert_type", "error"),))] == 1


def test_timers_as_summaries_in_seconds() -> None:
    feed, export = Feed(), exporter(quantiles=[0.5, 0.99])
    export.observe(feed.batch(b"".join(b"lat:%d|ms\n" % v for v in range(1, 101)), T0))
    text = export.render()
    got = samples(text)
    assert types(text)["lat"] == "summary"
    assert got[("lat_count", ())] == 100
    assert got[("lat_sum", ())] == pytest.approx(5.050)
    assert got[("lat", (("quantile", "0.5"),))] == pytest.approx(0.050, rel=0.011)
    assert got[("lat", (("quantile", "0.99"),))] == pytest.approx(0.099, rel=0.011)


def test_sampled_timers_keep_sum_consistent_with_count() -> None:
    feed, export = Feed(), exporter()
    export.observe(feed.batch(b"lat:100|ms|@0.5\nlat:300|ms|@0.5", T0))
    got = samples(export.render())
    assert got[("lat_count", ())] == 4
    assert got[("lat_sum", ())] == pytest.approx(0.8)  # each value stands for 2 samples


def test_histograms_are_not_converted_and_quantiles_expire() -> None:
    feed, export = Feed(), exporter(summary_max_age=60)
    export.observe(feed.batch(b"size:10|h\nsize:30|h", T0))
    assert samples(export.render())[("size", (("quantile", "0.5"),))] == pytest.approx(10, rel=0.01)
    export.observe(feed.batch(b"", T0 + 200))
    got = samples(export.render())
    assert math.isnan(got[("size", (("quantile", "0.5"),))])  # no sample in the last minute
    assert (got[("size_count", ())], got[("size_sum", ())]) == (2, 40)  # totals stay


def test_timers_as_histograms() -> None:
    feed, export = Feed(), exporter(observer_type="histogram", buckets=[0.005, 0.1, 1])
    export.observe(feed.batch(b"lat:5|ms\nlat:100|ms\nlat:700|ms\nlat:2000|ms", T0))
    export.observe(feed.batch(b"lat:50|ms", T0 + 10))
    text = export.render()
    got = samples(text)
    assert types(text)["lat"] == "histogram"
    buckets = {dict(labels)["le"]: v for (name, labels), v in got.items() if name == "lat_bucket"}
    # a sample exactly on a bound counts below it
    assert buckets == {"0.005": 1, "0.1": 3, "1.0": 4, "+Inf": 5}
    assert got[("lat_count", ())] == 5
    assert got[("lat_sum", ())] == pytest.approx(2.855)


# -- mapping rules ---------------------------------------------------------------------------------

MAPPINGS = [
    {"match": "api.*.requests", "name": "api_requests", "labels": {"endpoint": "$1", "tier": "web"}},
    {"match": "^db\\.(\\w+)\\.(\\w+)$", "match_type": "regex", "name": "db_${2}", "labels": {"table": "$1"}},
    {"match": "jobs.*", "match_metric_type": "gauge", "name": "job_state", "labels": {"job": "$1"}},
    {"match": "debug.*", "action": "drop"},
    {"match": "api.*.*", "name": "api_other_$2"},
    {"match": "slow.*", "name": "slow", "observer_type": "histogram"},
]


def test_mapping_rules_first_match_wins() -> None:
    feed, export = Feed(), exporter(mappings=MAPPINGS, buckets=[1])
    lines = (
        b"api.login.requests:1|c|#env:prod\napi.login.errors:2|c\ndb.users.reads:5|c\n"
        b"jobs.backup:1|g\njobs.count:3|c\ndebug.noise:9|c\nslow.query:500|ms"
    )
    export.observe(feed.batch(lines, T0))
    text = export.render()
    got = samples(text)
    assert got[("api_requests_total", (("endpoint", "login"), ("env", "prod"), ("tier", "web")))] == 1
    assert got[("api_other_errors_total", ())] == 2
    assert got[("db_reads_total", (("table", "users"),))] == 5
    assert got[("job_state", (("job", "backup"),))] == 1
    assert got[("jobs_count_total", ())] == 3  # the gauge-only rule does not take a counter
    assert not any(name.startswith("debug") for name, _ in got)
    assert types(text)["slow"] == "histogram"
    assert got[("slow_bucket", (("le", "1.0"),))] == 1


# -- collisions ------------------------------------------------------------------------------------


def collide(order: list[bytes]) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], int]:
    feed, export = Feed(), exporter()
    for i, line in enumerate(order):
        export.observe(feed.batch(line, T0 + 10 * i))
    return samples(export.render()), export.collisions


def test_collisions_are_renamed_and_counted() -> None:
    got, count = collide([b"a.b:1|c", b"a_b:2|c", b"a-b:4|c"])
    assert got[("a_b_total", ())] == 2  # already a valid name: it keeps it
    renamed = {name: v for (name, _), v in got.items() if name.startswith("a_b_") and name != "a_b_total"}
    assert sorted(renamed.values()) == [1, 4]
    assert all(len(name) == len("a_b_12345678_total") for name in renamed)
    assert count == 2


@settings(max_examples=20, deadline=None)
@given(st.permutations([b"a.b:1|c", b"a_b:2|c", b"a-b:4|c", b"x:1|g", b"x_total:5|g", b"t:1|c|#a.b:1,a_b:2"]))
def test_collision_resolution_does_not_depend_on_arrival_order(order: list[bytes]) -> None:
    reference = collide([b"a.b:1|c", b"a_b:2|c", b"a-b:4|c", b"x:1|g", b"x_total:5|g", b"t:1|c|#a.b:1,a_b:2"])
    assert collide(order) == reference


def test_type_and_label_collisions() -> None:
    got, count = collide([b"x:1|c", b"x_total:5|g", b"t:1|c|#a.b:1,a_b:2"])
    assert got[("x_total", ())] in (1, 5)
    assert len([k for k in got if k[0].startswith("x_")]) == 2
    assert count == 2  # the gauge, and the series whose two tags became one label


def test_max_series_and_ttl() -> None:
    feed, export = Feed(), exporter(max_series=2, ttl=30)
    export.observe(feed.batch(b"a:1|c\nb:1|c\nc:1|c", T0))
    export.render()
    assert (export.series, export.rejected_series) == (2, 1)
    feed.aggregator = Aggregator(AggregatorConfig(idle_ttl=1))  # a fresh aggregator: a, b go silent
    export.observe(feed.batch(b"d:1|c", T0 + 100))
    names = {name for name, _ in samples(export.render())}
    assert names == {"d_total"}


def test_pending_batches_are_bounded() -> None:
    feed, export = Feed(), exporter()
    batch = feed.batch(b"a:1|c", T0)
    for _ in range(MAX_PENDING_BATCHES + 3):
        export.observe(batch)
    assert export.dropped_batches == 3
    assert export.fold_pending() == MAX_PENDING_BATCHES


# -- over HTTP, and into a real Prometheus ---------------------------------------------------------


async def test_off_by_default_with_a_hint(nursery: trio.Nursery, tmp_path: Path) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data"))
    status, _, body = await call(agent.http_port, "/metrics/statsd")
    assert status == 404
    assert b"[prometheus] enabled = true" in body
    await agent.stop()


async def test_exposition_over_http(nursery: trio.Nursery, tmp_path: Path) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data", prometheus={"enabled": True}))
    await send(agent, b"orders:3|c\ntemp:21|g")
    await agent.handle.flush()
    status, headers, body = await call(agent.http_port, "/metrics/statsd")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = samples(body)
    assert (got[("orders_total", ())], got[("temp", ())]) == (3, 21)
    status, _, body = await call(agent.http_port, "/metrics")
    assert b"statsyard_prometheus_series 2.0" in body
    await agent.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prometheus_query(port: int, query: str) -> dict[tuple[tuple[str, str], ...], float]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            reply = json.load(response)
    except OSError:
        return {}
    out = {}
    for item in reply["data"]["result"]:
        labels = tuple(
            sorted((k, v) for k, v in item["metric"].items() if k not in ("job", "instance", "__name__"))
        )
        out[labels] = float(item["value"][1])
    return out


async def test_a_real_prometheus_reads_back_the_counters(nursery: trio.Nursery, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary (Debian package 'prometheus'; tests/run-all.sh installs it)")
    agent = await start_agent(nursery, make_config(tmp_path / "data", prometheus={"enabled": True}))
    for _ in range(5):
        await send(agent, b"checkout.orders:3|c\ncheckout.orders:2|c|#env:prod\npage.views:1|c|@0.1")
    await agent.handle.flush()

    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: statsyard\n    metrics_path: /metrics/statsd\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{agent.http_port}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            expected = {
                "checkout_orders_total": {(): 15.0, (("env", "prod"),): 10.0},
                "page_views_total": {(): 50.0},
            }
            seen: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}

            async def read_back() -> bool:
                for name in expected:
                    seen[name] = await trio.to_thread.run_sync(_prometheus_query, port, name)
                return seen == expected

            def describe() -> str:
                return f"Prometheus answered {seen}, want {expected}; its log: {log_path.read_text()[-2000:]}"

            await _wait_async(read_back, 60, describe)

            # counters are cumulative: one more flush adds to what Prometheus already has
            await send(agent, b"checkout.orders:4|c")
            await agent.handle.flush()
            expected["checkout_orders_total"][()] = 19.0
            await _wait_async(read_back, 60, describe)
        finally:
            process.terminate()
            with trio.move_on_after(20):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
    await agent.stop()


async def _wait_async(predicate: Any, seconds: float, describe: Any) -> None:
    """Like conftest.wait_for, for a predicate that must itself await (an HTTP query)."""
    deadline = time.monotonic() + seconds
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s: {describe()}")
        await trio.sleep(0.25)


def test_label_values_are_escaped() -> None:
    feed, export = Feed(), exporter()
    export.observe(feed.batch(b'hits:1|c|#path:C:\\dir\\"x"', T0))
    got = samples(export.render())
    assert got[("hits_total", (("path", 'C:\\dir\\"x"'),))] == 1
