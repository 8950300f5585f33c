"""Tests for the sans-IO StatsD/DogStatsD parser, driven by the golden vectors in protocols/.

Invariants proven here (h11-fuzz style, over arbitrary and near-valid bytes):

* ``parse_line`` raises nothing but ``ParseError``, with a reason from ``PARSE_ERROR_REASONS``
  (and never ``internal_error``, the label of the safety net for parser bugs).
* ``parse_datagram`` never raises, and equals the concatenation of ``parse_line`` over the
  datagram's ``\\n``-separated lines: a line that raises contributes one error, any other
  non-empty line its items. So ``lines`` == the number of non-empty lines (after stripping one
  trailing ``\\r``) and ``len(metrics) + len(events) + len(service_checks) + len(errors) ==
  lines + sum(len(values) - 1 over packed gauge lines)``; every gauge Metric has one value.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from statsyard_agent._exceptions import ConfigError, ParseError
from statsyard_agent._protocol import (
    CACHE_MAX_COST,
    CACHE_MAX_ENTRIES,
    PARSE_ERROR_REASONS,
    Parser,
    ParserConfig,
    ParseResult,
)
from statsyard_agent._types import Event, Metric, MetricKind, ServiceCheck

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors"
VALID: list[dict[str, Any]] = json.loads((VECTORS / "valid.json").read_text("utf-8"))
INVALID: list[dict[str, Any]] = json.loads((VECTORS / "invalid.json").read_text("utf-8"))

Item = Metric | Event | ServiceCheck


def line_of(case: dict[str, Any]) -> bytes:
    if "line_hex" in case:
        return bytes.fromhex(case["line_hex"])
    line: str = case["line"]
    return line.encode("utf-8")


def parser_for(case: dict[str, Any]) -> Parser:
    return Parser(ParserConfig(**case.get("config", {})))


def as_vector(item: Item) -> dict[str, Any]:
    """The JSON shape of one parsed item, as written in valid.json."""
    if isinstance(item, Metric):
        return {
            "kind": item.kind.value,
            "name": item.name,
            "values": list(item.values),
            "members": list(item.members),
            "rate": item.rate,
            "tags": [list(tag) for tag in item.tags],
            "delta": item.delta,
            "container_id": item.container_id,
            "timestamp": item.timestamp,
        }
    if isinstance(item, Event):
        return {
            "kind": "event",
            "title": item.title,
            "text": item.text,
            "alert_type": item.alert_type,
            "tags": [list(tag) for tag in item.tags],
        }
    return {
        "kind": "service_check",
        "name": item.name,
        "status": item.status,
        "tags": [list(tag) for tag in item.tags],
    }


def items_of(result: ParseResult) -> list[Item]:
    return [*result.metrics, *result.events, *result.service_checks]


def errors_of(result: ParseResult) -> list[tuple[str, str]]:
    return [(error.reason, error.detail) for error in result.errors]


def one_metric(parser: Parser, line: bytes) -> Metric:
    (item,) = parser.parse_line(line)
    assert isinstance(item, Metric)
    return item


def case_id(case: dict[str, Any]) -> str:
    return str(case.get("line", case.get("line_hex")))[:60]


# -- golden vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALID, ids=case_id)
def test_valid_vector(case: dict[str, Any]) -> None:
    parser = parser_for(case)
    line = line_of(case)
    assert [as_vector(item) for item in parser.parse_line(line)] == case["expect"]
    # Second time through the warm caches, and through the datagram path.
    assert [as_vector(item) for item in parser.parse_line(line)] == case["expect"]
    result = parser.parse_datagram(line + b"\n")
    assert result.errors == []
    assert result.lines == 1
    # parse_datagram groups by kind; every vector line holds one kind, so order is kept.
    assert [as_vector(item) for item in items_of(result)] == case["expect"]


@pytest.mark.parametrize("case", INVALID, ids=case_id)
def test_invalid_vector(case: dict[str, Any]) -> None:
    parser = parser_for(case)
    line = line_of(case)
    with pytest.raises(ParseError) as excinfo:
        parser.parse_line(line)
    assert excinfo.value.reason == case["reason"]
    result = parser.parse_datagram(b"ok:1|c\n" + line + b"\nok:2|c")
    assert [error.reason for error in result.errors] == [case["reason"]]
    assert [metric.values for metric in result.metrics] == [(1.0,), (2.0,)]
    assert result.events == []
    assert result.service_checks == []
    assert result.lines == 3


def test_vectors_cover_the_spec() -> None:
    assert len(VALID) >= 40
    assert len(INVALID) >= 40
    reasons = {case["reason"] for case in INVALID}
    # internal_error marks a parser bug; no input is supposed to produce it.
    assert reasons == PARSE_ERROR_REASONS - {"internal_error"}
    kinds = {expect["kind"] for case in VALID for expect in case["expect"]}
    assert kinds == {kind.value for kind in MetricKind} | {"event", "service_check"}
    fields = set(ParserConfig.__dataclass_fields__)
    for case in VALID:
        assert set(case.get("config", {})) <= fields
    for case in VALID + INVALID:
        assert case["note"]
    # Invalid lines hold under the default config, so an agent can replay them as they are.
    assert all("config" not in case for case in INVALID)


@pytest.mark.parametrize(
    ("config", "line", "reason"),
    [
        ({"max_line_bytes": 9}, b"x:1|c|#a:b", "line_too_long"),
        ({"max_tags": 2}, b"a:1|c|#x,y,z", "too_many_tags"),
        ({"max_tags": 2}, b"a;x=1:1|c|#y,z", "too_many_tags"),
        ({"max_tags": 2}, b"a:1|c|#x|#y|#z", "too_many_tags"),
        ({"max_tags": 2}, b"_e{1,1}:a|b|#x,y,z", "too_many_tags"),
        ({"max_tags": 2}, b"_sc|a|0|#x|#y,z", "too_many_tags"),
        ({"max_tag_bytes": 9}, b"a:1|c|#abcd:efghi", "tag_too_long"),
        ({"max_tag_bytes": 3}, b"a;k=v1:1|c", "tag_too_long"),
        ({"max_name_bytes": 8}, b"abcdefghi:1|c", "name_too_long"),
        ({"max_name_bytes": 8}, b"_sc|abcdefghi|0", "name_too_long"),
        ({"sanitize_names": False}, b"../../etc/passwd:1|c", "bad_name"),
        ({"sanitize_names": False}, b"a..b:1|c", "bad_name"),
    ],
)
def test_configured_limits_refuse(config: dict[str, Any], line: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as excinfo:
        Parser(ParserConfig(**config)).parse_line(line)
    assert excinfo.value.reason == reason


def test_spec_lists_every_reason() -> None:
    spec = (VECTORS.parent / "statsd.md").read_text("utf-8")
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", spec, flags=re.MULTILINE))
    assert documented >= PARSE_ERROR_REASONS


# -- datagrams ----------------------------------------------------------------------------------


def test_bad_lines_in_the_middle_do_not_lose_good_lines() -> None:
    data = b"\n".join(
        [
            b"a:1|c",
            b"garbage",
            b"b:2|ms|@0.5",
            b"c:nan|g",
            b"_e{5,4}:title|text",
            b"d:1|c|@0",
            b"_sc|check|1",
            b"e:x|s",
        ]
    )
    result = Parser().parse_datagram(data)
    assert [m.name for m in result.metrics] == ["a", "b", "e"]
    assert [e.title for e in result.events] == ["title"]
    assert [s.name for s in result.service_checks] == ["check"]
    assert [e.reason for e in result.errors] == [
        "malformed_line",
        "non_finite_value",
        "invalid_sample_rate",
    ]
    assert result.lines == 8


@pytest.mark.parametrize(
    ("data", "names", "lines"),
    [
        (b"", [], 0),
        (b"\n", [], 0),
        (b"\r\n\r\n\n", [], 0),
        (b"a:1|c", ["a"], 1),
        (b"a:1|c\n", ["a"], 1),
        (b"a:1|c\r\nb:1|c\r\n", ["a", "b"], 2),
        (b"a:1|c\n\n\nb:1|c", ["a", "b"], 2),
        (b"\na:1|c", ["a"], 1),
    ],
    ids=["empty", "newline", "crlf-only", "no-newline", "trailing", "crlf", "blank-lines", "lead"],
)
def test_datagram_framing(data: bytes, names: list[str], lines: int) -> None:
    result = Parser().parse_datagram(data)
    assert [m.name for m in result.metrics] == names
    assert result.errors == []
    assert result.lines == lines


def test_only_one_carriage_return_is_stripped() -> None:
    result = Parser().parse_datagram(b"a:1|c\r\r\n")
    assert [e.reason for e in result.errors] == ["unknown_type"]


def test_parse_line_of_an_empty_line_is_empty() -> None:
    assert Parser().parse_line(b"") == []
    assert Parser().parse_line(b"\r") == []


def test_packed_gauge_counts_one_line_and_several_metrics() -> None:
    result = Parser().parse_datagram(b"g:1:2:3|g\nbad")
    assert result.lines == 2
    assert len(result.metrics) + len(result.errors) == result.lines + 2


# -- limits and config --------------------------------------------------------------------------


def test_default_limits_are_inclusive() -> None:
    parser = Parser()
    fits = b"a:1|c|z" + b"z" * (8192 - 7)  # an unknown section, ignored
    assert len(fits) == 8192
    assert one_metric(parser, fits).name == "a"
    with pytest.raises(ParseError, match="line_too_long"):
        parser.parse_line(fits + b"z")

    name = b"n" * 1024
    assert one_metric(parser, name + b":1|c").name == name.decode()
    with pytest.raises(ParseError, match="name_too_long"):
        parser.parse_line(name + b"n:1|c")

    tags = b",".join(b"t%d" % i for i in range(100))
    assert len(one_metric(parser, b"a:1|c|#" + tags).tags) == 100
    with pytest.raises(ParseError, match="too_many_tags"):
        parser.parse_line(b"a:1|c|#" + tags + b",t100")

    tag = b"k:" + b"v" * 510
    assert one_metric(parser, b"a:1|c|#" + tag).tags == (("k", "v" * 510),)
    with pytest.raises(ParseError, match="tag_too_long"):
        parser.parse_line(b"a:1|c|#" + tag + b"v")


def test_limits_count_utf8_bytes_not_characters() -> None:
    parser = Parser(ParserConfig(max_tag_bytes=4, max_name_bytes=4, sanitize_names=False))
    assert one_metric(parser, "a:1|c|#é:a".encode()).tags == (("é", "a"),)  # 4 bytes
    with pytest.raises(ParseError, match="tag_too_long"):
        parser.parse_line("a:1|c|#é:é".encode())  # 3 characters, 5 bytes
    assert one_metric(parser, "éé:1|c".encode()).name == "éé"
    with pytest.raises(ParseError, match="name_too_long"):
        parser.parse_line("ééx:1|c".encode())


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"gauge_sign": "add"}, "gauge_sign"),
        ({"max_line_bytes": 0}, "max_line_bytes"),
        ({"max_name_bytes": -1}, "max_name_bytes"),
        ({"max_tags": True}, "max_tags"),
        ({"max_tag_bytes": 1.5}, "max_tag_bytes"),
    ],
)
def test_config_is_validated(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        ParserConfig(**overrides)
    assert excinfo.value.key == key


def test_gauge_sign_setting() -> None:
    line = b"g:+1:-2:3|g"
    delta = Parser(ParserConfig(gauge_sign="delta")).parse_line(line)
    absolute = Parser(ParserConfig(gauge_sign="set")).parse_line(line)
    assert all(isinstance(m, Metric) for m in delta + absolute)
    assert [(m.values, m.delta) for m in delta if isinstance(m, Metric)] == [
        ((1.0,), True),
        ((-2.0,), True),
        ((3.0,), False),
    ]
    assert [(m.values, m.delta) for m in absolute if isinstance(m, Metric)] == [
        ((1.0,), False),
        ((-2.0,), False),
        ((3.0,), False),
    ]


# -- caches -------------------------------------------------------------------------------------


def test_caches_are_bounded_by_entries() -> None:
    parser = Parser()
    for start in range(0, CACHE_MAX_ENTRIES + 5000, 1000):
        data = b"\n".join(b"n%d:%d|c|#t:%d" % (i, i, i) for i in range(start, start + 1000))
        assert len(parser.parse_datagram(data).metrics) == 1000
    caches = (parser._names, parser._tags, parser._values)
    assert all(0 < len(cache) <= CACHE_MAX_ENTRIES for cache in caches)
    # A cleared cache still answers right.
    assert one_metric(parser, b"n3:3|c|#t:3").tags == (("t", "3"),)


def test_caches_are_bounded_by_cost() -> None:
    parser = Parser()
    # Every section has 100 tags: few entries, many retained objects.
    for i in range(2000):
        section = b",".join(b"k%d:%d" % (j, i) for j in range(100))
        parser.parse_line(b"a:1|c|#" + section)
    assert len(parser._tags) < 2000
    assert parser._tags.cost <= CACHE_MAX_COST + 100 * 1024


def test_cache_does_not_leak_between_configs() -> None:
    line = b"my name:1|c"
    assert one_metric(Parser(), line).name == "my_name"
    assert one_metric(Parser(ParserConfig(sanitize_names=False)), line).name == "my name"


# -- the module stays pure ----------------------------------------------------------------------


def test_module_imports_neither_trio_nor_prometheus_client() -> None:
    code = (
        "import sys, statsyard_agent._protocol\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'prometheus_client'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- property tests -----------------------------------------------------------------------------

TOKENS = [
    b"a", b"b.c", b":", b"::", b"|", b"1", b"-2.5", b"+3", b"1e400", b"nan", b"#", b"@", b"@0.5",
    b"c", b"g", b"ms", b"h", b"d", b"s", b"_e{", b"_sc|", b"}", b",", b"T", b"T12", b"c:", b"e:",
    b"card:", b".", b"..", b";", b"=", b"\xff", b"\xc3", b"\\n", b"\n", b"\r", b" ", b"/", b"0",
    b"{5,4}:", b"t:", b"p:", b"d:", b"m:", b"\x00",
]  # fmt: skip

grammar_bytes = st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join)
any_bytes = st.one_of(st.binary(max_size=300), grammar_bytes)
configs = st.builds(
    ParserConfig,
    gauge_sign=st.sampled_from(["delta", "set"]),
    sanitize_names=st.booleans(),
    max_line_bytes=st.sampled_from([16, 8192]),
    max_name_bytes=st.sampled_from([4, 1024]),
    max_tags=st.sampled_from([1, 100]),
    max_tag_bytes=st.sampled_from([3, 512]),
)


def check_item(item: Item, config: ParserConfig) -> None:
    """What every successfully parsed item promises, whatever the input."""
    if isinstance(item, Metric):
        assert item.name
        assert "" not in item.name.split(".")
        assert len(item.name.encode()) <= config.max_name_bytes
        if config.sanitize_names:
            assert re.fullmatch(r"[A-Za-z0-9_.=\-]+", item.name)
        assert 0.0 < item.rate <= 1.0
        assert all(math.isfinite(v) for v in item.values)
        if item.kind is MetricKind.SET:
            assert item.values == ()
            assert len(item.members) == 1
            assert item.members[0]
            assert item.rate == 1.0
        else:
            assert item.members == ()
            assert len(item.values) >= 1
        if item.kind is MetricKind.GAUGE:
            assert len(item.values) == 1
            assert item.rate == 1.0
        else:
            assert not item.delta
    elif isinstance(item, ServiceCheck):
        assert item.name
        assert 0 <= item.status <= 3
    else:
        assert item.title
        assert item.alert_type in ("error", "warning", "info", "success")
    tags = item.tags
    assert list(tags) == sorted(set(tags))
    assert len(tags) <= config.max_tags
    assert all(key for key, _ in tags)


def parse_line_or_error(parser: Parser, line: bytes) -> list[Item] | ParseError:
    outcome: list[Item] | ParseError
    try:
        outcome = parser.parse_line(line)
    except ParseError as exc:
        outcome = exc
    if isinstance(outcome, ParseError):
        assert outcome.reason in PARSE_ERROR_REASONS
        assert outcome.reason != "internal_error", outcome
    return outcome


def per_line(parser: Parser, data: bytes) -> Iterator[list[Item] | ParseError]:
    for line in data.split(b"\n"):
        yield parse_line_or_error(parser, line)


@given(line=any_bytes, config=configs)
def test_parse_line_raises_only_parse_error(line: bytes, config: ParserConfig) -> None:
    parser = Parser(config)
    outcome = parse_line_or_error(parser, line)
    if not isinstance(outcome, ParseError):
        for item in outcome:
            check_item(item, config)
        # The caches must not change the answer.
        assert parse_line_or_error(parser, line) == outcome
        assert parse_line_or_error(Parser(config), line) == outcome


@given(data=st.lists(any_bytes, max_size=6).map(b"\n".join), config=configs)
def test_parse_datagram_never_raises_and_equals_per_line(data: bytes, config: ParserConfig) -> None:
    result = Parser(config).parse_datagram(data)
    expected = ParseResult()
    extra = 0
    for outcome in per_line(Parser(config), data):
        if isinstance(outcome, ParseError):
            expected.errors.append(outcome)
            expected.lines += 1
        elif outcome:
            expected.lines += 1
            extra += len(outcome) - 1
            for item in outcome:
                if isinstance(item, Metric):
                    expected.metrics.append(item)
                elif isinstance(item, Event):
                    expected.events.append(item)
                else:
                    expected.service_checks.append(item)
    assert errors_of(result) == errors_of(expected)
    assert result.metrics == expected.metrics
    assert result.events == expected.events
    assert result.service_checks == expected.service_checks
    assert result.lines == expected.lines
    total = len(result.metrics) + len(result.events) + len(result.service_checks)
    assert total + len(result.errors) == result.lines + extra
    assert all(error.reason != "internal_error" for error in result.errors)


@given(data=any_bytes, cut=st.integers(min_value=0, max_value=300), garbage=any_bytes)
def test_split_and_trailing_garbage(data: bytes, cut: int, garbage: bytes) -> None:
    parser = Parser()
    whole = parser.parse_datagram(data)
    # Split anywhere: neither half raises, and no line appears from nowhere.
    head, tail = parser.parse_datagram(data[:cut]), parser.parse_datagram(data[cut:])
    assert head.lines + tail.lines <= whole.lines + 1
    # Split at a line boundary: exactly the same as whole.
    lines = data.split(b"\n")
    k = cut % (len(lines) + 1)
    first, second = b"\n".join(lines[:k]), b"\n".join(lines[k:])
    a, b = parser.parse_datagram(first), parser.parse_datagram(second)
    assert a.metrics + b.metrics == whole.metrics
    assert errors_of(a) + errors_of(b) == errors_of(whole)
    assert a.lines + b.lines == whole.lines
    # Trailing garbage never costs the lines before it.
    dirty = parser.parse_datagram(data + b"\n" + garbage)
    assert dirty.metrics[: len(whole.metrics)] == whole.metrics
    assert errors_of(dirty)[: len(whole.errors)] == errors_of(whole)


# A structured strategy: lines built from parts, so the expected parse is known exactly.
name_parts = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
names = st.lists(name_parts, min_size=1, max_size=4).map(".".join)
tag_keys = st.text("abcdefghijklmnopqrstuvwxyz_.-/", min_size=1, max_size=8)
tag_values = st.text(st.characters(codec="utf-8", exclude_characters=",|\n\r#"), max_size=10)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
members = st.text(st.characters(codec="utf-8", exclude_characters="|:\n\r"), min_size=1, max_size=10)


@st.composite
def metric_lines(draw: st.DrawFn) -> tuple[bytes, list[Metric], bool]:
    """A valid metric line, the Metrics it must parse to, and the gauge_sign=delta flag."""
    name = draw(names)
    kind = draw(st.sampled_from(list(MetricKind)))
    delta_mode = draw(st.booleans())
    tags = draw(st.lists(st.tuples(tag_keys, tag_values), max_size=5))
    rate = draw(st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1.0)))
    container = draw(st.one_of(st.none(), st.text("0123456789abcdef", min_size=1, max_size=12)))
    timestamp = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=2**40)))
    sections = []
    if rate is not None:
        sections.append(f"@{rate!r}")
    if tags:
        sections.append("#" + ",".join(k if not v else f"{k}:{v}" for k, v in tags))
    if container is not None:
        sections.append(f"c:{container}")
    if timestamp is not None:
        sections.append(f"T{timestamp}")
    sections.extend(draw(st.lists(st.sampled_from(["e:ext", "card:low", "zz:unknown", ""]))))
    sections = draw(st.permutations(sections))
    expected_tags = tuple(sorted(set(tags)))
    expected_rate = 1.0 if rate is None or kind in (MetricKind.GAUGE, MetricKind.SET) else rate

    def metric(values: tuple[float, ...], members: tuple[str, ...], delta: bool) -> Metric:
        return Metric(name, kind, values, members, expected_rate, expected_tags, delta, container, timestamp)

    if kind is MetricKind.SET:
        raw = draw(members)
        expected = [metric((), (raw,), False)]
    else:
        values = draw(st.lists(numbers, min_size=1, max_size=4))
        texts = [repr(v) for v in values]
        texts = [t if t.startswith("-") else draw(st.sampled_from(["", "+"])) + t for t in texts]
        raw = ":".join(texts)
        if kind is MetricKind.GAUGE:
            expected = [
                metric((v,), (), delta_mode and t[0] in "+-") for v, t in zip(values, texts, strict=True)
            ]
        else:
            expected = [metric(tuple(values), (), False)]
    line = "|".join([f"{name}:{raw}", kind.value, *sections])
    return line.encode(), expected, delta_mode


@given(case=metric_lines())
def test_structured_lines_parse_exactly(case: tuple[bytes, list[Metric], bool]) -> None:
    line, expected, delta_mode = case
    parser = Parser(ParserConfig(gauge_sign="delta" if delta_mode else "set"))
    assert parser.parse_line(line) == expected
    assert parser.parse_datagram(line).metrics == expected


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(case=metric_lines(), data=st.data())
def test_near_valid_lines_raise_only_parse_error(
    case: tuple[bytes, list[Metric], bool], data: st.DataObject
) -> None:
    line = bytearray(case[0])
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        at = data.draw(st.integers(min_value=0, max_value=max(len(line) - 1, 0)))
        byte = data.draw(st.sampled_from(b":|#@,.;=T\xff\x00 +-e_{}"))
        if op == "insert":
            line.insert(at, byte)
        elif op == "delete" and line:
            del line[at]
        elif line:
            line[at] = byte
    assume(b"\n" not in line)
    config = ParserConfig()
    outcome = parse_line_or_error(Parser(config), bytes(line))
    result = Parser(config).parse_datagram(bytes(line))
    if isinstance(outcome, ParseError):
        # All or nothing: a refused line leaves no item behind.
        assert errors_of(result) == [(outcome.reason, outcome.detail)]
        assert items_of(result) == []
    else:
        assert items_of(result) == outcome
        for item in outcome:
            check_item(item, config)


# -- real clients -------------------------------------------------------------------------------


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65535) for _ in range(count)]


@pytest.fixture
def udp_sink() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        yield sock


def test_datadogpy_client_output_parses(udp_sink: socket.socket) -> None:
    from datadog.dogstatsd.base import DogStatsd

    client = DogStatsd(
        host="127.0.0.1",
        port=udp_sink.getsockname()[1],
        disable_telemetry=True,
        origin_detection_enabled=False,
        constant_tags=["env:test"],
    )
    try:
        client.increment("page.views", tags=["route:/home"])
        client.decrement("jobs", 2)
        client.gauge("queue.depth", -5)
        client.histogram("payload", 1.5, tags=["a:b:c"])
        client.distribution("latency", 12)
        client.timing("db.query", 33.3)
        client.set("users", "alice")
        client.gauge_with_timestamp("g.ts", 7, timestamp=1656581400)
        client.event("Deploy", "line one\nline two", alert_type="success", tags=["svc:web"])
        client.service_check("db.up", 2, tags=["x"], message="down\nhard")
        datagrams = receive(udp_sink, 10)
    finally:
        client.close_socket()

    result = ParseResult()
    parser = Parser()
    for datagram in datagrams:
        part = parser.parse_datagram(datagram)
        assert part.errors == [], (datagram, part.errors)
        result.metrics += part.metrics
        result.events += part.events
        result.service_checks += part.service_checks
    env = ("env", "test")
    got = {(m.name, m.kind.value): m for m in result.metrics}
    assert got["page.views", "c"].values == (1.0,)
    assert got["page.views", "c"].tags == (env, ("route", "/home"))
    assert got["jobs", "c"].values == (-2.0,)
    assert got["queue.depth", "g"].values == (-5.0,)
    assert got["queue.depth", "g"].delta
    assert got["payload", "h"].tags == (("a", "b:c"), env)
    assert got["latency", "d"].values == (12.0,)
    assert got["db.query", "ms"].values == (33.3,)
    assert got["users", "s"].members == ("alice",)
    assert got["g.ts", "g"].timestamp == 1656581400
    assert result.events == [Event("Deploy", "line one\nline two", "success", (env, ("svc", "web")))]
    assert result.service_checks == [ServiceCheck("db.up", 2, (env, ("x", "")))]


def test_etsy_statsd_client_output_parses(udp_sink: socket.socket) -> None:
    import statsd  # type: ignore[import-untyped]

    client = statsd.StatsClient("127.0.0.1", udp_sink.getsockname()[1], prefix="app")
    try:
        client.incr("hits", 3)
        client.timing("render", 12)
        client.gauge("level", -4)  # Etsy clients send "0" then "-4" for a negative absolute gauge
        client.gauge("level", 2, delta=True)
        client.set("visitors", "bob")
        datagrams = receive(udp_sink, 5)
    finally:
        client.close()
    parser = Parser()
    metrics = [m for d in datagrams for m in parser.parse_datagram(d).metrics]
    assert [(m.name, m.kind.value, m.values, m.members, m.delta) for m in metrics] == [
        ("app.hits", "c", (3.0,), (), False),
        ("app.render", "ms", (12.0,), (), False),
        ("app.level", "g", (0.0,), (), False),
        ("app.level", "g", (-4.0,), (), True),
        ("app.level", "g", (2.0,), (), True),
        ("app.visitors", "s", (), ("bob",), False),
    ]
