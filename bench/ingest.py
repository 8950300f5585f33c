"""Ingest at line rate: StatsYard against Etsy statsd, side by side, on this machine's loopback.

    python bench/ingest.py                      # everything (about 20 minutes on 2 cores)
    python bench/ingest.py --parts table        # only the side-by-side table
    python bench/ingest.py --parts loops,flush,memory --seconds 4

Parts (``--parts``, comma-separated):

* ``loops``: the receive-loop options, each as a bare receiver (no agent around it) fed faster than
  it can read: IO model (trio ``wait_readable`` + drain, a uvloop datagram endpoint, ``poll`` +
  drain, ``poll`` + ``recvmmsg`` batch reads through ctypes) x per-line engine
  (``Parser.parse_datagram`` + ``Aggregator.add``, the pre-issue path; the prefix-cache
  ``PreAggregator.feed`` per datagram; ``batch``: ``PreAggregator.feed_many`` once per drain, the
  numpy path) x 1 or 2 processes on ``SO_REUSEPORT``. Prints lines/s and CPU µs per line.
* ``table``: for StatsYard (``--workers`` ingest workers each) and for Etsy statsd 0.9 (installed
  with ``npm install statsd`` into ``bench/.deps/etsy``, its graphite backend pointed at a TCP
  sink in this process that adds up the counters it receives), the highest offered rate with
  < 0.1 % loss of counter increments, searched by trials of ``--seconds`` each. Loss is measured
  from the counter totals each side flushed (read back from the data directory, or summed by the
  sink) against what was sent. Each trial also records CPU seconds per million lines received
  (the whole process tree, user + system), the peak RSS (sum of the processes' VmHWM), the
  kernel's drop count for the sockets, and drops that no socket counter shows (the loopback
  backlog, ``/proc/net/softnet_stat``). Done for 20 lines per datagram and for 1 line per
  datagram (what un-batched clients send). Prints one table with the ratio ours/theirs.
* ``flush``: 100,000 active series (50k counters, 50k timers) with ~1M timer samples per
  interval, sent continuously through several flushes: datagrams dropped (kernel) while flushes
  run, counter loss, flush and write durations.
* ``memory``: RSS per idle active series (100k series sent once, then idle within the TTL),
  sampled over two flush intervals: the least (between flushes) and the most (in a flush).

The workload: 10,000 distinct names, each with a fixed kind: 40 % counters (DogStatsD tags, one
in ten at ``@0.5``), 30 % timers (half tagged, one in five at ``@0.1``), 20 % gauges (a quarter
of them signed deltas), 10 % sets; tags always last (Etsy reads ``|#`` only there). The load
generator is ``bench/udp_sender.c`` (built with gcc here): threads sending with ``sendmmsg``,
paced, over 32 source ports so ``SO_REUSEPORT`` can spread them. It shares the machine with the
agent, as the issue asks. Figures only: nothing is asserted. The machine may be shared with other
work; the load average is printed with each part so a noisy run can be recognised.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEPS = ROOT / "bench" / ".deps"
ETSY_VERSION = "0.9.0"
SENDER_THREADS = 2
SENDER_SOCKETS = 64  # per thread: 128 source ports in all (SO_REUSEPORT spreads them; 32 split 40:60)
LOSS_LIMIT = 0.001
QUIET_CORES = 0.30  # other processes may use this much CPU before a trial starts ...
DISTURBED_CORES = 0.40  # ... and this much during one, else it is retried
ATTEMPTS = 4
WARMUP_LINES_PER_S = 50_000  # each trial first sends this for WARMUP_SECONDS (see warm_up)
WARMUP_SECONDS = 2.0
LOOPS_OFFERED = 1_500_000  # lines/s offered to the bare receivers: above what any of them reads
NAMES = 10_000
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- workload ----------------------------------------------------------------------------------


def make_lines(count: int, seed: int = 1, names: int = NAMES) -> Iterator[tuple[bytes, float]]:
    """Lines of the mix and the counter increment each carries (value / rate, 0 if none)."""
    rng = random.Random(seed)
    services = ("api", "web", "worker", "billing", "search")
    for _ in range(count):
        k = rng.randrange(names)
        svc = services[k % 5]
        share = (k * 7919 % 100) / 100  # a fixed kind per name
        if share < 0.40:
            if k % 10 == 0:
                yield f"bench.{svc}.requests.n{k}:1|c|@0.5|#env:prod,service:{svc}".encode(), 2.0
            else:
                status = 200 if k % 7 else 500
                yield (f"bench.{svc}.requests.n{k}:1|c|#env:prod,service:{svc},status:{status}".encode(), 1.0)
        elif share < 0.70:
            value = round(rng.lognormvariate(3, 1), 1)
            rate = "|@0.1" if k % 5 == 0 else ""
            tags = f"|#db:{svc}" if k % 2 else ""
            yield f"bench.{svc}.latency.n{k}:{value}|ms{rate}{tags}".encode(), 0.0
        elif share < 0.90:
            if k % 4 == 0:
                sign = "+" if rng.random() < 0.5 else "-"
                yield f"bench.{svc}.queue.n{k}:{sign}{rng.randrange(1, 10)}|g".encode(), 0.0
            else:
                yield f"bench.{svc}.queue.n{k}:{rng.randrange(1000)}|g|#env:prod".encode(), 0.0
        else:
            yield f"bench.{svc}.users.n{k}:u{rng.randrange(500)}|s".encode(), 0.0


@dataclass
class Workload:
    """A file of datagrams for the sender, and what each carries."""

    path: Path
    lines_per_datagram: int
    datagrams: int
    increments: list[float]  # counter increments per datagram

    def sent(self, per_thread: list[int]) -> tuple[int, float]:
        """Datagrams and counter increments sent, given each sender thread's count (thread t
        sends datagrams t, t+T, t+2T, ... of the file, wrapping around)."""
        threads = len(per_thread)
        total = 0.0
        for t, count in enumerate(per_thread):
            own = self.increments[t::threads]
            cycles, rest = divmod(count, len(own))
            total += cycles * sum(own) + sum(own[:rest])
        return sum(per_thread), total


def build_workload(directory: Path, lines_per_datagram: int, datagrams: int) -> Workload:
    assert datagrams % SENDER_THREADS == 0
    lines = make_lines(datagrams * lines_per_datagram)
    path = directory / f"workload-{lines_per_datagram}.bin"
    increments = []
    with path.open("wb") as out:
        for _ in range(datagrams):
            chunk = [next(lines) for _ in range(lines_per_datagram)]
            payload = b"\n".join(line for line, _ in chunk)
            out.write(struct.pack("<I", len(payload)) + payload)
            increments.append(sum(inc for _, inc in chunk))
    return Workload(path, lines_per_datagram, datagrams, increments)


def build_sender(directory: Path) -> Path:
    binary = directory / "udp_sender"
    subprocess.run(
        ["gcc", "-O2", "-pthread", "-o", str(binary), str(ROOT / "bench" / "udp_sender.c")], check=True
    )
    return binary


@dataclass
class Sent:
    datagrams: int
    increments: float
    seconds: float
    offered_lines_per_s: float


def send(sender: Path, workload: Workload, port: int, lines_per_s: float, seconds: float) -> Sent:
    rate = lines_per_s / workload.lines_per_datagram
    out = subprocess.run(
        [
            str(sender),
            "127.0.0.1",
            str(port),
            str(workload.path),
            f"{rate:.0f}",
            str(seconds),
            str(SENDER_THREADS),
            str(SENDER_SOCKETS),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    per_thread = [int(line.split()[2]) for line in out if line.startswith("sent ")]
    elapsed = next(float(line.split()[1]) for line in out if line.startswith("elapsed "))
    datagrams, increments = workload.sent(per_thread)
    return Sent(datagrams, increments, elapsed, datagrams * workload.lines_per_datagram / elapsed)


# -- processes and kernel counters ---------------------------------------------------------------


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (one level: the agent's workers)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return [pid, *children]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def peak_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
        except OSError:
            continue
    return total


def udp_drops(port: int) -> int:
    """The kernel's drop counter summed over every UDP socket bound to ``port``."""
    drops = 0
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                drops += int(fields[12])
    return drops


