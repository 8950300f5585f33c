"""Receive worker processes: ``SO_REUSEPORT`` sockets read by supervised processes that ship
partial aggregates to the agent (``[ingest] workers = N``).

Why processes: the per-line work (parse, pre-aggregate) is Python, so one process tops out near
one core; N worker processes on N sockets bound to the same port (the kernel spreads datagrams
over them by a hash of the sender's address and port, so one client's lines stay in order on one
worker) use N cores, and the agent's event loop no longer touches datagrams at all, so a flush
never stalls reception. See the README's performance section for the measurements behind this.

Ownership (the supervisor's state outlives the tasks): the sockets are opened by the app and
stay open across worker restarts, so datagrams wait in the kernel while a worker restarts and the
next worker reads them. Each worker is one supervised task (``ingest_worker_N``): it starts the
process (:mod:`statsyard_agent._receiver`), asks it to ship every ``ship_interval`` seconds, merges
what it ships into the aggregator, and raises when the process exits, so the supervisor restarts
it with backoff like any other task. Before each flush, :meth:`IngestWorkers.collect` asks every
worker to ship, so an interval holds what arrived before its end.

Loss accounting: a worker writes what it has received into shared memory before it processes it.
When a worker dies (killed, crashed, or stopped answering within ``ship_timeout`` and killed), the
datagrams and lines it received but had not shipped are added to
``statsyard_ingest_worker_lost_datagrams_total`` / ``..._lines_total``. Nothing else is at risk,
but for one datagram per SIGKILL at most: the one a ``recv`` was returning as the kill landed
(dequeued by the kernel, with no user code run after it, so no program can count it).

At shutdown each worker is asked to read what is queued on its socket, ship everything and exit;
the app then drains the sockets once more itself before the final flush. The same exchange
replaces a quiet worker that has forgotten most of the series it once held by a fresh process
(:func:`worth_recycling`): Python's heap keeps what a burst of series left behind, a new process
does not; nothing is lost and it is not a restart.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._aggregate import Partial
from ._config import Address, AgentConfig, IngestConfig
from ._exceptions import StatsyardError
from ._ingest import EVICT_AFTER_TAKES, Shipment
from ._receiver import FRAME_HEADER, LIVE_FIELDS, QUIT, SHARED_BYTES, SHIP, received_counts
from ._state import AgentState
from ._udp import bind_udp_socket, open_udp_socket, proc_udp_rows

log = logging.getLogger(__name__)

#: Seconds a new worker has to import and answer "ready".
STARTUP_TIMEOUT = 60.0
#: Seconds a worker has to exit after its final ship at shutdown.
QUIT_TIMEOUT = 10.0

#: A periodic ship falls this long (at most a quarter of the ship interval) before each flush.
PRE_FLUSH_LEAD = 0.25

#: A quiet worker is replaced by a fresh process (see :func:`worth_recycling`) once it holds at
#: most 1 / RECYCLE_HOLDING_BELOW of the most series it ever held, that most being at least
#: RECYCLE_MIN_PEAK_SLOTS, and it received at most RECYCLE_QUIET_DATAGRAMS_PER_S since its
#: previous ship.
RECYCLE_MIN_PEAK_SLOTS = 10_000
RECYCLE_HOLDING_BELOW = 4
RECYCLE_QUIET_DATAGRAMS_PER_S = 500.0

_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class IngestWorkerError(StatsyardError):
    """An ingest worker process exited or could not be started (the supervisor restarts it)."""


def open_ingest_sockets(address: Address, rcvbuf: int, workers: int) -> tuple[list[socket.socket], int]:
    """``workers`` UDP sockets bound to one address with ``SO_REUSEPORT`` (port 0: the first
    socket's port); return them and the ``SO_RCVBUF`` granted to each.

    Raises OSError like a plain bind, and also when some other socket already shares the port
    through ``SO_REUSEPORT`` (a second agent would silently take part of the traffic).
    """
    first, granted = open_udp_socket(address, rcvbuf, reuseport=True)
    socks = [first]
    try:
        port = first.getsockname()[1]
        for _ in range(workers - 1):
            socks.append(bind_udp_socket(address.host, port, rcvbuf, reuseport=True))
        others = _other_sockets_on_port(port, socks)
        if others:
            raise OSError(
                f"[Errno 98] Address in use: {others} other socket(s) share port {port} "
                f"through SO_REUSEPORT (another agent?)"
            )
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks, granted


def _other_sockets_on_port(
    port: int, ours: Sequence[socket.socket], proc_net: Path = Path("/proc/net")
) -> int:
    """UDP sockets that would share our traffic: bound to ``port`` on our address or a wildcard,
    and not ``ours``. (Sockets on the same port number but another local address, e.g. clients
    elsewhere, share nothing with us and are not counted.)"""
    inodes = {str(os.fstat(sock.fileno()).st_ino) for sock in ours}
    entries: list[tuple[str, str]] = []  # (local address hex, inode) of every socket on the port
    for fields in proc_udp_rows(proc_net):
        address, _, port_hex = fields[1].rpartition(":")
        if int(port_hex, 16) == port:
            entries.append((address, fields[9]))
    our_addresses = {address for address, inode in entries if inode in inodes}

    def overlaps(address: str) -> bool:
        wildcard = set(address) == {"0"}
        return wildcard or address in our_addresses or any(set(a) == {"0"} for a in our_addresses)

    return sum(1 for address, inode in entries if inode not in inodes and overlaps(address))


@dataclass(eq=False)
class WorkerSlot:
    """One worker's place: its socket and shared counters (both outlive the processes)."""

    index: int
    sock: socket.socket
    live_fd: int
    live_map: mmap.mmap
    lock: trio.Lock = field(default_factory=trio.Lock)
    process: trio.Process | None = None
    ctrl: trio.SocketStream | None = None
    #: datagrams, bytes, lines shipped by the current process (compare with the live counters)
    shipped: list[int] = field(default_factory=lambda: [0, 0, 0])
    starts: int = 0
    #: the current process's series keys by slot (a shipment names each key once: see Shipment)
    keys: list[Any] = field(default_factory=list)
    #: when the current process last shipped (or started), and the last ship's report
    shipped_at: float = 0.0
    ship_seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)

    def received(self) -> list[int]:
        """What the current process has received: datagrams, bytes, lines."""
        return received_counts(self.live_map)

    def reset_live(self) -> None:
        self.live_map[: 8 * LIVE_FIELDS] = bytes(8 * LIVE_FIELDS)
        self.shipped = [0, 0, 0]
        self.keys = []
        self.shipped_at = time.monotonic()
        self.ship_seconds = 0.0
        self.report = {}

    def partial(self, shipment: Shipment) -> Partial:
        """The :class:`Partial` of a shipment of the current process."""
        keys = self.keys
        for slot, key in shipment.new_keys.items():
            if slot >= len(keys):
                keys.extend([None] * (slot + 1 - len(keys)))
            keys[slot] = key
        return shipment.partial(keys.__getitem__)


