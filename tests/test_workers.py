"""Ingest worker processes: real SO_REUSEPORT sockets, real processes, really killed."""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import trio
from prometheus_client import generate_latest

from statsyard_agent import _workers
from statsyard_agent._config import Address, build_config
from statsyard_agent._exceptions import ConfigError
from statsyard_agent._ingest import EVICT_AFTER_TAKES
from statsyard_agent._protocol import ParserConfig
from statsyard_agent._receiver import (
    LIVE_FIELDS,
    PENDING_BITS,
    RECEIVE_OFFSET,
    SHARED_BYTES,
    Receiver,
    received_counts,
)
from statsyard_agent._workers import (
    evict_after_ships,
    open_ingest_sockets,
    ship_delay,
    worker_count,
    worth_recycling,
)
from statsyard_agent.storage import Reader

from .conftest import RunningAgent, make_config, start_agent, wait_for


@pytest.fixture
def clients() -> Iterator[Callable[[int], list[socket.socket]]]:
    """Makes UDP client sockets with distinct source ports (the kernel hashes those to workers)."""
    made: list[socket.socket] = []

    def make(count: int) -> list[socket.socket]:
        socks = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            made.append(sock)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return socks

    yield make
    for sock in made:
        sock.close()


Clients = Callable[[int], list[socket.socket]]


def received(agent: RunningAgent) -> list[list[int]]:
    workers = agent.handle.workers
    assert workers is not None
    return [slot.received() for slot in workers.slots]


def running_pids(agent: RunningAgent) -> list[int | None]:
    workers = agent.handle.workers
    assert workers is not None
    return workers.pids()


async def started(agent: RunningAgent) -> None:
    await wait_for(lambda: None not in running_pids(agent), 60, lambda: f"pids {running_pids(agent)}")


def total(data_dir: Path, pattern: str) -> float:
    """Sum of every point of the series matching ``pattern`` written in the last hour."""
    now = int(time.time())
    reader = Reader(data_dir)
    try:
        found = reader.query(pattern, now - 3600, now + 3600)
    finally:
        reader.close()
    return float(sum(float(np.nansum(series.values)) for series in found))


async def counter_total(data_dir: Path, name: str) -> float:
    return await trio.to_thread.run_sync(total, data_dir, f"stats.counters.{name}.count")