def backlog_drops() -> int:
    """Packets dropped before any socket (per-CPU input backlog full): /proc/net/softnet_stat."""
    return sum(int(line.split()[1], 16) for line in Path("/proc/net/softnet_stat").read_text().splitlines())


def _cpu_by_process() -> dict[int, float]:
    """CPU seconds (user + system) of every process but kernel threads."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if entry == "2" or fields[1] == "2":  # kthreadd and its kernel threads
            continue
        out[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    return out


class Foreign:
    """CPU used by processes that are not part of the measurement, from now on (the machine
    may be shared: a trial disturbed by other work is retried)."""

    def __init__(self) -> None:
        self._start = _cpu_by_process()
        self._t0 = time.monotonic()

    def cores(self, ours: set[int]) -> float:
        end = _cpu_by_process()
        ours = ours | {os.getpid()}
        used = sum(cpu - self._start.get(pid, 0.0) for pid, cpu in end.items() if pid not in ours)
        return used / max(time.monotonic() - self._t0, 1e-3)


def wait_quiet(limit: float = QUIET_CORES, patience: float = 900.0) -> float:
    """Wait (up to ``patience`` s) until other processes use less than ``limit`` cores."""
    deadline = time.monotonic() + patience
    while True:
        foreign = Foreign()
        time.sleep(2.0)
        busy = foreign.cores(set())
        if busy < limit:
            return busy
        if time.monotonic() > deadline:
            log(f"  the machine stays busy ({busy:.2f} cores used by other processes); going on")
            return busy
        log(f"  waiting for a quiet machine ({busy:.2f} cores used by other processes)")
        time.sleep(10.0)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


# -- the two systems under test --------------------------------------------------------------------


@dataclass
class Trial:
    system: str
    lines_per_datagram: int
    target_lines_per_s: float
    offered_lines_per_s: float = 0.0
    sent_datagrams: int = 0
    sent_increments: float = 0.0
    counted_increments: float = 0.0
    loss: float = 1.0
    kernel_drops: int = 0
    backlog_drops: int = 0
    unaccounted_datagrams: int = 0
    foreign_cores: float = 0.0
    cpu_s_per_m_lines: float = 0.0
    peak_rss_bytes: int = 0
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.loss < LOSS_LIMIT

    @property
    def sender_limited(self) -> bool:
        return self.offered_lines_per_s < 0.97 * self.target_lines_per_s


class StatsYard:
    """The agent as a real process (``python -m statsyard_agent``)."""

    def __init__(self, workers: int, flush_interval: int, scratch: Path, extra: tuple[str, ...] = ()) -> None:
        self.workers = workers
        self.name = f"statsyard (workers={workers})"
        self.flush_interval = flush_interval
        self.scratch = scratch
        self.extra = extra

    @contextmanager
    def running(self) -> Iterator[StatsYardProcess]:
        data_dir = Path(tempfile.mkdtemp(prefix="statsyard-bench-", dir=self.scratch))
        process = StatsYardProcess(self.workers, self.flush_interval, data_dir, self.extra)
        try:
            yield process
        finally:
            process.stop()
            shutil.rmtree(data_dir, ignore_errors=True)


class StatsYardProcess:
    def __init__(self, workers: int, flush_interval: int, data_dir: Path, extra: tuple[str, ...]) -> None:
        self.udp_port, self.http_port = free_port(), free_port(socket.SOCK_STREAM)
        self.data_dir = data_dir
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "statsyard_agent",
                "--udp",
                f"127.0.0.1:{self.udp_port}",
                "--http",
                f"127.0.0.1:{self.http_port}",
                "--data-dir",
                str(data_dir),
                "--flush-interval",
                str(flush_interval),
                "--ingest-workers",
                str(workers),
                *extra,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.log: list[str] = []
        ready = threading.Event()

        def read_log() -> None:  # ready once the agent and every worker said so
            assert self.process.stderr is not None
            agent_ready, started = False, 0
            for line in self.process.stderr:
                self.log.append(line.rstrip())
                agent_ready = agent_ready or "statsyard-agent ready" in line
                started += "ingest worker" in line and " started " in line
                if agent_ready and started >= workers:
                    ready.set()

        threading.Thread(target=read_log, daemon=True).start()
        deadline = time.monotonic() + 60
        while not ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent did not start:\n" + "\n".join(self.log[-20:]))
        self.pids = process_tree(self.process.pid)

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def wait_accounted(self, datagrams: int, timeout: float = 10.0) -> dict[str, float]:
        """Wait until every sent datagram was received or dropped (workers ship each second)."""
        deadline = time.monotonic() + timeout
        while True:
            metrics = self.metrics()
            seen = metrics.get("statsyard_udp_packets_received_total", 0) + metrics.get(
                "statsyard_udp_kernel_drops_total", 0
            )
            if seen >= datagrams or time.monotonic() > deadline:
                return metrics
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def counter_total(self) -> float:
        sys.path.insert(0, str(ROOT))
        import numpy as np

        from statsyard_agent.storage import Reader

        reader = Reader(self.data_dir)
        try:
            now = int(time.time())
            found = reader.query(
                "stats.counters.bench.*.requests.*.count", now - 600, now + 60, max_series=NAMES
            )
        finally:
            reader.close()
        return float(sum(float(np.nansum(series.values)) for series in found))


class GraphiteSink(socketserver.ThreadingTCPServer):
    """Counts what Etsy's graphite backend sends: the sum of every bench counter's ``.count``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SinkHandler)
        self.lock = threading.Lock()
        self.flushes: list[tuple[float, float, float]] = []  # (opened, closed, counter sum)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _SinkHandler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        opened = time.monotonic()
        total = 0.0
        for raw in self.rfile:
            parts = raw.split()
            if len(parts) == 3:
                base = parts[0].split(b";", 1)[0]
                if base.startswith(b"stats.counters.bench.") and base.endswith(b".count"):
                    total += float(parts[1])
        server = self.server
        assert isinstance(server, GraphiteSink)
        with server.lock:
            server.flushes.append((opened, time.monotonic(), total))


