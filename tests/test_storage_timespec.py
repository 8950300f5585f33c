"""Graphite from/until time specifications, resolved against an injected ``now``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._exceptions import QueryError
from statsyard_agent.storage._timespec import parse_time

NOW = int(datetime(2025, 11, 25, 10, 30, 15, tzinfo=UTC).timestamp())
MIN, HOUR, DAY = 60, 3600, 86400


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("now", NOW),
        ("NOW", NOW),
        ("  now  ", NOW),
        ("1700000000", 1_700_000_000),
        ("0", 0),
        ("-1h", NOW - HOUR),
        ("-10min", NOW - 10 * MIN),
        ("-10m", NOW - 10 * MIN),  # minutes, never months
        ("-30s", NOW - 30),
        ("-7d", NOW - 7 * DAY),
        ("-2w", NOW - 14 * DAY),
        ("-1y", NOW - 365 * DAY),
        ("-1mon", NOW - 30 * DAY),
        ("-2months", NOW - 60 * DAY),
        ("-3hours", NOW - 3 * HOUR),
        ("-1h30min", NOW - HOUR - 30 * MIN),
        ("-1d12h", NOW - DAY - 12 * HOUR),
        ("+1h", NOW + HOUR),
        ("+30s", NOW + 30),
        ("now-6h", NOW - 6 * HOUR),
        ("now-10m", NOW - 10 * MIN),  # Grafana's spelling
        ("now+1h", NOW + HOUR),
        ("now - 6h", NOW - 6 * HOUR),  # graphite-web drops spaces
        ("NOW-6H", NOW - 6 * HOUR),
        ("2026-11-25T10:00:00Z", utc(2026, 11, 25, 10)),
        ("2026-11-25T10:00:00+01:00", utc(2026, 11, 25, 9)),
        ("2026-11-25T10:00:00", utc(2026, 11, 25, 10)),  # naive ISO is UTC
        ("2026-11-25T10:00:00.750Z", utc(2026, 11, 25, 10)),  # fractions dropped
        ("2026-11-25 10:00", utc(2026, 11, 25, 10)),
        ("2026-11-25", utc(2026, 11, 25)),
        ("20261125", utc(2026, 11, 25)),  # YYYYMMDD, not unix seconds
        ("12:00_20261125", utc(2026, 11, 25, 12)),
        ("9:05_20261125", utc(2026, 11, 25, 9, 5)),
        ("12:0020261125", utc(2026, 11, 25, 12)),
        ("12:00", utc(2025, 11, 25, 12)),  # today, in UTC
        ("20261125+1h", utc(2026, 11, 25, 1)),
        ("12:00_20261125-30min", utc(2026, 11, 25, 11, 30)),
        ("1700000000-1h", 1_700_000_000 - HOUR),
        ("18991231", 18_991_231),  # year <= 1900: unix seconds, as graphite-web decides
        ("20261325", 20_261_325),  # month 13: unix seconds
        ("123456789", 123_456_789),  # 9 digits: unix seconds
    ],
)
def test_accepted_forms(spec: str, expected: int) -> None:
    assert parse_time(spec, NOW) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "empty time"),
        ("   ", "empty time"),
        ("-", "no amount"),
        ("now-", "no amount"),
        ("-10", "no unit"),
        ("-10ms", "unknown unit 'ms'"),
        ("-1.5h", "cannot read the offset"),
        ("-h", "cannot read the offset"),
        ("now+-1h", "cannot read the offset"),
        ("yesterday", "unknown time reference"),
        ("now/d", "unknown time reference"),
        ("tomorrow+1h", "unknown time reference"),
        ("20260231", "no such date"),
        ("20260001", "no such date"),
        ("25:00_20261125", "no such time of day"),
        ("12:61", "no such time of day"),
        ("2026-13-01", "not a valid ISO 8601 date"),
        ("2026-11-25T10:00:00Z-1h", "not a valid ISO 8601 date"),
        ("9" * 40, "too long"),
        ("²", "unknown time reference"),  # str.isdigit() is true for these, int() is not
        ("1²", "unknown time reference"),
        ("١٢٣", "unknown time reference"),
        ("-99999999999999999999s", "too long"),
        ("-9999999999999999y", "outside years 1 to 9999"),
        ("+9000y", "outside years 1 to 9999"),
    ],
)
def test_rejected_forms_list_what_is_accepted(spec: str, fragment: str) -> None:
    with pytest.raises(QueryError) as info:
        parse_time(spec, NOW)
    message = str(info.value)
    assert fragment in message
    assert repr(spec) in message
    assert "accepted: now, unix seconds" in message
    assert "-1h" in message
    assert "2026-11-25T10:00:00Z" in message


UNITS = {
    "s": 1,
    "sec": 1,
    "seconds": 1,
    "m": MIN,
    "min": MIN,
    "minutes": MIN,
    "h": HOUR,
    "hours": HOUR,
    "d": DAY,
    "days": DAY,
    "w": 7 * DAY,
    "weeks": 7 * DAY,
    "mon": 30 * DAY,
    "month": 30 * DAY,
    "y": 365 * DAY,
    "years": 365 * DAY,
}


@given(st.integers(0, 1000), st.sampled_from(sorted(UNITS)), st.sampled_from(["-", "+"]))
def test_offsets_add_up_and_now_prefix_is_the_same(amount: int, unit: str, sign: str) -> None:
    direction = -1 if sign == "-" else 1
    expected = NOW + direction * amount * UNITS[unit]
    assert parse_time(f"{sign}{amount}{unit}", NOW) == expected
    assert parse_time(f"now{sign}{amount}{unit}", NOW) == expected


@given(st.integers(0, 2**33))
def test_unix_seconds_are_returned_as_is_unless_they_look_like_a_date(seconds: int) -> None:
    text = str(seconds)
    if len(text) == 8 and int(text[:4]) > 1900 and int(text[4:6]) <= 12 and int(text[6:]) <= 31:
        return
    assert parse_time(text, NOW) == seconds


_pieces = st.sampled_from(
    ["now", "-", "+", "1", "10", "h", "min", "m", "mon", ":", "_", "2026", "1125", "t", "z", " "]
)


@given(st.one_of(st.text(max_size=30), st.lists(_pieces, max_size=8).map("".join)))
def test_any_text_gives_an_int_or_a_query_error(spec: str) -> None:
    try:
        result = parse_time(spec, NOW)
    except QueryError:
        return
    assert isinstance(result, int)
    assert -62_135_596_800 <= result <= 253_402_300_799
