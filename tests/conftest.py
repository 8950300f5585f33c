"""Shared fixtures: a real agent on real sockets (port 0), and the real query command."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import statsd
import trio

from statsyard_agent._app import AgentHandle, run_agent
from statsyard_agent._config import AgentConfig, build_config
from statsyard_agent._faults import FaultInjector

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heavy variants (``@pytest.mark.long``) run only when asked for: ``pytest -m long``."""
    if "long" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="heavy variant: run it with pytest -m long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


def make_config(data_dir: Path, **values: Any) -> AgentConfig:
    """A test config: ephemeral ports, a 1 s raw tier, and a flush interval long enough that
    only the test's own explicit flushes happen (so per-interval stats are deterministic)."""
    merged: dict[str, Any] = {
        "udp": "127.0.0.1:0",
        "http": "127.0.0.1:0",
        "data_dir": str(data_dir),
        "flush_interval": 3600,
        "storage": {"retention": "1s:1d,1m:7d", "fsync": False},
        # Receive on the event loop, where ingest counters are live (tests wait on them); the
        # worker processes have their own tests (test_workers.py) and run in the CLI tests.
        "ingest": {"workers": 0},
    }
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return build_config(merged)


class RunningAgent:
    """An in-process agent plus the exit status once it stopped."""

    def __init__(self, handle: AgentHandle, config: AgentConfig, faults: FaultInjector) -> None:
        self.handle = handle
        self.config = config
        self.faults = faults
        self.exit_status: int | None = None
        self.stopped = trio.Event()

    @property
    def udp_port(self) -> int:
        assert self.handle.udp_address is not None
        return self.handle.udp_address[1]

    @property
    def http_port(self) -> int:
        assert self.handle.http_address is not None
        return self.handle.http_address[1]

    async def wait_lines(self, count: int, seconds: float = 10.0) -> None:
        """Wait until the agent has parsed ``count`` lines (UDP on loopback is asynchronous)."""
        await wait_for(lambda: self.handle.state.ingest.lines >= count, seconds,
                       lambda: f"lines={self.handle.state.ingest.lines}, want {count}")

    async def stop(self) -> int:
        self.handle.request_shutdown()
        with trio.fail_after(20):
            await self.stopped.wait()
        assert self.exit_status is not None
        return self.exit_status


async def start_agent(nursery: trio.Nursery, config: AgentConfig,
                      faults: FaultInjector | None = None) -> RunningAgent:
    faults = faults or FaultInjector()
    box: list[RunningAgent] = []

    async def runner(task_status: trio.TaskStatus[AgentHandle]) -> None:
        status = await run_agent(config, faults=faults, task_status=task_status)
        box[0].exit_status = status
        box[0].stopped.set()

    handle = await nursery.start(runner)
    agent = RunningAgent(handle, config, faults)
    box.append(agent)
    return agent


@pytest.fixture
async def agent(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RunningAgent]:
    running = await start_agent(nursery, make_config(tmp_path / "data"))
    yield running
    if not running.stopped.is_set():
        await running.stop()


async def wait_for(predicate: Callable[[], bool], seconds: float,
                   describe: Callable[[], str] = lambda: "") -> None:
    """Poll ``predicate`` until true; fail with a description after ``seconds``.

    Polling is deliberate: the conditions (datagrams the kernel delivers, counters a thread bumps)
    have no event to wait on; the deadline is what keeps this honest. The deadline is in real
    time: under a test's autojump MockClock, virtual time races ahead while a worker thread (disk
    IO, say) is busy, and a virtual deadline would fail a loaded machine's slow but correct run.
    """
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {seconds} s: {describe()}")
        await trio.sleep(0.01)


def wait_for_blocking(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what}")
        time.sleep(0.02)


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real ``statsyard-agent`` command."""
    return subprocess.run([sys.executable, "-m", "statsyard_agent", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def query(data_dir: Path, pattern: str, *extra: str) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                              list[float]]:
    """Query through the real command (JSON); map (name, tags) -> non-null values in time order."""
    result = cli("query", pattern, "--data-dir", str(data_dir), "--from", "-1h", "--until",
                 "+1h", "--format", "json", *extra)
    assert result.returncode == 0, result.stderr
    series = {}
    for entry in json.loads(result.stdout):
        tags = tuple(sorted((k, v) for k, v in entry["tags"].items() if k != "name"))
        series[(entry["target"], tags)] = [v for v, _ in entry["datapoints"] if v is not None]
    return series


async def query_async(data_dir: Path, pattern: str, *extra: str) -> dict[
        tuple[str, tuple[tuple[str, str], ...]], list[float]]:
    return await trio.to_thread.run_sync(lambda: query(data_dir, pattern, *extra))


@contextlib.contextmanager
def statsd_client(port: int) -> Iterator[statsd.StatsClient]:
    """The real `statsd` PyPI client aimed at the agent, closed afterwards."""
    client = statsd.StatsClient("127.0.0.1", port)
    try:
        yield client
    finally:
        client.close()
