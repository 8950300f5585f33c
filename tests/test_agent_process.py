"""The real `statsyard-agent` process: start-up line, SIGTERM losing nothing, escalation exit code."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import query, statsd_client, wait_for_blocking

READY = re.compile(r"ready udp=(\S+):(\d+) http=(\S+):(\d+)")


class AgentProcess:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "statsyard_agent", "--udp", "127.0.0.1:0", "--http",
             "127.0.0.1:0", "--data-dir", str(data_dir), "--retention", "1s:1d,1m:7d", *args],
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        self.log: list[str] = []
        self._ready = threading.Event()
        self.finished = threading.Event()
        self.udp_port = self.http_port = 0
        threading.Thread(target=self._read_log, daemon=True).start()
        if not self._ready.wait(30):
            self.proc.kill()
            raise AssertionError("agent did not log its ready line:\n" + "".join(self.log))

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:  # closed at EOF, i.e. once the agent exited
            for line in self.proc.stderr:
                self.log.append(line)
                match = READY.search(line)
                if match:
                    self.udp_port, self.http_port = int(match.group(2)), int(match.group(4))
                    self._ready.set()
        self.finished.set()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                    timeout=10) as response:
            text = response.read().decode()
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def wait(self, timeout: float) -> int:
        status = self.proc.wait(timeout)
        self.finished.wait(timeout)  # the whole log has been read
        return status


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.wait(30)


def test_sigterm_flushes_the_open_interval_and_exits_zero(
    tmp_path: Path, processes: list[AgentProcess]
) -> None:
    agent = AgentProcess(tmp_path / "data", "--flush-interval", "3600")
    processes.append(agent)
    with statsd_client(agent.udp_port) as client:
        for _ in range(500):
            client.incr("requests")
        client.gauge("inflight", 9)
    wait_for_blocking(lambda: agent.metric("statsyard_lines_received_total") >= 501, 15,
                      "the agent to receive every line")
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(15) == 0, "".join(agent.log)
    got = query(tmp_path / "data", "stats.counters.requests.count")
    assert sum(got[("stats.counters.requests.count", ())]) == 500
    assert query(tmp_path / "data", "stats.gauges.inflight")[("stats.gauges.inflight", ())] == [9]
    assert any("stopped cleanly" in line for line in agent.log)


def test_sigint_behaves_like_sigterm(tmp_path: Path, processes: list[AgentProcess]) -> None:
    agent = AgentProcess(tmp_path / "data", "--flush-interval", "3600")
    processes.append(agent)
    with statsd_client(agent.udp_port) as client:
        client.incr("once", 4)
    wait_for_blocking(lambda: agent.metric("statsyard_lines_received_total") >= 1, 15, "a line")
    agent.proc.send_signal(signal.SIGINT)
    assert agent.wait(15) == 0
    assert query(tmp_path / "data", "stats.counters.once.count")[
        ("stats.counters.once.count", ())] == [4]


def test_crash_loop_exits_non_zero_after_a_final_flush(
    tmp_path: Path, processes: list[AgentProcess]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[supervisor]\nmax_restarts = 2\nmax_seconds = 60\n")
    agent = AgentProcess(tmp_path / "data", "--config", str(config), "--flush-interval", "1",
                         env={"STATSYARD_INJECT_FAULTS": "writer=always"})
    processes.append(agent)
    with statsd_client(agent.udp_port) as client:
        client.incr("survivor", 11)
    assert agent.wait(60) == 1
    assert any("restart intensity exceeded" in line for line in agent.log)
    got = query(tmp_path / "data", "stats.counters.survivor.count")
    assert sum(got[("stats.counters.survivor.count", ())]) == 11


def test_port_in_use_is_refused_with_the_fix(tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "statsyard_agent", "--udp", f"127.0.0.1:{port}", "--http", "",
             "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert result.returncode == 2
    assert f"udp: cannot bind 127.0.0.1:{port}" in result.stderr
    assert "--udp HOST:PORT" in result.stderr
