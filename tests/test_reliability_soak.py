"""A bounded soak of the real agent at a steady rate: memory flat, no file-descriptor growth,
flushes aligned to the interval, and not one line lost.

Default: a short run (6 s); ``pytest -m long``: 60 s. By hand, for hours::

    STATSYARD_SOAK_SECONDS=7200 STATSYARD_SOAK_RATE=5000 pytest -m long -s \\
        tests/test_reliability_soak.py

prints the figures docs/reliability.md quotes (RSS slope, fd range, flush jitter).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import wait_for_blocking
from .reliability import Sender, fd_count, ledger, recover_and_verify, rss_kib, scrape
from .test_agent_process import AgentProcess


@pytest.mark.parametrize(
    "seconds", [pytest.param(6.0, id="short"), pytest.param(60.0, id="60s", marks=pytest.mark.long)]
)
def test_soak(tmp_path: Path, seconds: float) -> None:
    seconds = float(os.environ.get("STATSYARD_SOAK_SECONDS", seconds))
    rate = float(os.environ.get("STATSYARD_SOAK_RATE", 1000))
    data = tmp_path / "data"
    started_wall = time.time()
    agent = AgentProcess(data, "--flush-interval", "1")
    pid = agent.proc.pid
    try:
        sender = Sender(agent.udp_port, "soak", rate=rate, lines=5, bulk=10, bulk_names=1000)
        sender.start()
        first = scrape(agent)["statsyard_flushes_total"]
        begin = time.monotonic()
        times, rss, fds, flush_stamps = [], [], [], set()
        while (elapsed := time.monotonic() - begin) < seconds:
            sample = scrape(agent)
            if sample["statsyard_flushes_total"] > 0:  # before that: the start time
                flush_stamps.add(sample["statsyard_last_flush_timestamp_seconds"])
            times.append(elapsed)
            rss.append(rss_kib(pid))
            fds.append(fd_count(pid))
            time.sleep(0.2)
        flushes = scrape(agent)["statsyard_flushes_total"] - first
        sent = sender.stop()

        def accounted() -> float:
            sample = scrape(agent)
            return sample["statsyard_udp_packets_received_total"] + sample.get(
                "statsyard_udp_kernel_drops_total", 0.0
            )

        wait_for_blocking(lambda: accounted() >= sender.datagrams, 30, "every datagram read or dropped")
        drops = scrape(agent).get("statsyard_udp_kernel_drops_total", 0.0)
        agent.proc.terminate()
        assert agent.wait(60) == 0, "".join(agent.log)
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.wait(30)

    # Nothing counted twice; nothing lost but what the kernel dropped before the agent could read
    # it (counted in statsyard_udp_kernel_drops_total; none on a quiet machine).
    recover_and_verify(data)
    book = ledger(data, "soak", since=started_wall)
    book.check_consistent()
    lost = sent - book.stored
    assert lost <= drops * sender.lines, (lost, drops)

    # Flushes: one per second of the run, each at its boundary (the flusher wakes on it; the
    # stamp is the boundary itself, or the wall clock when the wake-up came late).
    assert abs(flushes - seconds) <= 2, (flushes, seconds)
    late_ms = np.array([(stamp - np.floor(stamp)) * 1000 for stamp in flush_stamps])
    assert (late_ms < 500).all(), sorted(late_ms)[-5:]  # never slipped half an interval

    # Memory and descriptors after the warm-up (the first third).
    t, r, f = np.array(times), np.array(rss) / 1024, np.array(fds)
    warm = t >= seconds / 3
    slope = np.polyfit(t[warm], r[warm], 1)[0] * 60  # MiB per minute
    # Flat: the last third holds no more than the middle third (allocator noise aside).
    middle, last = r[(t >= seconds / 3) & (t < 2 * seconds / 3)], r[t >= 2 * seconds / 3]
    assert last.max() <= middle.max() + 24, r
    assert f[warm].max() - f[warm].min() <= 6, f  # a few HTTP scrapes in flight at most
    minutes = [f"{r[np.searchsorted(t, m * 60)]:.0f}" for m in range(int(t[-1] // 60) + 1)]
    print(
        f"\nRSS (agent + receive workers) at each minute: {' '.join(minutes)} MiB"
        f"\nsoak {seconds:g} s at {rate:g} datagrams/s ({sent} lines): RSS {r[0]:.0f} -> "
        f"{r[-1]:.0f} MiB (slope after warm-up {slope:+.2f} MiB/min), fds {f.min()}-{f.max()}, "
        f"{flushes:g} flushes, lateness p50 {np.percentile(late_ms, 50):.1f} ms, p99 "
        f"{np.percentile(late_ms, 99):.1f} ms, max {late_ms.max():.1f} ms; lost {lost:g} "
        f"({drops:g} datagrams dropped by the kernel)"
    )
