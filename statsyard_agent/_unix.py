"""The Unix datagram listener (DogStatsD's ``unix://`` transport), with origin detection.

Like the UDP socket, the Unix socket is opened once by the app and outlives the listener task, so
a restarted listener reads the same kernel queue. The socket file is created at start (a stale
one left by a killed agent is removed first; a live one, or anything that is not a socket, is
refused) and removed at shutdown if it is still ours.

With ``origin_detection`` the socket has ``SO_PASSCRED`` set, so the kernel attaches each
sender's pid to its datagram (``SCM_CREDENTIALS``; the sender does nothing). Per datagram the
listener parses, then adds the sender's origin tags (:mod:`statsyard_agent._origin`) to each
metric, event and service check before aggregating, the series' own tags winning. The UDP path
is not involved and pays nothing for this.
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._config import UnixConfig
from ._exceptions import ConfigError
from ._origin import OriginResolver
from ._protocol import Parser, ParserConfig
from ._state import AgentState
from ._tags import BatchTagger, merge_tags
from ._types import Tags

log = logging.getLogger(__name__)

#: Receive buffer per datagram. Larger than UDP's 64 KiB: a Unix datagram is bounded only by the
#: sender's SO_SNDBUF (about 208 KiB by default). A larger datagram is dropped and counted.
MAX_UNIX_DATAGRAM = 256 * 1024
_DRAIN_LIMIT = 512  # datagrams per wakeup, so a flood cannot starve the flusher or HTTP
_CREDENTIALS_SPACE = socket.CMSG_SPACE(12)  # struct ucred: pid, uid, gid
_MEMO_LIMIT = 4096


class UnixListener:
    """The socket, its parser, the origin resolver and the counters: owned by the app."""

    def __init__(self, sock: socket.socket, path: Path, parser: Parser,
                 resolver: OriginResolver | None) -> None:
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
        # (series tags, origin tags) -> merged: a sender repeats the same few tag sets.
        self._merged: dict[tuple[Tags, Tags], Tags] = {}

    @classmethod
    def open(cls, config: UnixConfig, rcvbuf: int, parser: ParserConfig,
             cardinality: str) -> UnixListener:
        """Bind the socket at ``config.path`` with ``config.mode``; ConfigError naming ``unix``
        when that cannot be done (missing directory, path in use, not a socket, no permission)."""
        path = config.path
        assert path is not None
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound = False
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if config.origin_detection:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(str(path))
            bound = True
            os.chmod(path, config.mode)
            sock.setblocking(False)
            resolver = OriginResolver(cardinality) if config.origin_detection else None
            return cls(sock, path, Parser(parser), resolver)
        except OSError as exc:
            sock.close()
            if bound:
                _unlink_quietly(path)
            raise ConfigError("unix", f"cannot listen on {path}: {exc.strerror or exc}") from None

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
        """Parse one datagram, add ``extra`` (origin tags) to what it held, aggregate it."""
        result = self.parser.parse_datagram(data)
        self.packets += 1
        self.bytes += len(data)
        ingest = state.ingest
        ingest.lines += result.lines
        aggregator = state.aggregator
        add = aggregator.add
        if extra:
            merged = self._merged
            for metric in result.metrics:
                tags = metric.tags
                new = merged.get((tags, extra))
                if new is None:
                    if len(merged) >= _MEMO_LIMIT:
                        merged.clear()
                    new = merged[(tags, extra)] = merge_tags(tags, extra)
                add(metric if new is tags else metric._replace(tags=new))
        else:
            for metric in result.metrics:
                add(metric)
        ingest.metrics += len(result.metrics)
        if result.events:
            ingest.events += len(result.events)
            for event in result.events:
                aggregator.add_event(event._replace(tags=merge_tags(event.tags, extra)))
        if result.service_checks:
            ingest.service_checks += len(result.service_checks)
            for check in result.service_checks:
                aggregator.add_service_check(check._replace(tags=merge_tags(check.tags, extra)))
        if result.errors:
            for error in result.errors:
                ingest.parse_errors[error.reason] += 1


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

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "statsyard_agent_tag_collisions",
            "Series flushed without the agent's tags because, with them, they would have been "
            "the same series as one that was sent with those tags explicitly.",
            value=self._tagger.collisions)
        unix = self._unix
        if unix is None:
            return
        for name, doc, value in (
            ("packets_received", "Datagrams received on the Unix socket.", unix.packets),
            ("bytes_received", "Datagram bytes received on the Unix socket.", unix.bytes),
            ("receive_errors", "Socket errors while receiving on the Unix socket.",
             unix.receive_errors),
            ("truncated", f"Datagrams over {MAX_UNIX_DATAGRAM} bytes, dropped.", unix.truncated),
        ):
            yield CounterMetricFamily(f"statsyard_unix_{name}", doc, value=value)
        resolver = unix.resolver
        if resolver is None:
            return
        lookups = CounterMetricFamily(
            "statsyard_origin_lookups", "Sender pids looked up in /proc (cache misses), by result: "
            "container, host (no container), unknown (pid 0 or /proc entry gone).",
            labels=["result"])
        stats = resolver.stats
        for result, value in (("container", stats.container), ("host", stats.host),
                              ("unknown", stats.unknown)):
            lookups.add_metric([result], value)
        yield lookups
        yield GaugeMetricFamily("statsyard_origin_cache_entries",
                                "Sender pids whose origin is cached.", value=len(resolver))
