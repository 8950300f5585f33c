"""The Unix datagram listener (DogStatsD's ``unix://`` transport), with origin detection.

Like the UDP socket, the Unix socket is opened once by the app and outlives the listener task, so
a restarted listener reads the same kernel queue. The socket file is created at start (a stale
one left by a killed agent is removed first; a live one, or anything that is not a socket, is
refused) and removed at shutdown if it is still ours.

With ``origin_detection`` the socket has ``SO_PASSCRED`` set, so the kernel attaches each
sender's pid to its datagram (``SCM_CREDENTIALS``; the sender does nothing). Per datagram the
listener looks up the sender's origin tags (:mod:`statsyard_agent._origin`) and feeds the datagram
to the pre-aggregator of that origin (:mod:`statsyard_agent._ingest`, the UDP path's fast path).
Each origin's pre-aggregator learns its series through a parser that adds the origin's tags to
every metric, event and service check (the series' own tags winning), so a known line costs what
it costs on UDP. The pre-aggregates are merged into the aggregator before each flush. The UDP
path is not involved and pays nothing for this.

Bounds: at most :data:`MAX_ORIGINS` origins hold a pre-aggregator at once; a new one beyond
that first merges the oldest one's data into the aggregator and drops it (it is rebuilt, with
cold caches, if that origin sends again).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.core import Metric as PromMetric
from prometheus_client.registry import Collector

from ._config import UnixConfig
from ._exceptions import ConfigError
from ._ingest import EVICT_AFTER_FLUSHES, PreAggregator
from ._origin import OriginResolver
from ._protocol import Parser, ParserConfig, ParseResult
from ._state import AgentState
from ._tags import BatchTagger, merge_tags
from ._types import Event, Metric, ServiceCheck, Tags

log = logging.getLogger(__name__)

#: Receive buffer per datagram. Larger than UDP's 64 KiB: a Unix datagram is bounded only by the
#: sender's SO_SNDBUF (about 208 KiB by default). A larger datagram is dropped and counted.
MAX_UNIX_DATAGRAM = 256 * 1024
_DRAIN_LIMIT = 512  # datagrams per wakeup, so a flood cannot starve the flusher or HTTP
_CREDENTIALS_SPACE = socket.CMSG_SPACE(12)  # struct ucred: pid, uid, gid
#: Origins (distinct origin tag sets) holding a pre-aggregator at once.
MAX_ORIGINS = 256
#: The kernel queues at most net.unix.max_dgram_qlen datagrams per Unix socket (10 by default):
#: a blocking client then waits, a non-blocking one (the DogStatsD clients' default) drops.
QLEN_SYSCTL = Path("/proc/sys/net/unix/max_dgram_qlen")
_WANTED_QLEN = 512


class UnixListener:
    """The socket, the pre-aggregators per origin, the origin resolver and the counters: owned by
    the app, so they outlive the listener task."""

    def __init__(
        self, sock: socket.socket, path: Path, parser: Parser, resolver: OriginResolver | None
    ) -> None:
        self.sock = sock
        self.path = path
        self.parser = parser
        self.resolver = resolver
        self.packets = 0
        self.bytes = 0
        self.receive_errors = 0
        self.truncated = 0
        st = os.lstat(path)
        self._identity = (st.st_dev, st.st_ino)
        self._buffer = bytearray(MAX_UNIX_DATAGRAM)
        # origin tags -> that origin's pre-aggregator (insertion order: oldest first)
        self._preaggs: dict[Tags, PreAggregator] = {}

    @classmethod
    def open(cls, config: UnixConfig, parser: ParserConfig, cardinality: str) -> UnixListener:
        """Bind the socket at ``config.path`` with ``config.mode``; ConfigError naming ``unix``
        when that cannot be done (missing directory, path in use, not a socket, no permission).

        No SO_RCVBUF: a Unix datagram is charged to the sender's send buffer, and what bounds the
        queue is net.unix.max_dgram_qlen, a count (checked here, with a warning when small)."""
        path = config.path
        assert path is not None
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = False
        try:
            if config.origin_detection:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(str(path))
            bound = True
            os.chmod(path, config.mode)
            sock.setblocking(False)
            resolver = OriginResolver(cardinality) if config.origin_detection else None
            listener = cls(sock, path, Parser(parser), resolver)
        except OSError as exc:
            sock.close()
            if bound:
                _unlink_quietly(path)
            raise ConfigError("unix", f"cannot listen on {path}: {exc.strerror or exc}") from None
        qlen = queue_limit()
        if qlen is not None and qlen < _WANTED_QLEN:
            log.warning(
                "net.unix.max_dgram_qlen is %d: the kernel queues at most %d datagrams for the "
                "Unix socket, and clients that do not block (DogStatsD clients by default) drop "
                "the rest of a burst; raise it with 'sysctl -w net.unix.max_dgram_qlen=%d'",
                qlen,
                qlen,
                _WANTED_QLEN,
            )
        return listener

    def close(self) -> None:
        """Close the socket and remove its file, unless another process has replaced it."""
        self.sock.close()
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            _unlink_quietly(self.path)

    def drain(self, state: AgentState, limit: int = _DRAIN_LIMIT) -> int:
        """Handle up to ``limit`` queued datagrams without blocking; return how many were read."""
        sock = self.sock
        buffer = self._buffer
        view = memoryview(buffer)
        resolver = self.resolver
        count = 0
        while count < limit:
            try:
                if resolver is None:
                    size, _, flags, _ = sock.recvmsg_into([buffer])
                    extra: Tags = ()
                else:
                    size, ancdata, flags, _ = sock.recvmsg_into([buffer], _CREDENTIALS_SPACE)
                    extra = resolver.tags_for(_sender_pid(ancdata))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.receive_errors += 1
                break
            count += 1
            if flags & socket.MSG_TRUNC:
                self.truncated += 1
                continue
            self.handle(state, bytes(view[:size]), extra)
        return count

    def handle(self, state: AgentState, data: bytes, extra: Tags) -> None:
        """Pre-aggregate one datagram as its origin's (``extra``: the origin's tags).

        With a StatsD relay configured the raw datagram goes upstream too, as UDP ones do (without
        the origin tags: those exist only in this agent's series).
        """
        if state.relay is not None:
            state.relay(data)
        self.packets += 1
        self.bytes += len(data)
        preagg = self._preaggs.get(extra)
        if preagg is None:
            preagg = self._new_preaggregator(state, extra)
        preagg.feed(data)

    def _new_preaggregator(self, state: AgentState, extra: Tags) -> PreAggregator:
        preaggs = self._preaggs
        if len(preaggs) >= MAX_ORIGINS:
            oldest = next(iter(preaggs))
            evicted = preaggs.pop(oldest)
            if evicted.pending:
                state.aggregator.merge(evicted.take())
        parser = self.parser if not extra else _OriginParser(self.parser, extra)
        preagg = preaggs[extra] = PreAggregator(
            parser, state.ingest, state.config.aggregator.max_series, EVICT_AFTER_FLUSHES
        )
        return preagg

    async def collect(self, state: AgentState) -> None:
        """Merge every origin's pre-aggregate into the aggregator (before each flush)."""
        aggregator = state.aggregator
        for preagg in self._preaggs.values():
            partial = preagg.take_or_age()
            if partial is not None:
                aggregator.merge(partial)

    @property
    def origins(self) -> int:
        """Origins holding a pre-aggregator now."""
        return len(self._preaggs)


class _OriginParser(Parser):
    """A parser that adds an origin's tags to what it parses; the real work is the shared
    parser's (and its caches). A pre-aggregator learns each series from ``parse_line``."""

    __slots__ = ("_extra", "_inner", "_merged")

    def __init__(self, inner: Parser, extra: Tags) -> None:
        super().__init__(inner.config)
        self._inner = inner
        self._extra = extra
        self._merged: dict[Tags, Tags] = {}  # a sender repeats the same few tag sets

    def _with_origin(self, tags: Tags) -> Tags:
        merged = self._merged.get(tags)
        if merged is None:
            if len(self._merged) >= 4096:
                self._merged.clear()
            merged = self._merged[tags] = merge_tags(tags, self._extra)
        return merged

    def _tagged(self, item: Metric | Event | ServiceCheck) -> Metric | Event | ServiceCheck:
        tags = self._with_origin(item.tags)
        return item if tags is item.tags else item._replace(tags=tags)

    def parse_line(self, line: bytes) -> list[Metric | Event | ServiceCheck]:
        return [self._tagged(item) for item in self._inner.parse_line(line)]

    def parse_datagram(self, data: bytes) -> ParseResult:
        result = self._inner.parse_datagram(data)
        tag = self._with_origin
        result.metrics = [m if (t := tag(m.tags)) is m.tags else m._replace(tags=t) for m in result.metrics]
        result.events = [e._replace(tags=tag(e.tags)) for e in result.events]
        result.service_checks = [c._replace(tags=tag(c.tags)) for c in result.service_checks]
        return result


def queue_limit(path: Path = QLEN_SYSCTL) -> int | None:
    """``net.unix.max_dgram_qlen`` in this network namespace; None if it cannot be read."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def _sender_pid(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 4:
            return int.from_bytes(payload[:4], sys.byteorder, signed=True)
    return 0


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket file no process listens on (left by a killed agent); refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError("unix", f"cannot check {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError("unix", f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.info("removing stale socket %s (nothing listens on it)", path)
        _unlink_quietly(path)
        return
    except OSError as exc:
        raise ConfigError("unix", f"cannot check {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ConfigError("unix", f"{path} is in use by another process (another agent?)")


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc.strerror)


async def run_unix_listener(state: AgentState, listener: UnixListener) -> None:
    """Receive datagrams forever; each is parsed, tagged with its origin and aggregated."""
    faults = state.faults
    while True:
        await trio.lowlevel.wait_readable(listener.sock)
        listener.drain(state)
        faults.check("unix_listener")


class OriginCollector(Collector):
    """Self-metrics of this feature: the Unix listener (if any) and the agent-tag collisions."""

    def __init__(self, tagger: BatchTagger, unix: UnixListener | None) -> None:
        self._tagger = tagger
        self._unix = unix

    def collect(self) -> Iterator[PromMetric]:
        yield CounterMetricFamily(
            "statsyard_agent_tag_collisions",
            "Series flushed without the agent's tags because, with them, they would have been "
            "the same series as one that was sent with those tags explicitly.",
            value=self._tagger.collisions,
        )
        unix = self._unix
        if unix is None:
            return
        for name, doc, value in (
            ("packets_received", "Datagrams received on the Unix socket.", unix.packets),
            ("bytes_received", "Datagram bytes received on the Unix socket.", unix.bytes),
            ("receive_errors", "Socket errors while receiving on the Unix socket.", unix.receive_errors),
            ("truncated", f"Datagrams over {MAX_UNIX_DATAGRAM} bytes, dropped.", unix.truncated),
        ):
            yield CounterMetricFamily(f"statsyard_unix_{name}", doc, value=value)
        qlen = queue_limit()
        if qlen is not None:
            yield GaugeMetricFamily(
                "statsyard_unix_max_dgram_qlen",
                "net.unix.max_dgram_qlen: datagrams the kernel queues for the "
                "socket before senders block or drop.",
                value=qlen,
            )
        resolver = unix.resolver
        if resolver is None:
            return
        lookups = CounterMetricFamily(
            "statsyard_origin_lookups",
            "Sender pids looked up in /proc (cache misses), by result: "
            "container, host (no container), unknown (pid 0 or /proc entry gone).",
            labels=["result"],
        )
        stats = resolver.stats
        for result, value in (
            ("container", stats.container),
            ("host", stats.host),
            ("unknown", stats.unknown),
        ):
            lookups.add_metric([result], value)
        yield lookups
        yield GaugeMetricFamily(
            "statsyard_origin_cache_entries", "Sender pids whose origin is cached.", value=len(resolver)
        )
