"""Whisper-style retention strings: ``"10s:7d,1m:90d,1h:2y"`` into validated :class:`Tier` tuples.

Grammar (graphite-project/whisper ``parseRetentionDef``), one definition per comma-separated
item, surrounding whitespace ignored::

    tier      = precision ":" length
    precision = digits [unit]          ; bare digits are seconds
    length    = digits [unit]          ; bare digits are a number of POINTS (``60s:1440`` = 1 day)
    unit      = any prefix of seconds | minutes | hours | days | weeks | years
                                       ; so s, sec, m, min, h, d, w, y ...; y = 365 days

As in Whisper, ``m`` means minutes (months have no unit here), a length given as a duration
is rounded down to whole points (``7s:1m`` keeps 8 points, i.e. 56 s), and the tiers may be
listed in any order: they are returned sorted finest first. Units are lower case only, so
``1M`` is refused rather than guessed.

Validation is whisper's ``validateArchiveList``, with each failure naming the tier and the
rule and showing a valid example:

1. at least one tier;
2. no two tiers with the same step (steps strictly increase once sorted);
3. each coarser step is an exact multiple of the finer one (60 -> 300 works, 180 -> 600 not);
4. each coarser tier covers a strictly longer span;
5. each finer tier holds at least enough points to fill one slot of the next one.

We add what whisper leaves to chance: a step and a length of at least one point (whisper
would create a zero-point archive or divide by zero), and at most ``2**32 - 1`` seconds per
step and points per tier (whisper's header stores both as uint32).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from statsyard_agent._exceptions import ConfigError

__all__ = ["DEFAULT_RETENTION", "Tier", "parse_retention"]

#: 10 s points for a week, 1 min for 90 days, 1 h for two years.
DEFAULT_RETENTION = "10s:7d,1m:90d,1h:2y"

_UINT32_MAX = 2**32 - 1

_UNIT_SECONDS: dict[str, int] = {
    "seconds": 1,
    "minutes": 60,
    "hours": 3600,
    "days": 86400,
    "weeks": 7 * 86400,
    "years": 365 * 86400,
}

# Largest first, and without weeks, so that the default string round-trips through str().
_CANONICAL_UNITS: tuple[tuple[str, int], ...] = (
    ("y", 365 * 86400),
    ("d", 86400),
    ("h", 3600),
    ("m", 60),
    ("s", 1),
)

# At most 19 digits (int64); longer numbers are typos and would only slow int() down.
_AMOUNT_RE = re.compile(r"([0-9]{1,19})([a-z]*)")

_EXAMPLE = f"for example {DEFAULT_RETENTION!r} or '60s:1440' (1440 points of 60 s)"


@dataclass(frozen=True, slots=True, order=True)
class Tier:
    """One resolution of a series: a point every ``step`` seconds, kept ``retention`` seconds.

    Ordered by ``step`` (then ``retention``), so ``sorted(tiers)`` is finest first.
    :func:`parse_retention` always yields ``retention`` as a whole number of steps.
    """

    step: int
    retention: int

    @property
    def points(self) -> int:
        """How many slots the tier keeps: ``retention // step``."""
        return self.retention // self.step

    def __str__(self) -> str:
        """The canonical retention definition, e.g. ``"10s:7d"`` or ``"1m:90d"``."""
        return f"{_format_seconds(self.step)}:{_format_seconds(self.retention)}"


def parse_retention(spec: str, *, key: str = "retention") -> tuple[Tier, ...]:
    """Parse and validate a retention string; tiers come back sorted finest first.

    Raises :class:`ConfigError` (``key`` names the configuration key) when an item does not
    parse or the list breaks one of the rules in the module docstring. The message quotes
    the offending tier(s), names the rule and shows a valid example.
    """
    items = spec.split(",")
    if not spec.strip():
        raise ConfigError(key, f"at least one tier is required, {_EXAMPLE}")
    tiers: list[tuple[Tier, str]] = []
    for index, item in enumerate(items):
        text = item.strip()
        if not text:
            raise ConfigError(
                key, f"tier {index + 1} of {spec!r} is empty (stray comma?), {_EXAMPLE}"
            )
        tiers.append((_parse_tier(text, key), text))
    tiers.sort(key=lambda pair: pair[0])
    for (fine, fine_text), (coarse, coarse_text) in itertools.pairwise(tiers):
        _check_pair(fine, fine_text, coarse, coarse_text, key)
    return tuple(tier for tier, _ in tiers)


