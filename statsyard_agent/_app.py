"""The agent: open what outlives tasks, start the supervised tasks, shut down without losing data.

Shutdown (SIGTERM/SIGINT, or the supervisor giving up): stop the tasks, read what is already queued in
the socket, flush the open interval, write every queued batch, close the data directory. Exit status is
0 after a clean stop and 1 when the supervisor escalated or points could not be written.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from dataclasses import dataclass, field
from functools import partial

import trio
from prometheus_client import CollectorRegistry

from ._aggregate import Aggregator
from ._api import make_handler
from ._config import Address, AgentConfig
from ._exceptions import ConfigError
from ._faults import FaultInjector
from ._flush import drain_queue_blocking, flush_once, run_flusher, run_writer
from ._http import serve_http
from ._metrics import StateCollector, Telemetry, UdpSocketInfo
from ._protocol import Parser
from ._queue import BatchQueue
from ._readside import ReadSide, open_read_side
from ._state import AgentState
from ._supervisor import Supervisor
from ._tags import BatchTagger, agent_tags, resolve_agent_tags
from ._udp import MAX_DATAGRAM, drain_socket, open_udp_socket, run_udp_listener
from ._unix import OriginCollector, UnixListener, run_unix_listener
from ._workers import IngestWorkers, open_ingest_sockets, worker_count
from .forward import ForwardCollector, ForwardHub, registry_batch
from .storage import TSDB

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1


@dataclass
class AgentHandle:
    """What a caller (the CLI, a test) gets once the agent is up."""

    state: AgentState
    supervisor: Supervisor
    telemetry: Telemetry
    udp_address: tuple[str, int] | None
    http_address: tuple[str, int] | None
    _stop: trio.Event = field(default_factory=trio.Event)
    unix: UnixListener | None = None
    workers: IngestWorkers | None = None

    async def flush(self, now: float | None = None) -> None:
        """Flush the open interval at ``now`` (default: the wall clock), then wait until every
        queued batch is written (tests wrap this in a deadline)."""
        await flush_once(self.state, self.telemetry, now)
        while len(self.state.queue) or self.state.pending_snapshots:
            self.state.queue_drained = trio.Event()
            await self.state.queue_drained.wait()

    def request_shutdown(self) -> None:
        self._stop.set()


def _bind_error(key: str, address: Address, exc: OSError) -> ConfigError:
    return ConfigError(key, f"cannot bind {address}: {exc.strerror or exc} "
                            f"(choose another port with --{key} HOST:PORT, or 0 for any free one)")


def _open_http_socket(address: Address) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


async def run_agent(
    config: AgentConfig,
    *,
    faults: FaultInjector | None = None,
    handle_signals: bool = False,
    task_status: trio.TaskStatus[AgentHandle] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the agent until shutdown; return the process exit status."""
    tsdb = await trio.to_thread.run_sync(TSDB.open, config.data_dir, config.storage)
    udp_sock: socket.socket | None = None
    udp_socks: list[socket.socket] = []  # with ingest workers: one SO_REUSEPORT socket each
    workers: IngestWorkers | None = None
    http_sock: trio.socket.SocketType | None = None
    unix: UnixListener | None = None
    forward: ForwardHub | None = None
    read_side: ReadSide | None = None
    state: AgentState | None = None
    try:
        udp_info: UdpSocketInfo | None = None
        if config.udp is not None:
            try:
                if worker_count(config):
                    udp_socks, granted = open_ingest_sockets(config.udp, config.udp_rcvbuf,
                                                             worker_count(config))
                else:
                    udp_sock, granted = open_udp_socket(config.udp, config.udp_rcvbuf)
                    udp_socks = [udp_sock]
            except OSError as exc:
                raise _bind_error("udp", config.udp, exc) from None
            udp_sock = udp_socks[0]
            udp_info = UdpSocketInfo(udp_sock, config.udp_rcvbuf, granted, tuple(udp_socks[1:]))
        if config.http is not None:
            http_sock = _open_http_socket(config.http)
            try:
                await http_sock.bind((config.http.host, config.http.port))
            except OSError as exc:
                raise _bind_error("http", config.http, exc) from None
            http_sock.listen(128)
        if config.unix.path is not None:
            unix = UnixListener.open(config.unix, config.parser, config.tagging.cardinality)

        tagger = _agent_tagger(config)
        state = AgentState(
            config=config,
            parser=Parser(config.parser),
            aggregator=Aggregator(config.aggregator),
            tsdb=tsdb,
            faults=faults or FaultInjector(),
            queue=BatchQueue(config.writer_queue_max_batches),
            batch_tagger=tagger,
        )
        registry = CollectorRegistry()
        telemetry = Telemetry.create(registry)
        stop = trio.Event()
        supervisor = Supervisor(config.supervisor, on_escalate=lambda reason: stop.set())
        registry.register(StateCollector(state, supervisor, lambda: udp_info))
        registry.register(OriginCollector(tagger, unix))
        if unix is not None:
            state.collectors.append(partial(unix.collect, state))
        if udp_socks and worker_count(config):
            workers = IngestWorkers(state, udp_socks, config.ingest)
            state.collectors.append(workers.collect)
        read_side = open_read_side(config, state, supervisor, registry)
        if config.forward:
            forward = await trio.to_thread.run_sync(ForwardHub.open, config.forward,
                                                    config.data_dir / "forward")
            forward.self_metrics = partial(registry_batch, registry)
            state.forward, state.relay = forward, forward.relay_datagram()
            registry.register(ForwardCollector(forward))
        handle = AgentHandle(
            state, supervisor, telemetry,
            udp_address=udp_sock.getsockname()[:2] if udp_sock else None,
            http_address=http_sock.getsockname()[:2] if http_sock else None,
            _stop=stop,
            unix=unix,
            workers=workers,
        )

        async with trio.open_nursery() as outer:
            if handle_signals:
                outer.start_soon(_stop_on_signal, stop)
            async with trio.open_nursery() as tasks:
                if workers is not None:
                    for slot in workers.slots:
                        await tasks.start(supervisor.supervise, f"ingest_worker_{slot.index}",
                                          partial(workers.run, slot))
                elif udp_sock is not None:
                    await tasks.start(supervisor.supervise, "listener",
                                      partial(run_udp_listener, state, udp_sock))
                if unix is not None:
                    await tasks.start(supervisor.supervise, "unix_listener",
                                      partial(run_unix_listener, state, unix))
                await tasks.start(supervisor.supervise, "flusher",
                                  partial(run_flusher, state, telemetry))
                await tasks.start(supervisor.supervise, "writer",
                                  partial(run_writer, state, telemetry))
                for name, task in forward.tasks() if forward is not None else ():
                    await tasks.start(supervisor.supervise, name, task)
                for name, task in read_side.tasks():
                    await tasks.start(supervisor.supervise, name, task)
                if http_sock is not None:
                    await tasks.start(supervisor.supervise, "http",
                                      partial(serve_http, http_sock,
                                              make_handler(state, supervisor, registry,
                                                           read_side.routes),
                                              partial(state.faults.check, "http")))
                log.info(
                    "statsyard-agent ready udp=%s http=%s unix=%s data_dir=%s flush_interval=%ds",
                    _fmt(handle.udp_address), _fmt(handle.http_address),
                    unix.path if unix else "off", config.data_dir, config.flush_interval,
                )
                task_status.started(handle)
                await stop.wait()
                log.info("shutting down: final flush and write")
                tasks.cancel_scope.cancel()
            lost = await _final_flush(state, telemetry, udp_socks, unix)
            outer.cancel_scope.cancel()
        if supervisor.escalation:
            log.error("exiting with status %d: %s", EXIT_FAILED, supervisor.escalation)
            return EXIT_FAILED
        if lost:
            return EXIT_FAILED
        log.info("stopped cleanly; %d points written in total", state.writer.points_written)
        return EXIT_OK
    finally:
        for sock in udp_socks:
            sock.close()
        if workers is not None:
            workers.close()
        if http_sock is not None:
            http_sock.close()
        if unix is not None:
            unix.close()
        if forward is not None:
            forward.close()
        if read_side is not None:
            read_side.close()
        await trio.to_thread.run_sync(tsdb.close)
        if state is not None and state.tsdb is not tsdb:  # reopened after a removed directory
            await trio.to_thread.run_sync(state.tsdb.close)


