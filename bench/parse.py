"""How many lines per second the parser handles on one core, for a realistic traffic mix.

    python bench/parse.py [--series 2000] [--lines 200000] [--repeat 5] [--seed 1]

The mix: 40% counters with DogStatsD tags, 25% timers with a sample rate (some with tags),
20% gauges (a quarter of them signed deltas), 15% sets; names drawn from ``--series`` distinct
series, packed into datagrams of at most 1432 bytes as client libraries do. Prints the best of
``--repeat`` runs for: the mix through ``parse_datagram`` with warm caches (steady state), the same
with every cache cleared before each datagram (a first-contact flood), a mix of all-unique
names (an attacker defeating the caches), and the mix through ``parse_line`` one line at a time.
Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from statsyard_agent._protocol import Parser

_DATAGRAM_BYTES = 1432


def make_lines(rng: random.Random, count: int, series: int, unique: bool = False) -> list[bytes]:
    services = ["api", "web", "worker", "billing", "search"]
    endpoints = ["/v1/users", "/v1/orders", "/health", "/v2/search", "/login"]
    lines: list[bytes] = []
    for i in range(count):
        n = i if unique else rng.randrange(series)
        kind = rng.random()
        svc = services[n % len(services)]
        if kind < 0.40:
            line = (
                f"app.{svc}.requests.n{n}:1|c|#env:prod,service:{svc},"
                f"endpoint:{endpoints[n % 5]},status:{rng.choice((200, 200, 200, 404, 500))}"
            )
        elif kind < 0.65:
            tags = f"|#db:{svc}" if n % 2 else ""
            line = f"app.{svc}.db.query_time.n{n}:{rng.uniform(0.1, 250):.1f}|ms|@0.1{tags}"
        elif kind < 0.85:
            value = rng.randrange(1000)
            line = f"app.{svc}.queue.depth.n{n}:{'+' if rng.random() < 0.25 else ''}{value}|g"
        else:
            line = f"app.{svc}.users.unique.n{n}:user{rng.randrange(5000)}|s"
        lines.append(line.encode())
    return lines


def pack(lines: list[bytes]) -> list[bytes]:
    datagrams: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and size + len(line) + 1 > _DATAGRAM_BYTES:
            datagrams.append(b"\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        datagrams.append(b"\n".join(current))
    return datagrams


def best_rate(run: Callable[[], int], repeat: int) -> tuple[float, int]:
    best = 0.0
    lines = 0
    for _ in range(repeat):
        start = time.perf_counter()
        lines = run()
        elapsed = time.perf_counter() - start
        best = max(best, lines / elapsed)
    return best, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    lines = make_lines(rng, args.lines, args.series)
    datagrams = pack(lines)
    unique_datagrams = pack(make_lines(rng, args.lines, args.series, unique=True))
    print(
        f"{len(lines)} lines in {len(datagrams)} datagrams "
        f"(avg {sum(map(len, datagrams)) / len(datagrams):.0f} bytes), {args.series} series"
    )

    parser = Parser()

    def warm() -> int:
        n = 0
        for d in datagrams:
            result = parser.parse_datagram(d)
            n += result.lines
            assert not result.errors, result.errors[:3]
        return n

    def cold() -> int:
        n = 0
        for d in datagrams:
            n += Parser().parse_datagram(d).lines  # new, empty caches for every datagram
        return n

    def unique() -> int:
        n = 0
        for d in unique_datagrams:
            n += parser.parse_datagram(d).lines
        return n

    def per_line() -> int:
        for line in lines:
            parser.parse_line(line)
        return len(lines)

    warm()  # fill the caches
    for label, run in (
        ("parse_datagram, warm caches (steady state)", warm),
        ("parse_datagram, caches empty per datagram", cold),
        ("parse_datagram, every name unique (cache-defeating)", unique),
        ("parse_line, one call per line, warm caches", per_line),
    ):
        rate, n = best_rate(run, args.repeat)
        print(f"{label:55s} {rate / 1000:8.0f}k lines/s  ({n} lines, best of {args.repeat})")


if __name__ == "__main__":
    main()
