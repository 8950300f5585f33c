"""An OTP-style one-for-one supervisor on a trio nursery.

Each child is an ``async`` callable run in a restart loop: when it raises, the crash is logged and
counted, the child waits a backoff (doubling up to a cap, reset after a quiet period) and is started
again, while its siblings keep running. More than ``max_restarts`` crashes of the children within
``max_seconds`` (OTP's intensity) means restarting is not helping: the supervisor records why and calls
``on_escalate``, and the agent makes its final flush and exits non-zero so the container runtime or
systemd restarts the whole process.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ._config import SupervisorConfig

log = logging.getLogger(__name__)


@dataclass
class ChildInfo:
    """What /healthz and /metrics report about one supervised task."""

    name: str
    state: str = "starting"  # starting | running | restarting | stopped | failed
    restarts: int = 0
    last_error: str = ""
    last_crash_monotonic: float | None = None


@dataclass
class Supervisor:
    config: SupervisorConfig
    on_escalate: Callable[[str], None]
    clock: Callable[[], float] = time.monotonic
    children: dict[str, ChildInfo] = field(default_factory=dict)
    escalation: str | None = None
    _crash_times: collections.deque[float] = field(default_factory=collections.deque)

    def crash_looping(self) -> bool:
        """True while some child has crashed more than once within the intensity window."""
        return self.escalation is not None or self._recent_crashes() >= 2

    def _recent_crashes(self) -> int:
        horizon = self.clock() - self.config.max_seconds
        while self._crash_times and self._crash_times[0] < horizon:
            self._crash_times.popleft()
        return len(self._crash_times)

    async def supervise(
        self,
        name: str,
        child: Callable[[], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``child`` until it returns, restarting it after each crash; never raises a crash.

        Cancellation (shutdown) passes straight through, as it must in trio.
        """
        info = self.children.setdefault(name, ChildInfo(name))
        backoff = self.config.backoff_initial
        task_status.started()
        while True:
            info.state = "running"
            try:
                await child()
            except Exception as exc:
                now = self.clock()
                if info.last_crash_monotonic is not None and (
                    now - info.last_crash_monotonic > self.config.max_seconds
                ):
                    backoff = self.config.backoff_initial
                info.restarts += 1
                info.last_error = f"{type(exc).__name__}: {exc}"
                info.last_crash_monotonic = now
                self._crash_times.append(now)
                if self._recent_crashes() > self.config.max_restarts:
                    info.state = "failed"
                    self.escalation = (
                        f"task {name!r} crashed ({info.last_error}); more than "
                        f"{self.config.max_restarts} restarts in {self.config.max_seconds:g} s"
                    )
                    log.error("restart intensity exceeded, shutting down: %s", self.escalation)
                    self.on_escalate(self.escalation)
                    return
                info.state = "restarting"
                log.error(
                    "task %s crashed, restarting in %.2f s (restart %d): %s",
                    name, backoff, info.restarts, info.last_error, exc_info=exc,
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.config.backoff_max)
            else:
                info.state = "stopped"
                return