def _parse_tier(text: str, key: str) -> Tier:
    precision, sep, length = text.partition(":")
    if not sep:
        raise ConfigError(key, f"tier {text!r} is not 'precision:length' (missing ':'), {_EXAMPLE}")
    step = _parse_amount(precision, text, "precision", key)
    if step < 1:
        raise ConfigError(key, f"tier {text!r}: the precision must be at least 1s, {_EXAMPLE}")
    if step > _UINT32_MAX:
        raise ConfigError(
            key, f"tier {text!r}: the precision exceeds {_UINT32_MAX} seconds, {_EXAMPLE}"
        )
    match = _AMOUNT_RE.fullmatch(length.strip())
    if match is not None and not match.group(2):
        points = int(match.group(1))
    else:
        points = _parse_amount(length, text, "length", key) // step
    if points < 1:
        raise ConfigError(
            key,
            f"tier {text!r} keeps no point: the length must be at least one precision step, "
            f"{_EXAMPLE}",
        )
    if points > _UINT32_MAX:
        raise ConfigError(key, f"tier {text!r} keeps more than {_UINT32_MAX} points, {_EXAMPLE}")
    return Tier(step=step, retention=points * step)


def _parse_amount(amount: str, text: str, what: str, key: str) -> int:
    match = _AMOUNT_RE.fullmatch(amount.strip())
    if match is None:
        raise ConfigError(
            key,
            f"tier {text!r}: bad {what} {amount.strip()!r}, expected digits with an optional "
            f"unit s, m(in), h, d, w or y, {_EXAMPLE}",
        )
    number, unit = int(match.group(1)), match.group(2)
    if not unit:
        return number
    for name, seconds in _UNIT_SECONDS.items():
        if name.startswith(unit):
            return number * seconds
    raise ConfigError(
        key,
        f"tier {text!r}: unknown unit {unit!r} in the {what}, expected s, m(in), h, d, w or y "
        f"(y = 365 days; there is no month unit), {_EXAMPLE}",
    )


def _check_pair(fine: Tier, fine_text: str, coarse: Tier, coarse_text: str, key: str) -> None:
    pair = f"tiers {fine_text!r} and {coarse_text!r}"
    if coarse.step == fine.step:
        raise ConfigError(
            key,
            f"{pair} have the same precision ({fine.step}s): each tier needs its own "
            f"precision, {_EXAMPLE}",
        )
    if coarse.step % fine.step:
        raise ConfigError(
            key,
            f"{pair}: the coarser precision ({coarse.step}s) must be a multiple of the finer "
            f"one ({fine.step}s) so that whole points roll up, {_EXAMPLE}",
        )
    if coarse.retention <= fine.retention:
        raise ConfigError(
            key,
            f"{pair}: the coarser tier must cover a longer span than the finer one "
            f"({coarse.retention}s is not more than {fine.retention}s), {_EXAMPLE}",
        )
    per_slot = coarse.step // fine.step
    if fine.points < per_slot:
        raise ConfigError(
            key,
            f"{pair}: {fine_text!r} keeps only {fine.points} points but one {coarse.step}s slot "
            f"of {coarse_text!r} consolidates {per_slot} of them, {_EXAMPLE}",
        )


def _format_seconds(seconds: int) -> str:
    for suffix, size in _CANONICAL_UNITS:
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    raise AssertionError("unreachable: every integer is a whole number of seconds")
