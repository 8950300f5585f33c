"""The sans-IO StatsD / DogStatsD parser: datagram bytes in; metrics, events, service checks and
per-line errors out.

No sockets, no clocks, no trio: a listener hands :meth:`Parser.parse_datagram` the bytes of one
datagram (or one TCP line) and gets a :class:`ParseResult` back. The accepted grammar, every error
reason and the golden vectors that pin them live in ``protocols/statsd.md`` and
``protocols/vectors/``; this module is one implementation of that spec.

Contract in short:

* :meth:`Parser.parse_datagram` never raises. It splits on ``\\n``, strips one trailing ``\\r``
  per line, skips empty lines (not counted) and parses every other line on its own: a bad line
  becomes one :class:`~statsyard_agent._exceptions.ParseError` in ``errors`` and the lines after it
  still parse.
* :meth:`Parser.parse_line` raises nothing but ``ParseError``; ``ParseError.reason`` is one of
  :data:`PARSE_ERROR_REASONS`.
* Every non-empty line yields either exactly one error, or one or more items: one ``Metric``,
  ``Event`` or ``ServiceCheck``, except a packed gauge line (``g:1:+2|g``) which yields one
  ``Metric`` per value. Hence ``len(metrics) + len(events) + len(service_checks) + len(errors)
  == lines + extra``, where ``extra`` is the sum over packed gauge lines of (values - 1), and
  every gauge ``Metric`` carries exactly one value.

The hot path is the metric line. It uses ``bytes.partition``/``split`` rather than regexes, and
bounded caches from raw bytes to their parsed form (names, tag sections, sample rates, values),
because real traffic repeats the same few thousand names and tag sets. Each cache is cleared
when it reaches :data:`CACHE_MAX_ENTRIES` entries or about :data:`CACHE_MAX_COST` bytes, so a
sender of endless unique names costs re-parsing, never unbounded memory.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeVar

from ._exceptions import ConfigError, ParseError
from ._types import Event, Metric, MetricKind, ServiceCheck, Tags

__all__ = [
    "CACHE_MAX_COST",
    "CACHE_MAX_ENTRIES",
    "PARSE_ERROR_REASONS",
    "ParseResult",
    "Parser",
    "ParserConfig",
]

logger = logging.getLogger(__name__)

#: Every ``ParseError.reason`` the parser produces; see the table in ``protocols/statsd.md``.
#: Stable: these are label values of ``statsyard_parse_errors_total{reason}``.
PARSE_ERROR_REASONS: Final = frozenset(
    {
        "line_too_long",
        "malformed_line",
        "unknown_type",
        "invalid_value",
        "non_finite_value",
        "invalid_sample_rate",
        "invalid_timestamp",
        "invalid_tag",
        "too_many_tags",
        "tag_too_long",
        "invalid_utf8",
        "empty_name",
        "bad_name",
        "name_too_long",
        "malformed_event",
        "malformed_service_check",
        "internal_error",
    }
)

#: A parse cache is cleared when it holds this many entries ...
CACHE_MAX_ENTRIES: Final = 50_000
#: ... or when the estimated bytes it retains (keys, strings, tuples) pass this.
CACHE_MAX_COST: Final = 16 * 1024 * 1024

# Rough retained sizes in CPython, used only to bound cache memory, not to account it exactly.
_ENTRY_COST: Final = 120
_TAG_COST: Final = 160

# Timestamps are whole unix seconds; 18 digits keeps them well inside int64.
_MAX_TIMESTAMP_DIGITS: Final = 18
# Fewer than 309 decimal digits cannot overflow a float, so such digit strings need no check.
_MAX_SAFE_DIGITS: Final = 308
# Event header lengths beyond 9 digits cannot fit in any line we accept.
_MAX_LENGTH_DIGITS: Final = 9
_DETAIL_BYTES: Final = 80

_KINDS: Final = {kind.value.encode(): kind for kind in MetricKind}
_GAUGE: Final = MetricKind.GAUGE
_SET: Final = MetricKind.SET
_SIGNS: Final = (b"+", b"-")
_EVENT_ALERT_TYPES: Final = {t.encode(): t for t in ("error", "warning", "info", "success")}
_EVENT_PRIORITIES: Final = frozenset({b"normal", b"low"})
_SERVICE_CHECK_STATUS: Final = {b"0": 0, b"1": 1, b"2": 2, b"3": 3}

# Etsy keyNameSanitize: whitespace runs -> "_", "/" -> "-", then drop anything else outside the
# class. ";" stays in Etsy's class because its tags ride in the name; we split them off first.
_WHITESPACE_RUN: Final = re.compile(r"\s+")
_NOT_NAME_CHAR: Final = re.compile(r"[^A-Za-z0-9_.;=\-]+")
_CLEAN_NAME: Final = re.compile(r"[A-Za-z0-9_.;=\-]*")

# Building the NamedTuple through tuple.__new__ skips its Python-level __new__ (about half the
# cost of constructing a Metric, which is the single largest per-line cost).
_new_tuple: Final = tuple.__new__


@dataclass(frozen=True, slots=True)
class ParserConfig:
    """What the parser accepts. Validated on construction (``ConfigError`` names the field).

    ``gauge_sign``: ``"delta"`` (Etsy, statsd_exporter, Telegraf): a gauge value written with an
    explicit ``+``/``-`` is a change to the current value (``Metric.delta``); ``"set"``
    (DogStatsD): the sign belongs to the number and every gauge value is absolute.
    ``sanitize_names``: apply Etsy's keyNameSanitize to metric names.
    The ``max_*`` limits are in bytes (UTF-8) except ``max_tags``, a count of distinct tags.
    """

    gauge_sign: Literal["delta", "set"] = "delta"
    sanitize_names: bool = True
    max_line_bytes: int = 8192
    max_name_bytes: int = 1024
    max_tags: int = 100
    max_tag_bytes: int = 512

    def __post_init__(self) -> None:
        if self.gauge_sign not in ("delta", "set"):
            raise ConfigError("gauge_sign", f'must be "delta" or "set", not {self.gauge_sign!r}')
        for key in ("max_line_bytes", "max_name_bytes", "max_tags", "max_tag_bytes"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(key, f"must be a positive integer, not {value!r}")


_DEFAULT_CONFIG: Final = ParserConfig()


@dataclass(slots=True)
class ParseResult:
    """What one datagram held, in line order within each list.

    ``lines`` counts the non-empty lines seen, valid and invalid; see the module docstring for
    how it relates to the lengths of the lists.
    """

    metrics: list[Metric] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)
    lines: int = 0


_V = TypeVar("_V")


class _Cache(dict[bytes, _V]):
    """A dict that empties itself when full; hits are plain ``dict.get`` calls."""

    __slots__ = ("cost",)

    def __init__(self) -> None:
        super().__init__()
        self.cost = 0

    def put(self, key: bytes, value: _V, cost: int) -> _V:
        # Clearing everything is crude but O(1) amortised and needs no bookkeeping on hits;
        # steady traffic refills the hot entries within a few datagrams.
        if len(self) >= CACHE_MAX_ENTRIES or self.cost >= CACHE_MAX_COST:
            self.clear()
            self.cost = 0
        self[key] = value
        self.cost += cost + len(key) + _ENTRY_COST
        return value


def _snippet(data: bytes) -> str:
    if len(data) > _DETAIL_BYTES:
        return repr(data[:_DETAIL_BYTES]) + f"... ({len(data)} bytes)"
    return repr(data)


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ParseError("invalid_utf8", f"{what} {_snippet(data)}") from None


def _parse_value(raw: bytes) -> float:
    """A finite float from a StatsD value; the caller has excluded the packing ``:``."""
    if raw.isdigit() and len(raw) <= _MAX_SAFE_DIGITS:
        return float(raw)
    if not raw:
        raise ParseError("malformed_line", "empty value")
    try:
        value = float(raw)
    except ValueError:
        raise ParseError("invalid_value", _snippet(raw)) from None
    # Python's float() also takes "1_000" and surrounding whitespace; no StatsD sender means those.
    if b"_" in raw or raw[:1].isspace() or raw[-1:].isspace():
        raise ParseError("invalid_value", _snippet(raw))
    if not math.isfinite(value):
        raise ParseError("non_finite_value", _snippet(raw))
    return value


def _parse_rate(raw: bytes) -> float:
    """The sample rate of an ``@`` section (``raw`` excludes the ``@``): finite, 0 < r <= 1."""
    try:
        rate = float(raw)
    except ValueError:
        raise ParseError("invalid_sample_rate", _snippet(raw)) from None
    if not 0.0 < rate <= 1.0 or b"_" in raw or raw[:1].isspace() or raw[-1:].isspace():
        raise ParseError("invalid_sample_rate", _snippet(raw))
    return rate


def _parse_unix_seconds(raw: bytes, reason: str) -> int:
    if not raw.isdigit() or len(raw) > _MAX_TIMESTAMP_DIGITS:
        raise ParseError(reason, f"timestamp {_snippet(raw)}")
    return int(raw)


def _sanitize(name: str) -> str:
    if _CLEAN_NAME.fullmatch(name):
        return name
    return _NOT_NAME_CHAR.sub("", _WHITESPACE_RUN.sub("_", name).replace("/", "-"))


class Parser:
    """Parses StatsD / DogStatsD datagrams; one instance per listener (it owns its caches).

    Not thread-safe (the caches are plain dicts); cheap to create. See ``protocols/statsd.md``.
    """

    __slots__ = (
        "_delta_gauges",
        "_max_line",
        "_max_name",
        "_max_tag_bytes",
        "_max_tags",
        "_names",
        "_rates",
        "_reported_internal_error",
        "_sanitize",
        "_tags",
        "_values",
        "config",
    )

    def __init__(self, config: ParserConfig = _DEFAULT_CONFIG) -> None:
        self.config = config
        self._delta_gauges = config.gauge_sign == "delta"
        self._sanitize = config.sanitize_names
        self._max_line = config.max_line_bytes
        self._max_name = config.max_name_bytes
        self._max_tags = config.max_tags
        self._max_tag_bytes = config.max_tag_bytes
        # raw name bytes (with any ";k=v" tags) -> (final name, tags from the name)
        self._names: _Cache[tuple[str, Tags]] = _Cache()
        # raw "#..." section -> Tags
        self._tags: _Cache[Tags] = _Cache()
        # raw "@..." section -> rate
        self._rates: _Cache[float] = _Cache()
        # raw value -> float (the key keeps any sign, from which a gauge's "delta" is read)
        self._values: _Cache[float] = _Cache()
        self._reported_internal_error = False

    # -- public API ---------------------------------------------------------------------------

    def clear_caches(self) -> None:
        """Empty the caches of names, tags, rates and values (they refill from traffic)."""
        for cache in (self._names, self._tags, self._rates, self._values):
            cache.clear()
            cache.cost = 0

    def parse_datagram(self, data: bytes) -> ParseResult:
        """Parse every line of one datagram. Never raises.

        An empty datagram gives an empty result with ``lines == 0``. A trailing ``\\n`` is
        optional. Bad lines become entries of ``errors`` (one per line, in order); good lines
        before and after them are still returned.
        """
        result = ParseResult()
        errors = result.errors
        parse_into = self._parse_into
        lines = 0
        for line in data.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                continue
            lines += 1
            try:
                parse_into(line, result)
            except ParseError as exc:
                errors.append(exc)
            except Exception as exc:
                errors.append(self._internal_error(exc, line))
        result.lines = lines
        return result

    def parse_line(self, line: bytes) -> list[Metric | Event | ServiceCheck]:
        """Parse one line (no ``\\n``; one trailing ``\\r`` is stripped). Raises only ParseError.

        Returns ``[]`` for an empty line, the line's items otherwise: one item, or one Metric
        per value for a packed gauge line. A ``\\n`` inside ``line`` is not a separator here;
        it is data and usually makes the line invalid.
        """
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return []
        result = ParseResult()
        try:
            self._parse_into(line, result)
        except ParseError:
            raise
        except Exception as exc:
            raise self._internal_error(exc, line) from exc
        return [*result.metrics, *result.events, *result.service_checks]

    def _parse_into(self, line: bytes, result: ParseResult) -> None:
        """Parse one non-empty line into ``result``'s lists, or raise ParseError."""
        if len(line) > self._max_line:
            raise ParseError("line_too_long", f"{len(line)} bytes > {self._max_line}")
        if line.startswith(b"_"):
            if line.startswith(b"_e{"):
                result.events.append(self._parse_event(line))
                return
            if line.startswith(b"_sc|"):
                result.service_checks.append(self._parse_service_check(line))
                return
        self._parse_metric(line, result.metrics)

    # -- metrics (the hot path) ---------------------------------------------------------------

    def _parse_metric(self, line: bytes, out: list[Metric]) -> None:
        """Append the Metric(s) of one metric line to ``out``, or raise ParseError.

        Checks run in this order, and the first failure is the reason reported: structure,
        type, sections (left to right), name, then values.
        """
        head, bar, rest = line.partition(b"|")
        raw_name, colon, raw_values = head.partition(b":")
        if not bar or not colon or not raw_values:
            raise ParseError("malformed_line", _snippet(line))
        raw_kind, bar, sections = rest.partition(b"|")
        kind = _KINDS.get(raw_kind)
        if kind is None:
            if not raw_kind:
                raise ParseError("malformed_line", f"no type: {_snippet(line)}")
            if b":" in raw_kind:
                raise ParseError(
                    "unknown_type", f"Etsy multi-metric lines are not supported: {_snippet(line)}"
                )
            raise ParseError("unknown_type", _snippet(raw_kind))

        rate = 1.0
        tags: Tags = ()
        container_id: str | None = None
        timestamp: int | None = None
        if bar:
            for section in sections.split(b"|"):
                first = section[:1]
                if first == b"#":
                    section_tags = self._tags.get(section)
                    if section_tags is None:
                        section_tags = self._resolve_tags(section)
                    tags = self._merge_tags(tags, section_tags) if tags else section_tags
                elif first == b"@":
                    cached_rate = self._rates.get(section)
                    if cached_rate is None:
                        cached_rate = self._rates.put(section, _parse_rate(section[1:]), 0)
                    rate = cached_rate
                elif first == b"T":
                    timestamp = _parse_unix_seconds(section[1:], "invalid_timestamp")
                elif section.startswith(b"c:"):
                    container_id = _decode(section[2:], "container id") or None
                # "e:" (external data), "card:" (cardinality), empty and unknown sections are
                # ignored on purpose: DogStatsD adds sections over time, and parsers that
                # rejected "|c:" broke when clients started sending it.

        named = self._names.get(raw_name)
        if named is None:
            named = self._resolve_name(raw_name)
        name, name_tags = named
        if name_tags:
            tags = self._merge_tags(tags, name_tags)

        if kind is _SET:
            if b":" in raw_values:
                raise ParseError("invalid_value", f"sets cannot be packed: {_snippet(line)}")
            member = _decode(raw_values, "set member")
            out.append(
                _new_tuple(Metric, (name, kind, (), (member,), 1.0, tags, False, container_id, timestamp))
            )
            return

        cache = self._values
        raws: Sequence[bytes]
        if b":" in raw_values:
            raws = raw_values.split(b":")
            values = tuple(
                [cached if (cached := cache.get(raw)) is not None else self._cache_value(raw) for raw in raws]
            )
        else:
            raws = (raw_values,)
            value = cache.get(raw_values)
            if value is None:
                value = self._cache_value(raw_values)
            values = (value,)
        # Nothing is appended before every value has parsed: a line is all or nothing.
        if kind is _GAUGE:
            # One Metric per packed value, so that "delta" can differ between them.
            delta_gauges = self._delta_gauges
            for raw, value in zip(raws, values, strict=True):
                delta = delta_gauges and raw.startswith(_SIGNS)
                out.append(
                    _new_tuple(Metric, (name, kind, (value,), (), 1.0, tags, delta, container_id, timestamp))
                )
        else:
            out.append(
                _new_tuple(Metric, (name, kind, values, (), rate, tags, False, container_id, timestamp))
            )

    def _cache_value(self, raw: bytes) -> float:
        return self._values.put(raw, _parse_value(raw), 0)

    def _resolve_name(self, raw: bytes) -> tuple[str, Tags]:
        """Decode, split off ``;k=v`` tags, sanitise and check a metric name; cache the result."""
        text = _decode(raw, "name")
        name, semicolon, graphite_tags = text.partition(";")
        tags = self._split_tags(graphite_tags, ";", "=") if semicolon else ()
        if self._sanitize:
            name = _sanitize(name)
        if not name:
            raise ParseError("empty_name", _snippet(raw))
        size = len(name) if name.isascii() else len(name.encode())
        if size > self._max_name:
            raise ParseError("name_too_long", f"{size} bytes > {self._max_name}")
        if name.startswith(".") or name.endswith(".") or ".." in name:
            raise ParseError("bad_name", f"empty dot-separated node in {name!r}")
        return self._names.put(raw, (name, tags), 2 * size + _TAG_COST * len(tags))

    def _lookup_tags(self, section: bytes) -> Tags:
        tags = self._tags.get(section)
        return self._resolve_tags(section) if tags is None else tags

    def _resolve_tags(self, section: bytes) -> Tags:
        """Parse one DogStatsD ``#k:v,k2`` section (``section`` includes the ``#``); cache it."""
        tags = self._split_tags(_decode(section[1:], "tags"), ",", ":")
        return self._tags.put(section, tags, _TAG_COST * len(tags) + len(section))

    def _split_tags(self, text: str, separator: str, assign: str) -> Tags:
        """Tags from ``k<assign>v<separator>k2...``: split at the first ``assign``, empty entries
        dropped, a bare ``k`` is ``(k, "")``, sorted and deduplicated, limits enforced."""
        pairs: set[tuple[str, str]] = set()
        max_bytes = self._max_tag_bytes
        is_ascii = text.isascii()
        for item in text.split(separator):
            if not item:
                continue
            size = len(item) if is_ascii else len(item.encode())
            if size > max_bytes:
                raise ParseError("tag_too_long", f"{size} bytes > {max_bytes}: {item[:40]!r}...")
            key, _, value = item.partition(assign)
            if not key:
                raise ParseError("invalid_tag", f"empty tag key in {item!r}")
            pairs.add((key, value))
        if len(pairs) > self._max_tags:
            raise ParseError("too_many_tags", f"{len(pairs)} tags > {self._max_tags}")
        return tuple(sorted(pairs))

    def _merge_tags(self, tags: Tags, more: Tags) -> Tags:
        if not tags:
            return more
        merged = tuple(sorted(set(tags).union(more)))
        if len(merged) > self._max_tags:
            raise ParseError("too_many_tags", f"{len(merged)} tags > {self._max_tags}")
        return merged

    # -- events and service checks ------------------------------------------------------------

    def _parse_event(self, line: bytes) -> Event:
        """``_e{title_len,text_len}:title|text|d:|h:|k:|p:|s:|t:|#tags``; lengths in bytes."""
        close = line.find(b"}", 3)
        raw_title_len, comma, raw_text_len = line[3:close].partition(b",")
        if (
            close < 0
            or line[close + 1 : close + 2] != b":"
            or not comma
            or not raw_title_len.isdigit()
            or not raw_text_len.isdigit()
            or len(raw_title_len) > _MAX_LENGTH_DIGITS
            or len(raw_text_len) > _MAX_LENGTH_DIGITS
        ):
            raise ParseError("malformed_event", f"bad header: {_snippet(line)}")
        title_len = int(raw_title_len)
        text_len = int(raw_text_len)
        if title_len == 0:
            raise ParseError("malformed_event", "empty title")
        title_start = close + 2
        text_start = title_start + title_len + 1
        end = text_start + text_len
        if (
            len(line) < end
            or line[text_start - 1 : text_start] != b"|"
            or (len(line) > end and line[end : end + 1] != b"|")
        ):
            raise ParseError(
                "malformed_event",
                f"title/text lengths {title_len},{text_len} do not match: {_snippet(line)}",
            )
        title = _decode(line[title_start : text_start - 1], "event title").replace("\\n", "\n")
        text = _decode(line[text_start:end], "event text").replace("\\n", "\n")
        alert_type = "info"
        tags: Tags = ()
        if len(line) > end:
            for section in line[end + 1 :].split(b"|"):
                if section.startswith(b"#"):
                    tags = self._merge_tags(tags, self._lookup_tags(section))
                elif section.startswith(b"t:"):
                    alert = _EVENT_ALERT_TYPES.get(section[2:])
                    if alert is None:
                        raise ParseError("malformed_event", f"alert type {_snippet(section[2:])}")
                    alert_type = alert
                elif section.startswith(b"p:"):
                    if section[2:] not in _EVENT_PRIORITIES:
                        raise ParseError("malformed_event", f"priority {_snippet(section[2:])}")
                elif section.startswith(b"d:"):
                    _parse_unix_seconds(section[2:], "malformed_event")
                # h:, k:, s: are valid but not kept; c:, e:, card: and unknown ones are ignored.
        return Event(title, text, alert_type, tags)

    def _parse_service_check(self, line: bytes) -> ServiceCheck:
        """``_sc|name|status|d:|h:|#tags|m:message``; status is 0..3."""
        fields = line[4:].split(b"|")
        if len(fields) < 2 or not fields[0]:
            raise ParseError("malformed_service_check", f"needs a name and a status: {_snippet(line)}")
        status = _SERVICE_CHECK_STATUS.get(fields[1])
        if status is None:
            raise ParseError("malformed_service_check", f"status {_snippet(fields[1])}")
        name = _decode(fields[0], "service check name")
        size = len(fields[0])
        if size > self._max_name:
            raise ParseError("name_too_long", f"{size} bytes > {self._max_name}")
        tags: Tags = ()
        for section in fields[2:]:
            if section.startswith(b"#"):
                tags = self._merge_tags(tags, self._lookup_tags(section))
            elif section.startswith(b"d:"):
                _parse_unix_seconds(section[2:], "malformed_service_check")
            # h:, m: are valid but not kept; c:, e:, card: and unknown ones are ignored. Like
            # DogStatsD we split on every "|", so "m:" need not be last (datadogpy puts "|c:"
            # after it) and a "|" inside the message starts a new section.
        return ServiceCheck(name, status, tags)

    # -- the safety net -----------------------------------------------------------------------

    def _internal_error(self, exc: Exception, line: bytes) -> ParseError:
        """Turn a parser bug into a counted error so one odd line cannot stop the listener."""
        if not self._reported_internal_error:
            self._reported_internal_error = True
            logger.error("parser bug on line %s; please report it", _snippet(line), exc_info=exc)
        else:
            logger.debug("parser bug on line %s", _snippet(line), exc_info=exc)
        return ParseError("internal_error", f"{type(exc).__name__}: {exc}")
