"""Malformed input over a real socket: counted by reason, the rest of each datagram kept, the agent
never dies."""

from __future__ import annotations

import json
import random
import socket

from .conftest import ROOT, RunningAgent, query_async, wait_for

VECTORS = ROOT / "protocols" / "vectors"


def invalid_vectors() -> list[tuple[bytes, str]]:
    cases = []
    for case in json.loads((VECTORS / "invalid.json").read_text()):
        line = bytes.fromhex(case["line_hex"]) if "line_hex" in case else case["line"].encode()
        cases.append((line, case["reason"]))
    return cases


def send(port: int, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


async def test_every_invalid_vector_is_counted_by_reason(agent: RunningAgent) -> None:
    cases = invalid_vectors()
    assert len(cases) >= 30
    expected: dict[str, int] = {}
    for line, reason in cases:
        # Each bad line sits between two good ones in one datagram.
        send(agent.udp_port, b"good.before:1|c\n" + line + b"\ngood.after:1|c")
        expected[reason] = expected.get(reason, 0) + 1
    await agent.wait_lines(3 * len(cases))
    assert dict(agent.handle.state.ingest.parse_errors) == expected
    await agent.handle.flush()
    got = await query_async(agent.config.data_dir, "stats.counters.good.*.count")
    assert sum(got[("stats.counters.good.before.count", ())]) == len(cases)
    assert sum(got[("stats.counters.good.after.count", ())]) == len(cases)


async def test_edge_datagrams_never_kill_the_agent(agent: RunningAgent) -> None:
    datagrams = [
        b"",
        b"\n\n\n",
        bytes(range(256)),
        b"\xff\xfe\xfd:1|c",
        b"x" * 65_000,
        b"name:1|c|#" + b",".join(b"t%d:v" % i for i in range(5000)),
        b"..:1|c",
        b"../../etc/passwd:1|c",
        b"a\x00b:1|c",
        b"n" * 10_000 + b":1|c",
    ]
    send(agent.udp_port, *datagrams, b"alive:1|c")
    await agent.wait_lines(1 + sum(1 for d in datagrams if d.strip(b"\n")))
    await agent.handle.flush()
    got = await query_async(agent.config.data_dir, "stats.counters.alive.count")
    assert got == {("stats.counters.alive.count", ()): [1.0]}
    assert sum(agent.handle.state.ingest.parse_errors.values()) >= 7
    assert agent.handle.supervisor.children["listener"].restarts == 0
    # Nothing was written outside the data directory.
    outside = [p for p in agent.config.data_dir.parent.rglob("*")
               if not p.is_relative_to(agent.config.data_dir) and p != agent.config.data_dir]
    assert outside == []


async def test_random_datagrams_are_survived_and_accounted(agent: RunningAgent) -> None:
    """Seeded random bytes and near-valid lines through the real socket (the parser's own
    hypothesis suite covers arbitrary bytes exhaustively; this checks the whole path)."""
    rng = random.Random(20261125)
    alphabet = b"abc.:|@#,cgmshd0123456789-+e\n \x00\xff"
    datagrams = []
    for _ in range(400):
        if rng.random() < 0.5:
            datagrams.append(rng.randbytes(rng.randrange(0, 300)))
        else:
            datagrams.append(bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 80))))
    send(agent.udp_port, *datagrams)
    send(agent.udp_port, b"still.alive:1|c")
    await wait_for(lambda: agent.handle.state.ingest.packets == len(datagrams) + 1, 15,
                   lambda: f"packets={agent.handle.state.ingest.packets}")
    ingest = agent.handle.state.ingest
    assert agent.handle.supervisor.children["listener"].restarts == 0
    assert ingest.lines >= sum(ingest.parse_errors.values())
    await agent.handle.flush()
    got = await query_async(agent.config.data_dir, "stats.counters.still.alive.count")
    assert sum(got[("stats.counters.still.alive.count", ())]) >= 1
