"""The HTTP surface of a running agent: /metrics names, /healthz, errors, loopback binding."""

from __future__ import annotations

import json
import socket

import trio

from .conftest import RunningAgent
from .test_agent_faults import http_get_async

REQUIRED_METRICS = [
    "statsyard_udp_packets_received_total",
    "statsyard_lines_received_total",
    "statsyard_parse_errors_total",
    "statsyard_flushes_total",
    "statsyard_flush_duration_seconds",
    "statsyard_series_active",
    "statsyard_points_written_total",
    "statsyard_write_errors_total",
    "statsyard_writer_queue_batches",
    "statsyard_task_restarts_total",
    "statsyard_build_info",
    "statsyard_udp_kernel_drops_total",
    "statsyard_udp_rcvbuf_bytes",
    "statsyard_series_rejected_total",
]


async def test_metrics_exposes_every_documented_family(agent: RunningAgent) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"a:1|c\nbad line\nb:2|ms", ("127.0.0.1", agent.udp_port))
    await agent.wait_lines(3)
    await agent.handle.flush()
    status, body = await http_get_async(agent.http_port, "/metrics")
    assert status == 200
    text = body.decode()
    for name in REQUIRED_METRICS:
        assert f"\n{name}" in text or text.startswith(name), name
    assert "statsyard_udp_packets_received_total 1.0" in text
    assert "statsyard_lines_received_total 3.0" in text
    assert 'statsyard_parse_errors_total{reason="malformed_line"} 1.0' in text
    assert 'statsyard_task_up{task="listener"} 1.0' in text
    assert 'statsyard_udp_rcvbuf_bytes{kind="requested"} 8.388608e+06' in text


async def test_healthz_reports_each_task(agent: RunningAgent) -> None:
    status, body = await http_get_async(agent.http_port, "/healthz")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok"
    assert set(health["tasks"]) == {"listener", "flusher", "writer", "http"}
    assert all(task["state"] == "running" for task in health["tasks"].values())


async def test_unknown_path_and_method(agent: RunningAgent) -> None:
    status, _ = await http_get_async(agent.http_port, "/nope")
    assert status == 404
    stream = await trio.open_tcp_stream("127.0.0.1", agent.http_port)
    async with stream:
        await stream.send_all(b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await stream.receive_some(4096)
    assert reply.startswith(b"HTTP/1.1 405")


async def test_garbage_request_gets_400_and_server_lives(agent: RunningAgent) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", agent.http_port)
    async with stream:
        await stream.send_all(b"\x00\x01 not http at all\r\n\r\n")
        reply = await stream.receive_some(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    status, _ = await http_get_async(agent.http_port, "/healthz")
    assert status == 200


async def test_listeners_bind_loopback_by_default() -> None:
    from statsyard_agent._config import build_config

    config = build_config({})
    assert config.udp is not None
    assert config.udp.host == "127.0.0.1"
    assert config.http is not None
    assert config.http.host == "127.0.0.1"


async def test_head_gets_the_headers_without_a_body(agent: RunningAgent) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", agent.http_port)
    async with stream:
        await stream.send_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length:" in head.lower()
    assert body == b""
