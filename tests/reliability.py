"""Helpers shared by the reliability suite (``tests/test_reliability_*.py``).

The accounting trick used by the fault tests: a :class:`Sender` sends datagrams that each carry
``PREFIX.n:K|c`` (K = the lines counted in this datagram) and ``PREFIX.seq:M|g`` (M = the running
total of K so far). Every stored flush therefore says both how much it counted and how much had
been sent up to its last datagram, so a reading of the data directory tells exactly what was lost,
where, and whether anything was counted twice or invented (:func:`ledger`).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from statsyard_agent.storage import TSDB, Reader, StorageConfig, parse_retention, verify_storage

from .test_agent_faults import http_get
from .test_agent_process import AgentProcess

RETENTION = "1s:1d,1m:7d"  # what AgentProcess passes
STORAGE = StorageConfig(retention=parse_retention(RETENTION), fsync=False)


# -- the agent process from outside -------------------------------------------------------------


def scrape(agent: AgentProcess) -> dict[str, float]:
    """Every sample of ``/metrics`` by its full name with labels (``x_total{task="writer"}``)."""
    _, body = http_get(agent.http_port, "/metrics")
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def health(agent: AgentProcess) -> tuple[int, dict[str, object]]:
    status, body = http_get(agent.http_port, "/healthz")
    return status, json.loads(body)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (the agent's receive workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def process_rss_kib(pid: int) -> int:
    """Resident memory of one process (0 once it exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) if match else 0


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the agent and its receive workers)."""
    return sum(process_rss_kib(each) for each in [pid, *children(pid)])


def fd_count(pid: int) -> int:
    """Open descriptors of ``pid`` and its children."""
    total = 0
    for each in [pid, *children(pid)]:
        try:
            total += len(os.listdir(f"/proc/{each}/fd"))
        except OSError:
            continue
    return total


def log_has(agent: AgentProcess, text: str) -> bool:
    return any(text in line for line in list(agent.log))


# -- load ---------------------------------------------------------------------------------------


@dataclass
class Sender:
    """A thread sending accounted datagrams to ``port`` at about ``rate`` datagrams per second.

    Each datagram: ``lines`` counter lines folded into ``PREFIX.n`` plus the ``PREFIX.seq`` gauge,
    and ``bulk`` extra lines over ``bulk_names`` rotating series (counters and timers), which give
    every flush some weight. ``history`` holds ``(monotonic time, M)`` after each send.
    """

    port: int
    prefix: str
    rate: float = 500.0
    lines: int = 5
    bulk: int = 5
    bulk_names: int = 200
    sent: int = 0
    datagrams: int = 0
    history: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sender:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sending; returns M, the total counted so far."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return self.sent

    def _run(self) -> None:
        prefix = self.prefix
        bulk = [
            f"{prefix}.bulk.c{i}:1|c" if i % 2 else f"{prefix}.bulk.t{i}:{i % 97}|ms"
            for i in range(self.bulk_names)
        ]
        k = 0
        period = 1.0 / self.rate
        next_at = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self._stop.is_set():
                self.sent += self.lines
                extra = [bulk[(k + j) % len(bulk)] for j in range(self.bulk)]
                k += self.bulk
                data = "\n".join(
                    [f"{prefix}.n:{self.lines}|c", f"{prefix}.seq:{self.sent}|g", *extra]
                ).encode()
                try:
                    sock.sendto(data, ("127.0.0.1", self.port))
                except OSError:
                    self.sent -= self.lines  # not sent (the agent is gone): not owed either
                    break
                self.datagrams += 1
                self.history.append((time.monotonic(), self.sent))
                next_at += period
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                elif pause < -1.0:
                    next_at = time.monotonic()  # fell behind (a loaded machine): do not burst

    def sent_at(self, total: int) -> float:
        """Monotonic time at which the running total reached ``total``."""
        for when, value in self.history:
            if value >= total:
                return when
        return math.inf


# -- what is on disk ----------------------------------------------------------------------------


@dataclass
class Ledger:
    """The stored flushes of one Sender prefix, in time order."""

    timestamps: list[int]
    counted: list[float]  # PREFIX.n per flush
    totals: list[float]  # PREFIX.seq (M) per flush

    @property
    def stored(self) -> float:
        return float(sum(self.counted))

    @property
    def last_total(self) -> float:
        return self.totals[-1] if self.totals else 0.0

    def gaps(self) -> list[tuple[int, float]]:
        """``(timestamp, lines)`` for each stored flush preceded by lost lines (a missing batch,
        or datagrams the kernel dropped)."""
        out = []
        previous = 0.0
        for ts, counted, total in zip(self.timestamps, self.counted, self.totals, strict=True):
            if total - previous - counted > 1e-9:
                out.append((ts, total - previous - counted))
            previous = total
        return out

    def check_consistent(self) -> None:
        """Nothing counted twice or invented: each flush counted at most what was sent since the
        previous one (a Sender datagram is counted whole or not at all)."""
        previous = 0.0
        for ts, counted, total in zip(self.timestamps, self.counted, self.totals, strict=True):
            assert counted <= total - previous + 1e-9, (
                f"flush {ts} counted {counted} > sent {total - previous}"
            )
            previous = total


def ledger(data_dir: Path, prefix: str, *, since: float | None = None) -> Ledger:
    """Read ``PREFIX.n`` and ``PREFIX.seq`` from ``data_dir`` (the 1 s tier), from ``since``
    (unix seconds; default an hour ago) to now."""
    now = int(time.time())
    reader = Reader(data_dir)
    start, end = int(since if since is not None else now - 3600) - 5, now + 60
    counts = reader.query(f"stats.counters.{prefix}.n.count", start, end, now=now)
    gauges = reader.query(f"stats.gauges.{prefix}.seq", start, end, now=now)
    if not counts:
        return Ledger([], [], [])
    assert len(counts) == 1
    assert len(gauges) == 1
    c, g = counts[0], gauges[0]
    assert (c.start, c.step) == (g.start, g.step) == (c.start, 1)
    present = ~np.isnan(c.values)
    # The gauge is emitted in every flush after the first datagram; the counter too (as 0).
    both = present & ~np.isnan(g.values)
    assert (both == present).all(), "a flush holds the counter but not the gauge"
    index = np.flatnonzero(both)
    return Ledger(
        timestamps=[int(c.start + i) for i in index.tolist()],
        counted=c.values[index].tolist(),
        totals=g.values[index].tolist(),
    )


def recover_and_verify(data_dir: Path) -> None:
    """Open the directory as the agent does at start (recovering torn tails), close it, and
    check every checksum as ``storage verify`` does."""
    with TSDB.open(data_dir, STORAGE):
        pass
    problems = verify_storage(data_dir)
    assert problems == [], problems


def cli(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "statsyard_agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (root only); skip the test when that is impossible."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the disk-full tests fill a real filesystem)")
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file in ``directory`` until the filesystem refuses (ENOSPC)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler
