"""What origin detection and agent tags cost: the Unix path against the UDP path, per line.

    python bench/unix_origin.py [--series 2000] [--lines 200000] [--repeat 5] [--batch-series 100000]

Prints the best of ``--repeat`` runs for:

1. in process, per line (parse + aggregate), the same datagrams (bench/parse.py's traffic mix,
   packed to 1432 bytes): the UDP handler (``AgentState.handle_datagrams``); the Unix handler
   without origin tags; with three origin tags (``process``, ``pod_uid``, ``container_id``);
2. over real sockets, datagrams read per second by the agent's own drain loops, from a sender
   process that pre-filled the kernel queue: UDP ``recv_into`` against Unix ``recvmsg_into``
   with SO_PASSCRED and the origin lookup (cache hits), parse and aggregate included;
3. an origin lookup that misses the cache (reads /proc/PID/comm and /proc/PID/cgroup);
4. adding agent-wide tags to a flushed batch (``BatchTagger.apply``), per point.

Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import select
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parse import make_lines, pack

from statsyard_agent._aggregate import Aggregator
from statsyard_agent._config import UnixConfig, build_config
from statsyard_agent._faults import FaultInjector
from statsyard_agent._origin import OriginResolver
from statsyard_agent._protocol import Parser
from statsyard_agent._queue import BatchQueue
from statsyard_agent._state import AgentState
from statsyard_agent._tags import BatchTagger
from statsyard_agent._types import FlushBatch, Rollup
from statsyard_agent._udp import drain_socket
from statsyard_agent._unix import UnixListener

ORIGIN = (("container_id", "ab" * 32), ("pod_uid", "1b2c3d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"),
          ("process", "gunicorn"))


def new_state() -> AgentState:
    config = build_config({})
    return AgentState(config=config, parser=Parser(config.parser),
                      aggregator=Aggregator(config.aggregator), tsdb=None,  # type: ignore[arg-type]
                      faults=FaultInjector(), queue=BatchQueue(10))


def best(repeat: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(repeat))


def in_process(datagrams: list[bytes], lines: int, repeat: int, sock_dir: Path) -> None:
    """Each run starts cold (fresh state, parser and listener), as after an agent start."""

    def udp() -> float:
        state = new_state()
        started = time.perf_counter()
        for data in datagrams:
            state.handle_datagrams([data])
        return time.perf_counter() - started

    def unix(extra: Any) -> Callable[[], float]:
        def run() -> float:
            state = new_state()
            listener = UnixListener.open(UnixConfig(sock_dir / "a.sock"), build_config({}).parser,
                                         "high")
            started = time.perf_counter()
            for data in datagrams:
                listener.handle(state, data, extra)
            seconds = time.perf_counter() - started
            listener.close()
            return seconds
        return run

    print(f"1. parse + pre-aggregate, {lines} lines in {len(datagrams)} datagrams (per line):")
    runs = {"UDP handler": udp, "Unix, no origin tags": unix(()), "Unix, 3 origin tags": unix(ORIGIN)}
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeat):  # interleaved, so a busy machine slows all three alike
        for label, run in runs.items():
            times[label].append(run())
    base = min(times["UDP handler"])
    for label, values in times.items():
        seconds = min(values)
        print(f"   {label:24s} {seconds / lines * 1e9:7.0f} ns/line  "
              f"{lines / seconds / 1e3:6.0f} k lines/s  ({seconds / base:4.2f}x UDP)")


SENDER = r"""
import socket, sys
family, address, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = open(sys.argv[4], "rb").read().split(b"\0")
if family == "udp":
    host, port = address.rsplit(":", 1)
    target = (host, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
else:
    target = address
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for i in range(count):
    sock.sendto(payload[i % len(payload)], target)
"""


def over_sockets(datagrams: list[bytes], repeat: int, sock_dir: Path) -> None:
    """The time the receiver spends in its drain loop per datagram (recvmsg, origin lookup,
    parse, pre-aggregate), while a sender process sends as fast as it can."""
    count = 20_000
    payload = sock_dir / "payload"
    payload.write_bytes(b"\0".join(datagrams[:500]))
    lines_per = sum(d.count(b"\n") + 1 for d in datagrams[:500]) / 500
    import subprocess

    received: dict[str, int] = {}

    def run(family: str) -> float:
        state = new_state()
        if family == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            address = f"127.0.0.1:{sock.getsockname()[1]}"
            buffer = bytearray(65535)

            def drain() -> int:
                return drain_socket(state, sock, buffer)
            close = sock.close
        else:
            path = sock_dir / f"{family}.sock"
            listener = UnixListener.open(UnixConfig(path, origin_detection=family == "unix+origin"),
                                         build_config({}).parser, "high")
            address = str(path)

            def drain() -> int:
                return listener.drain(state)
            close = listener.close
        sock_fd = sock if family == "udp" else listener.sock
        sender = subprocess.Popen([sys.executable, "-c", SENDER, family.split("+")[0], address,
                                   str(count), str(payload)])
        got = 0
        busy = 0.0  # time inside the drain loop: the agent's cost, whatever the sender does
        # until everything arrived, or 2 s of silence (UDP drops what overflows the buffer)
        while got < count and select.select([sock_fd], [], [], 2)[0]:
            started = time.perf_counter()
            got += drain()
            busy += time.perf_counter() - started
        sender.wait()
        close()
        received[family] = got
        return busy / max(got, 1)

    print(f"2. real sockets, {count} datagrams of ~{lines_per:.0f} lines from a sender process "
          "(time in the agent's drain loop per datagram):")
    for family in ("udp", "unix", "unix+origin"):
        seconds = best(repeat, lambda family=family: run(family))  # type: ignore[misc]
        print(f"   {family:24s} {seconds * 1e6:7.1f} us/datagram  {1 / seconds / 1e3:6.1f} k datagrams/s"
              f"  (last run: {received[family]} of {count} received)")


def origin_lookup(repeat: int) -> None:
    pid = os.getpid()
    resolver = OriginResolver("high", max_entries=1)

    def miss() -> float:
        started = time.perf_counter()
        for _ in range(2000):
            resolver.tags_for(pid)
            resolver.tags_for(1)  # evicts pid: the next lookup misses again
        return (time.perf_counter() - started) / 4000

    hit = OriginResolver("high")
    hit.tags_for(pid)

    def cached() -> float:
        started = time.perf_counter()
        for _ in range(100_000):
            hit.tags_for(pid)
        return (time.perf_counter() - started) / 100_000

    print(f"3. origin lookup: miss {best(repeat, miss) * 1e6:.1f} us (two /proc reads), "
          f"hit {best(repeat, cached) * 1e9:.0f} ns")


def batch_tags(series: int, repeat: int) -> None:
    rng = random.Random(1)
    tag_sets = [(("endpoint", f"/e{rng.randrange(50)}"), ("env", "prod"), ("status", "200"))
                for _ in range(series)]
    per_series = 14  # a timer: count, count_ps, sum, ..., upper_90
    names = tuple(f"stats.timers.t{i}.s{j}" for i in range(series) for j in range(per_series))
    tags = tuple(t for t in tag_sets for _ in range(per_series))
    batch = FlushBatch(0, 10.0, names, tags, (Rollup.SUM,) * len(names), np.zeros(len(names)))
    tagger = BatchTagger((("kube_namespace", "shop"), ("kube_node", "node-3")))

    def run() -> float:
        started = time.perf_counter()
        tagger.apply(batch)
        return time.perf_counter() - started

    seconds = best(repeat, run)
    print(f"4. agent tags on a flushed batch: {len(names)} points ({series} timer series) in "
          f"{seconds * 1e3:.0f} ms, {seconds / len(names) * 1e9:.0f} ns/point (flusher thread)")


def main() -> None:
    logging.getLogger("statsyard_agent").setLevel(logging.ERROR)  # the qlen warning, per open
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-series", type=int, default=100_000)
    args = parser.parse_args()
    lines = make_lines(random.Random(1), args.lines, args.series)
    datagrams = pack(lines)
    with tempfile.TemporaryDirectory(prefix="sy-bench-", dir="/tmp") as tmp:
        in_process(datagrams, len(lines), args.repeat, Path(tmp))
        over_sockets(datagrams, args.repeat, Path(tmp))
    origin_lookup(args.repeat)
    batch_tags(args.batch_series, args.repeat)


if __name__ == "__main__":
    main()
