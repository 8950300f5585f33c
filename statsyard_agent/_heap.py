"""Giving the heap's free pages back to the kernel (glibc ``malloc_trim``) after big frees.

Why: glibc keeps freed heap memory mapped, and after it frees a large mmap-ed block it raises
its mmap threshold, so later numpy columns of a few MB come from the heap as well, and their
pages stay resident once freed. Two places free a lot at once: a storage write (a few hundred
bytes per stored series of temporaries: the batch's names and columns, the WAL record,
registration payloads, the head's grown arrays; measured with 100k StatsD series, ~600 B per
StatsD series of resident memory that nothing used, so every writer of a
:class:`~statsyard_agent.storage.TSDB` gets the release), and a receive worker forgetting its
idle series (:class:`~statsyard_agent._ingest.PreAggregator`). Python objects are unaffected
(this only releases pages malloc holds free); it costs a few ms per call on a heap of a few
hundred MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

__all__ = ["MALLOC_TRIM", "release_free_heap"]


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS): then a no-op."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


MALLOC_TRIM = _load_malloc_trim()


def release_free_heap() -> None:
    """Blocking: give the free pages of every malloc arena back to the kernel (``malloc_trim(0)``);
    a no-op without glibc. Safe to call from any thread at any time."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)
