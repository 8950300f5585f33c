"""A receive worker process: reads one ``SO_REUSEPORT`` UDP socket, pre-aggregates, ships partials.

Started by :mod:`statsyard_agent._workers` as ``python -m statsyard_agent._receiver UDP_FD CTRL_FD
LIVE_FD``; the three descriptors are inherited:

* ``UDP_FD``: the agent's UDP socket for this worker (owned by the agent, so datagrams queue in
  the kernel while a worker restarts, and a new worker reads the same queue);
* ``CTRL_FD``: a stream socket to the agent. The agent first sends one frame with the parser
  configuration and the series cap; the worker answers ``("ready", pid)``. Then the agent sends
  one-byte commands: ``S`` (ship) is answered with one frame ``(report, shipment)`` holding
  everything aggregated since the previous ship (a :class:`~statsyard_agent._ingest.Shipment`:
  numpy columns by slot, each series key sent once); ``Q`` (quit) first reads every datagram
  already queued on the socket, ships, and exits. End of file on it (the agent is gone) exits
  at once. Frames are sent from a thread (:class:`FrameSender`), so a slow reader never stalls
  reception.
* ``LIVE_FD``: shared memory (:data:`SHARED_BYTES`) where the worker keeps :data:`LIVE_FIELDS`
  running totals of what it has *received* (datagrams, bytes, and the lines of the batches it
  has scanned packed with how much of the receive buffer holds a batch not scanned yet), then
  the receive buffer itself: each datagram is read straight into it, so the agent can count
  what a killed worker took with it, lines included (received minus shipped: see
  :func:`received_counts`), with no per-datagram work in the worker beyond the ``recv``.

A frame is an 8-byte little-endian length and a pickle. Both ends are this package, on one
machine, over a socketpair nobody else holds.

The loop waits in ``poll`` on both sockets and reads up to :data:`DRAIN_LIMIT` datagrams per
wakeup with non-blocking ``recv_into`` (measured fastest here: see the README's performance
section), each right after the one before in the receive buffer (a newline added where a
datagram does not end with one), then feeds the buffer as one batch to a
:class:`~statsyard_agent._ingest.PreAggregator` (``feed_buffer``: vectorised with numpy for
lines of known series). SIGINT and SIGTERM
are ignored: a terminal's Ctrl-C or systemd's SIGTERM to the whole group reaches the agent, which
asks each worker to ship what it holds and quit.
"""

from __future__ import annotations

import gc
import mmap
import os
import pickle
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from ._ingest import EVICT_AFTER_TAKES, PreAggregator, SimpleCounts
from ._protocol import Parser, ParserConfig
from ._scan import PADDING

FRAME_HEADER = struct.Struct("<Q")
SHIP = b"S"
QUIT = b"Q"
#: datagrams, bytes, lines << PENDING_BITS | pending (lines: newline-separated, a trailing
#: newline not counted; pending: bytes of the receive buffer not scanned yet)
LIVE_FIELDS = 3
PENDING_BITS = 24
DRAIN_LIMIT = 2048
#: A batch is processed once it holds this many bytes (~8k lines of typical traffic: larger
#: batches spill out of the CPU caches), or GATHER_SECONDS after its first read.
GATHER_BYTES = 384 << 10
GATHER_SECONDS = 0.02
MAX_DATAGRAM = 65535
#: Where the receive buffer starts in the shared memory, and its size: a batch, the largest
#: datagram read last with the newline after it, and the scanner's padding.
RECEIVE_OFFSET = 64
RECEIVE_BYTES = GATHER_BYTES + MAX_DATAGRAM + 1 + PADDING
SHARED_BYTES = RECEIVE_OFFSET + RECEIVE_BYTES
assert RECEIVE_BYTES < 1 << PENDING_BITS


def received_counts(shared: mmap.mmap) -> list[int]:
    """What a worker has received, from its shared memory: datagrams, bytes, lines (the lines of
    a batch read but not scanned are counted here, in the buffer)."""
    header = memoryview(shared)[: 8 * LIVE_FIELDS].cast("q")
    try:
        datagrams, size, packed = header.tolist()
    finally:
        header.release()
    pending = packed & ((1 << PENDING_BITS) - 1)
    unscanned = shared[RECEIVE_OFFSET : RECEIVE_OFFSET + pending].count(b"\n")
    return [datagrams, size, (packed >> PENDING_BITS) + unscanned]


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(FRAME_HEADER.pack(len(payload)) + payload)


def receive_frame(sock: socket.socket) -> bytes | None:
    """One frame from a blocking socket; None at end of file."""
    header = _receive_exactly(sock, FRAME_HEADER.size)
    if header is None:
        return None
    return _receive_exactly(sock, FRAME_HEADER.unpack(header)[0])


def _receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


