"""The disk failing under a running agent, for real: a full filesystem (a tiny tmpfs), the data
directory deleted, replaced by a file, made read-only, and a slow disk (an injected writer delay).

Each test drives real load through UDP and reads the data directory afterwards with the
:func:`~tests.reliability.ledger`, so "what was lost" is exact, not estimated. Mounting needs root;
without it those tests skip saying so. Figures: ``pytest tests/test_reliability_disk.py -s``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from statsyard_agent._faults import ENV_VAR, FaultInjector, InjectedFault
from statsyard_agent._flush import flush_once

from .conftest import make_config, query_async, start_agent, wait_for, wait_for_blocking
from .reliability import (
    Sender,
    cli,
    fill,
    health,
    ledger,
    log_has,
    recover_and_verify,
    scrape,
    tmpfs,
    write_config,
)
from .test_agent_faults import http_get_async, send_counts
from .test_agent_process import AgentProcess


@pytest.fixture
def started() -> Iterator[list[AgentProcess]]:
    agents: list[AgentProcess] = []
    yield agents
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.wait(30)


def stop(agent: AgentProcess, sender: Sender) -> int:
    """Stop the load, let the agent read it all, SIGTERM; return the lines sent."""
    sent = sender.stop()
    wait_for_blocking(lambda: received(agent) >= sender.datagrams, 30, "every datagram received")
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(60) == 0, "".join(agent.log)
    return sent


def received(agent: AgentProcess) -> float:
    """Datagrams the agent read, plus those the kernel dropped for it."""
    sample = scrape(agent)
    return sample["statsyard_udp_packets_received_total"] + sample.get(
        "statsyard_udp_kernel_drops_total", 0.0
    )


def written(agent: AgentProcess) -> float:
    return scrape(agent).get("statsyard_batches_written_total", 0.0)


# -- disk full ----------------------------------------------------------------------------------


def test_disk_full_buffers_reports_503_drops_oldest_and_recovers(
    tmp_path: Path, started: list[AgentProcess]
) -> None:
    """A 4 MiB tmpfs filled to the last byte under a loaded agent (1 s flushes, a queue of 2):
    ingest goes on, /healthz says 503 and why, batches are buffered, then dropped oldest-first
    and counted; once the filler is deleted everything still buffered is written."""
    config = write_config(tmp_path / "agent.toml", "writer_queue_max_batches = 2\n")
    with tmpfs(tmp_path / "disk", "4m") as disk:
        data = disk / "data"
        agent = AgentProcess(data, "--config", str(config), "--flush-interval", "1")
        started.append(agent)
        # ~1,600 points per flush (200 bulk series): each WAL record needs fresh pages.
        sender = Sender(agent.udp_port, "full", rate=200, lines=3, bulk=20, bulk_names=200)
        sender.start()
        wait_for_blocking(lambda: written(agent) >= 2, 30, "two batches written")
        filler = fill(disk)
        full_wall = time.time()
        wait_for_blocking(
            lambda: scrape(agent).get("statsyard_write_errors_total", 0) >= 1, 30, "a failed write"
        )
        status, body = health(agent)
        assert status == 503
        assert "No space left on device" in str(body["problems"])
        assert log_has(agent, "write failed")
        assert log_has(agent, "the disk is full")
        lines_at_full = scrape(agent)["statsyard_lines_received_total"]
        wait_for_blocking(
            lambda: scrape(agent)["statsyard_writer_dropped_batches_total"] >= 1,
            60,
            "a batch dropped (the oldest)",
        )
        during = scrape(agent)
        assert during["statsyard_lines_received_total"] > lines_at_full  # ingest never stopped
        assert during["statsyard_writer_queue_batches"] <= 2  # the bound holds
        assert during['statsyard_task_restarts_total{task="writer"}'] == 0  # nothing crashed

        filler.unlink()  # space is back
        freed_wall = time.time()
        freed = time.monotonic()
        wait_for_blocking(
            lambda: scrape(agent)["statsyard_writer_queue_batches"] == 0 and health(agent)[0] == 200,
            60,
            "the buffered batches written, 200 again",
        )
        recovery = time.monotonic() - freed
        final = scrape(agent)
        sent = stop(agent, sender)

        recover_and_verify(data)
        book = ledger(data, "full")
        book.check_consistent()
        dropped = int(final["statsyard_writer_dropped_batches_total"])
        assert dropped >= 1
        # Every flush is written or counted as dropped.
        assert final["statsyard_flushes_total"] == final["statsyard_batches_written_total"] + dropped
        # Losses only where batches were dropped: inside the outage, at most one gap per batch.
        gaps = book.gaps()
        assert 1 <= len(gaps) <= dropped
        assert all(full_wall - 1 <= ts <= freed_wall + 2 for ts, _ in gaps), (gaps, full_wall)
        lost = sum(lines for _, lines in gaps)
        assert book.last_total == sent  # the final flush holds the last datagram: none missing
        assert book.stored + lost == sent
        print(
            f"\ndisk full: sent {sent} lines, stored {book.stored:g}, lost {lost:g} in "
            f"{dropped} dropped batches (the queue bound: 2), recovery {recovery:.2f} s after "
            f"space returned"
        )


# -- data directory deleted, replaced, read-only --------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE): the agent never sees neither."""
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable here: {os.strerror(errno)}")