def _agent_tagger(config: AgentConfig) -> BatchTagger:
    """The agent-wide tags, resolved once at start; logs what was added and what withheld."""
    candidates = resolve_agent_tags(config.tagging, os.environ, socket.gethostname())
    tags = agent_tags(config.tagging, candidates)
    withheld = [f"{t.key} ({t.level}, from {t.source})" for t in candidates
                if (t.key, t.value) not in tags]
    log.info("tags on every series: %s", ",".join(f"{k}:{v}" for k, v in tags) or "none")
    if withheld:
        log.info("not added (tag_cardinality=%s, or overridden): %s", config.tagging.cardinality,
                 ", ".join(withheld))
    return BatchTagger(tags)


async def _final_flush(state: AgentState, telemetry: Telemetry, udp_socks: list[socket.socket],
                       unix: UnixListener | None = None) -> int:
    """Read what the kernel already holds, flush, and write everything; return points lost."""
    lost = 0
    with trio.CancelScope(shield=True):
        buffer = bytearray(MAX_DATAGRAM)
        for udp_sock in udp_socks:  # what the ingest workers (if any) left, too
            while drain_socket(state, udp_sock, buffer):
                pass
        if unix is not None:
            while unix.drain(state):
                pass
        try:
            await flush_once(state, telemetry)
        except Exception:
            log.exception("final flush failed; the open interval is lost")
        lost = await trio.to_thread.run_sync(drain_queue_blocking, state, telemetry)
        if state.forward is not None:  # spool what is left; send it within shutdown_grace
            await state.forward.shutdown()
        state.queue_drained.set()  # release anyone waiting in AgentHandle.flush
    return lost


async def _stop_on_signal(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            stop.set()


def _fmt(address: tuple[str, int] | None) -> str:
    if address is None:
        return "off"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
