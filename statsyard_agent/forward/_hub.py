"""The forwarding hub: hands each flushed batch to every spooled sink, and owns the sinks.

The hub, like the writer's queue, belongs to the supervisor's state, so its tasks can crash and
restart without losing anything:

* :meth:`ForwardHub.offer` is called by the flusher right after a batch is queued for the local
  store: O(1), on the event loop, no IO. The batch goes into a bounded in-memory inbox
  (drop-oldest, counted per sink as ``queue_full``, which only happens if the spool's disk
  fails for a long time).
* the ``forward`` task (:meth:`ForwardHub.run_spooler`) encodes each inbox batch for every sink
  and appends it to the sink's spool in a worker thread; a batch leaves the inbox only once
  every sink has it (a retried step skips sinks that already have it).
* one ``forward-NAME`` task per sink sends from its spool (:meth:`BatchSink.run`); the StatsD
  relay's task sends its buffers (:meth:`StatsdRelay.run`).

At shutdown (:meth:`ForwardHub.shutdown`): the relay's buffers are sent, the inbox is spooled,
and each sink sends what it can within its ``shutdown_grace``; the rest waits on disk.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from statsyard_agent._types import FlushBatch

from ._config import SinkConfig
from ._encode import GraphiteEncoder, RemoteWriteEncoder
from ._errors import SpoolError
from ._relay import StatsdRelay
from ._sink import Backoff, BatchSink
from ._spool import Spool
from ._transport import GraphiteTransport, RemoteWriteTransport, Transport

log = logging.getLogger(__name__)

INBOX_MAX_BATCHES = 360


@dataclass(frozen=True, slots=True)
class _Item:
    batch_id: int
    batch: FlushBatch
    sinks: tuple[BatchSink, ...]


def _check_kind(directory: Path, kind: str) -> None:
    """A spool holds one wire format: refuse to send Graphite lines as remote write (a sink
    renamed or re-pointed to another protocol under the same name)."""
    marker = directory / "KIND"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.write_text(kind + "\n")
            return
        found = marker.read_text().strip()
    except OSError as exc:
        raise SpoolError(f"cannot open the spool {directory}: {exc.strerror or exc}") from exc
    if found != kind:
        raise SpoolError(
            f"the spool {directory} holds {found} data but sink {directory.name!r} is now "
            f"{kind}: give the sink another name, or remove the directory to discard it"
        )


def open_sink(config: SinkConfig, spool_root: Path) -> BatchSink:
    """Blocking: open (recover) the sink's spool and build its encoder and transport."""
    _check_kind(spool_root / config.name, config.kind)
    spool = Spool(spool_root / config.name, max_bytes=config.spool_max_bytes, fsync=config.fsync)
    host, port = config.endpoints[0]
    transport: Transport
    if config.kind == "graphite":
        encoder: GraphiteEncoder | RemoteWriteEncoder = GraphiteEncoder(
            config.tags, config.max_points_per_send
        )
        transport = GraphiteTransport(host, port, config.timeout)
    else:
        encoder = RemoteWriteEncoder(config.tags, config.max_points_per_send)
        transport = RemoteWriteTransport(host, port, config.path, config.timeout, config.headers)
    return BatchSink(config, spool, encoder, transport)