def test_data_dir_replaced_by_a_file_degrades_then_recovers(
    tmp_path: Path, started: list[AgentProcess]
) -> None:
    data = tmp_path / "data"
    agent = AgentProcess(data, "--flush-interval", "1")
    started.append(agent)
    sender = Sender(agent.udp_port, "moved", rate=200, lines=2).start()
    wait_for_blocking(lambda: written(agent) >= 2, 30, "two batches written")
    intruder = tmp_path / "intruder"
    intruder.write_text("not a directory\n")
    exchange(data, intruder)  # data is now a file; the directory waits at 'intruder'
    wait_for_blocking(lambda: health(agent)[0] == 503, 30, "503")
    _, body = health(agent)
    assert "is gone or unreadable" in str(body["problems"])
    assert log_has(agent, f"the data directory {data} is gone or unreadable")
    lines = scrape(agent)["statsyard_lines_received_total"]
    wait_for_blocking(lambda: scrape(agent)["statsyard_writer_queue_batches"] >= 2, 30, "buffering")
    assert scrape(agent)["statsyard_lines_received_total"] > lines

    exchange(data, intruder)  # the directory is back
    back = time.monotonic()
    wait_for_blocking(
        lambda: health(agent)[0] == 200 and scrape(agent)["statsyard_writer_queue_batches"] == 0,
        30,
        "recovered",
    )
    recovery = time.monotonic() - back
    sent = stop(agent, sender)
    assert not log_has(agent, "opened it afresh")  # the same directory, the same open TSDB
    recover_and_verify(data)
    book = ledger(data, "moved")
    book.check_consistent()
    assert book.gaps() == []  # nothing lost
    assert book.stored == book.last_total == sent
    print(
        f"\ndata dir replaced by a file: sent {sent} lines, lost 0, recovery {recovery:.2f} s "
        "after it was back"
    )


def test_data_dir_deleted_is_recreated_and_nothing_after_is_lost(
    tmp_path: Path, started: list[AgentProcess]
) -> None:
    data = tmp_path / "data"
    agent = AgentProcess(data, "--flush-interval", "1")
    started.append(agent)
    sender = Sender(agent.udp_port, "gone", rate=200, lines=2).start()
    wait_for_blocking(lambda: written(agent) >= 2, 30, "two batches written")
    trash = tmp_path / "trash"
    data.rename(trash)  # rm -rf, but all at once (rm -rf races the agent recreating it)
    shutil.rmtree(trash)
    deleted = time.monotonic()
    wait_for_blocking(
        lambda: log_has(agent, "removed or replaced while the agent ran; opened it afresh"),
        30,
        "the reopen log line",
    )
    assert log_has(agent, "write failed")
    wait_for_blocking(lambda: health(agent)[0] == 200 and written(agent) >= 4, 30, "writing again")
    recovery = time.monotonic() - deleted
    sent = stop(agent, sender)
    recover_and_verify(data)
    book = ledger(data, "gone")
    book.check_consistent()
    # The new directory holds every flush from the first one written there to the end.
    assert [ts for ts, _ in book.gaps()] == [book.timestamps[0]]
    assert book.last_total == sent
    print(
        f"\ndata dir deleted: recreated and writing {recovery:.2f} s later; lost only what the "
        f"deleted directory held ({sent - book.stored:g} of {sent} lines)"
    )


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Bind-mount ``path`` read-only over itself (root only; skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to bind-mount the data directory read-only")
    bind = subprocess.run(
        ["mount", "--bind", str(path), str(path)], capture_output=True, text=True, check=False
    )
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(path)], capture_output=True, text=True, check=False
        )
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {ro.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(path)], check=False)


