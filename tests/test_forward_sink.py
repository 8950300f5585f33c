"""Sinks, transports and the hub: retry rules, backoff, acknowledgement, shutdown, spooling."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import cramjam
import numpy as np
import pytest
import trio
import trio.testing

from statsyard_agent._http import Request, Response, serve_http
from statsyard_agent._types import FlushBatch, Rollup
from statsyard_agent.forward import (
    Backoff,
    BatchSink,
    ForwardHub,
    RejectedError,
    SendError,
    Spool,
    SpoolError,
    parse_sink,
)
from statsyard_agent.forward._encode import GraphiteEncoder
from statsyard_agent.forward._transport import GraphiteTransport, RemoteWriteTransport
from tests import prompb
from tests.conftest import make_config, start_agent, wait_for
from tests.test_agent_faults import http_get_async


def batch(n: int, timestamp: int = 1_700_000_000, prefix: str = "s") -> FlushBatch:
    return FlushBatch(
        timestamp,
        10.0,
        tuple(f"{prefix}{i}" for i in range(n)),
        ((),) * n,
        (Rollup.SUM,) * n,
        np.arange(n, dtype=np.float64),
    )


class FakeTransport:
    """Answers each send from a script: None = success, an exception = raise it."""

    description = "fake"

    def __init__(self, script: list[Exception | None] | None = None, delay: float = 0.0) -> None:
        self.script = list(script or [])
        self.delay = delay
        self.received: list[bytes] = []
        self.attempts = 0

    async def send(self, payload: bytes) -> None:
        self.attempts += 1
        if self.delay:
            await trio.sleep(self.delay)
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.received.append(payload)


def make_sink(tmp_path: Path, transport: FakeTransport, **options: object) -> BatchSink:
    config = parse_sink(
        {
            "url": "graphite://127.0.0.1:1",
            "name": "t",
            "fsync": False,
            "backoff_initial": 0.5,
            "backoff_max": 4,
            **options,
        },
        "forward[0]",
    )
    spool = Spool(tmp_path / "spool", max_bytes=config.spool_max_bytes, fsync=False)
    return BatchSink(
        config,
        spool,
        GraphiteEncoder(max_points=config.max_points_per_send),
        transport,
        clock=lambda: 1_700_000_100.0,
        rng=lambda: 1.0,
    )


def lines(payloads: list[bytes]) -> list[str]:
    return [line for p in payloads for line in p.decode().splitlines()]


@pytest.mark.parametrize(
    ("rng", "delays"),
    [
        (1.0, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]),
        (0.0, [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]),
    ],
)
def test_backoff_doubles_up_to_the_cap(rng: float, delays: list[float]) -> None:
    backoff = Backoff(0.5, 4.0, rng=lambda: rng)
    assert [backoff.next() for _ in delays] == delays
    backoff.reset()
    assert backoff.next() == delays[0]


def retry_delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records if "retrying in" in r.getMessage()
    ]


async def test_retries_with_backoff_until_confirmed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    transport = FakeTransport([SendError("down"), SendError("down"), SendError("down")])
    sink = make_sink(tmp_path, transport)
    sink.spool_batch(1, batch(3))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        await wait_for(lambda: sink.counters.sent_points == 3, 60)
        nursery.cancel_scope.cancel()
    assert retry_delays(caplog) == ["0.50 s", "1.00 s", "2.00 s"]
    assert trio.current_time() - start >= 0.5 + 1.0 + 2.0
    assert transport.attempts == 4
    assert lines(transport.received) == [f"s{i} {i} 1700000000" for i in range(3)]
    counters = sink.counters
    assert (counters.retried_points, counters.send_failures, counters.consecutive_failures) == (9, 3, 0)
    assert sink.spool.pending_points == 0


async def test_retry_after_is_honoured_up_to_the_cap(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    transport = FakeTransport([SendError("429", retry_after=3.0), SendError("429", retry_after=100.0)])
    sink = make_sink(tmp_path, transport)
    sink.spool_batch(1, batch(1))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        await wait_for(lambda: sink.counters.sent_points == 1, 60)
        nursery.cancel_scope.cancel()
    assert retry_delays(caplog) == ["3.00 s", "4.00 s"]
    assert trio.current_time() - start >= 3.0 + 4.0


async def test_rejected_points_are_dropped_and_the_spool_moves_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = FakeTransport([RejectedError("HTTP 400: bad labels")])
    sink = make_sink(tmp_path, transport, max_points_per_send=2)
    sink.spool_batch(1, batch(4))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.run)
        await wait_for(lambda: sink.spool.pending_points == 0, 60)
        nursery.cancel_scope.cancel()
    assert sink.counters.dropped_points["rejected"] == 2
    assert sink.counters.sent_points == 2
    assert lines(transport.received) == ["s2 2 1700000000", "s3 3 1700000000"]
    assert transport.attempts == 2  # a rejection is never retried


async def test_a_send_in_progress_finishes_before_shutdown(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transport = FakeTransport(delay=2.0)
    sink = make_sink(tmp_path, transport)
    sink.spool_batch(1, batch(2))
    with trio.move_on_after(1.0):  # cancelled while the send is in flight
        await sink.run()
    assert sink.counters.sent_points == 2
    assert sink.spool.pending_points == 0  # confirmed and acknowledged: no resend after restart


async def test_spool_batch_is_idempotent_per_batch(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, FakeTransport())
    sink.spool_batch(1, batch(2))
    sink.spool_batch(1, batch(2))
    sink.spool_batch(2, batch(1, timestamp=1_700_000_010))
    assert sink.spool.pending_points == 3


class FlakySpool(Spool):
    """Fails the n-th append once, as a full disk would."""

    fail_at = 2

    def append(self, payload: bytes, points: int, timestamp: int) -> int:
        self.fail_at -= 1
        if self.fail_at == 0:
            raise SpoolError("disk full")
        return super().append(payload, points, timestamp)


async def test_a_partly_spooled_batch_is_completed_not_duplicated(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, FakeTransport(), max_points_per_send=2)
    sink.spool = FlakySpool(tmp_path / "flaky", max_bytes=1 << 20, fsync=False)
    with pytest.raises(SpoolError):
        sink.spool_batch(1, batch(5))
    sink.spool_batch(1, batch(5))
    chunk = sink.spool.read(100)
    assert chunk is not None
    assert lines(list(chunk.payloads)) == [f"s{i} {i} 1700000000" for i in range(5)]


async def test_drain_sends_what_it_can_then_gives_up(tmp_path: Path) -> None:
    transport = FakeTransport([None, SendError("down")])
    sink = make_sink(tmp_path, transport, max_points_per_send=1)
    sink.spool_batch(1, batch(3))
    await sink.drain()
    assert sink.counters.sent_points == 1
    assert sink.spool.pending_points == 2


async def test_lag_and_health(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, FakeTransport(), max_lag=60)
    assert sink.lag_seconds() == 0
    assert sink.problems() == []
    sink.spool_batch(1, batch(1, timestamp=1_700_000_000))  # the clock says 1_700_000_100
    assert sink.lag_seconds() == 100
    (problem,) = sink.problems()
    assert "100 s behind" in problem
    assert "max_lag 60" in problem
    assert sink.health()["pending_points"] == 1


async def test_hub_spools_for_every_sink_and_self_metrics_only_where_asked(tmp_path: Path) -> None:
    plain = make_sink(tmp_path / "a", FakeTransport())
    own = make_sink(tmp_path / "b", FakeTransport(), self_metrics=True)
    hub = ForwardHub([plain, own])
    hub.self_metrics = lambda ts: batch(2, ts, prefix="statsyard_")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run_spooler)
        hub.offer(batch(3))
        await wait_for(lambda: hub.inbox_batches == 0, 10)
        nursery.cancel_scope.cancel()
    assert plain.spool.pending_points == 3
    assert own.spool.pending_points == 5
    hub.close()


async def test_hub_inbox_is_bounded_and_counts_drops(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, FakeTransport())
    hub = ForwardHub([sink], inbox_max=3)
    for i in range(5):
        hub.offer(batch(2, timestamp=1_700_000_000 + i))
    assert hub.inbox_batches == 3
    assert sink.counters.dropped_points["queue_full"] == 4
    await trio.to_thread.run_sync(hub.spool_pending_blocking)
    chunk = sink.spool.read(100)
    assert chunk is not None
    assert chunk.first_timestamp == 1_700_000_002
    hub.close()


# --- transports against real sockets ----------------------------------------------------


@pytest.fixture
async def graphite_server(nursery: trio.Nursery) -> AsyncIterator[tuple[int, list[bytes]]]:
    """A Graphite-style receiver: read to end-of-file, then close."""
    received: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        data = bytearray()
        async for chunk in stream:
            data += chunk
        received.append(bytes(data))
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1], received


async def test_graphite_transport_is_confirmed_by_the_peer_close(
    graphite_server: tuple[int, list[bytes]],
) -> None:
    port, received = graphite_server
    payload = b"".join(f"a.b{i} {i} 1700000000\n".encode() for i in range(20000))
    await GraphiteTransport("127.0.0.1", port, timeout=10).send(payload)
    assert received == [payload]


async def test_graphite_transport_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SendError, match="refused"):
        await GraphiteTransport("127.0.0.1", port, timeout=5).send(b"x 1 1\n")


async def test_graphite_transport_times_out_when_the_peer_never_closes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def hold(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(SendError, match="timed out"):
        await GraphiteTransport("127.0.0.1", port, timeout=3).send(b"x 1 1\n")
    nursery.cancel_scope.cancel()


Answer = Callable[[Request], Awaitable[Response]]


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[Request], list[Response]]]:
    """An HTTP receiver answering with the queued responses (200 when none are left; the
    204 VictoriaMetrics answers is covered by test_forward_vm.py)."""
    requests: list[Request] = []
    answers: list[Response] = []

    async def handler(request: Request) -> Response:
        requests.append(request)
        return answers.pop(0) if answers else Response(200, b"")

    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    async with trio.open_nursery() as server:
        server.start_soon(serve_http, sock, handler)
        yield sock.getsockname()[1], requests, answers
        server.cancel_scope.cancel()
    sock.close()


async def test_remote_write_request(
    http_server: tuple[int, list[Request], list[Response]],
) -> None:
    port, requests, _ = http_server
    transport = RemoteWriteTransport(
        "127.0.0.1", port, "/api/v1/write?x=1", timeout=5, headers=[("X-Scope-OrgID", "team-a")]
    )
    from statsyard_agent.forward._encode import RemoteWriteEncoder

    records = RemoteWriteEncoder().encode(batch(3)).records
    await transport.send(b"".join(r.payload for r in records))
    (request,) = requests
    assert request.method == "POST"
    assert request.path == "/api/v1/write"
    assert request.query == {"x": ["1"]}
    headers = request.headers
    assert headers["content-encoding"] == "snappy"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-prometheus-remote-write-version"] == "0.1.0"
    assert headers["user-agent"].startswith("statsyard-agent/")
    assert headers["x-scope-orgid"] == "team-a"
    body = bytes(cramjam.snappy.decompress_raw(request.body))
    assert [(dict(labels)["__name__"], samples) for labels, samples in prompb.decode(body)] == [
        (f"s{i}", [(float(i), 1_700_000_000_000)]) for i in range(3)
    ]


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (200, (), None, None),
        (202, (), None, None),
        (500, (), SendError, None),
        (503, (("Retry-After", "7"),), SendError, 7.0),
        (429, (("Retry-After", "2.5"),), SendError, 2.5),
        (429, (("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"),), SendError, None),
        (400, (), RejectedError, None),
        (401, (), RejectedError, None),
        (404, (), RejectedError, None),
        (413, (), RejectedError, None),
    ],
)
async def test_remote_write_status_rules(
    http_server: tuple[int, list[Request], list[Response]],
    status: int,
    headers: tuple[tuple[str, str], ...],
    error: type[Exception] | None,
    retry_after: float | None,
) -> None:
    port, _, answers = http_server
    answers.append(Response(status, b"out of order sample\n", headers=headers))
    transport = RemoteWriteTransport("127.0.0.1", port, "/api/v1/write", timeout=5)
    if error is None:
        await transport.send(b"")
        return
    with pytest.raises(error, match=f"HTTP {status}: out of order sample") as info:
        await transport.send(b"")
    assert getattr(info.value, "retry_after", None) == retry_after


async def test_remote_write_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SendError, match="refused"):
        await RemoteWriteTransport("127.0.0.1", port, "/", timeout=5).send(b"")


# --- wired into a running agent -----------------------------------------------------------


async def test_agent_forwards_and_reports_per_sink(
    nursery: trio.Nursery, tmp_path: Path, graphite_server: tuple[int, list[bytes]]
) -> None:
    port, received = graphite_server
    config = make_config(
        tmp_path / "data",
        forward=[
            {
                "url": f"graphite://127.0.0.1:{port}",
                "name": "carbon",
                "fsync": False,
                "tags": ["instance:web-01"],
                "self_metrics": True,
            }
        ],
    )
    agent = await start_agent(nursery, config)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"deploys:3|c|#env:prod", ("127.0.0.1", agent.udp_port))
    await agent.wait_lines(1)
    await agent.handle.flush(now=1_700_000_000.5)
    hub = agent.handle.state.forward
    assert hub is not None
    await wait_for(
        lambda: hub.sinks[0].spool.pending_points == 0 and hub.sinks[0].counters.sent_points > 0, 10
    )
    text = b"".join(received).decode()
    assert "stats.counters.deploys.count;env=prod;instance=web-01 3 1700000001\n" in text
    assert "statsyard_udp_packets_received_total;instance=web-01 1 1700000001\n" in text

    status, body = await http_get_async(agent.http_port, "/metrics")
    metrics = body.decode()
    sent = hub.sinks[0].counters.sent_points
    for line in [
        f'statsyard_forward_points_sent_total{{sink="carbon"}} {sent:.1f}',
        'statsyard_forward_points_retried_total{sink="carbon"} 0.0',
        'statsyard_forward_points_dropped_total{reason="spool_full",sink="carbon"} 0.0',
        'statsyard_forward_spool_points{sink="carbon"} 0.0',
        'statsyard_forward_oldest_unsent_seconds{sink="carbon"} 0.0',
        'statsyard_forward_spool_bytes{sink="carbon"}',
        'statsyard_task_up{task="forward-carbon"} 1.0',
        'statsyard_task_up{task="forward"} 1.0',
    ]:
        assert line in metrics, line
    status, body = await http_get_async(agent.http_port, "/healthz")
    health = json.loads(body)
    assert status == 200
    assert health["forward"]["sinks"]["carbon"]["sent_points"] == sent
    assert await agent.stop() == 0
    assert (tmp_path / "data" / "forward" / "carbon").is_dir()


async def test_a_sink_task_crash_is_restarted_without_losing_points(
    nursery: trio.Nursery, tmp_path: Path, graphite_server: tuple[int, list[bytes]]
) -> None:
    port, received = graphite_server
    agent = await start_agent(
        nursery,
        make_config(
            tmp_path / "data",
            forward=[{"url": f"graphite://127.0.0.1:{port}", "name": "carbon", "fsync": False}],
        ),
    )
    hub = agent.handle.state.forward
    assert hub is not None
    sink = hub.sinks[0]
    original = sink.transport

    class Crashing:
        description = "crashing"

        async def send(self, payload: bytes) -> None:
            sink.transport = original
            raise RuntimeError("bug in a sink")

    sink.transport = Crashing()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"x:1|c", ("127.0.0.1", agent.udp_port))
    await agent.wait_lines(1)
    await agent.handle.flush(now=1_700_000_000.5)
    await wait_for(lambda: sink.counters.sent_points > 0 and sink.spool.pending_points == 0, 10)
    assert agent.handle.supervisor.children["forward-carbon"].restarts == 1
    assert "stats.counters.x.count 1 1700000001\n" in b"".join(received).decode()
    assert await agent.stop() == 0


def test_a_spool_keeps_its_wire_format(tmp_path: Path) -> None:
    from statsyard_agent.forward._hub import open_sink

    graphite = open_sink(parse_sink({"url": "graphite://h:1", "name": "up"}, "f"), tmp_path)
    graphite.spool.close()
    with pytest.raises(SpoolError, match="holds graphite data but sink 'up' is now remote_write"):
        open_sink(parse_sink({"url": "remote-write+http://h:1", "name": "up"}, "f"), tmp_path)
