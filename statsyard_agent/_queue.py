"""The bounded queue of flushed batches between the flusher and the writer.

It belongs to the supervisor, not to either task, so a crashed writer restarts and finds every batch
it had not yet written. The batch being written stays at the head until the write returned; when the
queue is full the oldest batch *not* being written is dropped and counted (drop-oldest keeps the
newest data, which is what an operator looking at a recovering disk wants).
"""

from __future__ import annotations

from collections import deque

from ._types import FlushBatch


class BatchQueue:
    def __init__(self, max_batches: int) -> None:
        if max_batches < 1:
            raise ValueError("max_batches must be >= 1")
        self._max = max_batches
        self._batches: deque[FlushBatch] = deque()
        self._in_flight: FlushBatch | None = None
        self.dropped_batches = 0
        self.dropped_points = 0

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def points(self) -> int:
        return sum(len(batch) for batch in self._batches)

    def push(self, batch: FlushBatch) -> None:
        """Append ``batch``; if that overflows the bound, drop the oldest idle batch (counted)."""
        self._batches.append(batch)
        while len(self._batches) > self._max:
            index = 1 if self._batches[0] is self._in_flight else 0
            if index == len(self._batches) - 1:
                break  # only the batch being written and the newest remain
            dropped = self._batches[index]
            del self._batches[index]
            self.dropped_batches += 1
            self.dropped_points += len(dropped)

    def begin(self) -> FlushBatch | None:
        """Mark the head batch as being written and return it (None when empty)."""
        if not self._batches:
            return None
        self._in_flight = self._batches[0]
        return self._in_flight

    def done(self, batch: FlushBatch) -> None:
        """The write of ``batch`` returned: remove it. Call with no checkpoint after the write."""
        if self._batches and self._batches[0] is batch:
            self._batches.popleft()
        self._in_flight = None

    def abort(self) -> None:
        """The write failed; the batch stays at the head for the next attempt."""
        self._in_flight = None
