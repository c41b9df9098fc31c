"""Gives the C heap's free pages back to the system at a steady pace, so a long-running server's memory stays flat.

glibc returns freed memory to the system only from the top of a heap. The dashboard's threads (the feed, the
server's event loop, librdkafka's) each allocate in a heap of their own, and a burst (a backlog read at once,
ten tabs joining) leaves free pages in the middle of those heaps that stay resident for the life of the
process. ``malloc_trim(0)`` releases every whole free page of every heap (``madvise``), which no setting does
for a process already running: Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` for the same reason, but that only
moves the top-of-heap threshold. Python's own small-object arenas are not affected.

Only glibc has ``malloc_trim``; elsewhere (musl, macOS) :attr:`HeapTrimmer.available` is False and the
trimmer does nothing, and says so in its status.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import psutil

from dashboards.timings import Timings
from engine.periodic import Periodic

MB = 1024 * 1024


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (ctypes releases the GIL while it runs), or None where the C library lacks it."""
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` every ``every_s`` seconds on a thread of its own (``every_s=0``: never)."""

    def __init__(self, every_s: float = 60.0, *, trim: Callable[[int], int] | None = None) -> None:
        if every_s < 0:
            msg = f"HeapTrimmer: every_s must be >= 0 (0 = off), got {every_s}"
            raise ValueError(msg)
        self.every_s = every_s
        self._trim = trim if trim is not None else _malloc_trim()
        self.trims = 0
        self.released_bytes = 0  # RSS before minus after, summed (what the system got back)
        self._ms = Timings(100)
        self._proc = psutil.Process()  # the RSS /status.json reports, read the same way
        self._timer = Periodic(every_s, self.trim, "isostream-heap-trim") if every_s > 0 else None

    @property
    def available(self) -> bool:
        return self._trim is not None

    def trim(self) -> int:
        """One trim now; returns the bytes of RSS it gave back (0 where ``malloc_trim`` is unavailable)."""
        if self._trim is None:
            return 0
        before = self._proc.memory_info().rss
        t0 = time.perf_counter()
        self._trim(0)
        self._ms.add((time.perf_counter() - t0) * 1000.0)
        released = max(0, before - self._proc.memory_info().rss)
        self.trims += 1
        self.released_bytes += released
        return released

    def start(self) -> HeapTrimmer:
        if self._timer is not None and self.available:
            self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.stop()

    def status(self) -> dict[str, Any]:
        """For ``/status.json``: whether it runs, how often, how many trims, what they gave back, how long one took."""
        return {"available": self.available, "every_s": self.every_s, "trims": self.trims,
                "released_mb": round(self.released_bytes / MB, 1), "trim_ms": self._ms.summary()}
