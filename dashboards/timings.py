"""A bounded record of recent durations (ms) and their summary, as ``/status.json`` reports them.

One writer thread appends (``deque.append`` is atomic), any thread reads: no lock on the hot path.

>>> t = Timings(keep=3)
>>> for ms in (10.0, 20.0, 30.0, 40.0):
...     t.add(ms)
>>> t.summary()
{'n': 3, 'p50': 30.0, 'p95': 39.0, 'max': 40.0}
>>> Timings().summary()
{'n': 0, 'p50': None, 'p95': None, 'max': None}
"""

from __future__ import annotations

from collections import deque

import numpy as np


class Timings:
    """The last ``keep`` durations in ms."""

    def __init__(self, keep: int = 1_000) -> None:
        self._kept: deque[float] = deque(maxlen=keep)

    def add(self, ms: float) -> None:
        self._kept.append(float(ms))

    def summary(self) -> dict[str, float | int | None]:
        """How many are kept, and their p50, p95 and max (None when there are none)."""
        values = np.array(list(self._kept))  # list(): one C call, safe beside appends
        return {"n": int(values.size),
                **{k: round(float(np.percentile(values, q)), 1) if values.size else None
                   for k, q in (("p50", 50), ("p95", 95), ("max", 100))}}
