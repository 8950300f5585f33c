"""A spooled sink: encoder, spool, transport and counters, which outlive the sink's task.

The task (:meth:`BatchSink.run`) is a loop: read a chunk from the spool, send it, and move the
spool's cursor past it only once the receiver confirmed it. A failed send leaves the chunk where
it is and waits a capped exponential backoff (with jitter, so a fleet does not retry in step);
a rejected chunk (HTTP 4xx) is dropped and counted, so one bad payload cannot block the spool.
Because the spool is on disk, a restarted task or agent resumes at the same record.
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from statsyard_agent._types import FlushBatch

from ._config import SinkConfig
from ._encode import Encoded
from ._errors import RejectedError, SendError, SpoolError
from ._spool import Chunk, Spool
from ._transport import Transport

log = logging.getLogger(__name__)

#: How long an idle sink waits for new records before looking at the spool again anyway.
IDLE_POLL_SECONDS = 1.0


class Backoff:
    """Capped exponential backoff with "equal jitter": the n-th delay is uniform in
    ``[d/2, d]`` where ``d = min(initial * 2**n, maximum)``."""

    def __init__(self, initial: float, maximum: float, rng: Callable[[], float] = random.random) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self._current = initial

    def next(self) -> float:
        delay = self._current * (0.5 + self._rng() / 2)
        self._current = min(self._current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._current = self.initial


@dataclass
class SinkCounters:
    """What ``/metrics`` and ``/healthz`` report about one sink (plain ints, no locks)."""

    sent_points: int = 0
    retried_points: int = 0
    dropped_points: collections.Counter[str] = field(default_factory=collections.Counter)
    send_failures: int = 0
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_unix: float = 0.0


class Encoder(Protocol):
    """What a sink needs from an encoder (see :mod:`._encode`)."""

    def encode(self, batch: FlushBatch) -> Encoded: ...


class BatchSink:
    """One spooled sink (Graphite or remote write)."""

    DROP_REASONS = ("spool_full", "queue_full", "rejected", "unencodable")

    def __init__(
        self,
        config: SinkConfig,
        spool: Spool,
        encoder: Encoder,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.spool = spool
        self.encoder = encoder
        self.transport = transport
        self.counters = SinkCounters()
        self.wakeup = trio.Event()
        self.last_spooled_id = 0
        self._partial = (0, 0)  # (batch id, records of it already spooled)
        self._clock = clock
        self._backoff = Backoff(config.backoff_initial, config.backoff_max, rng)

    @property
    def name(self) -> str:
        return self.config.name

    # --- the spooling side (worker thread) -----------------------------------------------

    def spool_batch(self, batch_id: int, batch: FlushBatch) -> None:
        """Blocking: encode ``batch`` and append it to the spool, once per ``batch_id``.

        Retrying after a SpoolError is safe: a batch already spooled is skipped, and of a batch
        spooled in part (several records) only the missing records are appended.
        """
        if batch_id <= self.last_spooled_id:
            return
        encoded = self.encoder.encode(batch)
        counters = self.counters
        if self._partial[0] != batch_id:  # the first attempt for this batch
            counters.dropped_points["unencodable"] += encoded.skipped
            self._partial = (batch_id, 0)
        done = self._partial[1]
        for index in range(done, len(encoded.records)):
            record = encoded.records[index]
            dropped = self.spool.append(record.payload, record.points, record.timestamp)
            self._partial = (batch_id, index + 1)
            if dropped:
                counters.dropped_points["spool_full"] += dropped
        self.last_spooled_id = batch_id

    # --- the sending side (the sink's task) ----------------------------------------------

    def _read(self) -> Chunk | None:
        # Remote write sends one flush per request. Prometheus refuses a whole request (HTTP
        # 400, rolled back) when one sample is older than what it holds; after a crash between
        # a confirmed send and the cursor write, a resent multi-flush request would take the
        # newer flushes down with the old one. One flush per request limits that to the resent
        # flush itself, which the receiver already has (verified with Prometheus 2.42).
        return self.spool.read(
            self.config.max_points_per_send, one_timestamp=self.config.kind == "remote_write"
        )

    def lag_seconds(self) -> float:
        """Age of the oldest unsent point (0 when everything was sent)."""
        oldest = self.spool.oldest_timestamp
        return max(0.0, self._clock() - oldest) if oldest is not None else 0.0

    async def run(self) -> None:
        """Send spooled chunks forever (the supervised task)."""
        while True:
            self.wakeup = trio.Event()
            try:
                chunk = await trio.to_thread.run_sync(self._read)
            except SpoolError as exc:
                self._failed(None, str(exc))
                await trio.sleep(self._backoff.next())
                continue
            if chunk is None:
                with trio.move_on_after(IDLE_POLL_SECONDS):
                    await self.wakeup.wait()
                continue
            try:
                await self.deliver(chunk)
            except (SendError, SpoolError) as exc:
                delay = self._backoff.next()
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    delay = min(max(delay, retry_after), self.config.backoff_max)
                log.warning(
                    "sink %s: %s; %d points wait in the spool, retrying in %.2f s",
                    self.name,
                    exc,
                    self.spool.pending_points,
                    delay,
                )
                await trio.sleep(delay)
            else:
                self._backoff.reset()

    async def deliver(self, chunk: Chunk) -> None:
        """Send one chunk and acknowledge it; raise SendError (chunk stays) or SpoolError.

        Shielded: a send that has started is finished (its own timeout bounds it) and
        acknowledged before a shutdown takes effect, so a clean stop never sends a chunk twice
        and never cuts a Graphite line in half.
        """
        counters = self.counters
        with trio.CancelScope(shield=True):
            try:
                await self.transport.send(chunk.payload)
            except SendError as exc:
                self._failed(chunk, str(exc))
                raise
            except RejectedError as exc:
                counters.dropped_points["rejected"] += chunk.points
                counters.last_error = str(exc)
                log.error("sink %s: %d points rejected, dropping them: %s", self.name, chunk.points, exc)
            else:
                counters.sent_points += chunk.points
                counters.consecutive_failures = 0
                counters.last_error = ""
                counters.last_success_unix = self._clock()
            try:
                await trio.to_thread.run_sync(self.spool.ack, chunk)
            except SpoolError as exc:
                self._failed(None, str(exc))
                raise

    def _failed(self, chunk: Chunk | None, message: str) -> None:
        counters = self.counters
        counters.send_failures += 1
        counters.consecutive_failures += 1
        counters.last_error = message
        if chunk is not None:
            counters.retried_points += chunk.points

    async def drain(self) -> None:
        """At shutdown: send what is spooled until it is all sent, a send fails, or
        ``shutdown_grace`` seconds passed; what is left waits on disk for the next start."""
        if self.config.shutdown_grace <= 0:
            return
        with trio.move_on_after(self.config.shutdown_grace):
            while True:
                chunk = await trio.to_thread.run_sync(self._read)
                if chunk is None:
                    return
                try:
                    await self.deliver(chunk)
                except (SendError, SpoolError) as exc:
                    log.warning(
                        "sink %s: %d points stay spooled for the next start: %s",
                        self.name,
                        self.spool.pending_points,
                        exc,
                    )
                    return

    # --- health --------------------------------------------------------------------------

    def problems(self) -> list[str]:
        lag = self.lag_seconds()
        if self.config.max_lag and lag > self.config.max_lag:
            return [
                f"forward sink {self.name} is {lag:.0f} s behind (over max_lag "
                f"{self.config.max_lag:g} s; {self.spool.pending_points} points spooled): "
                f"{self.counters.last_error or 'sending'}"
            ]
        return []

    def health(self) -> dict[str, object]:
        counters = self.counters
        return {
            "kind": self.config.kind,
            "target": self.transport.description,
            "pending_points": self.spool.pending_points,
            "spool_bytes": self.spool.disk_bytes,
            "oldest_unsent_seconds": round(self.lag_seconds(), 3),
            "sent_points": counters.sent_points,
            "consecutive_failures": counters.consecutive_failures,
            "last_error": counters.last_error,
            "last_success_unix": counters.last_success_unix,
        }
