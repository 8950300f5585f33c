"""The StatsD relay: the hashring continuum, name sharding, packing, and the agent's datagram hook."""

from __future__ import annotations

import collections
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from statsyard_agent.forward import HashRing, StatsdRelay, parse_sink
from statsyard_agent.forward._relay import metric_key
from tests.conftest import make_config, start_agent, wait_for

# Owners computed with the npm package hashring 3.2.0 (the version Etsy statsd pins, used by its
# proxy), nodes weighted 100 each as proxy.js does; key i is "stats.metric{i}.count".
HASHRING_3_2_0 = {
    ("10.0.0.1:8125", "10.0.0.2:8125", "10.0.0.3:8125"): (
        "020002102210220122011012112202211021102111200210200002000012000012002011221010120210001020"
        "112020122110112011112012001211022222202222110100022122000122201200201122210122200101010220"
        "011021001110101201211002101220211101200001221210100002202200220111111220200221112021020102"
        "021020210021102111022011110111111121122201021101012220120121211211111021211110202112021010"
        "002121112011122120021121001200020201220202001001222200020002100022110121011001000000001122"
        "200200210200221012121002011111101010001112022021010111000202120020002102122210101010201000"
        "221010001200020201101010010202211222112110022122111220010211"
    ),
    tuple(f"agg-{i}:8125" for i in range(7)): (
        "664030324151426535364305210432432460006001020522660025441142262623550015266664300202621252"
        "526152503631020325253662666633500233313241665514055200432510335111332044645340365415646055"
        "213544460060615220055162562656606656566310231223124433562422632045262650615346401025443215"
        "124335623045464616643606462535664415554145263356213122253424204565243202442166004413243046"
        "053506465245534641432415601624544036212250131214243402564224624265110561601402143056600010"
        "042132254306162024444330532560461543063134210505445340231315234152631225463635262152636515"
        "504153561212301516516650552613321446122542202000401201626212"
    ),
}
HASHRING_WORDS = {
    ("127.0.0.1:8125", "127.0.0.1:8126"): [
        "127.0.0.1:8125",
        "127.0.0.1:8125",
        "127.0.0.1:8126",
        "127.0.0.1:8125",
        "127.0.0.1:8125",
        "127.0.0.1:8126",
        "127.0.0.1:8126",
        "127.0.0.1:8126",
        "127.0.0.1:8126",
        "127.0.0.1:8126",
    ],
    ("a:1", "b:2", "c:3", "d:4", "e:5"): [
        "e:5",
        "e:5",
        "a:1",
        "a:1",
        "a:1",
        "e:5",
        "a:1",
        "e:5",
        "b:2",
        "a:1",
    ],
}
WORDS = [
    "api.requests",
    "stats.timers.x",
    "foo",
    "bar.baz",
    "_sc",
    "_e{5,4}",
    "web.latency",
    "a",
    "z.z.z",
    "checkout.total",
]


@pytest.mark.parametrize("nodes", list(HASHRING_3_2_0))
def test_ring_matches_hashring_npm(nodes: tuple[str, ...]) -> None:
    ring = HashRing(nodes)
    expected = HASHRING_3_2_0[nodes]
    owners = "".join(str(ring.index_for(f"stats.metric{i}.count".encode())) for i in range(len(expected)))
    assert owners == expected


@pytest.mark.parametrize("nodes", list(HASHRING_WORDS))
def test_ring_matches_hashring_npm_on_words(nodes: tuple[str, ...]) -> None:
    ring = HashRing(nodes)
    assert [nodes[ring.index_for(w.encode())] for w in WORDS] == HASHRING_WORDS[nodes]


def test_adding_a_node_moves_only_keys_to_it() -> None:
    keys = [f"service{i}.latency".encode() for i in range(3000)]
    before = HashRing(["a:1", "b:1", "c:1"])
    after = HashRing(["a:1", "b:1", "c:1", "d:1"])
    moved = [k for k in keys if after.nodes[after.index_for(k)] != before.nodes[before.index_for(k)]]
    assert all(after.index_for(k) == 3 for k in moved)
    assert 0.15 < len(moved) / len(keys) < 0.35  # about a quarter, not a reshuffle
    shares = collections.Counter(after.index_for(k) for k in keys)
    assert min(shares.values()) > len(keys) / 4 * 0.6


@pytest.mark.parametrize(
    ("line", "key"),
    [
        (b"api.requests:1|c", b"api.requests"),
        (b"api.requests:1|c|@0.1|#env:prod", b"api.requests"),
        (b"gauge:+3|g", b"gauge"),
        (b"_sc|db.ok|0|#env:prod", b"_sc"),
        (b"_e{5,4}:title|text", b"_e{5,4}"),
        (b"no-colon", b"no-colon"),
    ],
)
def test_metric_key(line: bytes, key: bytes) -> None:
    assert metric_key(line) == key