# Etsy statsd has no receive-buffer setting: its socket gets net.core.rmem_default (208 KiB
# here). This preload gives its socket the SO_RCVBUF StatsYard asks for (node's recvBufferSize),
# for a second, like-for-like Etsy variant.
_RCVBUF_PRELOAD = """\
const dgram = require('dgram');
const createSocket = dgram.createSocket;
dgram.createSocket = function (type, listener) {
  const options = typeof type === 'string' ? { type: type } : Object.assign({}, type);
  options.recvBufferSize = %d;
  return createSocket.call(dgram, options, listener);
};
"""


class Etsy:
    """Etsy statsd 0.9 under node, graphite backend into a :class:`GraphiteSink`; ``rcvbuf``
    (bytes) gives its UDP socket that SO_RCVBUF instead of the kernel default."""

    def __init__(self, flush_interval: int, scratch: Path, rcvbuf: int = 0) -> None:
        self.flush_interval = flush_interval
        self.scratch = scratch
        self.home = install_etsy()
        self.preload: Path | None = None
        self.name = f"Etsy statsd {ETSY_VERSION}"
        if rcvbuf:
            self.name += f" rcvbuf {rcvbuf >> 20} MiB"
            self.preload = scratch / f"etsy-rcvbuf-{rcvbuf}.js"
            self.preload.write_text(_RCVBUF_PRELOAD % rcvbuf)

    @contextmanager
    def running(self) -> Iterator[EtsyProcess]:
        process = EtsyProcess(self.home, self.flush_interval, self.scratch, self.preload)
        try:
            yield process
        finally:
            process.stop()


