"""A whole-line cache in front of the pre-aggregator's prefix cache: measured, not adopted.

    PYTHONPATH=. python bench/line_cache.py

An exact line seen before (with a value already in the value cache) goes straight to its slot
with its value pre-multiplied, skipping the two ``partition`` calls and two dict lookups; every
other line takes the normal path. Prints ns per line in process on the bench/ingest.py mix for
the shipped pre-aggregator, the cache for every kind, and the cache for counters only.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import make_lines

from statsyard_agent import _ingest as m
from statsyard_agent._ingest import PreAggregator, SimpleCounts
from statsyard_agent._protocol import Parser

_COUNTER, _GAUGE, _SAMPLES, _SET, _PLUS, _MINUS = m._COUNTER, m._GAUGE, m._SAMPLES, m._SET, m._PLUS, m._MINUS
_DELTA = 4
LIMIT = 65536


class LineCached(PreAggregator):
    """The pre-aggregator with a whole-line cache in front: line -> (code, cell, value)."""

    __slots__ = ("_counters_only", "_lines")

    def __init__(self, parser: Parser, counts: SimpleCounts, max_series: int, counters_only: bool) -> None:
        super().__init__(parser, counts, max_series)
        self._lines: dict[bytes, tuple[int, Any, float]] = {}
        self._counters_only = counters_only

    def feed(self, data: bytes) -> None:
        self._fed += 1
        parts = data.split(b"\n")
        if not parts[-1]:
            parts.pop()
        bound = self._bound
        values = self._values
        lines = self._lines
        long_lines = len(data) > self._max_line
        slow = 0
        for line in parts:
            hit = lines.get(line)
            if hit is not None:
                code, cell, v = hit
                try:
                    if code == _COUNTER:
                        cell[0] += v
                    elif code == _SAMPLES:
                        cell[0].append(v)
                    elif code == _GAUGE:
                        cell[0] = 1.0
                        cell[1] = v
                    else:
                        cell[1] += v
                    continue
                except IndexError:
                    del lines[line]
            name, _, rest = line.partition(b":")
            raw, _, tail = rest.partition(b"|")
            slot = bound.get((name, tail))
            if slot is None or (long_lines and len(line) > self._max_line):
                slow += 1
                self._slow(line, name, raw, tail)
                continue
            code, cell, factor = slot
            if code == _SET:
                if not raw or b":" in raw:
                    slow += 1
                    self._parse_line(line)
                    continue
                try:
                    member = raw.decode()
                except UnicodeDecodeError:
                    slow += 1
                    self._parse_line(line)
                    continue
                try:
                    cell[0].add(member)
                except IndexError:
                    slow += 1
                    del bound[(name, tail)]
                    self._slow(line, name, raw, tail)
                continue
            value = values.get(raw)
            repeated = value is not None
            if value is None:
                value = self._value(raw)
                if value is None:
                    slow += 1
                    self._parse_line(line)
                    continue
            try:
                if code == _COUNTER:
                    v = value * factor
                    cell[0] += v
                elif code == _SAMPLES:
                    v = value
                    cell[0].append(value)
                elif factor and (raw[0] == _PLUS or raw[0] == _MINUS):
                    v = value
                    code = _DELTA
                    cell[1] += value
                else:
                    v = value
                    cell[0] = 1.0
                    cell[1] = value
            except IndexError:
                slow += 1
                del bound[(name, tail)]
                self._slow(line, name, raw, tail)
                continue
            if repeated and (code == _COUNTER or not self._counters_only):
                if len(lines) >= LIMIT:
                    lines.clear()
                lines[line] = (code, cell, v)
        fast = len(parts) - slow
        counts = self._counts
        counts.lines += fast
        counts.metrics += fast


def main() -> None:
    lines = [line for line, _ in make_lines(400_000)]
    datagrams = [b"\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    variants: list[tuple[str, Any]] = [
        ("prefix cache (shipped)", lambda: PreAggregator(Parser(), SimpleCounts(), 1_000_000)),
        ("+ line cache, every kind", lambda: LineCached(Parser(), SimpleCounts(), 1_000_000, False)),
        ("+ line cache, counters", lambda: LineCached(Parser(), SimpleCounts(), 1_000_000, True)),
    ]
    for label, make in variants * 2:
        preagg = make()
        for datagram in datagrams[:5000]:
            preagg.feed(datagram)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for datagram in datagrams:
                preagg.feed(datagram)
            best = min(best, time.perf_counter() - started)
            preagg.take()
        print(f"{label:28} {best / len(lines) * 1e9:6.0f} ns/line")


if __name__ == "__main__":
    main()
