"""The supervisor on virtual time: restart, backoff, intensity limit, escalation."""

from __future__ import annotations

import itertools

import trio
import trio.testing

from statsyard_agent._config import SupervisorConfig
from statsyard_agent._supervisor import Supervisor


async def test_a_crashing_child_restarts_while_its_sibling_keeps_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    escalations: list[str] = []
    supervisor = Supervisor(SupervisorConfig(max_restarts=5, max_seconds=30),
                            on_escalate=escalations.append, clock=trio.current_time)
    runs = 0
    ticks = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"crash {runs}")
        await trio.sleep_forever()

    async def steady() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.05)
            ticks += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.supervise, "flaky", flaky)
        await nursery.start(supervisor.supervise, "steady", steady)
        await trio.sleep(1.025)  # just past the 20th tick, clear of float rounding
        nursery.cancel_scope.cancel()

    assert runs == 3
    assert supervisor.children["flaky"].restarts == 2
    assert supervisor.children["flaky"].last_error == "RuntimeError: crash 2"
    assert supervisor.children["steady"].restarts == 0
    assert ticks == 20  # 1.0 s / 0.05 s: never paused by its sibling's crashes
    assert escalations == []


async def test_backoff_doubles_between_restarts(autojump_clock: trio.testing.MockClock) -> None:
    supervisor = Supervisor(SupervisorConfig(max_restarts=10, max_seconds=100,
                                             backoff_initial=0.1, backoff_max=0.4),
                            on_escalate=lambda reason: None, clock=trio.current_time)
    starts: list[float] = []

    async def crash() -> None:
        starts.append(trio.current_time())
        raise ValueError("boom")

    with trio.move_on_after(1.55):
        await supervisor.supervise("crash", crash)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps[:5] == [0.1, 0.2, 0.4, 0.4, 0.4]


async def test_intensity_exceeded_escalates_once_and_stops_restarting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    escalations: list[str] = []
    supervisor = Supervisor(SupervisorConfig(max_restarts=3, max_seconds=30),
                            on_escalate=escalations.append, clock=trio.current_time)
    runs = 0

    async def always_crash() -> None:
        nonlocal runs
        runs += 1
        raise OSError("disk on fire")

    await supervisor.supervise("writer", always_crash)  # returns once it gives up
    assert runs == 4  # the first run and 3 restarts; the 4th crash exceeds 3 in 30 s
    assert supervisor.children["writer"].state == "failed"
    assert len(escalations) == 1
    assert "writer" in escalations[0]
    assert "disk on fire" in escalations[0]
    assert supervisor.crash_looping()


async def test_crashes_spread_beyond_the_window_never_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    escalations: list[str] = []
    supervisor = Supervisor(SupervisorConfig(max_restarts=2, max_seconds=10),
                            on_escalate=escalations.append, clock=trio.current_time)
    runs = 0

    async def crash_every_20s() -> None:
        nonlocal runs
        runs += 1
        await trio.sleep(20)
        raise RuntimeError("periodic")

    with trio.move_on_after(200):
        await supervisor.supervise("periodic", crash_every_20s)
    assert runs >= 9
    assert escalations == []
    assert not supervisor.crash_looping()