async def test_read_only_data_dir_degrades_health_and_recovers(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Read-only under a running agent: appends to the files it holds open go on (nothing is
    lost), but the first file it must create (sealing a window, here one stamped ten minutes
    ago) fails; /healthz says so until the filesystem is writable again."""
    agent = await start_agent(nursery, make_config(tmp_path / "data"))
    state = agent.handle.state
    send_counts(agent.udp_port, "ro.early", 20)
    await agent.wait_lines(20)
    with read_only(agent.config.data_dir):
        await flush_once(state, agent.handle.telemetry, now=time.time() - 600)
        await wait_for(lambda: state.writer.maintenance_failures >= 1, 20)
        status, body = await http_get_async(agent.http_port, "/healthz")
        assert status == 503
        assert b"storage maintenance failing" in body
        assert b"Read-only file system" in body
        send_counts(agent.udp_port, "ro.during", 30)
        await agent.wait_lines(50)
        with trio.fail_after(20):
            await agent.handle.flush()  # written: the WAL is an open file
        assert state.writer.consecutive_failures == 0
    with trio.fail_after(20):
        await agent.handle.flush()  # maintenance runs again after this write, and succeeds
    assert state.writer.maintenance_failures == 0
    status, _ = await http_get_async(agent.http_port, "/healthz")
    assert status == 200
    for name, count in (("early", 20), ("during", 30)):
        got = await query_async(agent.config.data_dir, f"stats.counters.ro.{name}.count")
        assert sum(got[(f"stats.counters.ro.{name}.count", ())]) == count


def test_read_only_data_dir_at_start_is_refused_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with read_only(data):
        result = cli("--udp", "127.0.0.1:0", "--http", "", "--data-dir", str(data))
    assert result.returncode == 1
    assert str(data) in result.stderr
    assert "Read-only file system" in result.stderr


# -- slow disk ----------------------------------------------------------------------------------


def test_fault_spec_arms_crashes_and_delays() -> None:
    faults = FaultInjector.from_env({ENV_VAR: "writer=always,flusher=2,slow_disk=0.01s:2,x=0.5s"})
    for _ in range(3):
        with pytest.raises(InjectedFault):
            faults.check("writer")
    for _ in range(2):
        with pytest.raises(InjectedFault):
            faults.check("flusher")
    faults.check("flusher")  # used up
    started = time.perf_counter()
    for _ in range(3):
        faults.stall("slow_disk")  # two stalls of 10 ms, then none
    assert time.perf_counter() - started >= 0.02
    faults.disarm("x")
    faults.stall("x")  # disarmed: no 0.5 s wait (nothing to assert on time: it just returns)


def test_slow_disk_keeps_ingest_and_flushing_going_and_shows_the_queue(
    tmp_path: Path, started: list[AgentProcess]
) -> None:
    """The first two writes take 2 s each (1 s flushes): batches queue up, visibly, while
    ingest and flushing go on at their pace; then the queue drains and nothing is lost."""
    data = tmp_path / "data"
    agent = AgentProcess(data, "--flush-interval", "1", env={ENV_VAR: "slow_disk=2s:2"})
    started.append(agent)
    sender = Sender(agent.udp_port, "slow", rate=200, lines=2).start()
    depth = 0.0
    flushes = scrape(agent)["statsyard_flushes_total"]
    seen_in_health = False
    deadline = time.monotonic() + 30
    while depth < 2 and time.monotonic() < deadline:
        sample = scrape(agent)
        depth = max(depth, sample["statsyard_writer_queue_batches"])
        if depth >= 2:
            _, body = health(agent)
            writer = body["writer"]
            assert isinstance(writer, dict)
            seen_in_health = writer["queue_batches"] >= 1
        time.sleep(0.05)
    assert depth >= 2, "the queue never grew"
    assert seen_in_health
    during = scrape(agent)
    assert during["statsyard_flushes_total"] >= flushes + 2  # flushing went on
    assert during["statsyard_lines_received_total"] > 0
    wait_for_blocking(lambda: scrape(agent)["statsyard_writer_queue_batches"] == 0, 30, "drained")
    sent = stop(agent, sender)
    book = ledger(data, "slow")
    book.check_consistent()
    assert book.stored == book.last_total == sent
    print(
        f"\nslow disk (2 writes of 2 s, 1 s flushes): max queue depth {depth:g} batches, "
        f"sent {sent} lines, lost 0"
    )
