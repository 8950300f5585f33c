"""Forwarding into a real VictoriaMetrics (Debian's ``victoria-metrics``), compared point by point.

Each test starts VictoriaMetrics on 127.0.0.1 with ports it picks and a temporary storage path
(``-search.latencyOffset=1s`` so fresh points are queryable), sends known StatsD traffic through
an in-process agent that forwards to it by Graphite plaintext and by Prometheus remote write, and
reads everything back with ``/api/v1/export``. The expected points are exactly those of the
batches the agent flushed (recorded as they are handed to forwarding), and the known traffic is
checked too (every counter increment is in the exported counts).

The fault test stops VictoriaMetrics for several flushes, restarts the agent once while it is
down, restarts VictoriaMetrics, and then requires every point exactly once: none missing, none
duplicated (the export returns duplicate samples, so a duplicate would show).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from statsyard_agent._types import FlushBatch
from statsyard_agent.forward._encode import prometheus_name
from tests.conftest import RunningAgent, make_config, start_agent, wait_for, wait_for_blocking
from tests.test_agent_faults import http_get_async

VM_BINARY = shutil.which("victoria-metrics")
pytestmark = pytest.mark.skipif(
    VM_BINARY is None,
    reason="victoria-metrics is not installed (tests/run-all.sh installs the Debian package)",
)

Series = tuple[str, tuple[tuple[str, str], ...]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VictoriaMetrics:
    """One single-node VictoriaMetrics process on loopback; stop and start keep its data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.http_port = _free_port()
        self.graphite_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "vm.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        assert VM_BINARY is not None
        assert self.process is None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    VM_BINARY,
                    f"-storageDataPath={self.directory / 'data'}",
                    f"-httpListenAddr=127.0.0.1:{self.http_port}",
                    f"-graphiteListenAddr=127.0.0.1:{self.graphite_port}",
                    "-retentionPeriod=1",
                    "-search.latencyOffset=1s",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_blocking(self._healthy, 30, f"VictoriaMetrics up (log: {self.log})")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"VictoriaMetrics exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # graceful: VictoriaMetrics flushes what it accepted
            self.process.wait(timeout=60)
            self.process = None

    def export(self, selector: str) -> dict[Series, list[tuple[int, float]]]:
        """Every raw sample matching ``selector``: series -> [(timestamp_ms, value)] sorted."""
        urllib.request.urlopen(
            urllib.request.Request(f"{self.url}/internal/force_flush", method="POST"), timeout=10
        ).close()
        body = urllib.parse.urlencode({"match[]": selector}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=body, timeout=30) as resp:
            lines = resp.read().decode().splitlines()
        out: dict[Series, list[tuple[int, float]]] = defaultdict(list)
        for line in lines:
            item = json.loads(line)
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            out[(name, tuple(sorted(labels.items())))] += zip(item["timestamps"], item["values"], strict=True)
        return {series: sorted(points) for series, points in out.items()}


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(tmp_path / "vm")
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def _sinks(vm: VictoriaMetrics) -> list[dict[str, Any]]:
    fast = {
        "fsync": False,
        "backoff_initial": 0.05,
        "backoff_max": 0.3,
        "timeout": 5,
        "max_lag": 30,
        "max_points_per_send": 50,
    }
    return [
        {"url": f"graphite://127.0.0.1:{vm.graphite_port}", "name": "graphite", **fast},
        {
            "url": f"remote-write+http://127.0.0.1:{vm.http_port}/api/v1/write",
            "name": "rw",
            "self_metrics": True,
            **fast,
        },
    ]


class Recorder:
    """Keeps every batch the agent hands to forwarding (the ground truth for the export)."""

    def __init__(self) -> None:
        self.batches: list[FlushBatch] = []

    def attach(self, agent: RunningAgent) -> None:
        hub = agent.handle.state.forward
        assert hub is not None
        offer = hub.offer

        def record(batch: FlushBatch) -> None:
            self.batches.append(batch)
            offer(batch)

        hub.offer = record  # type: ignore[method-assign]

    def expected(self, rename: bool) -> dict[Series, list[tuple[int, float]]]:
        out: dict[Series, list[tuple[int, float]]] = defaultdict(list)
        for batch in self.batches:
            for name, tags, value in zip(batch.names, batch.tags, batch.values.tolist(), strict=True):
                if not math.isnan(value):
                    series = (prometheus_name(name) if rename else name, tags)
                    out[series].append((batch.timestamp * 1000, value))
        return {series: sorted(points) for series, points in out.items()}


