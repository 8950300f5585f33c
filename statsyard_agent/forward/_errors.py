"""The errors of the forwarding package; each docstring says when it is raised."""

from __future__ import annotations

from statsyard_agent._exceptions import StatsyardError, StorageError


class ForwardError(StatsyardError):
    """Base of the errors raised while forwarding to an upstream engine."""


class SendError(ForwardError):
    """Raised by a transport when a send failed in a way worth retrying: the connection was
    refused or cut, the receiver timed out, or it answered 5xx or 429. The spooled points stay
    where they are and are sent again after a backoff. ``retry_after`` is the receiver's
    ``Retry-After`` in seconds when it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RejectedError(ForwardError):
    """Raised by a transport when the receiver refused the payload for good (an HTTP 4xx other
    than 429: retrying the same bytes would be refused again). The points are dropped and
    counted, so one bad payload cannot block the spool forever."""


class SpoolError(StorageError):
    """Raised when a sink's spool directory cannot be created, read or written (disk full,
    permissions, a file that is not a spool segment)."""