class ForwardHub:
    """Every configured sink, the inbox between the flusher and the spools, and health."""

    def __init__(
        self,
        sinks: Sequence[BatchSink],
        relays: Sequence[StatsdRelay] = (),
        *,
        inbox_max: int = INBOX_MAX_BATCHES,
    ) -> None:
        self.sinks = tuple(sinks)
        self.relays = tuple(relays)
        self.inbox_max = inbox_max
        self.spool_error = ""
        #: Set by the app: builds a batch of the agent's own metrics at a flush timestamp.
        self.self_metrics: Callable[[int], FlushBatch] | None = None
        self._self_sinks = tuple(s for s in self.sinks if s.config.self_metrics)
        self._inbox: deque[_Item] = deque()
        self._in_flight: _Item | None = None
        self._inbox_event = trio.Event()
        self._next_id = 1

    @classmethod
    def open(cls, configs: Sequence[SinkConfig], spool_root: Path) -> ForwardHub:
        """Blocking (spool recovery reads the spools): build the hub for ``configs``."""
        sinks: list[BatchSink] = []
        try:
            for config in configs:
                if config.spooled:
                    sinks.append(open_sink(config, spool_root))
        except BaseException:
            for sink in sinks:
                sink.spool.close()
            raise
        relays = [StatsdRelay(config) for config in configs if not config.spooled]
        for relay in relays:
            relay.connect(relay.resolve())
        for sink in sinks:
            log.info(
                "forwarding to %s as sink %s (spool %s, %d points waiting)",
                sink.transport.description,
                sink.name,
                sink.spool.directory,
                sink.spool.pending_points,
            )
        for relay in relays:
            log.info("relaying StatsD lines to %s as sink %s", relay.description, relay.name)
        return cls(sinks, relays)

    # --- wiring --------------------------------------------------------------------------

    def tasks(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        """``(task name, coroutine function)`` for the supervisor to run."""
        tasks: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.sinks:
            tasks.append(("forward", self.run_spooler))
        tasks += [(f"forward-{sink.name}", sink.run) for sink in self.sinks]
        tasks += [(f"forward-{relay.name}", relay.run) for relay in self.relays]
        return tasks

    def relay_datagram(self) -> Callable[[bytes], None] | None:
        """The hook for the datagram path: one call per received datagram, or None."""
        if not self.relays:
            return None
        if len(self.relays) == 1:
            return self.relays[0].relay
        relays = self.relays

        def relay_all(data: bytes) -> None:
            for relay in relays:
                relay.relay(data)

        return relay_all

    # --- the flusher's side --------------------------------------------------------------

    def offer(self, batch: FlushBatch) -> None:
        """Queue a flushed batch for every spooled sink (event loop; never raises)."""
        if not self.sinks:
            return
        self._push(batch, self.sinks)
        if self._self_sinks and self.self_metrics is not None:
            try:
                own = self.self_metrics(batch.timestamp)
            except Exception:
                log.exception("collecting the agent's own metrics for forwarding failed")
            else:
                if len(own):
                    self._push(own, self._self_sinks)
        self._inbox_event.set()

    def _push(self, batch: FlushBatch, sinks: tuple[BatchSink, ...]) -> None:
        self._inbox.append(_Item(self._next_id, batch, sinks))
        self._next_id += 1
        while len(self._inbox) > self.inbox_max:
            index = 1 if self._inbox[0] is self._in_flight else 0
            if index >= len(self._inbox) - 1:
                break
            dropped = self._inbox[index]
            del self._inbox[index]
            for sink in dropped.sinks:
                sink.counters.dropped_points["queue_full"] += len(dropped.batch)

    @property
    def inbox_batches(self) -> int:
        return len(self._inbox)

    # --- the spooler task ----------------------------------------------------------------

    def _spool_item(self, item: _Item) -> None:
        for sink in item.sinks:
            sink.spool_batch(item.batch_id, item.batch)

    async def run_spooler(self) -> None:
        """Append inbox batches to the spools, oldest first; retry with backoff on errors."""
        backoff = Backoff(0.1, 5.0)
        while True:
            if not self._inbox:
                self._inbox_event = trio.Event()
                await self._inbox_event.wait()
                continue
            item = self._in_flight = self._inbox[0]
            try:
                await trio.to_thread.run_sync(self._spool_item, item)
            except SpoolError as exc:
                self.spool_error = str(exc)
                delay = backoff.next()
                log.error(
                    "spooling for forwarding failed (%d batches wait, retrying in %.1f s): %s",
                    len(self._inbox),
                    delay,
                    exc,
                )
                await trio.sleep(delay)
                continue
            finally:
                self._in_flight = None
            backoff.reset()
            self.spool_error = ""
            if self._inbox and self._inbox[0] is item:
                self._inbox.popleft()
            for sink in item.sinks:
                sink.wakeup.set()

    def spool_pending_blocking(self) -> None:
        """At shutdown (worker thread, no task running): spool every batch still in the inbox."""
        while self._inbox:
            item = self._inbox[0]
            try:
                self._spool_item(item)
            except SpoolError as exc:
                log.error(
                    "at shutdown: %d batches could not be spooled for forwarding: %s", len(self._inbox), exc
                )
                return
            self._inbox.popleft()

    async def shutdown(self) -> None:
        """Send the relay's buffers, spool the inbox, and give each sink its shutdown grace."""
        for relay in self.relays:
            relay.flush()
        await trio.to_thread.run_sync(self.spool_pending_blocking)
        async with trio.open_nursery() as nursery:
            for sink in self.sinks:
                nursery.start_soon(sink.drain)

    def close(self) -> None:
        for sink in self.sinks:
            sink.spool.close()
        for relay in self.relays:
            relay.close()

    # --- health --------------------------------------------------------------------------

    def problems(self) -> list[str]:
        problems = [p for sink in self.sinks for p in sink.problems()]
        if self.spool_error:
            problems.append(f"forward spool failing ({len(self._inbox)} batches wait): {self.spool_error}")
        return problems

    def health(self) -> dict[str, object]:
        sinks: dict[str, object] = {sink.name: sink.health() for sink in self.sinks}
        sinks.update({relay.name: relay.health() for relay in self.relays})
        return {"inbox_batches": len(self._inbox), "sinks": sinks}
