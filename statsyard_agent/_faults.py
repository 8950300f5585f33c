"""Fault injection for the crash tests: a task calls ``faults.check("writer")`` at a safe point.

Production code pays one attribute lookup per call. The injector is armed either directly by
in-process tests or, for tests that drive a real agent process, through the environment variable
``STATSYARD_INJECT_FAULTS`` (e.g. ``"writer=always,listener=2"``), which is meant for tests only.

A point can also be armed with a delay instead of a crash (``"slow_disk=2s"``: every write takes
2 s longer; ``"slow_disk=2s:3"``: only the next three): the writer calls ``faults.stall(point)``
in its worker thread, so a slow disk is simulated without blocking the event loop.
"""

from __future__ import annotations

import os
import re
import time

ENV_VAR = "STATSYARD_INJECT_FAULTS"


class InjectedFault(RuntimeError):
    """Raised at an armed fault point to simulate a crash of the task that reached it."""


class FaultInjector:
    """Counts down armed faults per point name; ``-1`` means fail every time."""

    def __init__(self) -> None:
        self._armed: dict[str, int] = {}
        self._delays: dict[str, tuple[float, int]] = {}  # point -> (seconds, times left; -1: all)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> FaultInjector:
        """Build from ``STATSYARD_INJECT_FAULTS``: comma-separated ``point=N``, ``point=always``,
        ``point=SECONDSs`` or ``point=SECONDSs:N`` (a delay at every / the next N stalls)."""
        injector = cls()
        spec = (environ if environ is not None else dict(os.environ)).get(ENV_VAR, "")
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, count = item.partition("=")
            delay = re.fullmatch(r"([0-9.]+)s(?::([0-9]+))?", count)
            if delay:  # "2s" or "2s:3": a delay, not a crash
                injector.arm_delay(point, float(delay[1]), int(delay[2] or -1))
                continue
            injector.arm(point, -1 if count in ("always", "") else int(count))
        return injector

    def arm(self, point: str, times: int = 1) -> None:
        """Make the next ``times`` checks of ``point`` raise (``-1``: every check)."""
        self._armed[point] = times

    def disarm(self, point: str) -> None:
        self._armed.pop(point, None)
        self._delays.pop(point, None)

    def arm_delay(self, point: str, seconds: float, times: int = -1) -> None:
        """Make the next ``times`` stalls at ``point`` sleep ``seconds`` (``-1``: every one)."""
        self._delays[point] = (seconds, times)

    def stall(self, point: str) -> None:
        """Blocking sleep if ``point`` is armed with a delay (call it from a worker thread)."""
        if not self._delays:
            return
        seconds, remaining = self._delays.get(point, (0.0, 0))
        if remaining == 0:
            return
        if remaining > 0:
            self._delays[point] = (seconds, remaining - 1)
        time.sleep(seconds)

    def check(self, point: str) -> None:
        """Raise :class:`InjectedFault` if ``point`` is armed."""
        if not self._armed:
            return
        remaining = self._armed.get(point, 0)
        if remaining == 0:
            return
        if remaining > 0:
            self._armed[point] = remaining - 1
        raise InjectedFault(f"injected fault at {point}")
