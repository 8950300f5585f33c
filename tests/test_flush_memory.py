"""The storage gives freed heap pages back after each write (``statsyard_agent._heap.release_free_heap``)."""

from __future__ import annotations

import platform

import pytest

from statsyard_agent import _heap


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_trim_is_found_on_glibc() -> None:
    assert _heap.MALLOC_TRIM is not None


def test_release_free_heap_is_safe_to_call_repeatedly() -> None:
    junk = [bytearray(1 << 20) for _ in range(8)]
    del junk
    for _ in range(3):
        _heap.release_free_heap()
    assert [bytes(3)] == [b"\x00\x00\x00"]  # the allocator still works afterwards
