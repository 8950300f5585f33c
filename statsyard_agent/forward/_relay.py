"""The StatsD relay: raw lines to upstream aggregators, each metric name always to the same one.

This is Etsy statsd's proxy model for a two-tier set-up: sidecars aggregate locally *and* repeat
the raw lines upstream, where an aggregator sees every sample of the names it owns (so its
percentiles are fleet-wide). The owner of a name is chosen on a ketama consistent-hash ring, the
continuum of the ``hashring`` npm package that Etsy's proxy uses (MD5; 40 points x 4 per
upstream, keyed ``host:port``), so adding or removing an upstream moves only about 1/N of the
names, and a mixed fleet of this relay and Etsy's proxy agrees on the owners.

Delivery is UDP, as for the applications' own StatsD traffic: at most once, with no spool.
There is no acknowledgement to wait for, and resending counter increments after a restart would
double-count them upstream. Send errors (for example ``ECONNREFUSED`` while an upstream is down)
are counted as dropped lines.

The hot path (:meth:`StatsdRelay.relay`, called for each received datagram) appends lines to a
per-upstream buffer; a buffer is sent when the next line would not fit in ``max_datagram`` and
by :meth:`StatsdRelay.run` every :data:`FLUSH_SECONDS`.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ._config import SinkConfig
from ._sink import SinkCounters

log = logging.getLogger(__name__)

#: A resolved upstream: family, socket type, protocol, and the address to connect to.
Address = tuple[int, int, int, Any]

FLUSH_SECONDS = 0.1
RESOLVE_SECONDS = 30.0
_KEY_CACHE_MAX = 100_000


def _points(digest: bytes) -> list[int]:
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


class HashRing:
    """The ketama continuum of ``hashring`` (npm) for equally weighted nodes."""

    def __init__(self, nodes: Sequence[str], vnodes: int = 40, replicas: int = 4) -> None:
        if not nodes:
            raise ValueError("a hash ring needs at least one node")
        self.nodes = tuple(nodes)
        ring: list[tuple[int, int]] = []
        # The npm package's arithmetic, float rounding included: floor(w / total * vnodes * n).
        length = math.floor(1 / len(nodes) * vnodes * len(nodes))
        for index, node in enumerate(nodes):
            for i in range(length):
                digest = hashlib.md5(f"{node}-{i}".encode(), usedforsecurity=False).digest()
                ring.extend((point, index) for point in _points(digest)[:replicas])
        ring.sort(key=lambda item: item[0])  # stable: equal points keep the node order
        self._values = [value for value, _ in ring]
        self._owners = [owner for _, owner in ring]

    def index_for(self, key: bytes) -> int:
        """Index (in ``nodes``) of the node owning ``key``: the first point >= its hash."""
        value = _points(hashlib.md5(key, usedforsecurity=False).digest())[0]
        position = bisect.bisect_left(self._values, value)
        return self._owners[position if position < len(self._values) else 0]


def metric_key(line: bytes) -> bytes:
    """The part of a StatsD line that picks its upstream: the metric name (up to ``:``), or
    for a service check the ``_sc`` marker, so all of one name's lines meet in one place."""
    key = line.partition(b":")[0]
    return key.partition(b"|")[0] if b"|" in key else key


