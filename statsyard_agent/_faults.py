"""Fault injection for the crash tests: a task calls ``faults.check("writer")`` at a safe point.

Production code pays one attribute lookup per call. The injector is armed either directly by
in-process tests or, for tests that drive a real agent process, through the environment variable
``STATSYARD_INJECT_FAULTS`` (e.g. ``"writer=always,listener=2"``), which is meant for tests only.
"""

from __future__ import annotations

import os

ENV_VAR = "STATSYARD_INJECT_FAULTS"


class InjectedFault(RuntimeError):
    """Raised at an armed fault point to simulate a crash of the task that reached it."""


class FaultInjector:
    """Counts down armed faults per point name; ``-1`` means fail every time."""

    def __init__(self) -> None:
        self._armed: dict[str, int] = {}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> FaultInjector:
        """Build from ``STATSYARD_INJECT_FAULTS``: comma-separated ``point=N`` or ``point=always``."""
        injector = cls()
        spec = (environ if environ is not None else dict(os.environ)).get(ENV_VAR, "")
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, count = item.partition("=")
            injector.arm(point, -1 if count in ("always", "") else int(count))
        return injector

    def arm(self, point: str, times: int = 1) -> None:
        """Make the next ``times`` checks of ``point`` raise (``-1``: every check)."""
        self._armed[point] = times

    def disarm(self, point: str) -> None:
        self._armed.pop(point, None)

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
