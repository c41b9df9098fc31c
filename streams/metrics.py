"""A small thread-safe registry of counters and gauges, with optional labels."""

from __future__ import annotations

import threading
from collections import defaultdict


def _name(name: str, labels: dict[str, object]) -> str:
    if not labels:
        return name
    inner = ",".join(f"{k}={labels[k]}" for k in sorted(labels))
    return f"{name}{{{inner}}}"


class Metrics:
    """Counters only go up; gauges hold the last value set.

    >>> m = Metrics()
    >>> m.inc("dead_letters", reason="invalid_json"); m.set_gauge("lag", 7, partition=0)
    >>> m.snapshot()
    {'dead_letters{reason=invalid_json}': 1, 'lag{partition=0}': 7}
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, float] = defaultdict(float)
        self._gauges: dict[str, float] = {}

    def inc(self, name: str, n: float = 1, **labels: object) -> None:
        with self._lock:
            self._counters[_name(name, labels)] += n

    def set_gauge(self, name: str, value: float, **labels: object) -> None:
        with self._lock:
            self._gauges[_name(name, labels)] = value

    def get(self, name: str, **labels: object) -> float:
        key = _name(name, labels)
        with self._lock:
            return self._counters.get(key, self._gauges.get(key, 0))

    def snapshot(self) -> dict[str, float]:
        """Every counter and gauge by its labelled name (ints where whole)."""
        with self._lock:
            merged = {**self._counters, **self._gauges}
        return {k: int(v) if float(v).is_integer() else v for k, v in sorted(merged.items())}