async def test_workers_share_the_port_and_lose_nothing(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    agent = await start_agent(nursery, make_config(tmp_path / "data", ingest={"workers": 2}))
    await started(agent)
    senders = clients(32)
    for round_ in range(20):
        for i, sock in enumerate(senders):
            sock.sendto(
                b"w.hits:1|c|#client:%d\nw.lat:%d|ms\nw.g:%d|g" % (i, round_, i),
                ("127.0.0.1", agent.udp_port),
            )
    sent = 20 * len(senders)
    await wait_for(lambda: sum(r[0] for r in received(agent)) == sent, 30, lambda: str(received(agent)))
    per_worker = [r[0] for r in received(agent)]
    assert all(per_worker), per_worker  # 32 source ports: both workers got traffic
    with trio.fail_after(30):
        await agent.handle.flush()
    ingest = agent.handle.state.ingest
    assert (ingest.packets, ingest.lines, ingest.metrics) == (sent, 3 * sent, 3 * sent)
    assert await counter_total(tmp_path / "data", "w.hits") == sent
    assert await trio.to_thread.run_sync(total, tmp_path / "data", "stats.timers.w.lat.count") == sent
    metrics = generate_latest(agent.handle.telemetry.registry).decode()
    assert "statsyard_ingest_worker_lost_datagrams_total 0.0" in metrics
    assert 'statsyard_task_up{task="ingest_worker_1"} 1.0' in metrics
    assert await agent.stop() == 0


async def test_a_killed_worker_is_restarted_and_its_unshipped_data_is_counted(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    config = make_config(tmp_path / "data", ingest={"workers": 2, "ship_interval": 3600})
    agent = await start_agent(nursery, config)
    await started(agent)
    (client,) = clients(1)  # one source port: one worker gets everything
    for _ in range(50):
        client.sendto(b"k.before:1|c\nk.before:1|c", ("127.0.0.1", agent.udp_port))
    await wait_for(lambda: sum(r[0] for r in received(agent)) == 50, 30, lambda: str(received(agent)))
    victim = next(i for i, r in enumerate(received(agent)) if r[0])
    old_pid = running_pids(agent)[victim]
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    for _ in range(30):  # sent while the worker is dead or restarting: they wait in the kernel
        client.sendto(b"k.after:1|c", ("127.0.0.1", agent.udp_port))
    child = agent.handle.supervisor.children[f"ingest_worker_{victim}"]
    await wait_for(
        lambda: child.restarts == 1 and running_pids(agent)[victim] not in (None, old_pid),
        60,
        lambda: f"restarts={child.restarts} pids={running_pids(agent)}",
    )
    ingest = agent.handle.state.ingest
    assert (ingest.worker_lost_datagrams, ingest.worker_lost_lines) == (50, 100)
    with trio.fail_after(30):
        await agent.handle.flush()
    assert await counter_total(tmp_path / "data", "k.after") == 30
    assert await counter_total(tmp_path / "data", "k.before") == 0  # lost, and counted above
    metrics = generate_latest(agent.handle.telemetry.registry).decode()
    assert "statsyard_ingest_worker_lost_datagrams_total 50.0" in metrics
    assert "statsyard_ingest_worker_lost_lines_total 100.0" in metrics
    assert f'statsyard_task_restarts_total{{task="ingest_worker_{victim}"}} 1.0' in metrics
    assert await agent.stop() == 0


def exported(agent: RunningAgent, name: str) -> float:
    """One unlabelled sample of the agent's ``/metrics`` registry."""
    for line in generate_latest(agent.handle.telemetry.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def check_every_datagram_accounted(
    agent: RunningAgent, data_dir: Path, name: str, sent: int, lines: int
) -> None:
    """After an overflow: every datagram was received or counted as dropped by the kernel (some
    of each), and the counter ``name`` on disk holds ``lines`` per received datagram."""

    def accounted() -> float:
        return agent.handle.state.ingest.packets + exported(agent, "statsyard_udp_kernel_drops_total")

    # Workers ship every second: wait until every datagram is either shipped or counted as dropped.
    await wait_for(lambda: accounted() >= sent, 30, lambda: f"accounted {accounted()} of {sent}")
    dropped = exported(agent, "statsyard_udp_kernel_drops_total")
    assert 0 < dropped < sent  # the buffer overflowed, and it held some
    assert agent.handle.state.ingest.packets + dropped == sent
    with trio.fail_after(30):
        await agent.handle.flush()
    assert await counter_total(data_dir, name) == lines * (sent - dropped)


async def test_an_overflowing_socket_buffer_is_counted_datagram_for_datagram(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    """No silent drops: with both workers stopped, a small receive buffer overflows; every
    datagram the kernel dropped is in statsyard_udp_kernel_drops_total and every other one is on
    disk, so sent == received + dropped exactly, and the stored counter says the same."""
    config = make_config(tmp_path / "data", udp_rcvbuf=16384, ingest={"workers": 2})
    agent = await start_agent(nursery, config)
    await started(agent)
    assert exported(agent, "statsyard_udp_kernel_drops_total") == 0
    pids = [pid for pid in running_pids(agent) if pid is not None]
    (client,) = clients(1)
    payload = b"\n".join([b"k.flood:1|c"] * 50)  # 50 lines, 599 bytes
    sent = 400
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(sent):
            client.sendto(payload, ("127.0.0.1", agent.udp_port))
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    await check_every_datagram_accounted(agent, tmp_path / "data", "k.flood", sent, 50)


async def test_the_event_loop_listener_counts_kernel_drops_too(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    """``workers = 0``: the event loop is blocked (on purpose, by joining a sending thread in it)
    while a small buffer overflows; again sent == received + dropped, and the rest is on disk."""
    config = make_config(tmp_path / "data", udp_rcvbuf=16384)
    agent = await start_agent(nursery, config)
    (client,) = clients(1)
    payload = b"\n".join([b"k.blocked:1|c"] * 50)
    sent = 400

    def burst() -> None:
        for _ in range(sent):
            client.sendto(payload, ("127.0.0.1", agent.udp_port))

    sender = threading.Thread(target=burst)
    sender.start()
    sender.join()  # blocks the event loop: nothing reads the socket meanwhile
    await check_every_datagram_accounted(agent, tmp_path / "data", "k.blocked", sent, 50)


async def test_a_worker_that_stops_answering_is_killed_and_replaced(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    config = make_config(tmp_path / "data", ingest={"workers": 1, "ship_interval": 3600, "ship_timeout": 0.5})
    agent = await start_agent(nursery, config)
    await started(agent)
    (pid,) = running_pids(agent)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    with trio.fail_after(30):
        await agent.handle.flush()  # does not wait for the stopped worker beyond ship_timeout
    child = agent.handle.supervisor.children["ingest_worker_0"]
    await wait_for(
        lambda: child.restarts == 1 and running_pids(agent)[0] not in (None, pid),
        60,
        lambda: f"restarts={child.restarts} pids={running_pids(agent)}",
    )
    (client,) = clients(1)
    client.sendto(b"after.stop:1|c", ("127.0.0.1", agent.udp_port))
    await wait_for(lambda: received(agent)[0][0] == 1, 30, lambda: str(received(agent)))
    with trio.fail_after(30):
        await agent.handle.flush()
    assert await counter_total(tmp_path / "data", "after.stop") == 1
    assert await agent.stop() == 0


async def test_shutdown_collects_what_the_workers_hold(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients
) -> None:
    config = make_config(tmp_path / "data", ingest={"workers": 2, "ship_interval": 3600})
    agent = await start_agent(nursery, config)
    await started(agent)
    senders = clients(16)
    for sock in senders:
        for _ in range(10):
            sock.sendto(b"bye:1|c\nbye:1|c", ("127.0.0.1", agent.udp_port))
    await wait_for(lambda: sum(r[0] for r in received(agent)) == 160, 30, lambda: str(received(agent)))
    assert agent.handle.state.ingest.lines == 0  # nothing shipped yet
    assert await agent.stop() == 0
    assert agent.handle.state.ingest.worker_lost_datagrams == 0
    assert await counter_total(tmp_path / "data", "bye") == 320


def test_receiver_counts_before_it_parses_and_ships_what_it_aggregated() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    shared = mmap.mmap(-1, SHARED_BYTES)
    receiver = Receiver(server, ParserConfig(), 100, shared)
    for datagram in (b"a:1|c\na:2|c\n", b"bad line", b"t:5|ms|@0.5"):
        client.sendto(datagram, server.getsockname())
    got = 0
    while got < 3:  # loopback delivery is asynchronous
        got += receiver.drain()
    # datagrams, bytes, lines (a trailing \n is not a line)
    assert received_counts(shared) == [3, 12 + 8 + 11, 4]
    report, shipment = pickle.loads(receiver.ship())
    assert report["packets"] == 3
    assert report["raw_lines"] == 4
    assert (report["lines"], report["metrics"]) == (4, 3)
    assert report["parse_errors"] == {"malformed_line": 1}
    keys: dict[int, object] = dict(shipment.new_keys)  # what the agent keeps per worker
    partial = shipment.partial(keys.__getitem__)
    assert partial.counters == {("a", ()): 3.0}
    assert list(partial.sample_lists().values()) == [[5.0]]
    client.sendto(b"a:4|c", server.getsockname())
    while not receiver.drain():
        pass
    report, shipment = pickle.loads(receiver.ship())  # the next ship starts from zero
    assert shipment.new_keys == {}  # a: its key went over once
    assert shipment.partial(keys.__getitem__).counters == {("a", ()): 4.0}
    report, shipment = pickle.loads(receiver.ship())
    assert (report["packets"], report["lines"], len(shipment.partial(keys.__getitem__))) == (0, 0, 0)
    receiver.release()
    shared.close()
    server.close()
    client.close()


def test_lines_read_but_not_scanned_are_counted_from_the_shared_buffer() -> None:
    # What the agent finds after a worker was killed between reading a batch and scanning it:
    # 5 lines of earlier batches, and two datagrams in the buffer (a newline added after each).
    shared = mmap.mmap(-1, SHARED_BYTES)
    pending = b"a:1|c\n\nb:2|c\n" + b"x\ny\n"
    shared[RECEIVE_OFFSET : RECEIVE_OFFSET + len(pending) + 3] = pending + b"\n\n\n"  # stale after
    shared[: 8 * LIVE_FIELDS] = struct.pack("<3q", 7, 100, 5 << PENDING_BITS | len(pending))
    assert received_counts(shared) == [7, 100, 5 + 5]
    shared.close()


def test_a_second_set_of_sockets_on_the_port_is_refused() -> None:
    socks, granted = open_ingest_sockets(Address("127.0.0.1", 0), 1 << 20, 3)
    try:
        assert granted > 0
        port = socks[0].getsockname()[1]
        assert {s.getsockname()[1] for s in socks} == {port}
        with pytest.raises(OSError, match="share port"):
            open_ingest_sockets(Address("127.0.0.1", port), 1 << 20, 2)
    finally:
        for sock in socks:
            sock.close()
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    plain.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError, match="in use"):
            open_ingest_sockets(Address("127.0.0.1", plain.getsockname()[1]), 1 << 20, 2)
    finally:
        plain.close()


@pytest.mark.parametrize(
    ("ingest", "key"),
    [
        ({"workers": -1}, "ingest.workers"),
        ({"workers": 1.5}, "ingest.workers"),
        ({"workers": 65}, "ingest.workers"),
        ({"ship_interval": 0}, "ingest.ship_interval"),
        ({"ship_timeout": "x"}, "ingest.ship_timeout"),
        ({"threads": 2}, "ingest.threads"),
    ],
)
def test_bad_ingest_settings_name_the_key(ingest: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"ingest": ingest})
    assert info.value.key == key


def test_worker_count_defaults_and_yields_to_the_relay() -> None:
    assert build_config({}).ingest.workers == 2
    assert worker_count(build_config({})) == 2
    assert worker_count(build_config({"udp": ""})) == 0
    assert worker_count(build_config({"forward": [{"url": "statsd://127.0.0.1:9125"}]})) == 0
    assert worker_count(build_config({"forward": [{"url": "graphite://127.0.0.1:2003"}]})) == 2


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (100.0, 1.0),  # a boundary at 110: the lead (109.75) is further than a ship interval
        (108.5, 1.0),  # 109.5: still before the lead
        (108.9, 0.85),  # the next ship is moved to 109.75
        (109.75, 1.0),  # exactly at the lead: that ship is this one; the next one a full interval on
        (109.9, 1.0),  # between the lead and the flush: the flush collects, then a full interval
    ],
)
def test_a_periodic_ship_falls_just_before_each_flush(now: float, expected: float) -> None:
    assert ship_delay(now, ship_interval=1.0, flush_interval=10.0) == pytest.approx(expected)
    # A short ship interval keeps its lead within a quarter of it.
    assert ship_delay(109.0, ship_interval=0.2, flush_interval=10.0) == pytest.approx(0.2)
    assert ship_delay(109.85, ship_interval=0.2, flush_interval=10.0) == pytest.approx(0.1)


def test_workers_keep_a_series_bound_for_three_flush_intervals() -> None:
    assert evict_after_ships(flush_interval=10.0, ship_interval=1.0) == 30
    assert evict_after_ships(flush_interval=10.0, ship_interval=0.3) == 100
    assert evict_after_ships(flush_interval=1.0, ship_interval=1.0) == EVICT_AFTER_TAKES


@pytest.mark.parametrize(
    ("slots", "peak", "packets", "seconds", "expected"),
    [
        pytest.param(2_000, 100_000, 0, 1.0, True, id="quiet-and-mostly-forgotten"),
        pytest.param(25_000, 100_000, 500, 1.0, True, id="a-quarter-held-at-the-quiet-limit"),
        pytest.param(25_001, 100_000, 0, 1.0, False, id="holds-more-than-a-quarter"),
        pytest.param(2_000, 100_000, 501, 1.0, False, id="busy"),
        pytest.param(2_000, 100_000, 900, 2.0, True, id="quiet-over-a-longer-ship"),
        pytest.param(0, 9_999, 0, 1.0, False, id="never-held-many"),
    ],
)
def test_only_a_quiet_worker_that_forgot_most_of_its_series_is_recycled(
    slots: int, peak: int, packets: int, seconds: float, expected: bool
) -> None:
    report = {"slots": slots, "peak_slots": peak, "packets": packets}
    assert worth_recycling(report, seconds) is expected


async def test_a_quiet_worker_that_forgot_its_series_is_replaced_and_nothing_is_lost(
    nursery: trio.Nursery, tmp_path: Path, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_workers, "RECYCLE_MIN_PEAK_SLOTS", 300)
    # A series idle for 3 flush intervals (3 s, 60 ships) is forgotten; then the worker is quiet.
    config = make_config(tmp_path / "data", flush_interval=1, ingest={"workers": 1, "ship_interval": 0.05})
    agent = await start_agent(nursery, config)
    await started(agent)
    (first_pid,) = running_pids(agent)
    (client,) = clients(1)
    for batch in range(20):
        lines = b"\n".join(b"burst.s%d:2|c" % (20 * batch + i) for i in range(20))
        client.sendto(lines, ("127.0.0.1", agent.udp_port))
    ingest = agent.handle.state.ingest
    await wait_for(lambda: ingest.packets == 20, 30, lambda: f"packets {ingest.packets}")
    await wait_for(
        lambda: ingest.worker_recycles == 1 and running_pids(agent)[0] not in (None, first_pid),
        60,
        lambda: f"recycles={ingest.worker_recycles} pids={running_pids(agent)}",
    )
    child = agent.handle.supervisor.children["ingest_worker_0"]
    assert child.restarts == 0  # a replacement, not a failure
    assert (ingest.worker_lost_datagrams, ingest.worker_lost_lines) == (0, 0)
    client.sendto(b"burst.s0:5|c\nafter.recycle:1|c", ("127.0.0.1", agent.udp_port))
    await wait_for(lambda: ingest.packets == 21, 30, lambda: f"packets {ingest.packets}")
    with trio.fail_after(30):
        await agent.handle.flush()
    assert await counter_total(tmp_path / "data", "burst.s0") == 7
    assert await counter_total(tmp_path / "data", "burst.s399") == 2
    assert await counter_total(tmp_path / "data", "after.recycle") == 1
    assert exported(agent, "statsyard_ingest_worker_recycles_total") == 1
    assert await agent.stop() == 0
