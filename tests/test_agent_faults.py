"""Supervision for real: crash the listener, the writer, exceed the intensity limit, fail the disk.
Every test checks that data received before and after the fault is all on disk."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import trio

from statsyard_agent._faults import FaultInjector
from statsyard_agent._flush import flush_once

from .conftest import RunningAgent, make_config, query_async, start_agent, statsd_client, wait_for


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def http_get_async(port: int, path: str) -> tuple[int, bytes]:
    return await trio.to_thread.run_sync(http_get, port, path)


def send_counts(port: int, name: str, times: int) -> None:
    with statsd_client(port) as client:
        for _ in range(times):
            client.incr(name)


async def total(agent: RunningAgent, name: str) -> float:
    got = await query_async(agent.config.data_dir, f"stats.counters.{name}.count")
    return sum(got.get((f"stats.counters.{name}.count", ()), []))


async def test_listener_crash_loses_no_counts(nursery: trio.Nursery, tmp_path: Path) -> None:
    faults = FaultInjector()
    agent = await start_agent(nursery, make_config(tmp_path / "data"), faults)
    faults.arm("listener", 1)  # crashes right after handling its next burst of datagrams
    send_counts(agent.udp_port, "before", 200)
    await wait_for(lambda: agent.handle.supervisor.children["listener"].restarts == 1, 10)
    send_counts(agent.udp_port, "after", 300)
    await agent.wait_lines(500)
    with trio.fail_after(15):
        await agent.handle.flush()
    assert await total(agent, "before") == 200
    assert await total(agent, "after") == 300
    status, body = await http_get_async(agent.http_port, "/metrics")
    assert status == 200
    assert b'statsyard_task_restarts_total{task="listener"} 1.0' in body


async def test_writer_crash_loses_no_flushed_batch(nursery: trio.Nursery, tmp_path: Path) -> None:
    faults = FaultInjector()
    agent = await start_agent(nursery, make_config(tmp_path / "data"), faults)
    send_counts(agent.udp_port, "first", 50)
    await agent.wait_lines(50)
    faults.arm("writer", 2)  # the next two write attempts crash the writer task
    with trio.fail_after(15):
        await agent.handle.flush()  # returns once the restarted writer wrote the batch
    send_counts(agent.udp_port, "second", 70)
    await agent.wait_lines(120)
    with trio.fail_after(15):
        await agent.handle.flush()
    assert agent.handle.supervisor.children["writer"].restarts == 2
    assert await total(agent, "first") == 50
    assert await total(agent, "second") == 70
    assert agent.handle.state.queue.dropped_batches == 0


async def test_intensity_limit_escalates_with_a_final_flush(nursery: trio.Nursery,
                                                            tmp_path: Path) -> None:
    faults = FaultInjector()
    config = make_config(tmp_path / "data", supervisor={"max_restarts": 2, "max_seconds": 60})
    agent = await start_agent(nursery, config, faults)
    send_counts(agent.udp_port, "kept", 40)
    await agent.wait_lines(40)
    faults.arm("writer", -1)  # crash-loop: every attempt crashes
    await flush_once(agent.handle.state, agent.handle.telemetry)
    with trio.fail_after(30):
        await agent.stopped.wait()  # the supervisor gave up and shut the agent down
    assert agent.exit_status == 1
    assert agent.handle.supervisor.escalation is not None
    assert "writer" in agent.handle.supervisor.escalation
    # The final flush wrote everything, including the batch the writer never managed to write.
    assert await total(agent, "kept") == 40


async def test_disk_failure_buffers_reports_503_and_recovers(nursery: trio.Nursery,
                                                             tmp_path: Path) -> None:
    faults = FaultInjector()
    agent = await start_agent(nursery, make_config(tmp_path / "data"), faults)
    status, _ = await http_get_async(agent.http_port, "/healthz")
    assert status == 200
    faults.arm("disk", -1)
    for round_ in range(3):
        send_counts(agent.udp_port, "buffered", 10)
        await agent.wait_lines(10 * (round_ + 1))
        # Flush without waiting for the write (handle.flush would wait for the disk to recover).
        await flush_once(agent.handle.state, agent.handle.telemetry)
    await wait_for(lambda: agent.handle.state.writer.write_errors >= 2, 10)
    status, body = await http_get_async(agent.http_port, "/healthz")
    assert status == 503
    health = json.loads(body)
    assert health["status"] == "degraded"
    assert health["writer"]["queue_batches"] == 3
    assert "injected disk failure" in health["writer"]["last_error"]
    status, metrics = await http_get_async(agent.http_port, "/metrics")
    assert b"statsyard_writer_queue_batches 3.0" in metrics
    assert b"statsyard_write_errors_total" in metrics

    faults.disarm("disk")  # space is back
    await wait_for(lambda: len(agent.handle.state.queue) == 0, 20)
    status, _ = await http_get_async(agent.http_port, "/healthz")
    assert status == 200
    assert await total(agent, "buffered") == 30
