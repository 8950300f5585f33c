"""End to end with real StatsD clients: values read back through `statsyard-agent query` are
exactly what Etsy statsd's definitions give."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import statsd
import trio
from datadog.dogstatsd import base as dogstatsd_base
from datadog.dogstatsd.base import DogStatsd

from .conftest import ROOT, RunningAgent, make_config, query_async, start_agent, statsd_client

INTERVAL = 10.0  # the tests flush at last_flush + 10 s, so rates are count / 10 exactly


async def flush_ten_seconds(agent: RunningAgent) -> None:
    with trio.fail_after(15):
        await agent.handle.flush(now=agent.handle.state.last_flush_unix + INTERVAL)


def only(series: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]],
         name: str, tags: tuple[tuple[str, str], ...] = ()) -> float:
    values = series[(name, tags)]
    assert len(values) == 1, values
    return values[0]


@pytest.fixture
def always_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both clients drop lines at random when given a sample rate; make them send every line so
    the expected totals are exact (the sample rate still goes on the wire)."""
    monkeypatch.setattr(statsd.client.base.random, "random", lambda: 0.0)
    monkeypatch.setattr(dogstatsd_base, "random", lambda: 0.0)


async def test_statsd_client_counters_gauges_timers_sets(
    nursery: trio.Nursery, tmp_path: Path, always_sample: None
) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data", percentiles=[90, 99]))
    with statsd_client(agent.udp_port) as client:
        send_statsd_mix(client)
    lines = 10 + 4 + 1 + 3 + 10 + 2 + 3
    await agent.wait_lines(lines)
    await flush_ten_seconds(agent)
    await check_statsd_mix(agent)


def send_statsd_mix(client: statsd.StatsClient) -> None:
    for _ in range(10):
        client.incr("hits", 1, rate=0.5)  # each counts 1 / 0.5 = 2
    for _ in range(4):
        client.incr("fractional", 0.25)
    client.decr("balance", 3)
    client.gauge("temperature", 10)
    client.gauge("temperature", 5, delta=True)
    client.gauge("temperature", -3, delta=True)
    for value in range(10, 101, 10):
        client.timing("api.latency", value)
    for value in (5, 15):
        client.timing("sampled.latency", value, rate=0.5)
    for member in ("alice", "bob", "alice"):
        client.set("users", member)


async def check_statsd_mix(agent: RunningAgent) -> None:
    got = await query_async(agent.config.data_dir, "stats.*.*.*")
    got |= await query_async(agent.config.data_dir, "stats.*.*")
    got |= await query_async(agent.config.data_dir, "stats.timers.*.*.*")
    assert only(got, "stats.counters.hits.count") == 20
    assert only(got, "stats.counters.hits.rate") == 2.0
    assert only(got, "stats.counters.fractional.count") == 1.0  # floats, never truncated
    assert only(got, "stats.counters.balance.count") == -3
    assert only(got, "stats.gauges.temperature") == 12
    assert only(got, "stats.sets.users.count") == 2

    timer = "stats.timers.api.latency."
    expected = {
        "count": 10, "count_ps": 1.0, "sum": 550, "sum_squares": 38500, "mean": 55,
        "median": 55, "lower": 10, "upper": 100, "std": math.sqrt(825),
        "count_90": 9, "mean_90": 50, "sum_90": 450, "sum_squares_90": 28500, "upper_90": 90,
        "count_99": 10, "mean_99": 55, "sum_99": 550, "sum_squares_99": 38500, "upper_99": 100,
    }
    for stat, value in expected.items():
        assert only(got, timer + stat) == pytest.approx(value, rel=1e-12), stat
    # Sample rates weight the timer's count, not its statistics (Etsy).
    assert only(got, "stats.timers.sampled.latency.count") == 4
    assert only(got, "stats.timers.sampled.latency.mean") == 10