def assert_same_points(
    expected: dict[Series, list[tuple[int, float]]], exported: dict[Series, list[tuple[int, float]]]
) -> int:
    """Same series, same timestamps (each once), values equal to VictoriaMetrics' precision."""
    assert sorted(exported) == sorted(expected), (
        f"missing series: {sorted(set(expected) - set(exported))[:5]}, "
        f"unexpected: {sorted(set(exported) - set(expected))[:5]}"
    )
    total = 0
    for series, points in expected.items():
        got = exported[series]
        assert [t for t, _ in got] == [t for t, _ in points], f"{series}: timestamps differ"
        for (t, want), (_, have) in zip(points, got, strict=True):
            assert math.isclose(have, want, rel_tol=1e-11, abs_tol=1e-12), (series, t, want, have)
        total += len(points)
    return total


async def send(agent: RunningAgent, round_: int) -> int:
    """Known traffic for one interval; returns the counter increments sent."""
    lines = [f"ci.hits:1|c|#env:ci,round:{round_ % 3}" for _ in range(round_ + 1)]
    lines += [
        f"ci.level:{round_ * 1.5}|g",
        f"ci.latency:{10 + round_}|ms|#env:ci",
        f"ci.latency:{20 + round_ * 2}|ms|#env:ci",
        f"ci.users:u{round_}|s",
    ]
    before = agent.handle.state.ingest.lines
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto("\n".join(lines).encode(), ("127.0.0.1", agent.udp_port))
    await agent.wait_lines(before + len(lines))
    return round_ + 1


class Clock:
    """Flush timestamps: whole seconds in the recent past, one per flush, never repeated."""

    def __init__(self) -> None:
        self.now = int(time.time()) - 300

    def tick(self) -> float:
        self.now += 1
        return float(self.now)


async def delivered(agent: RunningAgent) -> None:
    hub = agent.handle.state.forward
    assert hub is not None
    await wait_for(
        lambda: hub.inbox_batches == 0 and all(s.spool.pending_points == 0 for s in hub.sinks),
        60,
        lambda: json.dumps(hub.health()),
    )


@contextlib.asynccontextmanager
async def running(
    nursery: trio.Nursery, data: Path, vm: VictoriaMetrics, recorder: Recorder
) -> AsyncIterator[RunningAgent]:
    agent = await start_agent(nursery, make_config(data, forward=_sinks(vm)))
    recorder.attach(agent)
    try:
        yield agent
    finally:
        if not agent.stopped.is_set():
            assert await agent.stop() == 0


def check_export(vm: VictoriaMetrics, recorder: Recorder, increments: int) -> int:
    graphite = vm.export('{__name__=~"stats[.].*"}')
    remote = vm.export('{__name__=~"stats_.*"}')
    points = assert_same_points(recorder.expected(rename=False), graphite)
    assert assert_same_points(recorder.expected(rename=True), remote) == points
    for exported, name in (
        (graphite, "stats.counters.ci.hits.count"),
        (remote, "stats_counters_ci_hits_count"),
    ):
        counted = sum(v for (n, _), values in exported.items() if n == name for _, v in values)
        assert counted == increments  # the known traffic, independently of the recording
    return points


async def test_known_traffic_arrives_point_by_point(
    nursery: trio.Nursery, tmp_path: Path, vm: VictoriaMetrics
) -> None:
    recorder = Recorder()
    clock = Clock()
    increments = 0
    async with running(nursery, tmp_path / "data", vm, recorder) as agent:
        for round_ in range(5):
            increments += await send(agent, round_)
            await agent.handle.flush(now=clock.tick())
        await delivered(agent)
    # The shutdown flush was sent too, within the sinks' shutdown grace.
    points = await trio.to_thread.run_sync(lambda: wait_for_export(vm, recorder, increments))
    assert points > 100
    own = await trio.to_thread.run_sync(vm.export, "statsyard_forward_points_sent_total")
    assert {dict(tags)["sink"] for _, tags in own} == {"graphite", "rw"}
    assert all("instance" in dict(tags) for _, tags in own)


