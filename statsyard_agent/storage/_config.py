"""The storage slice of the agent's configuration, and per-series retention lookup."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from statsyard_agent._exceptions import ConfigError

from ._retention import DEFAULT_RETENTION, Tier, parse_retention


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """How the TSDB stores series.

    ``retention``      tiers of every series no schema matches (Whisper syntax, finest first).
    ``schemas``        ``(regex, tiers)`` pairs tried in order against the series *name* with
                       ``re.search`` (carbon's storage-schemas.conf); the first match wins. As in
                       carbon, a series keeps the tiers it was created with: a changed schema
                       applies to series created afterwards.
    ``fsync``          fsync every flush (and every sealed partition); off trades the last
                       seconds of data on power loss for fewer disk flushes.
    ``xfiles_factor``  Whisper's xFilesFactor: a coarse slot is null unless at least this
                       fraction of the finer slots it consolidates hold a point (0 = any one).

    Raises ConfigError for an xfiles_factor outside [0, 1], an empty tier tuple or a schema
    whose pattern is not a valid regular expression.
    """

    retention: tuple[Tier, ...] = parse_retention(DEFAULT_RETENTION)
    schemas: tuple[tuple[str, tuple[Tier, ...]], ...] = ()
    fsync: bool = True
    xfiles_factor: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.xfiles_factor) and 0.0 <= self.xfiles_factor <= 1.0):
            raise ConfigError("storage.xfiles_factor", f"must be between 0 and 1, got {self.xfiles_factor!r}")
        if not self.retention:
            raise ConfigError("storage.retention", "at least one tier is required")
        for number, (pattern, tiers) in enumerate(self.schemas, 1):
            key = f"storage.schemas[{number}]"
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"{key}.pattern", f"{pattern!r} is not a valid regular expression: {exc}"
                ) from exc
            if not tiers:
                raise ConfigError(f"{key}.retention", "at least one tier is required")


class SchemaResolver:
    """Which tiers a new series gets: the first schema whose regex matches its name."""

    def __init__(self, config: StorageConfig) -> None:
        self._default = tuple(sorted(config.retention))
        self._rules = [(re.compile(p), tuple(sorted(t))) for p, t in config.schemas]

    def tiers_for(self, name: str) -> tuple[Tier, ...]:
        for regex, tiers in self._rules:
            if regex.search(name):
                return tiers
        return self._default
