"""Every error StatsYard raises on purpose. Foreign errors are translated at the boundary."""

from __future__ import annotations


class StatsyardError(Exception):
    """Base of every error raised on purpose by StatsYard."""


class ConfigError(StatsyardError):
    """Raised at start when a configuration key or value is invalid.

    The message always names the offending key (for example ``flush_interval``) and says
    what would be accepted, so the user can fix it without reading the source.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class ParseError(StatsyardError):
    """Raised by the protocol parser for one bad line; the rest of the datagram still parses.

    ``reason`` is a short, stable, snake_case label (e.g. ``invalid_sample_rate``) used as the
    ``reason`` label of ``statsyard_parse_errors_total``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class StorageError(StatsyardError):
    """Raised when the data directory cannot be opened, written or read as promised."""


class CorruptDataError(StorageError):
    """Raised when stored bytes fail their checksum or do not decode."""


class QueryError(StatsyardError):
    """Raised for a query the reader cannot answer: bad glob, bad time, or over a limit."""
