"""The heap trimmer: its thread's life, its counts, and (on glibc) pages a real trim gives back."""

from __future__ import annotations

import ctypes
import platform
import sys
import time

import pytest

import dashboards.heap_trim as heap_trim
from dashboards.heap_trim import HeapTrimmer

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def test_the_thread_trims_at_its_pace_and_stops() -> None:
    calls: list[int] = []
    t = HeapTrimmer(0.02, trim=lambda pad: calls.append(pad) or 0).start()
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t.stop()
    n = len(calls)
    assert n >= 3 and set(calls) == {0}  # malloc_trim(0): keep no padding at the heaps' tops
    time.sleep(0.1)
    assert len(calls) == n  # stopped means stopped
    status = t.status()
    assert status["trims"] == n and status["every_s"] == 0.02 and status["available"] is True
    assert status["trim_ms"]["n"] == n


def test_zero_means_never_and_negative_is_refused() -> None:
    calls: list[int] = []
    t = HeapTrimmer(0.0, trim=lambda pad: calls.append(pad) or 0).start()
    time.sleep(0.1)
    t.stop()
    assert calls == [] and t.status()["trims"] == 0
    with pytest.raises(ValueError, match="every_s"):
        HeapTrimmer(-1.0)


def test_without_malloc_trim_it_does_nothing_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap_trim, "_malloc_trim", lambda: None)  # what musl or macOS give
    t = HeapTrimmer(0.01).start()
    assert t.trim() == 0
    time.sleep(0.05)
    t.stop()
    assert t.status()["available"] is False and t.status()["trims"] == 0


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; this C library has none")
def test_a_trim_gives_back_the_free_pages_below_a_live_block() -> None:
    """What glibc's free() keeps: 64 MB freed under one block still in use. The trim returns most of it."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(16_384)]  # small blocks: from the heap, not mmap
    for b in blocks:
        ctypes.memset(b, 1, 4096)  # touch them: resident
    pin = libc.malloc(4096)  # above them all: the heap cannot shrink from its top
    for b in blocks:
        libc.free(b)
    try:
        released = HeapTrimmer(60.0).trim()
    finally:
        libc.free(pin)
    assert released > 32 * 1024 * 1024, f"the trim gave back {released / 2**20:.1f} MB of 64 MB freed"
