"""Cost of the StatsD relay on the receive path; prints figures, asserts nothing.

    python bench/forward_relay.py

Times :meth:`StatsdRelay.relay` (split lines, pick the owner on the hash ring, buffer, send a
datagram whenever a buffer is full) on datagrams of 1 and 20 lines over 2,000 distinct names and
3 upstreams (local UDP sockets that nobody reads: the kernel drops what overflows), next to the
parser's cost for the same datagrams, so the relay's share of the receive path is visible.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statsyard_agent._protocol import Parser, ParserConfig
from statsyard_agent.forward import StatsdRelay, parse_sink


def main() -> None:
    sinks = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sinks.append(sock)
    url = "statsd://" + ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in sinks)
    relay = StatsdRelay(parse_sink(url, "forward[0]"))
    relay.connect(relay.resolve())
    parser = Parser(ParserConfig())
    names = [f"service{i % 50}.endpoint{i}.requests" for i in range(2000)]
    for per_datagram in (1, 20):
        datagrams = [
            "\n".join(f"{names[(i + j) % 2000]}:1|c|#env:prod" for j in range(per_datagram)).encode()
            for i in range(0, 20_000, per_datagram)
        ]
        lines = sum(d.count(b"\n") + 1 for d in datagrams)
        for label, fn in (("relay", relay.relay), ("parse", parser.parse_datagram)):
            best = float("inf")
            for _ in range(5):
                started = time.perf_counter()
                for datagram in datagrams:
                    fn(datagram)
                relay.flush()
                best = min(best, time.perf_counter() - started)
            print(f"  {per_datagram:2d} lines/datagram  {label:<5} {best / lines * 1e9:6.0f} ns/line")
    relay.close()
    for sock in sinks:
        sock.close()


if __name__ == "__main__":
    main()
