"""Remote write into a real Prometheus (Debian's ``prometheus``, remote-write receiver on).

Prometheus is stricter than VictoriaMetrics: it refuses a whole request (HTTP 400, nothing of it
stored) when one sample is older than the newest it holds for that series. After a crash between a
confirmed send and the cursor write the agent resends; these tests show that this costs nothing:
the resent flushes are refused (Prometheus already has them) and every newer flush still lands.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from statsyard_agent.forward._spool import CURSOR_FILE
from tests.conftest import make_config, start_agent, wait_for_blocking
from tests.test_forward_vm import Clock, Recorder, Series, _free_port, delivered, send

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus is not installed (tests/run-all.sh installs the Debian package)"
)


class Prometheus:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "prometheus.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert PROMETHEUS is not None
        config = self.directory / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1h\n")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.directory}/tsdb",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--web.enable-remote-write-receiver",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_blocking(self._ready, 60, f"Prometheus ready (log: {self.log})")

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"Prometheus exited: {self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None

    def samples(self, selector: str) -> dict[Series, list[tuple[int, float]]]:
        """Every raw sample of the last hour matching ``selector`` (a range-vector query)."""
        # Evaluated a minute ahead: the shutdown flush is stamped with the next whole second.
        query = urllib.parse.urlencode({"query": f"{selector}[1h]", "time": time.time() + 60})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=30) as response:
            result = json.loads(response.read())["data"]["result"]
        out: dict[Series, list[tuple[int, float]]] = defaultdict(list)
        for item in result:
            labels = dict(item["metric"])
            name = labels.pop("__name__")
            out[(name, tuple(sorted(labels.items())))] = [
                (round(float(t) * 1000), float(v)) for t, v in item["values"]
            ]
        return dict(out)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path / "prometheus")
    server.directory.mkdir()
    server.start()
    yield server
    server.stop()


def _config(data: Path, prometheus: Prometheus) -> object:
    return make_config(
        data,
        forward=[
            {
                "url": f"remote-write+http://127.0.0.1:{prometheus.port}/api/v1/write",
                "name": "prom",
                "fsync": False,
                "backoff_initial": 0.05,
                "backoff_max": 0.3,
            }
        ],
    )


def _check(prometheus: Prometheus, recorder: Recorder) -> int:
    expected = recorder.expected(rename=True)
    got = prometheus.samples('{__name__=~"stats_.*"}')
    assert sorted(got) == sorted(expected)
    total = 0
    for series, points in expected.items():
        assert [t for t, _ in got[series]] == [t for t, _ in points], (series, got[series], points)
        for (_, want), (_, have) in zip(points, got[series], strict=True):
            assert math.isclose(have, want, rel_tol=1e-12), series
        total += len(points)
    return total


async def test_remote_write_into_prometheus_and_a_resend_after_a_lost_ack(
    nursery: trio.Nursery, tmp_path: Path, prometheus: Prometheus
) -> None:
    recorder = Recorder()
    clock = Clock()
    data = tmp_path / "data"
    agent = await start_agent(nursery, _config(data, prometheus))
    recorder.attach(agent)
    for round_ in range(4):
        await send(agent, round_)
        await agent.handle.flush(now=clock.tick())
    await delivered(agent)
    assert await agent.stop() == 0
    first = await trio.to_thread.run_sync(_check, prometheus, recorder)

    # As if the agent had died after Prometheus confirmed everything but before the cursor was
    # written: without a cursor the spool is sent again from its oldest record. And Prometheus is
    # down meanwhile, so new flushes queue up behind the resent ones.
    (data / "forward" / "prom" / CURSOR_FILE).unlink()
    await trio.to_thread.run_sync(prometheus.stop)
    agent = await start_agent(nursery, _config(data, prometheus))
    recorder.attach(agent)
    hub = agent.handle.state.forward
    assert hub is not None
    sink = hub.sinks[0]
    resent = sink.spool.pending_points
    assert resent > 0
    # Prometheus refuses samples older than the newest it holds: stamp these after the first
    # run's shutdown flush, and let the wall clock pass them before this run's shutdown flush.
    clock.now = math.ceil(time.time())
    for round_ in range(4, 6):
        await send(agent, round_)
        await agent.handle.flush(now=clock.tick())
    await trio.to_thread.run_sync(prometheus.start)
    await delivered(agent)
    await trio.sleep(max(0.0, clock.now - time.time() + 0.05))
    # The resent flushes older than Prometheus' newest were refused (it had them already); the
    # newest resent one was taken as identical, and nothing new was refused with them.
    assert 0 < sink.counters.dropped_points["rejected"] <= resent
    assert await agent.stop() == 0
    total = await trio.to_thread.run_sync(_check, prometheus, recorder)
    assert total > first
