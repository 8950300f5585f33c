"""End-to-end forwarding throughput into a local VictoriaMetrics; prints figures, asserts nothing.

    python bench/forward_vm.py [POINTS_PER_FLUSH] [FLUSHES]

Starts Debian's ``victoria-metrics`` on loopback (temporary directory, ports picked), then for
each sink kind (Graphite plaintext, remote write) and fsync on/off: spools FLUSHES batches of
POINTS_PER_FLUSH points (encode + durable append, timed), then sends the whole backlog as a
sink would after an outage (read + send + confirmation + acknowledgement, timed), and checks
that VictoriaMetrics counted every row. Defaults: 20000 points x 10 flushes.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.forward_encode import make_batch
from statsyard_agent.forward import parse_sink
from statsyard_agent.forward._hub import open_sink


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rows(url: str, kind: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f'vm_rows_inserted_total{{type="{kind}"}}'):
                return int(float(line.split()[-1]))
    return 0


async def run_sink(url: str, spool_root: Path, batches: int, points: int, fsync: bool) -> None:
    sink = open_sink(
        parse_sink(
            {"url": url, "name": f"b{time.monotonic_ns()}", "fsync": fsync, "max_points_per_send": 2000},
            "forward[0]",
        ),
        spool_root,
    )
    base = int(time.time()) - 3600
    started = time.perf_counter()
    for i in range(batches):
        await trio.to_thread.run_sync(sink.spool_batch, i + 1, make_batch(points, base + 10 * i))
    spooled = time.perf_counter() - started
    total = sink.spool.pending_points
    per_point = sink.spool.disk_bytes / total
    started = time.perf_counter()
    while (chunk := await trio.to_thread.run_sync(sink.spool.read, 2000)) is not None:
        await sink.deliver(chunk)
    sent = time.perf_counter() - started
    print(
        f"  {sink.config.kind:<13} fsync={fsync!s:<5} spool {total / spooled / 1e3:7.0f} k points/s"
        f"   send {total / sent / 1e3:7.0f} k points/s   spooled {per_point:4.0f} B/point"
    )
    sink.spool.close()


def main() -> None:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        sys.exit("victoria-metrics is not installed (apt-get install victoria-metrics)")
    points = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    batches = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    with tempfile.TemporaryDirectory() as tmp:
        http, graphite = _free_port(), _free_port()
        vm = subprocess.Popen(
            [
                binary,
                f"-storageDataPath={tmp}/vm",
                f"-httpListenAddr=127.0.0.1:{http}",
                f"-graphiteListenAddr=127.0.0.1:{graphite}",
                "-retentionPeriod=1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{http}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            print(f"{batches} flushes of {points} points each, into VictoriaMetrics on loopback")
            for fsync in (False, True):
                trio.run(run_sink, f"graphite://127.0.0.1:{graphite}", Path(tmp), batches, points, fsync)
                trio.run(
                    run_sink,
                    f"remote-write+http://127.0.0.1:{http}/api/v1/write",
                    Path(tmp),
                    batches,
                    points,
                    fsync,
                )
            time.sleep(2)  # VictoriaMetrics counts rows as its ingesters flush
            print(
                f"  VictoriaMetrics rows: graphite {_rows(url, 'graphite')}, remote write "
                f"{_rows(url, 'promremotewrite')} (expected {2 * points * batches} each)"
            )
        finally:
            vm.terminate()
            vm.wait(60)


if __name__ == "__main__":
    main()