class StatsdRelay:
    """Buffers and sends raw lines to the ring's upstreams over connected UDP sockets."""

    DROP_REASONS = ("send_error",)

    def __init__(self, config: SinkConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.counters = SinkCounters()
        self.ring = HashRing([_node_name(host, port) for host, port in config.endpoints])
        self._clock = clock
        self._sockets: list[socket.socket | None] = [None] * len(config.endpoints)
        self._addresses: list[Address | None] = [None] * len(config.endpoints)
        self._buffers = [bytearray() for _ in config.endpoints]
        self._lines = [0] * len(config.endpoints)
        self._since: float | None = None
        self._owners: dict[bytes, int] = {}
        self.description = "statsd " + ",".join(_node_name(h, p) for h, p in config.endpoints)

    @property
    def name(self) -> str:
        return self.config.name

    def resolve(self) -> list[Address | None]:
        """Blocking (worker thread): look up every upstream; None for a name that does not
        resolve now (its lines are dropped and counted until it does)."""
        addresses: list[Address | None] = []
        for host, port in self.config.endpoints:
            try:
                family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            except OSError as exc:
                log.warning("statsd relay %s: cannot resolve %s: %s", self.name, host, exc)
                addresses.append(None)
            else:
                addresses.append((family, kind, proto, address))
        return addresses

    def connect(self, addresses: list[Address | None]) -> None:
        """(Re)connect each upstream's socket to its resolved address (non-blocking)."""
        for index, resolved in enumerate(addresses):
            if resolved is None or resolved == self._addresses[index]:
                continue
            family, kind, proto, address = resolved
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.connect(address)
            except OSError as exc:
                sock.close()
                log.warning("statsd relay %s: cannot use %s: %s", self.name, address, exc)
                continue
            old = self._sockets[index]
            self._sockets[index] = sock
            self._addresses[index] = resolved
            if old is not None:
                old.close()

    def relay(self, data: bytes) -> None:
        """Queue every line of one datagram for its upstream (the receive path: cheap)."""
        owners = self._owners
        ring = self.ring
        buffers = self._buffers
        lines = self._lines
        limit = self.config.max_datagram
        for line in data.split(b"\n"):
            if not line:
                continue
            key = line.partition(b":")[0]  # metric_key, inlined: this runs per line
            if b"|" in key:
                key = key.partition(b"|")[0]
            index = owners.get(key)
            if index is None:
                if len(owners) >= _KEY_CACHE_MAX:
                    owners.clear()
                index = owners[key] = ring.index_for(key)
            buffer = buffers[index]
            if buffer and len(buffer) + len(line) >= limit:
                self._send(index)
            buffer += line
            buffer += b"\n"
            lines[index] += 1
        if self._since is None:
            self._since = self._clock()

    def flush(self) -> None:
        """Send every non-empty buffer now."""
        for index, buffer in enumerate(self._buffers):
            if buffer:
                self._send(index)
        self._since = None

    def _send(self, index: int) -> None:
        buffer = self._buffers[index]
        count = self._lines[index]
        payload = bytes(buffer[:-1])  # without the last newline
        buffer.clear()
        self._lines[index] = 0
        counters = self.counters
        sock = self._sockets[index]
        try:
            if sock is None:
                raise OSError(f"{self.config.endpoints[index][0]} is not resolved")
            sock.send(payload)
        except OSError as exc:
            counters.dropped_points["send_error"] += count
            counters.send_failures += 1
            counters.consecutive_failures += 1
            counters.last_error = f"{self.ring.nodes[index]}: {exc.strerror or exc}"
            return
        counters.sent_points += count
        counters.consecutive_failures = 0
        counters.last_success_unix = self._clock()

    @property
    def buffered_bytes(self) -> int:
        return sum(len(buffer) for buffer in self._buffers)

    def lag_seconds(self) -> float:
        return max(0.0, self._clock() - self._since) if self._since is not None else 0.0

    async def run(self) -> None:
        """Send the buffers every FLUSH_SECONDS, and look the upstreams up again every
        RESOLVE_SECONDS (DNS answers change: a rescheduled aggregator pod gets a new address)."""
        next_resolve = trio.current_time() + RESOLVE_SECONDS
        while True:
            await trio.sleep(FLUSH_SECONDS)
            self.flush()
            if trio.current_time() >= next_resolve:
                next_resolve = trio.current_time() + RESOLVE_SECONDS
                self.connect(await trio.to_thread.run_sync(self.resolve))

    def problems(self) -> list[str]:
        return []  # UDP: no acknowledgement, so "behind" cannot be known; see /metrics

    def health(self) -> dict[str, object]:
        counters = self.counters
        return {
            "kind": "statsd",
            "target": self.description,
            "buffered_bytes": self.buffered_bytes,
            "sent_lines": counters.sent_points,
            "dropped_lines": sum(counters.dropped_points.values()),
            "last_error": counters.last_error,
        }

    def close(self) -> None:
        for index, sock in enumerate(self._sockets):
            if sock is not None:
                sock.close()
                self._sockets[index] = None


def _node_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