@pytest.fixture
def receivers() -> Iterator[list[socket.socket]]:
    socks = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


@pytest.fixture
def relays() -> Iterator[list[StatsdRelay]]:
    made: list[StatsdRelay] = []
    yield made
    for relay in made:
        relay.close()


def _relay(made: list[StatsdRelay], entry: object) -> StatsdRelay:
    relay = StatsdRelay(parse_sink(entry, "forward[0]"))
    relay.connect(relay.resolve())
    made.append(relay)
    return relay


def _url(socks: list[socket.socket]) -> str:
    return "statsd://" + ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in socks)


def _receive_all(sock: socket.socket) -> list[bytes]:
    datagrams = []
    sock.settimeout(0.05)
    try:
        while True:
            datagrams.append(sock.recv(65535))
    except TimeoutError:
        return datagrams


def test_each_name_goes_to_its_owner_packed(
    receivers: list[socket.socket], relays: list[StatsdRelay]
) -> None:
    relay = _relay(relays, {"url": _url(receivers), "max_datagram": 200})
    lines = [f"svc{i % 40}.hits:{i}|c|#env:prod".encode() for i in range(400)]
    for start in range(0, len(lines), 7):
        relay.relay(b"\n".join(lines[start : start + 7]) + b"\n")
    relay.flush()
    got: dict[int, list[bytes]] = {}
    for index, sock in enumerate(receivers):
        datagrams = _receive_all(sock)
        assert all(len(d) <= 200 for d in datagrams)
        got[index] = [line for d in datagrams for line in d.split(b"\n")]
    assert sorted(line for received in got.values() for line in received) == sorted(lines)
    for index, received in got.items():
        assert all(relay.ring.index_for(metric_key(line)) == index for line in received)
    assert len(got[0])
    assert len(got[1])
    assert len(got[2])
    assert relay.counters.sent_points == 400
    assert relay.buffered_bytes == 0


def test_order_within_a_name_is_kept(receivers: list[socket.socket], relays: list[StatsdRelay]) -> None:
    relay = _relay(relays, {"url": _url(receivers[:1]), "max_datagram": 100})
    for i in range(50):
        relay.relay(f"g:{i}|g".encode())
    relay.flush()
    received = [line for d in _receive_all(receivers[0]) for line in d.split(b"\n")]
    assert received == [f"g:{i}|g".encode() for i in range(50)]


def test_a_dead_upstream_is_counted_not_raised(
    receivers: list[socket.socket], relays: list[StatsdRelay]
) -> None:
    port = receivers[0].getsockname()[1]
    receivers[0].close()  # nothing listens there now: the kernel answers "port unreachable"
    relay = _relay(relays, f"statsd://127.0.0.1:{port}")
    for _ in range(20):
        relay.relay(b"x:1|c")
        relay.flush()
        if relay.counters.dropped_points["send_error"]:
            break
    assert relay.counters.dropped_points["send_error"] >= 1
    assert "refused" in relay.counters.last_error.lower()


async def test_agent_relays_raw_lines_and_still_aggregates(
    nursery: trio.Nursery, tmp_path: Path, receivers: list[socket.socket]
) -> None:
    agent = await start_agent(
        nursery, make_config(tmp_path / "data", forward=[{"url": _url(receivers), "name": "tier2"}])
    )
    lines = [f"app.req{i % 10}:1|c|#route:/x" for i in range(100)] + ["app.lat:12|ms"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for line in lines:
            client.sendto(line.encode(), ("127.0.0.1", agent.udp_port))
    await agent.wait_lines(len(lines))
    relay = agent.handle.state.forward.relays[0]  # type: ignore[union-attr]
    await wait_for(
        lambda: relay.counters.sent_points == len(lines), 10, lambda: f"sent {relay.counters.sent_points}"
    )
    received = await trio.to_thread.run_sync(
        lambda: [line.decode() for sock in receivers for d in _receive_all(sock) for line in d.split(b"\n")]
    )
    assert sorted(received) == sorted(lines)
    await agent.handle.flush()
    assert agent.handle.state.writer.points_written > 0  # the local store still gets them
    assert await agent.stop() == 0


def test_an_unresolved_upstream_drops_and_counts() -> None:
    relay = StatsdRelay(parse_sink("statsd://aggregator.example:8125", "forward[0]"))
    relay.connect([None])  # the name did not resolve (yet): nothing to send to
    relay.relay(b"a:1|c\nb:2|c")
    relay.flush()
    assert relay.counters.dropped_points["send_error"] == 2
    assert "not resolved" in relay.counters.last_error
    relay.close()