class EtsyProcess:
    def __init__(self, home: Path, flush_interval: int, scratch: Path, preload: Path | None) -> None:
        self.sink = GraphiteSink()
        threading.Thread(target=self.sink.serve_forever, daemon=True).start()
        self.udp_port, mgmt_port = free_port(), free_port(socket.SOCK_STREAM)
        self.flush_interval = flush_interval
        config = {
            "address": "127.0.0.1",
            "port": self.udp_port,
            "mgmt_address": "127.0.0.1",
            "mgmt_port": mgmt_port,
            "flushInterval": flush_interval * 1000,
            "backends": ["./backends/graphite"],
            "graphiteHost": "127.0.0.1",
            "graphitePort": self.sink.port,
            "graphite": {"legacyNamespace": False},
        }
        self.config_path = scratch / f"etsy-{self.udp_port}.js"
        self.config_path.write_text("module.exports = " + json.dumps(config) + ";\n")
        self.process = subprocess.Popen(
            ["node", *(["--require", str(preload)] if preload else []), "stats.js", str(self.config_path)],
            cwd=home / "node_modules" / "statsd",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:  # up once the management port answers
            try:
                with socket.create_connection(("127.0.0.1", mgmt_port), timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Etsy statsd did not start") from None
                time.sleep(0.1)
        self.pids = [self.process.pid]

    def counter_total_after(self, sent_end: float) -> float:
        """Wait for a flush that began after everything sent was read, then sum all flushes."""
        deadline = time.monotonic() + 3 * self.flush_interval + 10
        while time.monotonic() < deadline:
            with self.sink.lock:
                if any(opened > sent_end + 0.5 for opened, _, _ in self.sink.flushes):
                    return sum(total for _, _, total in self.sink.flushes)
            time.sleep(0.1)
        with self.sink.lock:
            return sum(total for _, _, total in self.sink.flushes)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.sink.shutdown()
        self.sink.server_close()
        self.config_path.unlink(missing_ok=True)


def install_etsy() -> Path:
    home = DEPS / "etsy"
    if not (home / "node_modules" / "statsd" / "stats.js").exists():
        home.mkdir(parents=True, exist_ok=True)
        log(f"npm install statsd@{ETSY_VERSION} into {home}")
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", f"statsd@{ETSY_VERSION}"],
            cwd=home,
            check=True,
        )
    return home


# -- one trial, and the search for the highest rate with < 0.1 % loss ---------------------------


def warm_up(sender: Path, workload: Workload, port: int) -> Sent:
    """Send the workload at a low rate first, so every series exists before the measured send
    (both systems): what is measured is the rate sustained, not a cold start's burst of parsing
    10,000 new names (that costs StatsYard ~0.3 s per worker; a cold start at a high rate
    overflows the socket buffer for that long, and the drop counter shows it)."""
    return send(sender, workload, port, WARMUP_LINES_PER_S, WARMUP_SECONDS)


def trial_statsyard(
    system: StatsYard, sender: Path, workload: Workload, lines_per_s: float, seconds: float
) -> Trial:
    result = Trial(system.name, workload.lines_per_datagram, lines_per_s)
    with system.running() as agent:
        warm = warm_up(sender, workload, agent.udp_port)
        before = agent.wait_accounted(warm.datagrams)
        backlog0, cpu0, foreign = backlog_drops(), cpu_seconds(agent.pids), Foreign()
        sent = send(sender, workload, agent.udp_port, lines_per_s, seconds)
        metrics = agent.wait_accounted(warm.datagrams + sent.datagrams)
        cpu1, hwm = cpu_seconds(agent.pids), peak_rss(agent.pids)
        result.foreign_cores = foreign.cores(set(agent.pids))
        received, drops = (
            metrics.get(name, 0) - before.get(name, 0)
            for name in ("statsyard_udp_packets_received_total", "statsyard_udp_kernel_drops_total")
        )
        result.backlog_drops = backlog_drops() - backlog0
        agent.stop()
        counted = agent.counter_total() - warm.increments
    _finish(result, sent, counted, int(drops), cpu1 - cpu0, hwm, received_datagrams=int(received))
    return result


def trial_etsy(system: Etsy, sender: Path, workload: Workload, lines_per_s: float, seconds: float) -> Trial:
    result = Trial(system.name, workload.lines_per_datagram, lines_per_s)
    with system.running() as etsy:
        warm = warm_up(sender, workload, etsy.udp_port)
        backlog0, cpu0, drops0 = backlog_drops(), cpu_seconds(etsy.pids), udp_drops(etsy.udp_port)
        foreign = Foreign()
        sent = send(sender, workload, etsy.udp_port, lines_per_s, seconds)
        sent_end = time.monotonic()
        result.foreign_cores = foreign.cores(set(etsy.pids))
        counted = etsy.counter_total_after(sent_end) - warm.increments
        cpu1, hwm = cpu_seconds(etsy.pids), peak_rss(etsy.pids)
        drops = udp_drops(etsy.udp_port) - drops0
        result.backlog_drops = backlog_drops() - backlog0
    _finish(result, sent, counted, drops, cpu1 - cpu0, hwm, received_datagrams=None)
    return result


def _finish(
    result: Trial,
    sent: Sent,
    counted: float,
    drops: int,
    cpu: float,
    hwm: int,
    received_datagrams: int | None,
) -> None:
    result.offered_lines_per_s = sent.offered_lines_per_s
    result.sent_datagrams = sent.datagrams
    result.sent_increments = sent.increments
    result.counted_increments = counted
    result.loss = max(0.0, 1.0 - counted / sent.increments) if sent.increments else 1.0
    result.kernel_drops = drops
    received = received_datagrams if received_datagrams is not None else sent.datagrams - drops
    if received_datagrams is not None:
        result.unaccounted_datagrams = sent.datagrams - received_datagrams - drops
    lines = max(1, received * result.lines_per_datagram)
    result.cpu_s_per_m_lines = cpu / (lines / 1e6)
    result.peak_rss_bytes = hwm


def search(run: Callable[[float], Trial], start: float, steps: int = 3) -> tuple[Trial | None, list[Trial]]:
    """Highest rate with < 0.1 % loss: grow by 1.5x until a trial fails, then bisect ``steps``
    times. Returns the best passing trial (None if even ``start`` / 8 fails) and all trials."""
    trials: list[Trial] = []

    def attempt(rate: float) -> Trial:
        for _ in range(ATTEMPTS):
            wait_quiet()
            trial = run(rate)
            if trial.foreign_cores < DISTURBED_CORES:
                break
            log(f"  disturbed: other processes used {trial.foreign_cores:.2f} cores; again")
        trials.append(trial)
        log(
            f"  {trial.system:28} {trial.lines_per_datagram:2} lines/dgram  target {rate / 1e3:8.1f}k "
            f"offered {trial.offered_lines_per_s / 1e3:8.1f}k lines/s  loss {trial.loss * 100:7.3f} %  "
            f"drops {trial.kernel_drops}  backlog {trial.backlog_drops}  "
            f"others {trial.foreign_cores:.2f} cores  "
            f"cpu {trial.cpu_s_per_m_lines:.2f} s/M  {'ok' if trial.ok else 'FAIL'}"
        )
        return trial

    good: Trial | None = None
    bad_rate: float | None = None
    rate = start
    while True:
        trial = attempt(rate)
        if trial.ok:
            good = trial
            if trial.sender_limited:
                trial.note = "sender-limited"
                return good, trials
            rate *= 1.5
        else:
            bad_rate = rate
            if good is not None:
                break
            rate /= 2
            if rate < start / 8:
                return None, trials
    low = good.target_lines_per_s
    for _ in range(steps):
        middle = (low + bad_rate) / 2
        trial = attempt(middle)
        if trial.ok:
            good, low = trial, middle
        else:
            bad_rate = middle
    return good, trials


# -- the receive-loop options ---------------------------------------------------------------------


def loops_receiver(mode: str, engine: str, port: int, processes: int) -> None:
    """Child side of ``loops``: ``processes`` receivers on SO_REUSEPORT sockets; each prints
    'done LINES CPU_SECONDS' once idle for 1.5 s after its first datagram."""
    sys.path.insert(0, str(ROOT))
    socks = []
    for _ in range(processes):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    children = []
    for sock in socks[1:]:
        pid = os.fork()
        if pid == 0:
            _receive(mode, engine, sock)
            os._exit(0)
        children.append(pid)
    print("ready", flush=True)
    _receive(mode, engine, socks[0])
    for pid in children:
        os.waitpid(pid, 0)


def _receive(mode: str, engine: str, sock: socket.socket) -> None:
    from statsyard_agent._aggregate import Aggregator, AggregatorConfig
    from statsyard_agent._ingest import PreAggregator, SimpleCounts
    from statsyard_agent._protocol import Parser

    counts = SimpleCounts()
    pending: list[bytes] = []

    def end_batch() -> None:  # the batch engine's: one feed_many per drain
        return

    if engine == "preagg":
        feed = PreAggregator(Parser(), counts, 1_000_000).feed
    elif engine == "batch":
        preagg = PreAggregator(Parser(), counts, 1_000_000)
        feed = pending.append

        def end_batch() -> None:
            preagg.feed_many(pending)
            pending.clear()

    else:
        parser, aggregator = Parser(), Aggregator(AggregatorConfig(max_series=1_000_000))
        add = aggregator.add

        def feed(data: bytes) -> None:
            result = parser.parse_datagram(data)
            counts.lines += result.lines
            for metric in result.metrics:
                add(metric)

    idle = 1.5
    buffer = bytearray(65535)
    view = memoryview(buffer)

    def drain() -> int:
        n = 0
        while n < 512:
            try:
                size = sock.recv_into(buffer)
            except BlockingIOError:
                break
            n += 1
            feed(bytes(view[:size]))
        end_batch()
        return n

    if mode in ("poll", "recvmmsg"):
        if mode == "recvmmsg":
            drain_many = _recvmmsg_drain(sock, feed)

            def drain() -> int:
                n = drain_many()
                end_batch()
                return n

        poller = select.poll()
        poller.register(sock, select.POLLIN)
        got = 0
        while True:
            if not poller.poll(idle * 1000):
                if got:
                    break
                continue
            got += drain()
    elif mode == "trio":
        import trio

        async def main() -> None:
            got = 0
            while True:
                with trio.move_on_after(idle) as scope:
                    await trio.lowlevel.wait_readable(sock)
                if scope.cancelled_caught:
                    if got:
                        return
                    continue
                got += drain()

        trio.run(main)
    else:
        import asyncio

        import uvloop

        class Endpoint(asyncio.DatagramProtocol):
            last = 0.0

            def datagram_received(self, data: bytes, addr: Any) -> None:
                feed(data)
                if len(pending) >= 512:
                    end_batch()
                self.last = time.monotonic()

        async def serve() -> None:
            loop = asyncio.get_running_loop()
            _, endpoint = await loop.create_datagram_endpoint(Endpoint, sock=sock)
            # Polled: "idle for 1.5 s" has no event to wait on.
            while not endpoint.last or time.monotonic() - endpoint.last < idle:  # noqa: ASYNC110
                await asyncio.sleep(0.2)

        uvloop.run(serve())
        end_batch()
    usage = os.times()
    # One write(2): the forked receivers share the pipe, and print() may split a line in two.
    os.write(1, f"done {counts.lines} {usage.user + usage.system}\n".encode())


def _recvmmsg_drain(sock: socket.socket, feed: Callable[[bytes], None]) -> Callable[[], int]:
    """A drain that reads up to 64 datagrams per system call with ``recvmmsg(2)`` (through
    ctypes: the standard library has no binding), lengths read through one numpy view."""
    import ctypes
    import ctypes.util

    import numpy as np

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class MsgHdr(ctypes.Structure):
        _fields_ = [
            ("name", ctypes.c_void_p),
            ("namelen", ctypes.c_uint32),
            ("iov", ctypes.POINTER(IoVec)),
            ("iovlen", ctypes.c_size_t),
            ("control", ctypes.c_void_p),
            ("controllen", ctypes.c_size_t),
            ("flags", ctypes.c_int),
        ]

    class MMsgHdr(ctypes.Structure):
        _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

    batch, size = 64, 65536
    buffer = ctypes.create_string_buffer(batch * size)
    iovecs = (IoVec * batch)()
    messages = (MMsgHdr * batch)()
    for i in range(batch):
        iovecs[i].base = ctypes.addressof(buffer) + i * size
        iovecs[i].len = size
        messages[i].hdr.iov = ctypes.pointer(iovecs[i])
        messages[i].hdr.iovlen = 1
    recvmmsg = libc.recvmmsg
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    stride = ctypes.sizeof(MMsgHdr) // 4
    lengths = np.frombuffer(messages, dtype=np.uint32)[MMsgHdr.len.offset // 4 :: stride]
    view = memoryview(buffer)
    fd, address, flags = sock.fileno(), ctypes.addressof(messages), socket.MSG_DONTWAIT

    def drain() -> int:
        total = 0
        while total < 512:
            n = recvmmsg(fd, address, batch, flags, None)
            if n <= 0:
                break
            for i, length in enumerate(lengths[:n].tolist()):
                start = i * size
                feed(bytes(view[start : start + length]))
            total += n
        return total

    return drain


def loops_trial(
    sender: Path, workload: Workload, seconds: float, engine: str, mode: str, processes: int
) -> dict[str, Any]:
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--receiver", mode, engine, str(port), str(processes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    child.stdout.readline()  # ready
    time.sleep(0.3)
    foreign = Foreign()
    sent = send(sender, workload, port, LOOPS_OFFERED, seconds)
    others = foreign.cores(set(process_tree(child.pid)))
    out = child.communicate(timeout=120)[0].split()
    lines = sum(int(out[i + 1]) for i, word in enumerate(out) if word == "done")
    cpu = sum(float(out[i + 2]) for i, word in enumerate(out) if word == "done")
    return {
        "engine": engine,
        "io": mode,
        "processes": processes,
        "lines_per_s": lines / sent.seconds,
        "cpu_us_per_line": cpu / max(lines, 1) * 1e6,
        "offered_lines_per_s": sent.offered_lines_per_s,
        "foreign_cores": others,
    }


def run_loops(sender: Path, workload: Workload, seconds: float) -> list[dict[str, Any]]:
    try:
        import uvloop  # noqa: F401

        modes = ["trio", "uvloop", "poll", "recvmmsg"]
    except ImportError:
        log("uvloop is not installed: its receive loop is skipped")
        modes = ["trio", "poll", "recvmmsg"]
    results = []
    for engine in ("parse+add", "preagg", "batch"):
        for processes in (1, 2):
            for mode in modes:
                for _ in range(ATTEMPTS):
                    wait_quiet()
                    row = loops_trial(sender, workload, seconds, engine, mode, processes)
                    if row["foreign_cores"] < DISTURBED_CORES:
                        break
                    log(f"  disturbed: other processes used {row['foreign_cores']:.2f} cores; again")
                results.append(row)
                log(
                    f"  {engine:9} {mode:6} x{processes}: {row['lines_per_s'] / 1e3:8.1f}k lines/s, "
                    f"{row['cpu_us_per_line']:.2f} µs CPU/line (offered "
                    f"{row['offered_lines_per_s'] / 1e3:.0f}k, others used {row['foreign_cores']:.2f} cores)"
                )
    return results


# -- flush never stalls ingest, and memory per series ----------------------------------------------


def series_workload(directory: Path, name: str, lines: list[bytes], per: int) -> Workload:
    path = directory / name
    increments = []
    with path.open("wb") as out:
        for i in range(0, len(lines), per):
            chunk = lines[i : i + per]
            payload = b"\n".join(chunk)
            out.write(struct.pack("<I", len(payload)) + payload)
            increments.append(float(sum(line.endswith(b"|c") for line in chunk)))
    pad = len(increments) % SENDER_THREADS
    if pad:
        raise ValueError("datagram count must be a multiple of the sender threads")
    return Workload(path, per, len(increments), increments)


def _flush_workload(scratch: Path) -> Workload:
    rng = random.Random(7)
    lines = []
    for i in range(1_000_000):  # each counter once and each timer ~20x per pass
        if i % 20 == 0:
            lines.append(b"bench.flush.requests.c%d:1|c" % (i // 20))
        else:
            lines.append(b"bench.flush.latency.t%d:%d|ms" % (rng.randrange(50_000), rng.randrange(1000)))
    return series_workload(scratch, "flush.bin", lines, 20)


def _histogram_delta(after: dict[str, float], before: dict[str, float], name: str) -> tuple[float, float]:
    """(observations, mean seconds) of a histogram between two scrapes."""
    count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return count, total / count if count else 0.0


def run_flush_check(sender: Path, scratch: Path, seconds: float, workers: int) -> dict[str, Any]:
    """100k series, 1M timer samples per 10 s interval: what is lost while flushes run.

    Two phases, so the one-off cost of a new series (registering its ~15 stored series in the
    index) is told apart from the steady state: a warm-up of two intervals in which every series
    appears for the first time, then ``seconds`` of the same traffic with every series known.
    """
    workload = _flush_workload(scratch)
    interval = 10
    rate = 1_000_000 / interval  # one pass per interval: 50k counters, 50k timers, 950k samples
    system = StatsYard(workers, interval, scratch, ("--max-series", "200000"))
    wait_quiet()
    with system.running() as agent:
        at_start = agent.metrics()
        backlog0, foreign = backlog_drops(), Foreign()
        warm = send(sender, workload, agent.udp_port, rate, 2 * interval)
        agent.wait_accounted(warm.datagrams)
        deadline = time.monotonic() + 120  # the first writes register ~800k stored series
        while time.monotonic() < deadline:
            current = agent.metrics()
            if (
                current.get("statsyard_flushes_total", 0) >= at_start.get("statsyard_flushes_total", 0) + 3
                and current.get("statsyard_writer_queue_batches", 1) == 0
            ):
                break
            time.sleep(0.5)
        warmed = agent.metrics()
        sent = send(sender, workload, agent.udp_port, rate, seconds)
        metrics = agent.wait_accounted(sent.datagrams)
        others = foreign.cores(set(agent.pids))
        agent.stop()
        sys.path.insert(0, str(ROOT))
        import numpy as np

        from statsyard_agent.storage import Reader

        reader = Reader(agent.data_dir)
        now = int(time.time())
        found = reader.query(
            "stats.counters.bench.flush.requests.*.count",
            now - 900,
            now + 60,
            max_series=100_000,
            max_total_points=50_000_000,
        )
        counted = float(sum(float(np.nansum(s.values)) for s in found))
        reader.close()

    def drops(after: dict[str, float], before: dict[str, float]) -> float:
        key = "statsyard_udp_kernel_drops_total"
        return after.get(key, 0) - before.get(key, 0)

    warm_flushes, warm_flush_s = _histogram_delta(warmed, at_start, "statsyard_flush_duration_seconds")
    _, warm_write_s = _histogram_delta(warmed, at_start, "statsyard_write_duration_seconds")
    flushes, flush_s = _histogram_delta(metrics, warmed, "statsyard_flush_duration_seconds")
    writes, write_s = _histogram_delta(metrics, warmed, "statsyard_write_duration_seconds")
    within = 'statsyard_flush_duration_seconds_bucket{le="0.5"}'
    over_half_second = flushes - (metrics.get(within, 0) - warmed.get(within, 0))
    result = {
        "workers": workers,
        "seconds": sent.seconds,
        "lines_per_s": sent.offered_lines_per_s,
        "series_active": metrics.get("statsyard_series_active", 0),
        "warmup_kernel_drops": drops(warmed, at_start),
        "warmup_flushes": warm_flushes,
        "warmup_mean_flush_s": warm_flush_s,
        "warmup_mean_write_s": warm_write_s,
        "kernel_drops": drops(metrics, warmed),
        "flushes_during_send": flushes,
        "mean_flush_s": flush_s,
        "flushes_over_500ms": over_half_second,
        "writes_during_send": writes,
        "mean_write_s": write_s,
        "backlog_drops": backlog_drops() - backlog0,
        "counter_loss": 1 - counted / (warm.increments + sent.increments),
        "foreign_cores": others,
    }
    log(
        f"  workers={workers}: {result['lines_per_s'] / 1e3:.0f}k lines/s, {result['series_active']:.0f} "
        f"series; warm-up (new series): {warm_flushes:.0f} flushes, mean {warm_flush_s * 1e3:.0f} ms, "
        f"write {warm_write_s * 1e3:.0f} ms, kernel drops {result['warmup_kernel_drops']:.0f}; "
        f"steady {sent.seconds:.0f} s: {flushes:.0f} flushes, mean {flush_s * 1e3:.0f} ms "
        f"({over_half_second:.0f} over 500 ms), write "
        f"{write_s * 1e3:.0f} ms, kernel drops {result['kernel_drops']:.0f}; counter loss "
        f"{result['counter_loss'] * 100:.3f} % (others used {others:.2f} cores)"
    )
    return result


def memory_split() -> dict[str, float]:
    """In this process: bytes per series of the receive path (parser caches, pre-aggregator
    slots) and of everything after it (aggregator with the series idle within the TTL, storage
    head and index) for the 100k series of :func:`run_memory`, over one flush with data and three
    idle ones; then the storage alone per *stored* series (a counter is stored as 2 series, a gauge
    as 1, a timer as ~14), from a synthetic batch into a second data directory."""
    import gc

    sys.path.insert(0, str(ROOT))
    import numpy as np

    from statsyard_agent._aggregate import Aggregator
    from statsyard_agent._config import build_config
    from statsyard_agent._ingest import PreAggregator, SimpleCounts
    from statsyard_agent._protocol import Parser
    from statsyard_agent._tags import BatchTagger
    from statsyard_agent._types import FlushBatch, Rollup
    from statsyard_agent.storage import TSDB

    def resident() -> int:
        gc.collect()
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE

    lines = _memory_lines()
    datagrams = [b"\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    config = build_config({})
    stamp = int(time.time()) // 10 * 10
    with tempfile.TemporaryDirectory(prefix="statsyard-memory-") as tmp:
        tsdb = TSDB.open(Path(tmp) / "real", config.storage)
        tagger = BatchTagger(())
        base = resident()
        aggregator = Aggregator(config.aggregator)
        preagg = PreAggregator(Parser(config.parser), SimpleCounts(), 200_000)
        for datagram in datagrams:
            preagg.feed(datagram)
        received = resident()
        stored_series = 0
        for k in range(4):  # one flush with the data, three idle ones
            aggregator.merge(preagg.take())
            batch = tagger.build(aggregator.take_snapshot(stamp + 10 * k, 10.0))
            stored_series = max(stored_series, len(batch.names))
            tsdb.write(batch)
            del batch
        flushed = resident()

        synthetic = TSDB.open(Path(tmp) / "synthetic", config.storage)
        names = tuple(f"bench.synthetic.s{i}.mean" for i in range(stored_series))
        before = resident()
        for k in range(4):
            synthetic.write(
                FlushBatch(
                    timestamp=stamp + 10 * k,
                    interval=10.0,
                    names=names,
                    tags=((),) * len(names),
                    rollups=(Rollup.AVERAGE,) * len(names),
                    values=np.full(len(names), float(k)),
                )
            )
        after = resident()
        synthetic.close()
        tsdb.close()
    series = len(lines)
    return {
        "series": series,
        "stored_series": stored_series,
        "receive_bytes_per_series": (received - base) / series,
        "after_receive_bytes_per_series": (flushed - received) / series,
        "storage_bytes_per_stored_series": (after - before) / stored_series,
    }


def _memory_lines() -> list[bytes]:
    """100k series: half counters (tagged), a quarter gauges, a quarter timers."""
    lines = []
    for i in range(100_000):
        kind = i % 4
        if kind in (0, 1):
            lines.append(b"bench.mem.requests.c%d:1|c|#env:prod" % i)
        elif kind == 2:
            lines.append(b"bench.mem.queue.g%d:%d|g" % (i, i))
        else:
            lines.append(b"bench.mem.latency.t%d:%d|ms" % (i, i % 1000))
    return lines


#: The agent's default flush interval: one flush per 10 s slot of the raw tier (a shorter interval
#: adds running sums for the slots that take several flushes, ~32 bytes per stored series).
MEMORY_FLUSH_INTERVAL = 10


def run_memory(sender: Path, scratch: Path, workers: int, idle_seconds: float = 0.0) -> dict[str, Any]:
    """RSS per idle active series: 100k series sent once, flushed, then idle within the TTL;
    with ``idle_seconds``, also the RSS that long after the send (the series still idle and
    emitted every flush: what a long idle stretch adds, e.g. points held in the storage head)."""
    lines = _memory_lines()
    workload = series_workload(scratch, "memory.bin", lines, 20)
    interval = MEMORY_FLUSH_INTERVAL
    system = StatsYard(workers, interval, scratch)
    wait_quiet()
    with system.running() as agent:
        time.sleep(3)
        pids = process_tree(agent.process.pid)
        before_main, before_all = rss(pids[:1]), rss(pids)
        seconds = 1.0
        send(sender, workload, agent.udp_port, len(lines) / seconds, seconds)
        sent_at = time.monotonic()
        time.sleep(2.5 * interval)  # two flushes: every series has been flushed and is idle now
        metrics = agent.metrics()
        # RSS over two more flush intervals, every 0.1 s: the least is the idle state between
        # flushes, the most includes a flush's and a write's temporaries (475k stored series).
        # A quiet worker that forgot its series is replaced by a fresh process (the workers'
        # recycling): samples count only once the same processes have run for 2 s, so none is
        # taken while a worker is missing or still starting.
        samples = []
        stable_pids, stable_since = pids, time.monotonic()
        for _ in range(20 * interval):
            now_pids = process_tree(agent.process.pid)
            if sorted(now_pids) != sorted(stable_pids) or len(now_pids) != len(pids):
                stable_pids, stable_since = now_pids, time.monotonic()
            elif time.monotonic() - stable_since >= 2.0:
                samples.append((rss(now_pids[:1]), rss(now_pids)))
            time.sleep(0.1)
        if not samples:
            raise RuntimeError("the agent's processes never stayed the same for 2 s")
        recycles = agent.metrics().get("statsyard_ingest_worker_recycles_total", 0)
        after_idle = None
        if idle_seconds:
            time.sleep(max(0.0, sent_at + idle_seconds - time.monotonic()))
            after_idle = rss(process_tree(agent.process.pid))
    series = max(metrics.get("statsyard_series_active", 0), 1)
    after_main, after_all = min(m for m, _ in samples), min(a for _, a in samples)
    peak_main, peak_all = max(m for m, _ in samples), max(a for _, a in samples)
    result = {
        "workers": workers,
        "series": series,
        "main_bytes_per_series": (after_main - before_main) / series,
        "all_bytes_per_series": (after_all - before_all) / series,
        "main_bytes_per_series_in_flush": (peak_main - before_main) / series,
        "all_bytes_per_series_in_flush": (peak_all - before_all) / series,
        "main_rss_bytes": after_main,
        "all_rss_bytes": after_all,
        "worker_recycles": recycles,
        "idle_seconds": idle_seconds,
        "all_bytes_per_series_after_idle": None if after_idle is None else (after_idle - before_all) / series,
    }
    log(
        f"  workers={workers}: {series:.0f} idle series: agent process "
        f"{result['main_bytes_per_series']:.0f} B/series between flushes "
        f"({result['main_bytes_per_series_in_flush']:.0f} at most, in a flush), with workers "
        f"{result['all_bytes_per_series']:.0f} ({result['all_bytes_per_series_in_flush']:.0f}) B/series "
        f"(RSS {after_main / 2**20:.0f} MiB, all {after_all / 2**20:.0f} MiB; "
        f"{recycles:.0f} workers recycled)"
        + (
            f"; all processes {(after_idle - before_all) / series:.0f} B/series "
            f"{idle_seconds:.0f} s after the send"
            if after_idle is not None
            else ""
        )
    )
    return result


# -- main -----------------------------------------------------------------------------------------


@dataclass
class Report:
    machine: dict[str, Any] = field(default_factory=dict)
    loops: list[dict[str, Any]] = field(default_factory=list)
    best: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    flush: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    memory_split: dict[str, Any] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node or "absent",
        "rmem_max": int(Path("/proc/sys/net/core/rmem_max").read_text()),
        "loadavg_at_start": os.getloadavg(),
    }


def print_table(report: Report) -> None:
    print()
    print(
        f"Machine: {report.machine.get('cpu')}, {report.machine.get('cpus')} CPUs, kernel "
        f"{report.machine.get('kernel')}, Python {report.machine.get('python')}, node "
        f"{report.machine.get('node')}; loopback; net.core.rmem_max={report.machine.get('rmem_max')}"
    )
    if report.loops:
        print("\nReceive-loop options (bare receivers, overloaded; lines/s handled, CPU per line):")
        print(f"{'engine':10} {'io':8} {'procs':>5} {'lines/s':>12} {'µs CPU/line':>12}")
        for row in report.loops:
            print(
                f"{row['engine']:10} {row['io']:8} {row['processes']:>5} {row['lines_per_s']:>12,.0f} "
                f"{row['cpu_us_per_line']:>12.2f}"
            )
    if report.best:
        print("\nHighest offered rate with < 0.1 % loss of counter increments (flushed totals vs sent):")
        print(
            f"{'system':30} {'lines/dgram':>11} {'lines/s':>12} {'datagrams/s':>12} {'CPU s/M lines':>14} "
            f"{'peak RSS MiB':>13} {'ours/theirs':>12}"
        )
        theirs: dict[int, dict[str, Any]] = {}  # the better Etsy variant per datagram size
        for row in report.best:
            best = theirs.get(row["lines_per_datagram"])
            if row["system"].startswith("Etsy") and (
                best is None or row["lines_per_s"] > best["lines_per_s"]
            ):
                theirs[row["lines_per_datagram"]] = row
        for row in report.best:
            etsy = theirs.get(row["lines_per_datagram"])
            ratio = (
                f"{row['lines_per_s'] / etsy['lines_per_s']:.1f}x"
                if etsy and not row["system"].startswith("Etsy") and etsy["lines_per_s"]
                else ""
            )
            print(
                f"{row['system']:30} {row['lines_per_datagram']:>11} {row['lines_per_s']:>12,.0f} "
                f"{row['lines_per_s'] / row['lines_per_datagram']:>12,.0f} {row['cpu_s_per_m_lines']:>14.2f} "
                f"{row['peak_rss_bytes'] / 2**20:>13.0f} {ratio:>12}"
            )
    if report.flush:
        print("\nFlush never stalls ingest (100k series, ~1M timer samples per 10 s interval):")
        for row in report.flush:
            warm_flush, warm_write = row["warmup_mean_flush_s"] * 1e3, row["warmup_mean_write_s"] * 1e3
            print(
                f"  workers={row['workers']}, {row['lines_per_s']:,.0f} lines/s, "
                f"{row['series_active']:.0f} series:\n"
                f"    warm-up, every series new: {row['warmup_flushes']:.0f} flushes, mean flush "
                f"{warm_flush:.0f} ms, mean write {warm_write:.0f} ms, "
                f"kernel drops {row['warmup_kernel_drops']:.0f}\n"
                f"    steady {row['seconds']:.0f} s: {row['flushes_during_send']:.0f} flushes, mean flush "
                f"{row['mean_flush_s'] * 1e3:.0f} ms ({row['flushes_over_500ms']:.0f} over 500 ms), "
                f"mean write {row['mean_write_s'] * 1e3:.0f} ms, kernel "
                f"drops {row['kernel_drops']:.0f}\n"
                f"    counter loss over both: {row['counter_loss'] * 100:.3f} %"
            )
    if report.memory:
        print("\nRSS per idle active series (100k series: 50k counters, 25k gauges, 25k timers):")
        for row in report.memory:
            print(
                f"  workers={row['workers']}: agent process {row['main_bytes_per_series']:.0f} B/series "
                f"between flushes ({row['main_bytes_per_series_in_flush']:.0f} at most, in a flush), "
                f"all processes {row['all_bytes_per_series']:.0f} "
                f"({row['all_bytes_per_series_in_flush']:.0f})"
            )
        split = report.memory_split
        if split:
            print(
                f"  split (one process): receive path {split['receive_bytes_per_series']:.0f} B/series; "
                f"aggregator + storage {split['after_receive_bytes_per_series']:.0f} B/series "
                f"({split['stored_series']:,} stored series); storage alone "
                f"{split['storage_bytes_per_stored_series']:.0f} B per stored series"
            )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--receiver":
        mode, engine, port, processes = sys.argv[2:6]
        loops_receiver(mode, engine, int(port), int(processes))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-split":
        print(json.dumps(memory_split()))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default="loops,table,flush,memory")
    parser.add_argument("--seconds", type=float, default=6.0, help="send time per trial")
    parser.add_argument("--workers", default="0,1,2", help="StatsYard ingest worker counts to measure")
    parser.add_argument("--single-workers", default="0,2", help="worker counts for the 1-line case")
    parser.add_argument("--flush-interval", type=int, default=5, help="both systems, seconds")
    parser.add_argument("--no-etsy", action="store_true", help="skip Etsy statsd (needs node/npm)")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--memory-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="memory part: also measure RSS this long after the send (series idle all along)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))

    report = Report(machine=machine())
    DEPS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        scratch = Path(tmp)
        sender = build_sender(scratch)
        batched = build_workload(scratch, 20, 40_000)
        single = build_workload(scratch, 1, 200_000)
        if "loops" in parts:
            log(f"receive loops ({loadavg()})")
            report.loops = run_loops(sender, batched, args.seconds)
        if "table" in parts:
            systems: list[tuple[Any, Callable[..., Trial], list[tuple[Workload, float]]]] = []
            if not args.no_etsy:
                for rcvbuf in (0, 8 << 20):
                    etsy = Etsy(args.flush_interval, scratch, rcvbuf)
                    systems.append((etsy, trial_etsy, [(batched, 100_000), (single, 50_000)]))
            for workers in (int(w) for w in args.workers.split(",")):
                cases = [(batched, 300_000)]
                if str(workers) in args.single_workers.split(","):
                    cases.append((single, 100_000))
                systems.append((StatsYard(workers, args.flush_interval, scratch), trial_statsyard, cases))
            for system, run_trial, cases in systems:
                for workload, start in cases:
                    log(f"{system.name}, {workload.lines_per_datagram} lines per datagram ({loadavg()})")

                    def run(
                        rate: float,
                        system: Any = system,
                        run_trial: Any = run_trial,
                        workload: Workload = workload,
                    ) -> Trial:
                        return run_trial(system, sender, workload, rate, args.seconds)

                    best, trials = search(run, start)
                    report.trials += [asdict(t) for t in trials]
                    if best is not None:
                        row = asdict(best)
                        row["lines_per_s"] = best.offered_lines_per_s
                        report.best.append(row)
        if "flush" in parts:
            log(f"flush never stalls ingest ({loadavg()})")
            for workers in (2, 0):
                report.flush.append(run_flush_check(sender, scratch, max(args.seconds, 30.0), workers))
        if "memory" in parts:
            log(f"memory per idle series ({loadavg()})")
            for workers in (2, 0):
                report.memory.append(run_memory(sender, scratch, workers, args.memory_idle))
            wait_quiet()
            split = subprocess.run(
                [sys.executable, __file__, "--memory-split"], capture_output=True, text=True, check=True
            )
            report.memory_split = json.loads(split.stdout)
            log(f"  split: {report.memory_split}")
    report.machine["loadavg_at_end"] = os.getloadavg()
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    print(f"\n{loadavg()}; command: python bench/ingest.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
