"""Retention strings: whisper's grammar and its validateArchiveList rules, with clear errors."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from statsyard_agent._exceptions import ConfigError
from statsyard_agent.storage._retention import DEFAULT_RETENTION, Tier, parse_retention

DAY = 86400
YEAR = 365 * DAY


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (DEFAULT_RETENTION, [(10, 7 * DAY), (60, 90 * DAY), (3600, 2 * YEAR)]),
        ("60s:1440", [(60, DAY)]),  # a bare length is a number of points
        ("10:6h", [(10, 6 * 3600)]),  # a bare precision is seconds
        ("1min:1d", [(60, DAY)]),
        ("1minutes:2days", [(60, 2 * DAY)]),
        ("1sec:1hour", [(1, 3600)]),
        ("1m:1w", [(60, 7 * DAY)]),  # m is minutes, as in whisper
        ("1h:1y", [(3600, YEAR)]),
        ("7s:1m", [(7, 56)]),  # rounded down to whole points: 8 x 7 s
        (" 10s:6h , 1m:7d ", [(10, 6 * 3600), (60, 7 * DAY)]),
        ("1m:1d,10s:6h", [(10, 6 * 3600), (60, DAY)]),  # any order, sorted finest first
        ("10s:6h,1m:7d,10m:5y", [(10, 6 * 3600), (60, 7 * DAY), (600, 5 * YEAR)]),
        ("60:1d,300:2d", [(60, DAY), (300, 2 * DAY)]),  # 60 -> 300 divides
        ("10s:1m,1m:2m", [(10, 60), (60, 120)]),  # exactly enough points to fill one slot
    ],
)
def test_valid_specs(spec: str, expected: list[tuple[int, int]]) -> None:
    assert [(t.step, t.retention) for t in parse_retention(spec)] == expected


@pytest.mark.parametrize(
    ("tier", "text"),
    [
        (Tier(10, 7 * DAY), "10s:7d"),
        (Tier(60, 90 * DAY), "1m:90d"),
        (Tier(3600, 2 * YEAR), "1h:2y"),
        (Tier(7, 56), "7s:56s"),
        (Tier(90, 5400), "90s:90m"),
        (Tier(7 * DAY, 364 * DAY), "7d:364d"),  # no weeks: "7d" reads better than "1w"
    ],
)
def test_canonical_str(tier: Tier, text: str) -> None:
    assert str(tier) == text
    assert parse_retention(text) == (tier,)


def test_default_round_trips_through_str() -> None:
    tiers = parse_retention(DEFAULT_RETENTION)
    assert ",".join(map(str, tiers)) == DEFAULT_RETENTION
    assert [t.points for t in tiers] == [60480, 129600, 17520]


@pytest.mark.parametrize(
    ("spec", "points", "whisper_bytes"),
    [
        # The figures storage-and-scale-out.md quotes for whisper files.
        ("10s:6h,1m:7d,10m:5y", 275_040, 3_300_532),
        ("10s:1d,1m:30d,1h:2y", 69_360, 832_372),
    ],
)
def test_point_counts_match_whisper(spec: str, points: int, whisper_bytes: int) -> None:
    tiers = parse_retention(spec)
    assert sum(t.points for t in tiers) == points
    # header 16 B + 12 B per archive + 12 B per point
    assert 16 + 12 * len(tiers) + 12 * points == whisper_bytes


def test_tier_is_frozen_and_ordered() -> None:
    tier = Tier(60, DAY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tier.step = 10  # type: ignore[misc]
    assert sorted([Tier(3600, YEAR), Tier(10, DAY), Tier(60, DAY)]) == [
        Tier(10, DAY),
        Tier(60, DAY),
        Tier(3600, YEAR),
    ]


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("", ["at least one tier"]),
        ("   ", ["at least one tier"]),
        ("10s:7d,", ["tier 2", "empty"]),
        ("10s:7d,,1m:90d", ["tier 2", "empty"]),
        ("10s", ["'10s'", "missing ':'"]),
        ("10x:1d", ["'10x:1d'", "unknown unit 'x'"]),
        ("1mon:1y", ["unknown unit 'mon'", "no month unit"]),
        ("1M:1d", ["bad precision '1M'"]),
        ("10s:abc", ["bad length 'abc'"]),
        ("-10s:1d", ["bad precision '-10s'"]),
        ("1.5s:1d", ["bad precision '1.5s'"]),
        ("99999999999999999999s:1d", ["bad precision"]),
        ("0s:1d", ["'0s:1d'", "at least 1s"]),
        ("5000000000s:1y", ["precision exceeds 4294967295"]),
        ("1h:30m", ["'1h:30m'", "keeps no point"]),
        ("1s:0", ["keeps no point"]),
        ("1s:5000000000", ["more than 4294967295 points"]),
        ("10s:1h,10s:2h", ["'10s:1h' and '10s:2h'", "same precision"]),
        ("180s:1d,600s:7d", ["'180s:1d' and '600s:7d'", "multiple"]),
        ("10s:1d,1m:12h", ["'10s:1d' and '1m:12h'", "longer span"]),
        ("10s:1d,1m:1d", ["longer span"]),
        ("10s:30s,1m:1d", ["'10s:30s'", "only 3 points", "consolidates 6"]),
    ],
)
def test_invalid_specs_name_the_tier_rule_and_example(spec: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_retention(spec, key="storage.retention")
    assert info.value.key == "storage.retention"
    message = str(info.value)
    assert message.startswith("storage.retention: ")
    assert DEFAULT_RETENTION in message  # a valid example to copy
    for fragment in fragments:
        assert fragment in message


def test_default_key_is_retention() -> None:
    with pytest.raises(ConfigError) as info:
        parse_retention("")
    assert info.value.key == "retention"


def _whisper_accepts(archives: list[tuple[int, int]]) -> bool:
    """graphite-project/whisper validateArchiveList, as a predicate."""
    if not archives:
        return False
    archives = sorted(archives)
    for (step, points), (next_step, next_points) in itertools.pairwise(archives):
        if not step < next_step:
            return False
        if next_step % step:
            return False
        if not next_step * next_points > step * points:
            return False
        if not points >= next_step // step:
            return False
    return True


_archive = st.tuples(
    st.sampled_from([1, 2, 5, 10, 30, 60, 120, 180, 300, 600, 3600]), st.integers(1, 5000)
)


@given(st.lists(_archive, min_size=1, max_size=4))
def test_validation_agrees_with_whisper(archives: list[tuple[int, int]]) -> None:
    spec = ",".join(f"{step}:{points}" for step, points in archives)
    if _whisper_accepts(archives):
        tiers = parse_retention(spec)
        assert [(t.step, t.points) for t in tiers] == sorted(archives)
        assert parse_retention(",".join(map(str, tiers))) == tiers
    else:
        with pytest.raises(ConfigError):
            parse_retention(spec)


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_config_error(spec: str) -> None:
    try:
        tiers = parse_retention(spec)
    except ConfigError:
        return
    assert tiers == tuple(sorted(tiers))
    assert all(t.step >= 1 and t.points >= 1 for t in tiers)
