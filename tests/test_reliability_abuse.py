"""Bad input and abuse: edge datagrams, hostile names, huge tag lists, a cardinality flood, oversize
queries, and the long-mode parser fuzz (>= 100k examples per property).

Every refused line is counted with its reason; nothing is ever written outside the data
directory, whatever the names (the test walks the whole tree it owns, and checks that the data
directory holds only the fixed, numeric file names of the storage layout).
Figures: ``pytest tests/test_reliability_abuse.py -s``.
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from statsyard_agent._config import EXAMPLE_CONFIG, build_config
from statsyard_agent._exceptions import ParseError
from statsyard_agent._protocol import Parser, ParserConfig
from statsyard_agent._types import FlushBatch, Rollup
from statsyard_agent.storage import TSDB, StorageConfig, parse_retention

from .conftest import RunningAgent, make_config, query_async, start_agent, wait_for, wait_for_blocking
from .reliability import children, cli, process_rss_kib, rss_kib, scrape
from .test_agent_faults import http_get_async
from .test_agent_process import AgentProcess
from .test_protocol import any_bytes, check_item, configs, metric_lines, parse_line_or_error

# The storage layout: every name in a data directory is fixed or numeric (see storage/_files.py).
LAYOUT = re.compile(
    r"(LOCK|statsyard\.json|series\.idx|wal|wal/\d{10}\.wal|data|data/g\d+|data/g\d+/\d+s"
    r"|data/g\d+/\d+s/\d+-\d+\.part|quarantine|quarantine/[\w.-]+)"
)


def udp(port: int, payload: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, ("127.0.0.1", port))


def unix(path: Path, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.sendto(payload, str(path))


def datagram_of_valid_lines(size: int) -> tuple[bytes, int]:
    """Exactly ``size`` bytes of ``big:1|c`` lines (padded with empty lines); (bytes, lines)."""
    lines = (size + 1) // 8
    body = b"\n".join([b"big:1|c"] * lines)
    return body + b"\n" * (size - len(body)), lines


def _garbage() -> bytes:
    rng = random.Random(5)
    return bytes(b for b in rng.randbytes(4000) if b != 0x0A)  # one line of binary garbage


# (label, transport, payload, reasons refused with, series stored as name -> count)
EDGE_CASES: list[tuple[str, str, bytes, dict[str, int], dict[str, float]]] = [
    ("0-byte datagram", "udp", b"", {}, {}),
    (
        "65,507-byte datagram of 8,188 valid lines",
        "udp",
        datagram_of_valid_lines(65_507)[0],
        {},
        {"big": 8188.0},
    ),
    ("65,507-byte single line", "udp", b"x" * 65_503 + b":1|c", {"line_too_long": 1}, {}),
    ("binary garbage", "udp", _garbage(), {"malformed_line": 1}, {}),
    ("short binary garbage", "udp", b"\x80\x81\xfe\xff\x00\x01|:#@", {"malformed_line": 1}, {}),
    ("invalid UTF-8 in the name", "udp", b"caf\xc3(:1|c", {"invalid_utf8": 1}, {}),
    ("invalid UTF-8 in a tag", "udp", b"x:1|c|#t:\xff\xfe", {"invalid_utf8": 1}, {}),
    ("name ..", "udp", b"..:1|c", {"bad_name": 1}, {}),
    ("name ../../etc/passwd", "udp", b"../../etc/passwd:1|c", {"bad_name": 1}, {}),
    ("name with NUL (sanitized)", "udp", b"nul\x00byte:1|c", {}, {"nulbyte": 1.0}),
    ("name with / (sanitized)", "udp", b"etc/passwd:1|c", {}, {"etc-passwd": 1.0}),
    ("name with a newline (two lines)", "udp", b"evil\nsplit:1|c", {"malformed_line": 1}, {"split": 1.0}),
    ("10 KB name", "udp", b"n" * 10_240 + b":1|c", {"line_too_long": 1}, {}),
    (
        "32k tags (the most a UDP datagram holds)",
        "udp",
        b"x:1|c|#" + b",".join([b"a"] * 32_000),
        {"line_too_long": 1},
        {},
    ),
    (
        "100k tags over the Unix socket (200 KB)",
        "unix",
        b"x:1|c|#" + b",".join([b"a"] * 100_000),
        {"line_too_long": 1},
        {},
    ),
]


def data_dir_names(data_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))


def files_outside(root: Path, data_dir: Path) -> list[Path]:
    """Everything under ``root`` that is neither ``data_dir`` nor inside it."""
    return sorted(p for p in root.rglob("*") if p != data_dir and not p.is_relative_to(data_dir))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def send_and_account(
    agent: RunningAgent, sock_path: Path, transport: str, payload: bytes
) -> tuple[dict[str, int], float]:
    """Send one datagram; (parse errors it caused by reason, seconds it took to be handled)."""
    state = agent.handle.state
    before = collections.Counter(state.ingest.parse_errors)
    packets = state.ingest.packets + (agent.handle.unix.packets if agent.handle.unix else 0)
    started = time.perf_counter()
    if transport == "udp":
        udp(agent.udp_port, payload)
    else:
        unix(sock_path, payload)

    def handled() -> bool:
        unix_packets = agent.handle.unix.packets if agent.handle.unix else 0
        return state.ingest.packets + unix_packets > packets

    await wait_for(handled, 10, lambda: "the datagram to be handled")
    took = time.perf_counter() - started
    after = collections.Counter(state.ingest.parse_errors)
    return dict(after - before), took


@pytest.mark.parametrize("sanitize", [True, False], ids=["sanitized", "raw-names"])
async def test_edge_datagrams_and_hostile_names(
    nursery: trio.Nursery, tmp_path: Path, sanitize: bool
) -> None:
    """Each case alone, through the real sockets: refused with its counted reason (or stored
    under its sanitized name); afterwards the only files in the whole tree are the storage
    layout's and the socket, and /etc/passwd is untouched."""
    passwd = digest(Path("/etc/passwd"))
    sock_path = tmp_path / "s.sock"
    data = tmp_path / "deep" / "data"
    config = make_config(data, unix=str(sock_path), origin_detection=False, sanitize_names=sanitize)
    agent = await start_agent(nursery, config)
    for label, transport, payload, reasons, _ in EDGE_CASES:
        got, took = await send_and_account(agent, sock_path, transport, payload)
        if not sanitize and "sanitized" in label:
            continue  # stored under its raw name instead; checked below
        assert got == reasons, label
        print(f"{label}: {got or 'accepted'} ({took * 1000:.1f} ms)")
    await send_and_account(agent, sock_path, "udp", b"alive:1|c")
    with trio.fail_after(20):
        await agent.handle.flush()
    assert agent.handle.supervisor.children["listener"].restarts == 0
    assert agent.handle.supervisor.children["unix_listener"].restarts == 0
    stored = await query_async(data, "stats.counters.*.count")
    names = {
        name.removeprefix("stats.counters.").removesuffix(".count"): sum(values)
        for (name, _), values in stored.items()
    }
    expected = {"alive": 1.0}
    for label, _, _, _, series in EDGE_CASES:
        if sanitize or "sanitized" not in label:
            expected |= series
    if not sanitize:
        expected |= {"nul\x00byte": 1.0, "etc/passwd": 1.0}
    assert names == expected
    assert await agent.stop() == 0

    # The whole tree this test owns: the data directory's layout, nothing else (the socket
    # file is removed at shutdown).
    assert files_outside(tmp_path, data) == [tmp_path / "deep"]
    assert [name for name in data_dir_names(data) if not LAYOUT.fullmatch(name)] == []
    assert digest(Path("/etc/passwd")) == passwd