def wait_for_export(vm: VictoriaMetrics, recorder: Recorder, increments: int) -> int:
    """The export, once what the agent sent is searchable (VictoriaMetrics ingests async)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return check_export(vm, recorder, increments)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def test_outage_and_agent_restart_lose_and_duplicate_nothing(
    nursery: trio.Nursery, tmp_path: Path, vm: VictoriaMetrics
) -> None:
    recorder = Recorder()
    clock = Clock()
    increments = 0
    data = tmp_path / "data"
    async with running(nursery, data, vm, recorder) as agent:
        for round_ in range(3):
            increments += await send(agent, round_)
            await agent.handle.flush(now=clock.tick())
        await delivered(agent)

        await trio.to_thread.run_sync(vm.stop)  # mid-stream, for several flush intervals
        for round_ in range(3, 8):
            increments += await send(agent, round_)
            await agent.handle.flush(now=clock.tick())
        hub = agent.handle.state.forward
        assert hub is not None
        await wait_for(lambda: all(s.counters.retried_points for s in hub.sinks), 30)
        status, body = await http_get_async(agent.http_port, "/healthz")
        health = json.loads(body)
        assert status == 503, health
        assert any("forward sink graphite is" in p for p in health["problems"])
        assert health["forward"]["sinks"]["rw"]["pending_points"] > 0
    # The agent stopped cleanly while VictoriaMetrics is down: its spools hold the backlog.

    async with running(nursery, data, vm, recorder) as agent:
        hub = agent.handle.state.forward
        assert hub is not None
        assert all(s.spool.pending_points for s in hub.sinks)  # resumed from disk
        for round_ in range(8, 10):
            increments += await send(agent, round_)
            await agent.handle.flush(now=clock.tick())
        await trio.to_thread.run_sync(vm.start)
        for round_ in range(10, 12):
            increments += await send(agent, round_)
            await agent.handle.flush(now=clock.tick())
        await delivered(agent)
        status, body = await http_get_async(agent.http_port, "/healthz")
        assert status == 200, body
        assert all(s.counters.dropped_points.total() == 0 for s in hub.sinks)
    points = await trio.to_thread.run_sync(lambda: wait_for_export(vm, recorder, increments))
    assert points > 200


@pytest.mark.long
async def test_wall_clock_outage_with_continuous_traffic(
    nursery: trio.Nursery, tmp_path: Path, vm: VictoriaMetrics
) -> None:
    """The same guarantee with real one-second flushes and traffic that never pauses."""
    recorder = Recorder()
    data = tmp_path / "data"
    increments = 0

    async def traffic(agent: RunningAgent, seconds: float) -> None:
        nonlocal increments
        end = trio.current_time() + seconds
        before = agent.handle.state.ingest.lines
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            while trio.current_time() < end:
                client.sendto(b"ci.hits:1|c|#env:ci\nci.latency:5|ms", ("127.0.0.1", agent.udp_port))
                sent += 1
                await trio.sleep(0.02)
        await agent.wait_lines(before + 2 * sent)
        increments += sent

    async def start() -> RunningAgent:
        agent = await start_agent(nursery, make_config(data, forward=_sinks(vm), flush_interval=1))
        recorder.attach(agent)
        return agent

    agent = await start()
    await traffic(agent, 3)
    await trio.to_thread.run_sync(vm.stop)
    await traffic(agent, 5)
    assert await agent.stop() == 0
    agent = await start()
    await traffic(agent, 2)
    await trio.to_thread.run_sync(vm.start)
    await traffic(agent, 4)
    await delivered(agent)
    assert await agent.stop() == 0
    await trio.to_thread.run_sync(lambda: wait_for_export(vm, recorder, increments))