class Receiver:
    """The worker's state: its socket, its pre-aggregator, what it received and shipped."""

    def __init__(
        self,
        sock: socket.socket,
        parser_config: ParserConfig,
        max_series: int,
        shared: mmap.mmap,
        evict_after: int = EVICT_AFTER_TAKES,
    ) -> None:
        self._sock = sock
        self._counts = SimpleCounts()
        self._preagg = PreAggregator(Parser(parser_config), self._counts, max_series, evict_after)
        self._live = memoryview(shared)[: 8 * LIVE_FIELDS].cast("q")
        self._buffer = memoryview(shared)[RECEIVE_OFFSET : RECEIVE_OFFSET + RECEIVE_BYTES]
        self._received = [0, 0, 0]
        self._shipped = [0, 0, 0]
        self._receive_errors = 0
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)

    def release(self) -> None:
        """Let go of the shared memory (before it is unmapped)."""
        self._live.release()
        self._buffer.release()

    def drain(self, limit: int = DRAIN_LIMIT, gather: float = GATHER_SECONDS) -> int:
        """Read and pre-aggregate up to ``limit`` queued datagrams; return how many.

        While fewer than :data:`GATHER_BYTES` have come, it waits up to ``gather`` seconds
        for more before processing them: the vectorised path costs a fixed ~0.4 ms per batch and
        wins over the per-line path from ~600 lines on (README, performance), so a worker under
        load works on large batches, and one under light load answers within ``gather``.

        Each datagram is published in the live counters right after it is read, before the
        next read and before any of the batch is processed, so a worker killed at any point
        leaves at most the datagram of one unfinished ``recv_into`` call uncounted (and that one
        is still in the kernel's queue, where the next worker or the final drain reads it).
        """
        recv_into = self._sock.recv_into
        buffer = self._buffer
        live = self._live
        datagrams, size_sum, lines = received = self._received
        count = at = 0
        deadline = 0.0
        while count < limit and at < GATHER_BYTES:
            try:
                size = recv_into(buffer[at : at + MAX_DATAGRAM])
            except (BlockingIOError, InterruptedError):
                if gather <= 0.0:
                    break
                now = time.monotonic()
                if not deadline:
                    deadline = now + gather
                if now >= deadline or not self._readable.poll(1000.0 * (deadline - now)):
                    break
                continue
            except OSError:
                self._receive_errors += 1
                break
            count += 1
            datagrams += 1
            size_sum += size
            if size:  # every datagram's lines end with a newline in the buffer
                at += size
                if buffer[at - 1] != 10:
                    buffer[at] = 10
                    at += 1
            live[0] = datagrams
            live[1] = size_sum
            live[2] = lines << PENDING_BITS | at
        received[0], received[1] = datagrams, size_sum
        if count:
            # One copy: the batch and the scanner's padding (whatever bytes lie there).
            lines += self._preagg.feed_buffer(bytes(buffer[: at + PADDING]), at, count)
            received[2] = lines
            live[2] = lines << PENDING_BITS  # one store: the batch's lines counted, none pending
        return count

    def ship(self) -> bytes:
        """Everything since the previous ship, as one frame payload."""
        counts = self._counts
        received, shipped = self._received, self._shipped
        report: dict[str, Any] = {
            "packets": received[0] - shipped[0],
            "bytes": received[1] - shipped[1],
            "raw_lines": received[2] - shipped[2],
            "lines": counts.lines,
            "metrics": counts.metrics,
            "events": counts.events,
            "service_checks": counts.service_checks,
            "parse_errors": dict(counts.parse_errors),
            "receive_errors": self._receive_errors,
        }
        shipment = self._preagg.take_shipment()
        report["slots"] = self._preagg.slots  # held after the take (and its evictions)
        report["peak_slots"] = self._preagg.peak_slots
        payload = pickle.dumps((report, shipment), protocol=pickle.HIGHEST_PROTOCOL)
        self._shipped = list(received)
        counts.lines = counts.metrics = counts.events = counts.service_checks = 0
        counts.parse_errors.clear()
        self._receive_errors = 0
        return payload

    def serve(self, ctrl: socket.socket) -> None:
        """Receive until the agent says quit (or goes away)."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        poller.register(ctrl, select.POLLIN)
        ctrl_fd = ctrl.fileno()
        sender = FrameSender(ctrl)
        while True:
            for fd, _ in poller.poll():
                if fd != ctrl_fd:
                    self.drain()
                    continue
                command = ctrl.recv(1)
                if not command:
                    return
                if command == QUIT:
                    while self.drain(gather=0.0):
                        pass
                    sender.send(self.ship())
                    sender.close()
                    return
                sender.send(self.ship())
                gc.collect(1)  # the slots are long-lived: keep full collections off them
                gc.freeze()  # (see _flush.freeze_long_lived)


class FrameSender:
    """Sends frames to the agent from a thread of its own.

    A partial is a few MB at a high rate, and the agent reads it when its event loop gets to it
    (after a flush's merge, say): sent from the receive loop, a blocked ``sendall`` would leave
    the socket unread that long, and the kernel drops what overflows its buffer (seen here as
    drops once a second at 1.2M lines/s). The agent asks for one frame at a time, so at most
    one frame waits here.
    """

    def __init__(self, ctrl: socket.socket) -> None:
        self._ctrl = ctrl
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="frame-sender", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (payload := self._queue.get()) is not None:
            try:
                send_frame(self._ctrl, payload)
            except OSError as exc:  # the agent went away: the next send or close says so
                self._error = exc
                return

    def send(self, payload: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(payload)

    def close(self) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def main(argv: Sequence[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    udp_fd, ctrl_fd, live_fd = (int(arg) for arg in argv)
    sock = socket.socket(fileno=udp_fd)
    sock.setblocking(False)
    ctrl = socket.socket(fileno=ctrl_fd)
    ctrl.setblocking(True)
    with mmap.mmap(live_fd, SHARED_BYTES) as shared:
        os.close(live_fd)
        receiver: Receiver | None = None
        try:
            init = receive_frame(ctrl)
            if init is None:
                return 0
            parser_config, max_series, evict_after = pickle.loads(init)
            receiver = Receiver(sock, parser_config, max_series, shared, evict_after)
            send_frame(ctrl, pickle.dumps(("ready", os.getpid())))
            receiver.serve(ctrl)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent went away; nothing is left to ship to
        finally:
            if receiver is not None:
                receiver.release()  # (an mmap with views still open cannot be closed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
