"""Graphite ``from``/``until`` time specifications into unix seconds.

Accepted forms (case-insensitive, surrounding whitespace ignored):

``now``
    ``now`` itself.
``1700000000``
    Unix seconds (any run of digits that is not an 8-digit calendar date, see below).
``-1h``, ``+30s``, ``-1h30min``, ``-2w``
    An offset from ``now``: a sign, then one or more ``<integer><unit>`` parts that add up.
``now-6h``, ``now-10m``, ``now+1h``
    Grafana's spelling of the same offsets.
``20261125``, ``12:00_20261125``, ``12:00``, ``20261125+1h``
    graphite-web's ``YYYYMMDD`` (midnight), ``HH:MM_YYYYMMDD``, and ``HH:MM`` (today),
    optionally followed by an offset. An 8-digit number is a date when its year is after 1900,
    its month at most 12 and its day at most 31, the test graphite-web applies (an impossible
    date such as ``20260231`` is then an error); any other run of digits is unix seconds,
    which may also take an offset (``1700000000-1h``).
``2026-11-25T10:00:00Z``, ``2026-11-25T10:00:00+01:00``, ``2026-11-25``
    ISO 8601 (``datetime.fromisoformat``); fractions of a second are dropped.

Units: ``s``/``sec``/``second(s)``, ``m``/``min``/``minute(s)``, ``h``/``hour(s)``,
``d``/``day(s)``, ``w``/``week(s)``, ``mon``/``month(s)`` (30 days), ``y``/``year(s)``
(365 days). ``m`` is **minutes**, never months, both in ``-10m`` and in ``now-10m``: that is
what Grafana means by ``now-10m`` (it rewrites ``m`` to ``min`` before calling graphite-web,
whose own parser refuses a bare ``m`` and spells months ``mon``), and it is what ``m`` means in
retention strings. Months are only ever ``mon``/``month(s)``.

Every absolute form without an explicit UTC offset is read in UTC (graphite-web uses the
server's ``TIME_ZONE`` instead): the agent stores UTC unix seconds and should not depend on
the host's time zone. graphite-web's ``noon``/``midnight``/``teatime``, ``yesterday``,
``MM/DD/YY``, month and weekday names, and ``am``/``pm`` are not supported.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from typing import NoReturn

from statsyard_agent._exceptions import QueryError

__all__ = ["parse_time"]

_ACCEPTED = (
    "accepted: now, unix seconds (1700000000), an offset (-1h, -10min, -30s, -7d, -2w, -1mon, "
    "-1y, +1h, -1h30min), now-6h, YYYYMMDD, HH:MM_YYYYMMDD, or ISO 8601 (2026-11-25T10:00:00Z)"
)

_UNITS: dict[str, int] = {}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "week", "weeks"), 7 * 86400),
    (("mon", "month", "months"), 30 * 86400),
    (("y", "year", "years"), 365 * 86400),
):
    for _name in _names:
        _UNITS[_name] = _seconds

# 0001-01-01 .. 9999-12-31 23:59:59 UTC, the range datetime can represent: anything outside
# is a typo, and refusing it keeps every result a safe int64.
_MIN_SECONDS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
_MAX_SECONDS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())

# Longer numbers are typos (int64 holds 19 digits) and would only slow int() down.
_MAX_DIGITS = 19

_ISO_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}([t ].*)?")
_OFFSET_PART_RE = re.compile(r"([0-9]+)([a-z]+)")
_CLOCK_RE = re.compile(r"([0-9]{1,2}):([0-9]{2})")


def parse_time(spec: str, now: int) -> int:
    """Resolve a Graphite time specification to unix seconds, relative to ``now``.

    ``now`` is unix seconds (the caller's clock, injected so results are reproducible).
    Raises :class:`QueryError` for anything it cannot read (empty, unknown unit, offset without
    a unit, impossible date, a result outside years 1..9999); the message quotes the input
    and lists the accepted forms.
    """
    text = spec.strip().lower()
    if _ISO_RE.fullmatch(text):
        return _check_range(spec, _parse_iso(spec, text))
    # graphite-web drops these separators everywhere: "12:00_20261125", "now - 1h".
    text = text.replace("_", "").replace(",", "").replace(" ", "")
    if not text:
        _fail(spec, "empty time")
    if _is_digits(text) and not _looks_like_date(text):
        return _check_range(spec, _to_int(spec, text))
    sign_at = _first_sign(text)
    if sign_at < 0:
        reference, offset = text, 0
    else:
        reference, offset = text[:sign_at], _parse_offset(spec, text[sign_at:])
    return _check_range(spec, _parse_reference(spec, reference, now) + offset)


def _first_sign(text: str) -> int:
    indices = [i for i in (text.find("+"), text.find("-")) if i >= 0]
    return min(indices, default=-1)


def _parse_offset(spec: str, offset: str) -> int:
    sign = -1 if offset[0] == "-" else 1
    body = offset[1:]
    if not body:
        _fail(spec, "the offset has no amount")
    total = 0
    position = 0
    while position < len(body):
        match = _OFFSET_PART_RE.match(body, position)
        if match is None:
            rest = body[position:]
            if _is_digits(rest):
                _fail(spec, f"the offset amount {rest!r} has no unit (e.g. {rest}min)")
            _fail(spec, f"cannot read the offset at {rest!r} (need <integer><unit>)")
        unit = _UNITS.get(match.group(2))
        if unit is None:
            _fail(spec, f"unknown unit {match.group(2)!r}")
        total += _to_int(spec, match.group(1)) * unit
        position = match.end()
    return sign * total


def _parse_reference(spec: str, reference: str, now: int) -> int:
    if reference in ("", "now"):
        return now
    clock = _CLOCK_RE.match(reference)
    hour = minute = 0
    if clock is not None:
        hour, minute = int(clock.group(1)), int(clock.group(2))
        reference = reference[clock.end() :]
        if hour > 23 or minute > 59:
            _fail(spec, f"no such time of day {hour:02d}:{minute:02d}")
    if _is_digits(reference) and clock is None and not _looks_like_date(reference):
        return _to_int(spec, reference)
    if reference:
        day = _as_date(spec, reference)
    elif clock is not None:
        day = _utc_date(spec, now)
    else:
        _fail(spec, "missing time reference")
    moment = datetime.combine(day, time(hour, minute), tzinfo=UTC)
    return int(moment.timestamp())


def _is_digits(text: str) -> bool:
    # str.isdigit() also accepts superscripts and non-ASCII digits, which int() refuses or reads.
    return text.isascii() and text.isdigit()


def _looks_like_date(text: str) -> bool:
    """graphite-web's test for ``YYYYMMDD`` rather than unix seconds."""
    return (
        len(text) == 8
        and _is_digits(text)
        and int(text[:4]) > 1900
        and int(text[4:6]) <= 12
        and int(text[6:]) <= 31
    )


def _as_date(spec: str, text: str) -> date:
    if not _looks_like_date(text):
        _fail(spec, f"unknown time reference {text!r}")
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        _fail(spec, f"no such date {text!r} (YYYYMMDD)")


def _to_int(spec: str, digits: str) -> int:
    if len(digits) > _MAX_DIGITS:
        _fail(spec, f"the number {digits[:24]!r}... is too long")
    return int(digits)


def _utc_date(spec: str, now: int) -> date:
    try:
        return datetime.fromtimestamp(now, tz=UTC).date()
    except (OverflowError, OSError, ValueError) as exc:
        raise QueryError(f"time {spec!r}: now={now} is out of range") from exc


def _parse_iso(spec: str, text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError as exc:
        raise QueryError(
            f"bad time {spec!r}: not a valid ISO 8601 date ({exc}); {_ACCEPTED}"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return int(moment.timestamp())
    except (OverflowError, OSError, ValueError) as exc:
        raise QueryError(f"bad time {spec!r}: out of range; {_ACCEPTED}") from exc


def _check_range(spec: str, seconds: int) -> int:
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        _fail(spec, "the time falls outside years 1 to 9999")
    return seconds


def _fail(spec: str, reason: str) -> NoReturn:
    raise QueryError(f"bad time {spec!r}: {reason}; {_ACCEPTED}")