def test_huge_tag_lists_are_refused_in_bounded_time() -> None:
    """With the line limit raised to 1 MiB, 100k distinct tags are refused as too_many_tags;
    100k copies of one tag collapse to that one tag (DogStatsD keeps a tag set)."""
    parser = Parser(ParserConfig(max_line_bytes=1 << 20))
    distinct = b"x:1|c|#" + b",".join(b"t%d:v" % i for i in range(100_000))
    with pytest.raises(ParseError, match="too_many_tags"):
        parser.parse_line(distinct)
    (metric,) = parser.parse_line(b"x:1|c|#" + b",".join([b"a"] * 100_000))
    assert metric.tags == (("a", ""),)


# -- cardinality --------------------------------------------------------------------------------


def flood(port: int, names: int, seed: int) -> None:
    rng = random.Random(seed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for start in range(0, names, 40):
            lines = [f"flood.{rng.getrandbits(64):016x}:1|c" for _ in range(min(40, names - start))]
            sock.sendto("\n".join(lines).encode(), ("127.0.0.1", port))
            if start % 4000 == 0:
                time.sleep(0.002)  # let the agent keep up: this measures memory, not drops


def received_metrics(agent: AgentProcess) -> float:
    return scrape(agent)["statsyard_metrics_received_total"]


def run_flood(agent: AgentProcess, names: int, seed: int) -> None:
    before = received_metrics(agent)
    flood(agent.udp_port, names, seed)
    drops = scrape(agent).get("statsyard_udp_kernel_drops_total", 0.0)
    wait_for_blocking(
        lambda: (
            received_metrics(agent)
            + 40 * (scrape(agent).get("statsyard_udp_kernel_drops_total", 0.0) - drops)
            >= before + names
        ),
        60,
        "the flood to be read",
    )


@pytest.mark.parametrize(
    ("waves", "names"),
    [
        pytest.param(4, 50_000, id="200k"),
        pytest.param(12, 100_000, id="1.2M", marks=pytest.mark.long),
    ],
)
def test_cardinality_flood_stays_within_the_cap_and_a_memory_bound(
    tmp_path: Path, waves: int, names: int
) -> None:
    """Waves of random unique names: active series stay at the cap, every refused metric is
    counted, and memory stops growing once the parse caches are full (they are bounded)."""
    cap = 5000
    agent = AgentProcess(tmp_path / "data", "--flush-interval", "1", "--max-series", str(cap))
    try:
        wait_for_blocking(
            lambda: sum("ingest worker" in line and "started" in line for line in agent.log) >= 2,
            30,
            "both receive workers running",
        )
        pids = [agent.proc.pid, *children(agent.proc.pid)]
        base = {pid: process_rss_kib(pid) for pid in pids}
        rss = []
        peak = dict.fromkeys(pids, 0)
        for wave in range(waves):
            run_flood(agent, names, seed=wave)
            rss.append(rss_kib(agent.proc.pid))  # the agent and its receive workers
            for pid in pids:
                peak[pid] = max(peak[pid], process_rss_kib(pid))
        flushes = scrape(agent)["statsyard_flushes_total"]
        wait_for_blocking(
            lambda: scrape(agent)["statsyard_flushes_total"] >= flushes + 2,
            30,
            "two flushes after the flood (refusals are tallied as the interval closes)",
        )
        sample = scrape(agent)
        received = sample["statsyard_metrics_received_total"]
        assert sample["statsyard_series_active"] == cap
        # Every refused metric is counted; distinct refused series too (bounded per interval).
        assert sample['statsyard_metrics_rejected_total{reason="cardinality"}'] == received - cap
        assert sample['statsyard_series_rejected_total{reason="cardinality"}'] >= cap
        assert sample["statsyard_storage_series"] <= 2 * cap  # count and rate of each counter
        assert any(f"max_series={cap} reached" in line for line in agent.log)
        # Bounded: the parse caches (in each receive worker) and the aggregator's refused-key
        # sets hold a fixed number of entries and are then cleared, so no process ever grows
        # more than 128 MiB above its start, however long the flood (long mode: 1.2M names).
        growth = {pid: peak[pid] - base[pid] for pid in pids}
        assert max(growth.values()) < 128 * 1024, growth
        print(
            f"\ncardinality flood: {waves} waves of {names} unique names, cap {cap}: RSS (agent "
            f"+ {len(pids) - 1} receive workers) {sum(base.values()) / 1024:.0f} MiB at start, "
            f"{' '.join(f'{r / 1024:.0f}' for r in rss)} MiB after each wave; the most any "
            f"process grew: {max(growth.values()) / 1024:.0f} MiB; {received - cap:.0f} metrics "
            "refused and counted"
        )
    finally:
        agent.proc.kill()
        agent.wait(30)


# -- queries ------------------------------------------------------------------------------------


def _wide_data_dir(path: Path, series: int) -> None:
    config = StorageConfig(retention=parse_retention("1s:1d,1m:7d"), fsync=False)
    names = tuple(f"wide.s{i}" for i in range(series))
    now = int(time.time())
    with TSDB.open(path, config) as db:
        db.write(FlushBatch(now, 1.0, names, ((),) * series, (Rollup.SUM,) * series, np.ones(series)))


def test_oversize_queries_are_refused_by_the_query_command(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _wide_data_dir(data, 10_001)
    too_many = cli("query", "wide.*", "--data-dir", str(data), "--from", "-1min")
    assert too_many.returncode == 1
    assert "matches 10001 series" in too_many.stderr
    assert "(limit 10000)" in too_many.stderr
    # 100 series x 23 h at 1 s = 8.28M points (23 h, not 1 d: a range reaching the very edge of the
    # 1 s tier's retention would be served by the 1 m tier instead, depending on the second).
    too_long = cli("query", "wide.s{1,2,3,4,5,6,7,8,9}?", "--data-dir", str(data), "--from", "-23h")
    assert too_long.returncode == 1
    assert "(limit 5000000)" in too_long.stderr
    ok = cli("query", "wide.s1", "--data-dir", str(data), "--from", "-1min", "--format", "json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["target"] == "wide.s1"


async def test_http_surface_refuses_oversize_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Bodies over 1 MiB answer 413, an unknown route 404, a non-GET 405; the read API (when
    this build has it) answers 400 to a bad target and 413 beyond its series limit."""
    data = tmp_path / "data"
    _wide_data_dir(data, 50)
    agent = await start_agent(nursery, make_config(data))
    port = agent.http_port

    def post(path: str, body: bytes) -> int:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
            return conn.getresponse().status
        finally:
            conn.close()

    assert await trio.to_thread.run_sync(post, "/render", b"x" * (2 << 20)) == 413
    status, _ = await http_get_async(port, "/nope")
    assert status == 404
    status, _ = await http_get_async(port, "/render?target=" + "a" * 70_000)
    assert status in (400, 414, 431)
    status, _ = await http_get_async(port, "/render?target=wide.s1&format=json")
    if status == 404:
        pytest.skip("this build has no HTTP read API yet (/render answers 404)")
    assert status == 200
    status, body = await http_get_async(port, "/render?target=sumSeries(&format=json")
    assert status == 400, body
    limited = make_config(tmp_path / "limited", graphite={"max_series": 10})
    _wide_data_dir(tmp_path / "limited", 50)
    small = await start_agent(nursery, limited)
    status, body = await http_get_async(small.http_port, "/render?target=wide.*&format=json")
    assert status == 413, body
    assert b"max_series" in body
    await small.stop()


def test_listeners_bind_loopback_by_default() -> None:
    config = build_config({})
    assert config.udp is not None
    assert config.http is not None
    assert (config.udp.host, config.http.host) == ("127.0.0.1", "127.0.0.1")
    assert config.unix.path is None
    assert 'udp = "127.0.0.1:8125"' in EXAMPLE_CONFIG
    assert 'http = "127.0.0.1:8126"' in EXAMPLE_CONFIG


# -- parser fuzz, long mode ---------------------------------------------------------------------

FUZZ = settings(max_examples=100_000, deadline=1000, suppress_health_check=list(HealthCheck))


@pytest.mark.long
@FUZZ
@given(line=any_bytes, config=configs)
def test_fuzz_arbitrary_bytes_100k(line: bytes, config: ParserConfig) -> None:
    parser = Parser(config)
    outcome = parse_line_or_error(parser, line)  # only our ParseError, with a known reason
    if not isinstance(outcome, ParseError):
        for item in outcome:
            check_item(item, config)
    data = line + b"\n" + line
    result = parser.parse_datagram(data)  # never raises
    assert result.lines == sum(1 for piece in data.split(b"\n") if piece.removesuffix(b"\r"))
    assert len(result.errors) <= result.lines


@pytest.mark.long
@FUZZ
@given(case=metric_lines(), cut=any_bytes)
def test_fuzz_near_valid_lines_100k(case: tuple[bytes, list[object], bool], cut: bytes) -> None:
    line = case[0]
    for mutated in (line + cut, cut + line, line[: len(line) // 2] + cut + line[len(line) // 2 :]):
        for piece in mutated.split(b"\n"):
            parse_line_or_error(Parser(), piece)
