"""StatsYard: a StatsD/DogStatsD metrics agent with a local rolled-up TSDB, supervised on trio."""

from __future__ import annotations

__version__ = "0.1.0"
