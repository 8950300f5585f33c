"""Crashes of the real agent process: each supervised task crashing once, repeatedly and in a
crash loop (restart, backoff, intensity limit, escalation), and ``kill -9`` at random moments
during heavy ingest and flushing. Everything received before and after a task crash is on disk;
after a kill the data directory opens, verifies, and lost at most the open interval.

Figures for docs/reliability.md: ``pytest tests/test_reliability_crash.py -s`` prints them
(``-m long`` for the 50-round kill run).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from statsyard_agent._faults import ENV_VAR
from statsyard_agent.storage import Reader

from .conftest import wait_for_blocking
from .reliability import (
    Sender,
    cli,
    ledger,
    recover_and_verify,
    scrape,
    write_config,
)
from .test_agent_faults import http_get
from .test_agent_process import AgentProcess

# "listener" is the event-loop receiver (``[ingest] workers = 0``); "ingest_worker_0" a receive
# worker process, crashed for real (SIGKILL); the others by the injected faults.
TASKS = ("listener", "ingest_worker_0", "flusher", "writer", "http")
WORKER_STARTED = re.compile(r"ingest worker 0 started \(pid (\d+)\)")
WORKER_LOST = re.compile(
    r"ingest worker \d+ \(pid \d+\) ended before shipping \d+ datagrams "
    r"\((\d+) lines\)"
)
# mode -> (injected crashes, supervisor.max_restarts): a loop exceeds the intensity limit.
MODES = {"once": (1, 10), "repeatedly": (4, 10), "loop": (3, 2)}
BACKOFF = re.compile(r"task (\w+) crashed, restarting in ([0-9.]+) s \(restart (\d+)\)")


def counter_totals(data_dir: Path, pattern: str) -> dict[str, float]:
    """Sum of every stored point of each counter matching ``stats.counters.PATTERN.count``."""
    now = int(time.time())
    found = Reader(data_dir).query(f"stats.counters.{pattern}.count", now - 3600, now + 3600)
    return {
        s.name.removeprefix("stats.counters.").removesuffix(".count").split(".", 1)[-1]: float(
            np.nansum(s.values)
        )
        for s in found
    }


def send(port: int, name: str, count: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"{name}:{count}|c".encode(), ("127.0.0.1", port))


WORKER_ANY = re.compile(r"ingest worker \d+ started \(pid (\d+)\)")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def restarts(agent: AgentProcess, task: str) -> float:
    return scrape(agent).get(f'statsyard_task_restarts_total{{task="{task}"}}', 0.0)


@dataclass
class CrashOutcome:
    task: str
    mode: str
    exit_status: int
    backoffs: list[float]
    sent: dict[str, int]
    stored: dict[str, float]
    log: str

    @property
    def lost_lines(self) -> int:
        """Lines a killed worker took with it, as the agent logged (and counted) them."""
        return sum(int(m.group(1)) for m in WORKER_LOST.finditer(self.log))


def crash_scenario(tmp: Path, task: str, mode: str, started: list[AgentProcess]) -> CrashOutcome:
    """Crash ``task`` of a real agent as ``mode`` says, sending data before and after."""
    try:
        return _crash_scenario(tmp, task, mode, started)
    except AssertionError as exc:
        mine = [agent for agent in started if agent.data_dir == tmp / "data"]
        log = "".join(mine[0].log) if mine else ""
        raise AssertionError(f"{task} {mode}: {exc}\n{log[-4000:]}") from exc


def _crash_scenario(tmp: Path, task: str, mode: str, started: list[AgentProcess]) -> CrashOutcome:
    crashes, max_restarts = MODES[mode]
    escalates = crashes > max_restarts
    config = write_config(
        tmp / "agent.toml",
        f"[supervisor]\nmax_restarts = {max_restarts}\nmax_seconds = 60\n"
        # The event-loop listener runs without receive workers; one worker is enough elsewhere.
        + f"[ingest]\nworkers = {0 if task == 'listener' else 1}\n",
    )
    data = tmp / "data"
    faults = {} if task.startswith("ingest_worker") else {ENV_VAR: f"{task}={crashes}"}
    agent = AgentProcess(data, "--config", str(config), "--flush-interval", "1", env=faults)
    started.append(agent)
    sent: dict[str, int] = {}
    datagrams = 0

    def put(name: str, count: int, *, spread: bool = False) -> None:
        """One datagram ``name:count``, or (``spread``) ``count`` datagrams ``name:1`` from as
        many source ports, which the kernel spreads over the ingest workers."""
        nonlocal datagrams
        for _ in range(count if spread else 1):
            send(agent.udp_port, f"crash.{name}", 1 if spread else count)
            datagrams += 1
        sent[name] = count

    if task == "listener":
        # The listener crashes right after handling a burst: one datagram, one crash.
        for k in range(crashes):
            put(f"before{k}", 10 + k)
            if escalates and k == crashes - 1:
                break
            wait_for_blocking(lambda k=k: restarts(agent, task) >= k + 1, 30, f"listener restart {k + 1}")
    elif task == "ingest_worker_0":
        # SIGKILL the worker process; its task restarts it on the same socket. Lines it had
        # received but not yet shipped are lost, logged and counted; the rest is on disk.
        for k in range(crashes):
            put(f"before{k}", 10, spread=True)
            wait_for_blocking(
                lambda k=k: len(WORKER_STARTED.findall("".join(agent.log))) >= k + 1,
                30,
                "ingest worker 0 running",
            )
            pids = [int(m.group(1)) for m in WORKER_STARTED.finditer("".join(agent.log))]
            os.kill(pids[-1], signal.SIGKILL)
            if escalates and k == crashes - 1:
                break
            wait_for_blocking(
                lambda k=k: len(WORKER_STARTED.findall("".join(agent.log))) >= k + 2,
                30,
                f"ingest worker 0 restarted {k + 1} times",
            )
    elif task == "http":
        put("before", 7)
        if escalates:
            # Every crash happens as this connection waits; the last one gives up.
            with contextlib.suppress(OSError):
                http_get(agent.http_port, "/healthz")
        else:
            # The connection that crashed the server waits in the backlog and is served after
            # the last restart; several crashes within max_seconds read as crash-looping (503).
            status, body = http_get(agent.http_port, "/healthz")
            assert status == (200 if crashes == 1 else 503), body
            assert restarts(agent, task) == crashes
    else:
        # The flusher crashes at its first flush (and again at each restart, on the snapshot it
        # left pending); the writer at its first write attempt.
        put("before", 7)
        if not escalates:
            wait_for_blocking(lambda: restarts(agent, task) >= crashes, 30, f"{task} restarts")
    if not escalates:
        put("after", 5, spread=task.startswith("ingest"))
        # Each SIGKILL of a worker may take one datagram nobody can count (see the accounting
        # check in test_each_task_crashing); whatever is still queued, the shutdown drains.
        unaccountable = crashes if task.startswith("ingest") else 0
        wait_for_blocking(
            lambda: scrape(agent)["statsyard_udp_packets_received_total"] >= datagrams - unaccountable,
            30,
            f"every datagram received ({datagrams} sent, {unaccountable} may be unaccountable)",
        )
        agent.proc.send_signal(signal.SIGTERM)
    status = agent.wait(60)
    log = "".join(agent.log)
    backoffs = [float(m.group(2)) for m in BACKOFF.finditer(log) if m.group(1) == task]
    return CrashOutcome(task, mode, status, backoffs, sent, counter_totals(data, "crash.*"), log)


@pytest.fixture
def started() -> list[AgentProcess]:
    agents: list[AgentProcess] = []
    yield agents  # type: ignore[misc]
    for agent in agents:
        if agent.proc.poll() is None:
            agent.proc.kill()
        agent.wait(30)


@pytest.mark.parametrize("mode", list(MODES))
def test_each_task_crashing(mode: str, tmp_path: Path, started: list[AgentProcess]) -> None:
    """One real agent per task, side by side: ``once`` and ``repeatedly`` restart with a doubling
    backoff and keep every count; ``loop`` exceeds the intensity limit, makes a final flush and
    exits 1 — with every count received before the escalation on disk."""
    crashes, max_restarts = MODES[mode]
    escalates = crashes > max_restarts
    for task in TASKS:
        (tmp_path / task).mkdir()
    with ThreadPoolExecutor(len(TASKS)) as pool:
        outcomes = list(pool.map(lambda t: crash_scenario(tmp_path / t, t, mode, started), TASKS))
    for out in outcomes:
        where = f"{out.task} {out.mode}:\n{out.log}"
        if escalates:
            assert out.exit_status == 1, where
            assert "restart intensity exceeded" in out.log, where
            assert f"task {out.task!r} crashed" in out.log, where
            assert "exiting with status 1" in out.log, where
            # max_restarts restarts, each backing off twice as long as the one before.
            assert out.backoffs == [0.1 * 2**i for i in range(max_restarts)], where
        else:
            assert out.exit_status == 0, where
            assert "stopped cleanly" in out.log, where
            assert out.backoffs == [0.1 * 2**i for i in range(crashes)], where
        if out.task.startswith("ingest_worker"):
            # Accounting: what is on disk plus what the agent counted as lost is what was sent,
            # but for at most one datagram per kill (1 line each here): a SIGKILL that lands as
            # a recv() call returns ends the process after the kernel dequeued the datagram and
            # before any user code runs, so no program can count that one (the worker publishes
            # each datagram right after reading it, which shrinks the window to exactly that).
            accounted = sum(out.stored.values()) + out.lost_lines
            assert sum(out.sent.values()) - crashes <= accounted <= sum(out.sent.values()), where
            assert set(out.stored) <= set(out.sent), where
        else:
            assert out.stored == {name: float(n) for name, n in out.sent.items()}, where
        print(
            f"\n{out.task:8s} {out.mode:10s} exit={out.exit_status} backoffs={out.backoffs} "
            f"sent={sum(out.sent.values())} stored={sum(out.stored.values()):g} "
            f"lost-and-counted={out.lost_lines}"
        )


# -- kill -9 ------------------------------------------------------------------------------------


PERCENTILE = re.compile(r"\.p\d+$")  # the reader's virtual percentile series: not points


def stored_point_count(data: Path, prefix: str) -> int:
    """Every point stored for the series a Sender with ``prefix`` feeds."""
    now = int(time.time())
    reader = Reader(data)
    found = [
        s
        for pattern in (
            f"stats.counters.{prefix}.n.*",
            f"stats.gauges.{prefix}.seq",
            f"stats.counters.{prefix}.bulk.*.*",
            f"stats.timers.{prefix}.bulk.*.*",
        )
        for s in reader.query(pattern, now - 300, now + 60)
        if not PERCENTILE.search(s.name)
    ]
    return int(sum(int((~np.isnan(s.values)).sum()) for s in found))


@dataclass
class KillRound:
    lost_lines: int
    lost_seconds: float
    sent: int
    acknowledged_points: float
    stored_points: int


def kill_round(data: Path, round_: int, rng: random.Random) -> KillRound:
    """Start the agent on ``data`` (recovering the previous kill), load it, kill -9 it."""
    agent = AgentProcess(data, "--flush-interval", "1")
    prefix = f"k{round_}"
    sender = Sender(
        agent.udp_port,
        prefix,
        rate=rng.choice([300.0, 1000.0, 2000.0]),
        lines=rng.randint(1, 20),
        bulk=8,
        bulk_names=400,
    ).start()
    try:
        # Kill at a random moment once something was acknowledged (a batch written): sometimes
        # just after a flush boundary, when the flusher and the writer are busy.
        wait_for_blocking(
            lambda: scrape(agent).get("statsyard_points_written_total", 0) > 0,
            30,
            "a first batch of points written",
        )
        time.sleep(rng.uniform(0.0, 0.8))
        if rng.random() < 0.5:
            now = time.time()
            time.sleep(math.ceil(now) - now + rng.uniform(0.0, 0.05))
        before = scrape(agent)
        workers = [int(m.group(1)) for m in WORKER_ANY.finditer("".join(agent.log))]
        agent.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        agent.wait(30)
    finally:
        sender.stop()
    # The receive workers notice their agent is gone (end of file on their control socket) and
    # exit: no orphan keeps the port or a core.
    wait_for_blocking(lambda: not any(alive(pid) for pid in workers), 30, f"workers {workers} to exit")
    sent = sender.sent
    recover_and_verify(data)
    book = ledger(data, prefix)
    book.check_consistent()
    # Nothing missing between stored flushes but what the kernel may have dropped.
    drops = before.get("statsyard_udp_kernel_drops_total", 0.0)
    assert sum(lines for _, lines in book.gaps()) <= drops * sender.lines, book.gaps()
    # Every point written before the last scrape is on disk.
    stored_points = stored_point_count(data, prefix)
    acknowledged = before.get("statsyard_points_written_total", 0.0)
    assert acknowledged > 0
    assert stored_points >= acknowledged
    lost = sent - int(book.last_total)
    lost_seconds = killed_at - sender.sent_at(int(book.last_total) + 1) if lost > 0 else 0.0
    # At most the open interval: since the last flush, plus what was queued at the scrape.
    queued = before.get("statsyard_writer_queue_batches", 0.0) + before.get(
        "statsyard_pending_snapshots", 0.0
    )
    assert lost_seconds <= 1.0 * (2 + queued) + 3.0, (lost_seconds, queued)
    return KillRound(lost, lost_seconds, sent, acknowledged, stored_points)


def kill_rounds(data: Path, rounds: int, seed: int) -> list[KillRound]:
    rng = random.Random(seed)
    results = [kill_round(data, r, rng) for r in range(rounds)]
    # After every kill, a clean run on the same directory: opens, writes, stops cleanly.
    agent = AgentProcess(data, "--flush-interval", "3600")
    send(agent.udp_port, "after.kills", 3)
    wait_for_blocking(lambda: scrape(agent)["statsyard_lines_received_total"] >= 1, 30, "a line")
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert counter_totals(data, "after.*") == {"kills": 3.0}
    verify = cli("storage", "verify", "--data-dir", str(data))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    lost = [r.lost_lines for r in results]
    seconds = [r.lost_seconds for r in results]
    print(
        f"\nkill -9 x{rounds}: sent {sum(r.sent for r in results)} lines, lost "
        f"{sum(lost)} (unwritten open interval), per kill max {max(lost)} lines / "
        f"{max(seconds):.2f} s, mean {np.mean(seconds):.2f} s; acknowledged points lost: 0"
    )
    return results


def test_kill_9_during_ingest_and_flushing(tmp_path: Path) -> None:
    kill_rounds(tmp_path / "data", rounds=3, seed=7)


@pytest.mark.long
def test_kill_9_many_times(tmp_path: Path) -> None:
    kill_rounds(tmp_path / "data", rounds=50, seed=8)