def ship_delay(now: float, ship_interval: float, flush_interval: float) -> float:
    """Seconds until a worker's next periodic ship: ``ship_interval``, or less so that one ship
    falls :data:`PRE_FLUSH_LEAD` before the next flush boundary (flushes fall on multiples of
    ``flush_interval``, wall clock).

    Why: the flush's own collect then merges what arrived in that lead, not up to a whole ship
    interval's worth, so the flush (which holds the interval's batch back) is shorter; the
    work is the same, done a moment earlier.
    """
    lead = min(PRE_FLUSH_LEAD, ship_interval / 4)
    boundary = (now // flush_interval + 1) * flush_interval
    pre_flush = boundary - lead
    if now < pre_flush < now + ship_interval:
        return pre_flush - now
    return ship_interval


def worth_recycling(report: dict[str, Any], seconds: float) -> bool:
    """Whether the worker that sent ``report`` (covering the last ``seconds``) should give way
    to a fresh process.

    Why: a worker forgets the series that went quiet (:func:`evict_after_ships`), but CPython's
    allocator gives memory back only in wholly free arenas, so after a burst of many series a
    worker kept ~190 B per series it had forgotten (measured: ~40 MB for 100k idle series over
    two workers). A fresh process starts in ~0.3 s, while datagrams wait in the socket's queue
    (the agent owns the socket), so only a quiet worker is replaced, and only once most of what
    it held is gone; what it aggregated is shipped first (the shutdown path), so nothing is lost.
    """
    peak = int(report.get("peak_slots", 0))
    return (
        peak >= RECYCLE_MIN_PEAK_SLOTS
        and int(report.get("slots", 0)) * RECYCLE_HOLDING_BELOW <= peak
        and report["packets"] <= RECYCLE_QUIET_DATAGRAMS_PER_S * seconds
    )


def evict_after_ships(flush_interval: float, ship_interval: float) -> int:
    """Ships a worker's series may stay quiet before the worker forgets it: three flush
    intervals (a series that reports once per flush interval, as most clients do, stays bound),
    and never fewer than the pre-aggregator's default number of takes."""
    return max(EVICT_AFTER_TAKES, math.ceil(3 * flush_interval / ship_interval))


class IngestWorkers:
    """The worker processes of one agent and their sockets (see the module docstring)."""

    def __init__(self, state: AgentState, socks: Sequence[socket.socket], config: IngestConfig) -> None:
        self._state = state
        self._config = config
        self.slots: list[WorkerSlot] = []
        for index, sock in enumerate(socks):
            live_fd = os.memfd_create(f"statsyard-ingest-{index}", 0)
            os.ftruncate(live_fd, SHARED_BYTES)
            self.slots.append(WorkerSlot(index, sock, live_fd, mmap.mmap(live_fd, SHARED_BYTES)))

    def close(self) -> None:
        """Release the shared counters (the sockets belong to the app)."""
        for slot in self.slots:
            slot.live_map.close()
            os.close(slot.live_fd)

    def pids(self) -> list[int | None]:
        """The live workers' process ids, by slot (None while one is not running)."""
        return [
            slot.process.pid if slot.process is not None and slot.ctrl is not None else None
            for slot in self.slots
        ]

    async def collect(self) -> None:
        """Ask every running worker to ship now, and merge what they send (before a flush).

        All at once: each worker takes and pickles its shipment while the others do (and while
        the event loop merges the first to arrive)."""
        async with trio.open_nursery() as nursery:
            for slot in self.slots:
                nursery.start_soon(self._ship, slot, SHIP)

    async def run(self, slot: WorkerSlot) -> None:
        """The supervised task of one worker: start it, ship periodically; raise when it exits.
        A quiet worker worth recycling (:func:`worth_recycling`) is replaced in place: it ships
        and exits as at shutdown, and a fresh process starts (not a restart: nothing failed)."""
        while True:
            await self._run_process(slot)
            self._state.ingest.worker_recycles += 1

    async def _run_process(self, slot: WorkerSlot) -> None:
        """One worker process, from start to exit; returns only when it was recycled."""
        slot.reset_live()
        slot.starts += 1
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "statsyard_agent._receiver",
                    str(slot.sock.fileno()),
                    str(child.fileno()),
                    str(slot.live_fd),
                ],
                pass_fds=(slot.sock.fileno(), child.fileno(), slot.live_fd),
                stdin=subprocess.DEVNULL,
                env=_child_environment(),
            )
        except OSError as exc:
            parent.close()
            raise IngestWorkerError(f"cannot start ingest worker {slot.index}: {exc}") from exc
        finally:
            child.close()
        ctrl = trio.SocketStream(trio.socket.from_stdlib_socket(parent))
        slot.process = process
        try:
            config = self._state.config
            evict_after = evict_after_ships(config.flush_interval, self._config.ship_interval)
            init = pickle.dumps((config.parser, config.aggregator.max_series, evict_after))
            with trio.move_on_after(STARTUP_TIMEOUT):
                await ctrl.send_all(FRAME_HEADER.pack(len(init)) + init)
                ready = await _receive_frame(ctrl)
                if ready is not None:
                    slot.ctrl = ctrl
            if slot.ctrl is None:
                raise IngestWorkerError(
                    f"ingest worker {slot.index} (pid {process.pid}) did not "
                    f"start within {STARTUP_TIMEOUT:g} s"
                )
            log.info("ingest worker %d started (pid %d)", slot.index, process.pid)
            while True:
                delay = ship_delay(time.time(), self._config.ship_interval, self._state.config.flush_interval)
                with trio.move_on_after(delay):
                    await process.wait()
                if process.returncode is not None:
                    raise IngestWorkerError(
                        f"ingest worker {slot.index} (pid {process.pid}) exited "
                        f"with status {process.returncode}"
                    )
                await self._ship(slot, SHIP)
                # (A worker that did not ship was killed: its exit is a failure, not a recycle.)
                if slot.ctrl is not None and worth_recycling(slot.report, slot.ship_seconds):
                    log.info(
                        "ingest worker %d (pid %d) is quiet and holds %d of the %d series it once "
                        "held: replacing it with a fresh process to give that memory back",
                        slot.index,
                        process.pid,
                        slot.report.get("slots", 0),
                        slot.report.get("peak_slots", 0),
                    )
                    return
        finally:
            with trio.CancelScope(shield=True):
                await self._stop(slot, process, ctrl)

    async def _stop(self, slot: WorkerSlot, process: trio.Process, ctrl: trio.SocketStream) -> None:
        """Get the last partial of a live worker, make sure it is gone, count what it took."""
        if process.returncode is None and slot.ctrl is not None:
            await self._ship(slot, QUIT)
            with trio.move_on_after(QUIT_TIMEOUT):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        slot.ctrl = None
        slot.process = None
        await ctrl.aclose()
        lost = [max(0, got - sent) for got, sent in zip(slot.received(), slot.shipped, strict=True)]
        if lost[0]:
            ingest = self._state.ingest
            ingest.packets += lost[0]
            ingest.bytes += lost[1]
            ingest.worker_lost_datagrams += lost[0]
            ingest.worker_lost_lines += lost[2]
            log.error(
                "ingest worker %d (pid %d) ended before shipping %d datagrams (%d lines); "
                "they are lost and counted in statsyard_ingest_worker_lost_datagrams_total",
                slot.index,
                process.pid,
                lost[0],
                lost[2],
            )
        slot.reset_live()

    async def _ship(self, slot: WorkerSlot, command: bytes) -> None:
        """Send ``command`` (ship or quit) and merge the partial the worker answers with.

        A worker that does not answer within ``ship_timeout`` is killed (its task restarts it).
        The exchange is shielded: cancelling it halfway would leave half a frame on the stream.
        """
        async with slot.lock:
            ctrl, process = slot.ctrl, slot.process
            if ctrl is None or process is None:
                return
            frame: bytes | None = None
            with trio.CancelScope(shield=True), trio.move_on_after(self._config.ship_timeout):
                try:
                    await ctrl.send_all(command)
                    frame = await _receive_frame(ctrl)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    frame = None
            if frame is None:
                slot.ctrl = None
                if process.returncode is None:
                    log.error(
                        "ingest worker %d (pid %d) did not ship within %g s; killing it",
                        slot.index,
                        process.pid,
                        self._config.ship_timeout,
                    )
                    process.kill()
                return
            report, shipment = pickle.loads(frame)
            self._merge(slot, report, slot.partial(shipment))

    def _merge(self, slot: WorkerSlot, report: dict[str, Any], partial: Partial) -> None:
        state = self._state
        state.aggregator.merge(partial)
        ingest = state.ingest
        ingest.packets += report["packets"]
        ingest.bytes += report["bytes"]
        ingest.lines += report["lines"]
        ingest.metrics += report["metrics"]
        ingest.events += report["events"]
        ingest.service_checks += report["service_checks"]
        ingest.receive_errors += report["receive_errors"]
        ingest.parse_errors.update(report["parse_errors"])
        now = time.monotonic()
        slot.report, slot.ship_seconds, slot.shipped_at = report, now - slot.shipped_at, now
        shipped = slot.shipped
        shipped[0] += report["packets"]
        shipped[1] += report["bytes"]
        shipped[2] += report["raw_lines"]


async def _receive_frame(stream: trio.SocketStream) -> bytes | None:
    header = await _receive_exactly(stream, FRAME_HEADER.size)
    if header is None:
        return None
    return await _receive_exactly(stream, FRAME_HEADER.unpack(header)[0])


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _child_environment() -> dict[str, str]:
    """The agent's environment, with this package importable whatever the child's sys.path."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _PACKAGE_PARENT + (os.pathsep + path if path else "")
    return env


def worker_count(config: AgentConfig) -> int:
    """How many ingest workers to run: ``[ingest] workers``, or 0 when a StatsD relay is
    configured (it needs every raw datagram on the event loop, where it runs)."""
    workers = config.ingest.workers if config.udp is not None else 0
    if workers and any(not sink.spooled for sink in config.forward):
        log.warning(
            "ingest.workers=%d ignored: the statsd:// relay forwards raw datagrams from "
            "the event loop, so UDP is received there",
            workers,
        )
        return 0
    return workers
