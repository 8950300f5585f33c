"""Reopen the data directory when it was removed or replaced under a running agent.

A :class:`~statsyard_agent.storage.TSDB` holds its files open, so once its directory is deleted
(``rm -rf``) or swapped for another one, every write fails with a StorageError, and without this
only a restart would help. After a failed write the writer calls :func:`reopen_if_replaced`: it
opens the configured data directory exactly as the agent does at start (creating it when it is
missing) and, when that succeeds, swaps the state's TSDB for the new one. The batches still
queued are then written there; what the removed directory held is gone with it.

Opening is also the test of whether a swap is needed. While the directory the agent holds is
still in place, its ``LOCK`` file is the one the agent holds ``flock``-ed, so the open fails at
once ("already being written by process <our pid>") and nothing changes; a disk that is full or
read-only fails the open too. A path that is not a directory (a file put in its place) fails
until it is a directory again; a directory moved back into place is simply the old one again,
and the retried write succeeds on the TSDB already open.
"""

from __future__ import annotations

import logging

import trio

from ._exceptions import StorageError
from ._state import AgentState
from .storage import TSDB

log = logging.getLogger(__name__)


async def reopen_if_replaced(state: AgentState) -> bool:
    """Swap ``state.tsdb`` for a fresh open of the data directory if the old one was removed or
    replaced; return True when it did. Never raises a StorageError (the caller retries)."""
    config = state.config
    with trio.CancelScope(shield=True):  # the swap and the close of the old one go together
        try:
            fresh = await trio.to_thread.run_sync(TSDB.open, config.data_dir, config.storage)
        except StorageError:
            return False  # still ours (locked by us), or not usable yet: the write error says why
        old, state.tsdb = state.tsdb, fresh
        await trio.to_thread.run_sync(old.close)
    log.warning(
        "the data directory %s was removed or replaced while the agent ran; opened it afresh "
        "(%d queued batches will be written there; what the old directory held is not)",
        config.data_dir,
        len(state.queue),
    )
    return True