async def test_datadog_client_tags_histograms_distributions_events(
    nursery: trio.Nursery, tmp_path: Path, always_sample: None
) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data"))
    client = DogStatsd(host="127.0.0.1", port=agent.udp_port, disable_telemetry=True,
                       disable_buffering=True)
    for _ in range(3):
        client.increment("page.views", tags=["env:prod", "region:eu"])
    client.increment("page.views", tags=["env:dev"])
    client.increment("page.views", 5, sample_rate=0.25, tags=["env:dev"])  # 5 / 0.25 = 20
    client.gauge("queue.depth", 42, tags=["env:prod"])
    for value in (1, 2, 3, 4):
        client.histogram("resp.size", value, tags=["route:/a:b"])  # value keeps its colon
    for value in (100, 300):
        client.distribution("job.seconds", value)
    client.set("visitors", "v1")
    client.set("visitors", "v2")
    client.event("deploy", "v1.2.3 rolled out", alert_type="success", tags=["env:prod"])
    client.service_check("db.up", DogStatsd.OK, tags=["env:prod"])
    client.close_socket()
    await agent.wait_lines(3 + 2 + 1 + 4 + 2 + 2 + 2)
    await flush_ten_seconds(agent)

    got = await query_async(agent.config.data_dir, "stats.counters.page.views.count")
    assert got == {
        ("stats.counters.page.views.count", (("env", "prod"), ("region", "eu"))): [3.0],
        ("stats.counters.page.views.count", (("env", "dev"),)): [21.0],
    }
    got = await query_async(agent.config.data_dir, "stats.gauges.queue.depth")
    assert got == {("stats.gauges.queue.depth", (("env", "prod"),)): [42.0]}
    got = await query_async(agent.config.data_dir, "stats.histograms.resp.size.*")
    tags = (("route", "/a:b"),)
    assert only(got, "stats.histograms.resp.size.mean", tags) == 2.5
    assert only(got, "stats.histograms.resp.size.upper", tags) == 4
    assert only(got, "stats.histograms.resp.size.count", tags) == 4
    got = await query_async(agent.config.data_dir, "stats.distributions.job.seconds.*")
    assert only(got, "stats.distributions.job.seconds.median") == 200
    assert only(got, "stats.distributions.job.seconds.sum") == 400
    got = await query_async(agent.config.data_dir, "stats.sets.visitors.count")
    assert only(got, "stats.sets.visitors.count") == 2
    got = await query_async(agent.config.data_dir, "stats.events")
    assert only(got, "stats.events", (("alert_type", "success"), ("env", "prod"))) == 1
    got = await query_async(agent.config.data_dir, "stats.service_checks")
    assert only(got, "stats.service_checks",
                (("check", "db.up"), ("env", "prod"), ("status", "0"))) == 1


async def test_gauge_sign_set_mode_for_dogstatsd_clients(nursery: trio.Nursery,
                                                         tmp_path: Path) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data", gauge_sign="set"))
    client = DogStatsd(host="127.0.0.1", port=agent.udp_port, disable_telemetry=True,
                       disable_buffering=True)
    client.gauge("balance", 10)
    client.gauge("balance", -4)  # a DogStatsD client means "set to -4"
    client.close_socket()
    await agent.wait_lines(2)
    await flush_ten_seconds(agent)
    got = await query_async(agent.config.data_dir, "stats.gauges.balance")
    assert only(got, "stats.gauges.balance") == -4


async def test_gauges_persist_and_idle_counters_report_zero(nursery: trio.Nursery,
                                                            tmp_path: Path) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data"))
    with statsd_client(agent.udp_port) as client:
        client.gauge("level", 7)
        client.incr("ticks", 3)
    await agent.wait_lines(2)
    await flush_ten_seconds(agent)
    await flush_ten_seconds(agent)  # nothing sent in the second interval
    got = await query_async(agent.config.data_dir, "stats.gauges.level")
    assert got[("stats.gauges.level", ())] == [7, 7]
    got = await query_async(agent.config.data_dir, "stats.counters.ticks.count")
    assert got[("stats.counters.ticks.count", ())] == [3, 0]


@pytest.mark.skipif(shutil.which("node") is None
                    or not (ROOT / "tests/clients/node_modules/hot-shots").exists(),
                    reason="hot-shots not installed (tests/run-all.sh installs it with npm)")
async def test_hot_shots_node_client(nursery: trio.Nursery, tmp_path: Path) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data"))
    script = f"""
const StatsD = require('hot-shots');
const c = new StatsD({{host: '127.0.0.1', port: {agent.udp_port}, errorHandler: e => {{
  console.error(e); process.exit(1); }} }});
c.increment('node.requests', 2, ['svc:web']);
c.increment('node.requests', 1, ['svc:web']);
c.timing('node.latency', 12);
c.timing('node.latency', 18);
c.gauge('node.heap', 1024);
c.close(() => process.exit(0));
"""
    result = await trio.to_thread.run_sync(lambda: subprocess.run(
        ["node", "-e", script], cwd=ROOT / "tests/clients", capture_output=True, text=True,
        timeout=30, check=False))
    assert result.returncode == 0, result.stderr
    await agent.wait_lines(5)
    await flush_ten_seconds(agent)
    got = await query_async(agent.config.data_dir, "stats.counters.node.requests.count")
    assert only(got, "stats.counters.node.requests.count", (("svc", "web"),)) == 3
    got = await query_async(agent.config.data_dir, "stats.timers.node.latency.mean")
    assert only(got, "stats.timers.node.latency.mean") == 15
    got = await query_async(agent.config.data_dir, "stats.gauges.node.heap")
    assert only(got, "stats.gauges.node.heap") == 1024
